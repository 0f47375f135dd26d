"""`edgecnn demo`: the whole pipeline on the embedded MNIST set, in a few minutes, with no network.

  1. train    a seed CNN on the embedded MNIST images            -> OUT/runs/<run>/ (weights, run.json, plots)
  2. export   fp32 + int8 ONNX, accuracy-checked against torch   -> OUT/export/ (model.onnx, model.int8.onnx, report)
  3. serve    `edgecnn serve OUT/export/model.onnx` on a free loopback port, and classify real test images
              sent as PNG over gRPC: top-k labels                -> OUT/images/ (the PNGs), OUT/server.log
  4. bench    fp32 and int8, in-process and served, short         -> OUT/bench/ (bench.json, bench.md, plots)
  then where each artifact is, and the command that redoes each step on its own.

Training and export need the `train` extra (torch); they are imported inside the steps.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from edgecnn.benchmarks.bench import BenchOutcome, run_bench
from edgecnn.benchmarks.servers import start_edgecnn_server
from edgecnn.benchmarks.settings import BenchSettings, DemoSettings
from edgecnn.benchmarks.tables import print_report


# To stay quick the int8 recipe is pinned to the one `edgecnn export` picks for the seed CNNs here (first
# block in float: the 1-channel first conv is slow in int8) and timing is one round; export tries every recipe.
EXPORT_FLAGS = "--quantize int8 --int8-recipes u8s8-float-stem --timing-rounds 1"


@dataclass
class Step:
    name: str
    seconds: float


def run_demo(settings: DemoSettings, console: Console) -> dict[str, Path]:
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []
    artifacts: dict[str, Path] = {}

    with _step("1/4 train", steps, console):
        run_dir = train(settings, out, console)
    artifacts.update({"run directory (weights, run.json)": run_dir, "training curves": run_dir / "curves.png",
                      "confusion matrix": run_dir / "confusion.png"})

    with _step("2/4 export fp32 + int8", steps, console):
        variants = export(run_dir, out / "export", settings, console)
    artifacts.update({f"{variant} ONNX model": path for variant, path in variants.items()})
    artifacts["export report"] = out / "export" / "report.md"

    with _step("3/4 serve, and classify real test images over gRPC", steps, console):
        server_log = out / "server.log"
        with start_edgecnn_server(variants["fp32"], log=server_log) as server:
            console.print(f"edgecnn serve {variants['fp32']} is listening on {server.address}")
            images_dir = classify_over_grpc(server.address, out / "images", settings, console)
    artifacts.update({"server log": server_log, "test images (PNG)": images_dir})

    with _step("4/4 benchmark fp32 and int8", steps, console):
        models = list(variants.values())
        short_bench = bench_settings(out / "bench", settings)
        outcome = benchmark(models, short_bench, console)
    artifacts["benchmark report"] = outcome.json_path
    for plot in outcome.plots:
        artifacts[f"plot: {plot.stem}"] = plot

    console.rule("[bold]summary")
    print_summary(artifacts, steps, [
        f"edgecnn train --dataset mnist --model {settings.model} --epochs {settings.epochs} --output-dir {out / 'runs'}",
        f"edgecnn export {run_dir} --output {out / 'export'} {EXPORT_FLAGS}",
        f"edgecnn serve {variants['fp32']} --port 8001",
        f"edgecnn predict {images_dir}/*.png --server localhost:8001 --top-k {settings.top_k}",
        bench_command(models, short_bench),
        f"the full benchmark: edgecnn bench {' '.join(map(str, models))} --start-server --out {out / 'bench-full'}",
    ], console)
    return artifacts


class _step:
    """Print a step's title and record how long it took."""

    def __init__(self, name: str, steps: list[Step], console: Console) -> None:
        self.name, self.steps, self.console = name, steps, console

    def __enter__(self) -> None:
        self.console.rule(f"[bold]{self.name}")
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.steps.append(Step(self.name, time.perf_counter() - self.started))


def train(settings: DemoSettings, out: Path, console: Console) -> Path:
    from edgecnn.train.settings import TrainSettings
    from edgecnn.train.trainer import train as train_model

    train_settings = TrainSettings(dataset="mnist", model=settings.model, epochs=settings.epochs, seed=settings.seed,
                                   device="cpu", output_dir=str(out / "runs"), download=False)
    return train_model(train_settings, progress=True, console=console)


def export(run_dir: Path, out_dir: Path, settings: DemoSettings, console: Console) -> dict[str, Path]:
    from edgecnn.export.exporter import OUTPUT_FILES, export_run
    from edgecnn.export.report import print_report as print_export_report
    from edgecnn.export.settings import ExportSettings

    export_settings = ExportSettings(quantize=("int8",), int8_recipes=("u8s8-float-stem",), timing_rounds=1)  # = EXPORT_FLAGS
    report = export_run(run_dir, out_dir, export_settings, log=console.print)
    print_export_report(report, console)
    if not report.ok:
        raise RuntimeError(f"the export failed its checks; see {out_dir / 'report.md'}")
    return {variant: out_dir / OUTPUT_FILES[variant] for variant in ("fp32", "int8")}


def classify_over_grpc(address: str, images_dir: Path, settings: DemoSettings, console: Console) -> Path:
    """Send real MNIST test images (never seen in training) as PNG bytes; the server decodes them."""
    from edgecnn.serve.client import InferenceClient
    from edgecnn.train.data import DatasetSpec, load_splits

    _, test_set = load_splits(DatasetSpec(name="mnist", download=False))
    picks = np.random.default_rng(settings.seed).choice(len(test_set), settings.images, replace=False)
    images_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for index in picks:
        label = test_set.class_names[test_set.labels[index]]
        path = images_dir / f"test{index:04d}_{label}.png"
        Image.fromarray(test_set.images[index][:, :, 0]).save(path)
        files.append(path)
    with InferenceClient(address, timeout=10) as client:
        started = time.perf_counter()
        result = client.infer("", [_png(test_set.images[i]) for i in picks], top_k=settings.top_k)
        elapsed_ms = (time.perf_counter() - started) * 1e3
    table = Table(title=f"{result.model_name} over gRPC: {len(picks)} PNG test images in one request ({elapsed_ms:.1f} ms)")
    for column in ("image", "true label", f"top {settings.top_k} (score)", "correct"):
        table.add_column(column)
    correct = 0
    for path, index, classes in zip(files, picks, result.top_k):
        truth = test_set.class_names[test_set.labels[index]]
        correct += classes[0].label == truth
        table.add_row(path.name, truth, ", ".join(f"{c.label} ({c.score:.3f})" for c in classes),
                      "yes" if classes[0].label == truth else "[red]no[/red]")
    console.print(table)
    console.print(f"{correct}/{len(picks)} correct")
    return images_dir


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bench_settings(out: Path, settings: DemoSettings) -> BenchSettings:
    """A short benchmark: two batch sizes in-process (both layouts, short windows), two concurrencies served."""
    return BenchSettings(start_server=True, batch_sizes=(1, 64), warmup_s=0.2, window_s=0.25, max_seconds=2.0,
                         concurrency=(1, 8),
                         scenarios=("single-stream", "offline"), point_warmup_s=0.3, duration_s=settings.bench_seconds,
                         out=str(out))


def bench_command(models: list[Path], s: BenchSettings) -> str:
    """The `edgecnn bench` command line equivalent to ``s``."""
    return (f"edgecnn bench {' '.join(map(str, models))} --start-server --batch-sizes {_csv(s.batch_sizes)} "
            f"--warmup {s.warmup_s:g} --window {s.window_s:g} --max-seconds {s.max_seconds:g} --concurrency {_csv(s.concurrency)} --scenario {_csv(s.scenarios)} "
            f"--point-warmup {s.point_warmup_s:g} --duration {s.duration_s:g} --out {s.out}")


def _csv(values: tuple) -> str:
    return ",".join(map(str, values))


def benchmark(models: list[Path], settings: BenchSettings, console: Console) -> BenchOutcome:
    outcome = run_bench(models, settings, bench_command(models, settings), progress=console.print)
    print_report(outcome.report, console)
    return outcome


def print_summary(artifacts: dict[str, Path], steps: list[Step], commands: list[str], console: Console) -> None:
    table = Table(title="What the demo made")
    table.add_column("artifact")
    table.add_column("where")
    for name, path in artifacts.items():
        table.add_row(name, str(path))
    console.print(table)
    console.print("Each step on its own:")
    for command in commands:
        console.print(f"  {command}", soft_wrap=True)
    total = sum(s.seconds for s in steps)
    console.print(f"Done in {total:.0f} s: " + ", ".join(f"{s.name.split(' ', 1)[1]} {s.seconds:.0f} s" for s in steps))
