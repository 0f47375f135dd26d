"""`edgecnn classify`: label a folder (or glob) of images offline into one CSV or Parquet file.

    paths ──► decode threads (Pillow, GIL released) ──► batches of --batch-size ──► one onnxruntime session
          ──► rows: path, label, score, top_k, error ──► temp file beside OUT ──► rename to OUT

One ``BatchClassifier`` (a session, a pool of decode threads, the row format) does the work for both
engines: the local engine feeds it batches from this process, decoding the next batches while the
session runs the current one; ``--engine ray`` hands it to Ray Data ``map_batches`` as a callable class,
one instance (one session) per actor. Torch-free; Ray and pyarrow load only when asked for.

Rows (one per image, in path order):

- ``path``: the image's path as found (relative when INPUT is relative);
- ``label``, ``score``: the top-1 label and its probability (empty when the image could not be read);
- ``top_k``: the best ``--top-k`` classes as a JSON list, best first:
  ``[{"label": "seven", "index": 7, "score": 0.98}, ...]`` (empty when the image could not be read);
- ``error``: why the image could not be read or decoded (empty otherwise). An unreadable image never
  stops the run.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence, get_args

import numpy as np

from edgecnn.serve.images import DEFAULT_MAX_PIXELS, FORMATS_TEXT, ImageDecodeError, decode_image, image_files
from edgecnn.serve.settings import usable_cores

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = get_args(Engine)
COLUMNS = ("path", "label", "score", "top_k", "error")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
RAY_MISSING = "--engine ray needs Ray, which is not installed: pip install edgecnn[ray]"
PYARROW_MISSING = "writing Parquet needs pyarrow, which is not installed: pip install edgecnn[ray] (or pyarrow)"


def _flag(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ClassifySettings:
    """Every tunable of `edgecnn classify`: its defaults are the CLI's, its help texts the flags'."""

    input: str = field(metadata={"help": f"A folder (searched recursively for {FORMATS_TEXT} images) or a glob "
                                         "of image files (quote it: 'photos/**/*.jpg'); other formats are errors."})
    model: Path = field(metadata={"help": "An exported MODEL.onnx (labels and input size are read from it)."})
    output: Path = field(metadata={"help": "OUT.csv or OUT.parquet: one row per image (path, label, score, "
                                           "top_k, error), written whole or not at all."})
    top_k: int = _flag(3, "Classes per image in the top_k column (a JSON list, best first).")
    batch_size: int = _flag(64, "Images per onnxruntime run.")
    decode_threads: int = _flag(0, "Threads reading and decoding images (0: usable cores).")
    intra_op_threads: int = _flag(0, "onnxruntime threads per run (0: usable cores).")
    max_image_pixels: int = _flag(DEFAULT_MAX_PIXELS, "Larger images are reported in their row, not decoded.")
    engine: Engine = _flag("local", "local: this process; ray: Ray Data map_batches, one onnxruntime session per actor.")
    ray_address: str | None = _flag(
        None, "A running Ray cluster to use (e.g. ray://head:10001 or auto); default: start a local one. "
        "On a cluster, the actors read INPUT: it must be at the same path on every node (the model travels with the job).")
    ray_cpus: int = _flag(0, "CPUs of the local Ray instance (0: usable cores); ignored with --ray-address.")
    ray_actors: int = _flag(0, "Ray actors, each with its own session (0: the cluster's CPUs / --ray-cpus-per-actor).")
    ray_cpus_per_actor: int = _flag(1, "CPUs each Ray actor reserves: its onnxruntime and decode threads.")
    progress: bool = _flag(True, "Show a progress bar (on stderr).")


def help_of(name: str) -> str:
    return next(f.metadata["help"] for f in fields(ClassifySettings) if f.name == name)


@dataclass(frozen=True)
class Report:
    images: int
    errors: int
    seconds: float  # classification only: from the first decode to the last row
    startup_s: float  # opening the session (and starting Ray)
    output: Path

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        errors = f"{self.errors:,} error" + ("" if self.errors == 1 else "s")
        return (f"{self.images:,} images, {errors}, {self.seconds:.2f} s, "
                f"{self.images_per_s:,.0f} images/s (start-up {self.startup_s:.2f} s not counted) -> {self.output}")


class ClassifyError(ValueError):
    """A problem with the command's arguments or environment: one sentence for the user."""


# ---------------------------------------------------------------------------------------------- input


def find_images(source: str) -> list[str]:
    """The image files of a folder (recursively, by suffix), of a glob (every file it matches), or one file;
    sorted, so the output's row order is the same run after run. A folder's images are its PNG and JPEG files
    (by suffix: what the server decodes); a glob's or a file's other formats are reported in their rows."""
    path = Path(source)
    if path.is_dir():
        return [str(p) for p in image_files(path)]
    if path.is_file():
        return [source]
    if glob.has_magic(source):
        return sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
    raise ClassifyError(f"{source}: no such folder or file, and not a glob")


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise ClassifyError(f"--output {path}: the output must end in .csv or .parquet (got {suffix or 'no suffix'!r})")


# ------------------------------------------------------------------------------------ the work itself


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class BatchClassifier:
    """One onnxruntime session, a pool of decode threads and the row format: called with a batch of
    paths, returns its rows as columns. The local engine's worker, and Ray Data's callable class
    (``__call__`` takes and returns a dict of numpy columns), one per actor."""

    def __init__(self, model: bytes | str, *, top_k: int = 3, intra_op_threads: int = 1,
                 decode_threads: int = 1, max_image_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        import onnxruntime as ort

        from edgecnn.export.metadata import PROBABILITIES, metadata_of_session
        from edgecnn.serve.model import session_options

        # ``model`` as bytes lets Ray actors on other nodes open it without sharing a filesystem.
        self.session = ort.InferenceSession(model, session_options(intra_op_threads),
                                            providers=["CPUExecutionProvider"])
        self.metadata = m = metadata_of_session(self.session)
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        if inputs.get(m.input_name) != "tensor(uint8)" or m.layout != "NHWC":
            raise ClassifyError(f"the model's input {m.input_name!r} is not uint8 NHWC images "
                                f"(graph inputs {inputs}, layout {m.layout}): export it with `edgecnn export`")
        self.shape = (m.height, m.width, m.channels)
        self.output = PROBABILITIES if PROBABILITIES in m.output_names else m.output_names[0]
        self.softmax = self.output != PROBABILITIES  # a model with logits only: probabilities here
        self.top_k = max(1, min(top_k, m.num_classes))
        self.decode_threads = max(1, decode_threads)
        self.max_image_pixels = max_image_pixels
        # Even one decode thread is a pool: the local engine decodes the next batches while the session runs.
        self.pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="edgecnn-decode")

    # -- decoding: fills one uint8 NHWC array, errors by row
    def _decode_into(self, images: np.ndarray, start: int, paths: Sequence[str], errors: dict[int, str]) -> None:
        height, width, channels = self.shape
        for i, path in enumerate(paths, start):
            try:
                with open(path, "rb") as f:
                    data = f.read()
                # The formats the server decodes, so that a file labels here as it would over the wire.
                images[i] = decode_image(data, height, width, channels, max_pixels=self.max_image_pixels)
            except (OSError, ImageDecodeError) as exc:
                errors[i] = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)

    def submit_decode(self, paths: Sequence[str]) -> Callable[[], tuple[np.ndarray, dict[int, str]]]:
        """Start decoding ``paths`` (in chunks, one per decode thread); the returned call waits for it."""
        images = np.empty((len(paths), *self.shape), dtype=np.uint8)
        errors: dict[int, str] = {}
        chunk = max(1, math.ceil(len(paths) / self.decode_threads))
        futures = [self.pool.submit(self._decode_into, images, start, paths[start:start + chunk], errors)
                   for start in range(0, len(paths), chunk)]

        def wait() -> tuple[np.ndarray, dict[int, str]]:
            for future in futures:
                future.result()
            return images, errors

        return wait

    # -- inference and rows
    def rows(self, paths: Sequence[str], images: np.ndarray, errors: dict[int, str]) -> dict[str, np.ndarray]:
        """Columns for one decoded batch; rows with an error get label "" and score NaN (nulls once written)."""
        n = len(paths)
        labels = self.metadata.labels
        label = np.full(n, "", dtype=object)
        score = np.full(n, np.nan, dtype=np.float64)
        top_k = np.full(n, "", dtype=object)
        error = np.array([errors.get(i, "") for i in range(n)], dtype=object)
        ok = [i for i in range(n) if i not in errors]
        if ok:
            batch = images if len(ok) == n else images[ok]
            (scores,) = self.session.run([self.output], {self.metadata.input_name: batch})
            if self.softmax:
                scores = _softmax(scores.astype(np.float32))
            order = np.argsort(-scores, axis=1, kind="stable")[:, : self.top_k]
            for row, best, probabilities in zip(ok, order, scores):
                label[row] = labels[best[0]]
                score[row] = float(probabilities[best[0]])
                top_k[row] = json.dumps([{"label": labels[c], "index": int(c), "score": float(probabilities[c])}
                                         for c in best])
        return {"path": np.array(paths, dtype=object), "label": label, "score": score, "top_k": top_k,
                "error": error}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data's entry point: a batch with ``path`` (as reported) and ``file`` (absolute: an actor's
        working folder is not the driver's) columns in, its rows out."""
        paths = [str(p) for p in batch["path"]]
        images, errors = self.submit_decode([str(f) for f in batch.get("file", batch["path"])])()
        return self.rows(paths, images, errors)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


Sink = Callable[[dict[str, np.ndarray]], None]  # takes each batch's rows, in path order


def run_local(paths: Sequence[str], model: Path, s: ClassifySettings, sink: Sink) -> tuple[float, float]:
    """Classify ``paths`` in this process into ``sink``; (start-up seconds, classification seconds)."""
    start = time.perf_counter()
    cores = usable_cores()
    worker = BatchClassifier(str(model), top_k=s.top_k, intra_op_threads=s.intra_op_threads or cores,
                             decode_threads=s.decode_threads or cores, max_image_pixels=s.max_image_pixels)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    try:
        # The next AHEAD batches decode on the pool while the session runs the current one (onnxruntime
        # releases the GIL, and so do Pillow's decoders).
        ahead = 2
        batches = iter(_batches(paths, s.batch_size))
        pending: deque[tuple[Sequence[str], Callable]] = deque()
        for batch in batches:
            pending.append((batch, worker.submit_decode(batch)))
            if len(pending) == ahead + 1:
                break
        while pending:
            batch, wait = pending.popleft()
            images, errors = wait()
            following = next(batches, None)
            if following is not None:
                pending.append((following, worker.submit_decode(following)))
            sink(worker.rows(batch, images, errors))
    finally:
        worker.close()
    return startup, time.perf_counter() - start


def run_ray(paths: Sequence[str], model: Path, s: ClassifySettings, sink: Sink) -> tuple[float, float]:
    """Classify ``paths`` on Ray Data into ``sink``: ``map_batches`` with one BatchClassifier (one onnxruntime
    session) per actor; (start-up seconds, classification seconds, actors' start included)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ClassifyError(RAY_MISSING) from None
    start = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        # "local": a Ray instance of our own, even where `ray start` runs one here (Ray would join it, and
        # then refuse num_cpus); --ray-address joins a cluster instead.
        where = {"address": s.ray_address} if s.ray_address else {"address": "local",
                                                                 "num_cpus": s.ray_cpus or usable_cores()}
        try:
            ray.init(**where, include_dashboard=False, log_to_driver=False, logging_level="warning")
        except ConnectionError as exc:  # "auto" with no cluster running
            raise ClassifyError(f"--ray-address {s.ray_address}: {exc}") from None
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours is the one progress bar
        context.print_on_execution_start = False
        context.execution_options.preserve_order = True  # rows come back in path order
        # Ray Data says so at INFO/WARNING on every run: "progress bars disabled", "execution finished".
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        per_actor = max(1, s.ray_cpus_per_actor)
        actors = s.ray_actors or max(1, cpus // per_actor)
        # On a cluster the model travels as bytes (no shared filesystem needed for it); locally, by path.
        source = model.read_bytes() if s.ray_address else str(model.resolve())
        dataset = ray.data.from_items([{"path": p, "file": os.path.abspath(p)} for p in paths]).map_batches(
            BatchClassifier,
            fn_constructor_kwargs={"model": source, "top_k": s.top_k, "intra_op_threads": per_actor,
                                   "decode_threads": per_actor, "max_image_pixels": s.max_image_pixels},
            batch_size=s.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=per_actor,
        )
        startup = time.perf_counter() - start
        start = time.perf_counter()
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            sink(batch)
        return startup, time.perf_counter() - start
    finally:
        if started_here:
            ray.shutdown()


# --------------------------------------------------------------------------------------------- output


def _records(columns: dict[str, np.ndarray]) -> Iterable[dict[str, Any]]:
    """Rows with None where a value is missing: label/score/top_k of an error row, error of a good one."""
    for path, label, score, top_k, error in zip(*(columns[c] for c in COLUMNS)):
        failed = bool(error)
        yield {
            "path": str(path),
            "label": None if failed else str(label),
            "score": None if failed else float(score),
            "top_k": None if failed else str(top_k),
            "error": str(error) if failed else None,
        }


class RowWriter:
    """Rows streamed into a temp file in ``output``'s folder, renamed onto ``output`` only when the run
    completes: a failed or interrupted run leaves the previous file (or none) and no temp file."""

    PARQUET_ROW_GROUP = 65_536

    def __init__(self, output: Path) -> None:
        self.output = output
        self.kind = output_format(output)
        self.rows = self.errors = 0
        fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        self.tmp = Path(name)
        if self.kind == "csv":
            self.file = os.fdopen(fd, "w", newline="", encoding="utf-8")
            self.csv = csv.DictWriter(self.file, fieldnames=COLUMNS)
            self.csv.writeheader()
        else:
            os.close(fd)
            import pyarrow as pa
            import pyarrow.parquet as pq

            self.schema = pa.schema([(c, pa.float64() if c == "score" else pa.string()) for c in COLUMNS])
            self.parquet = pq.ParquetWriter(self.tmp, self.schema)
            self.pending: list[dict[str, Any]] = []

    def write(self, columns: dict[str, np.ndarray]) -> None:
        for record in _records(columns):
            self.rows += 1
            self.errors += record["error"] is not None
            if self.kind == "csv":
                # repr of a float round-trips exactly: the file holds the model's float32 scores.
                self.csv.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v)
                                   for k, v in record.items()})
            else:
                self.pending.append(record)
        if self.kind == "parquet" and len(self.pending) >= self.PARQUET_ROW_GROUP:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.parquet.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def _close(self) -> None:
        if self.kind == "csv":
            self.file.close()
        else:
            try:
                self._flush_parquet()
            finally:
                self.parquet.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self._close()
            if error is None:
                os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; OUT gets the usual mode
                os.replace(self.tmp, self.output)
        finally:
            self.tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------- the command


def _check_model(model: Path) -> None:
    """A missing, corrupt or foreign model file fails here in one sentence, not in each decode worker or Ray actor."""
    from edgecnn.export.metadata import MetadataError, metadata_of_session
    from edgecnn.serve.userfiles import ModelFileError, UserFileError, check_model_file, check_readable

    try:
        metadata_of_session(check_model_file(check_readable(model, "--model")))
    except UserFileError as exc:
        raise ClassifyError(str(exc)) from None
    except ModelFileError as exc:
        raise ClassifyError(f"--model {exc}") from None
    except MetadataError as exc:
        raise ClassifyError(f"--model {model}: {exc}") from None


def _check_output(output: Path) -> None:
    """An --output that is a folder, has no .csv/.parquet suffix, or cannot be written fails now, in one sentence."""
    from edgecnn.serve.userfiles import folder_problem

    if output.is_dir():
        raise ClassifyError(f"--output {output}: a folder; give a file OUT.csv or OUT.parquet")
    output_format(output)
    problem = folder_problem(output.parent)
    if problem:
        raise ClassifyError(f"--output {output}: {problem}")


def _check_ray_address(address: str) -> None:
    """Ray retries an address where nothing listens for ever: knock once (5 s) when it names a HOST:PORT."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # auto, or a form Ray resolves itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ClassifyError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                            "start it, or leave the flag out for a local Ray instance") from None


def classify(s: ClassifySettings) -> Report:
    """Classify every image of ``s.input`` with ``s.model`` into ``s.output``; ClassifyError for bad arguments."""
    if s.engine not in ENGINES:
        raise ClassifyError(f"--engine must be one of {', '.join(ENGINES)}, got {s.engine!r}")
    if s.batch_size < 1 or s.top_k < 1:
        raise ClassifyError("--batch-size and --top-k must be at least 1")
    # Every check that can fail fails now, before any image is read.
    _check_output(s.output)
    if output_format(s.output) == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ClassifyError(PYARROW_MISSING) from None
    if s.engine == "ray":
        try:
            import ray.data  # noqa: F401
        except ImportError:
            raise ClassifyError(RAY_MISSING) from None
        if s.ray_address:
            _check_ray_address(s.ray_address)
    _check_model(s.model)
    paths = find_images(s.input)
    if not paths:
        raise ClassifyError(f"{s.input}: no images found")
    try:
        s.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClassifyError(f"--output {s.output}: cannot create its folder ({exc.strerror or exc})") from None

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("classify"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} images/s"), TimeRemainingColumn(),
                        console=Console(stderr=True), disable=not s.progress, transient=True)
    run = run_ray if s.engine == "ray" else run_local
    with RowWriter(s.output) as writer, progress:
        task = progress.add_task("classify", total=len(paths), rate="-")

        def sink(columns: dict[str, np.ndarray]) -> None:
            writer.write(columns)
            progress.update(task, completed=writer.rows)
            speed = progress.tasks[task].speed
            progress.update(task, rate=f"{speed:,.0f}" if speed else "-")

        startup, seconds = run(paths, s.model, s, sink)
        if writer.rows != len(paths):  # never expected: a short file must not replace OUT
            raise RuntimeError(f"{len(paths)} images but {writer.rows} rows came back")
    return Report(images=len(paths), errors=writer.errors, seconds=seconds, startup_s=startup, output=s.output)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgecnn.serve.classify ...``: the same command without the rest of the CLI."""
    import typer

    from edgecnn.serve import classify_cli

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    classify_cli.register(app)
    try:
        app(args=list(argv if argv is not None else sys.argv[1:]), prog_name="edgecnn classify",
            standalone_mode=True)
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
