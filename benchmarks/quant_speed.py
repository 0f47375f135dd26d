"""Where int8 pays: fp32 vs int8 speed of one architecture at batch 1 and one larger batch, side by side.

    python -m edgecnn.benchmarks.quant_speed --model vgg-224 --batch 8
    python -m edgecnn.benchmarks.quant_speed --model cifar-cnn --batch 64 --profile

Speed does not depend on what the weights learned, so the run comes from a short training run
(the train package's own API) on synthetic, learnable images written as an image folder. The run
then goes through `edgecnn export`: the int8 recipe search, then fp32 and the chosen int8 file
timed afresh in new sessions, A B A B. Prints a Markdown table of that fresh timing: the median
speedup, the worst round, whether int8 was never slower, the recipe and the CPU's int8 path.
`--profile` adds the time per op type of both files (onnxruntime's profiler).

Needs the train extra (torch): this script is not part of the torch-free `edgecnn bench`.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import typer
from PIL import Image

from edgecnn.export.report import batch_comparisons, never_slower_verdict

if TYPE_CHECKING:
    from edgecnn.export.report import ExportReport

# (height, width, channels) each architecture was designed for, and the speedup the project asks of int8.
IMAGE_SHAPES = {
    "mnist-cnn": (28, 28, 1),
    "fashion-cnn": (28, 28, 1),
    "cifar-cnn": (32, 32, 3),
    "vgg-224": (224, 224, 3),
    "resnet-small": (32, 32, 3),
}
TARGETS = {("cifar-cnn", 64): 1.5, ("vgg-224", 8): 2.2}
CLASSES = 10
PROFILE_WARMUP = 3  # profiled runs left out: the first runs of a shape allocate
PROFILE_RUNS = 20
PROFILE_TOP = 10

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def write_synthetic_folder(root: Path, shape: tuple[int, int, int], train_per_class: int, test_per_class: int) -> Path:
    """``root/{train,test}/<class>/<i>.png``: each class a colour and a stripe frequency, plus noise."""
    height, width, channels = shape
    rng = np.random.default_rng(0)
    rows = np.arange(height)[:, None, None]
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.linspace(40, 215, channels) * (1 + label) % 256
            stripes = 60 * np.sin(rows * (label + 1) * np.pi / height)
            for i in range(count):
                noise = rng.normal(0, 25, (height, width, channels))
                pixels = np.clip(colour + stripes + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / f"{i}.png")
    return root


def train_run(model: str, data_dir: Path, run_dir: Path, shape: tuple[int, int, int], epochs: int) -> Path:
    from edgecnn.train.settings import TrainSettings
    from edgecnn.train.trainer import train

    settings = TrainSettings(
        dataset="folder", data_dir=str(data_dir), image_size=shape[:2], channels=shape[2], model=model,
        epochs=epochs, batch_size=16, val_split=0.0, run_dir=str(run_dir),
    )
    return train(settings, progress=False)


def profile_op_types(path: Path, feed: dict[str, np.ndarray], threads: int, prefix: Path) -> dict[str, float]:
    """Milliseconds per run spent in each op type (summed over its nodes), from onnxruntime's profiler,
    the first PROFILE_WARMUP runs left out: they allocate."""
    import onnxruntime as ort

    from edgecnn.serve.model import session_options

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(PROFILE_WARMUP + PROFILE_RUNS):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_timed = runs[PROFILE_WARMUP]
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / PROFILE_RUNS
    return dict(sorted(per_op.items(), key=lambda item: -item[1]))


@app.command()
def main(
    model: str = typer.Option("vgg-224", help=f"Architecture: {', '.join(IMAGE_SHAPES)}."),
    batch: int = typer.Option(8, help="Batch size to compare fp32 and int8 at (and batch 1)."),
    rounds: int = typer.Option(10, help="Interleaved timing rounds, of the recipe search and of the fresh fp32 vs int8 timing."),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads for both models (0: onnxruntime's default)."),
    epochs: int = typer.Option(1, help="Epochs of the short training run."),
    train_per_class: int = typer.Option(12, help="Synthetic training images per class (10 classes)."),
    recipes: str = typer.Option("", help="int8 recipes to search, comma-separated (default: all)."),
    profile: bool = typer.Option(False, help=f"Also print the top {PROFILE_TOP} op types by time per run, fp32 and int8, at --batch."),
    work_dir: Optional[Path] = typer.Option(None, help="Keep the data, run and export here (default: a temporary folder)."),
) -> None:
    """Train briefly on synthetic images, export fp32 + int8 (the recipe search, then a fresh A/B timing of
    the chosen recipe at batch 1 and --batch), and print the comparison."""
    if model not in IMAGE_SHAPES:
        raise typer.BadParameter(f"choose one of {', '.join(IMAGE_SHAPES)}", param_hint="--model")
    from edgecnn.export.exporter import export_run
    from edgecnn.export.settings import ExportSettings

    shape = IMAGE_SHAPES[model]
    with tempfile.TemporaryDirectory(prefix="quant-speed-") as scratch:
        work = work_dir or Path(scratch)
        data = write_synthetic_folder(work / "data", shape, train_per_class, max(2, train_per_class // 3))
        run = train_run(model, data, work / "run", shape, epochs)
        settings = ExportSettings(
            quantize=("int8",),
            max_accuracy_drop=1.0,  # synthetic data: only speed is measured here
            int8_recipes=tuple(r for r in recipes.split(",") if r),
            threads=threads,
            throughput_batch=batch,
            timing_rounds=rounds,
        )
        out = work / "export"
        report = export_run(run, out, settings, log=lambda line: print(line, file=sys.stderr))
        if report.int8_speed is None:
            raise SystemExit(f"no int8 model: {report.recipe_choice}")
        print(markdown(model, threads, report))
        if profile:
            feed = {"images": np.zeros((batch, *shape), np.uint8)}
            profiles = {
                name: profile_op_types(out / file, feed, threads, work / f"profile-{name}")
                for name, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))
            }
            print("\n" + profile_markdown(model, batch, report.int8_speed.recipe, profiles))


def markdown(model: str, threads: int, report: ExportReport) -> str:
    speed = report.int8_speed
    sizes = {v.variant: v.size_bytes for v in report.variants}
    lines = [
        f"### {model}: fp32 vs int8 ({speed.recipe}) on {speed.cpu_path}",
        "",
        f"Command: `python -m edgecnn.benchmarks.quant_speed {shlex.join(sys.argv[1:])}`",
        f"Machine: {report.machine['cpu']}; int8 path {speed.cpu_path} ({report.machine['vnni']}); "
        f"onnxruntime {report.machine['onnxruntime']}; threads {threads or 'onnxruntime default'}. "
        f"fp32 and the chosen int8 file timed afresh after the recipe search, A B A B, {speed.rounds} rounds; "
        "a round's speedup is fp32 time / int8 time within it. "
        f"Sizes: fp32 {sizes['fp32'] / 2**20:.1f} MiB, int8 {sizes['int8'] / 2**20:.1f} MiB.",
        "",
        "| model | batch | fp32 ms | int8 ms | median speedup | worst round | never slower | int8 recipe | CPU path | target | met (median) |",
        "|---|---:|---:|---:|---:|---:|:---:|---|---|---:|:---:|",
    ]
    for s in batch_comparisons(speed):
        target = TARGETS.get((model, s.batch))
        met = "-" if target is None else ("yes" if s.median_speedup >= target else "**no**")
        lines.append(
            f"| {model} | {s.batch} | {s.fp32.ms:.2f} | {s.int8.ms:.2f} | **{s.median_speedup:.2f}x** | {s.worst_speedup:.2f}x "
            f"| {'yes' if s.never_slower else '**no**'} | {speed.recipe} | {speed.cpu_path} "
            f"| {f'>= {target}x' if target else '-'} | {met} |"
        )
    lines += [
        "",
        never_slower_verdict(speed).capitalize() + ".",
        "",
        "Recipe search (the export's first timing, every candidate interleaved: it chose the recipe, the table above reports it):",
        "",
        f"| recipe | speedup b={speed.latency.batch} | speedup b={speed.throughput.batch} | accuracy change |",
        "|---|---:|---:|---:|",
    ]
    for r in report.recipes:
        if r.error:
            lines.append(f"| {r.name} | failed: {r.error} | | |")
        else:
            lines.append(f"| {r.name} | {r.speedup_latency:.2f}x | {r.speedup_throughput:.2f}x | {r.accuracy_change * 100:+.2f} pt |")
    return "\n".join(lines)


def profile_markdown(model: str, batch: int, recipe: str, profiles: dict[str, dict[str, float]]) -> str:
    """The top op types of fp32 and int8 side by side: ms per run and share of the summed node time."""
    lines = [
        f"#### {model} at batch {batch}: time per op type (onnxruntime profiler, {PROFILE_RUNS} runs, ms per run)",
        "",
        f"| fp32 op type | ms | share | int8 ({recipe}) op type | ms | share |",
        "|---|---:|---:|---|---:|---:|",
    ]
    tops = {name: list(ops.items())[:PROFILE_TOP] for name, ops in profiles.items()}
    totals = {name: sum(ops.values()) for name, ops in profiles.items()}
    for row in range(max(len(ops) for ops in tops.values())):
        cells = []
        for name in ("fp32", "int8"):
            op, ms = tops[name][row] if row < len(tops[name]) else ("", None)
            cells += [op, "" if ms is None else f"{ms:.3f}", "" if ms is None else f"{ms / totals[name]:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| **all nodes** | **{totals['fp32']:.3f}** | | **all nodes** | **{totals['int8']:.3f}** | |")
    return "\n".join(lines)


if __name__ == "__main__":
    app()
