"""Where int8 pays: fp32 vs int8 speed of one architecture at one batch size, side by side.

    python -m edgecnn.benchmarks.quant_speed --model vgg-224 --batch 8
    python -m edgecnn.benchmarks.quant_speed --model cifar-cnn --batch 64

Speed does not depend on what the weights learned, so the run comes from a short training run
(the train package's own API) on synthetic, learnable images written as an image folder. The run
then goes through `edgecnn export` (the int8 recipe search included) and the fp32 and chosen int8
files are timed interleaved in this process, same thread settings, medians. Prints a Markdown table.

Needs the train extra (torch): this script is not part of the torch-free `edgecnn bench`.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from PIL import Image

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


def time_fp32_vs_int8(out_dir: Path, images: np.ndarray, batch: int, threads: int, rounds: int) -> dict[str, float]:
    """Median ms per call of model.onnx and model.int8.onnx at ``batch``, interleaved."""
    from edgecnn.benchmarks.timing import interleaved
    from edgecnn.export.evaluate import open_session

    feed = {"images": np.ascontiguousarray(images[np.arange(batch) % len(images)])}
    sessions = {name: open_session(out_dir / f"model{suffix}.onnx", threads) for name, suffix in (("fp32", ""), ("int8", ".int8"))}
    samples = interleaved({name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()}, rounds=rounds)
    return {name: float(np.median(s) * 1e3) for name, s in samples.items()}


@app.command()
def main(
    model: str = typer.Option("vgg-224", help=f"Architecture: {', '.join(IMAGE_SHAPES)}."),
    batch: int = typer.Option(8, help="Batch size to compare fp32 and int8 at."),
    rounds: int = typer.Option(10, help="Interleaved timing windows per model."),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads for both models (0: onnxruntime's default)."),
    epochs: int = typer.Option(1, help="Epochs of the short training run."),
    train_per_class: int = typer.Option(12, help="Synthetic training images per class (10 classes)."),
    recipes: str = typer.Option("", help="int8 recipes to search, comma-separated (default: all)."),
    work_dir: Optional[Path] = typer.Option(None, help="Keep the data, run and export here (default: a temporary folder)."),
) -> None:
    """Train briefly on synthetic images, export fp32 + int8, and time both at one batch size."""
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
        )
        report = export_run(run, work / "export", settings, log=lambda line: print(line, file=sys.stderr))
        from edgecnn.train.data import DatasetSpec, load_splits

        test_images = load_splits(DatasetSpec(name="folder", data_dir=str(data), image_size=shape[:2], channels=shape[2]))[1].images
        medians = time_fp32_vs_int8(work / "export", test_images, batch, threads, rounds)
        print(markdown(model, batch, rounds, threads, medians, report))


def markdown(model: str, batch: int, rounds: int, threads: int, medians: dict[str, float], report) -> str:
    speedup = medians["fp32"] / medians["int8"]
    target = TARGETS.get((model, batch))
    verdict = "" if target is None else (f"{'meets' if speedup >= target else 'misses'} the {target}x target")
    sizes = {v.variant: v.size_bytes for v in report.variants}
    lines = [
        f"### {model}: fp32 vs int8 at batch {batch}",
        "",
        f"Command: `python -m edgecnn.benchmarks.quant_speed {shlex.join(sys.argv[1:])}`",
        f"Machine: {report.machine['cpu']}; {report.machine['vnni']}; onnxruntime {report.machine['onnxruntime']}; "
        f"threads {threads or 'onnxruntime default'}; {rounds} interleaved rounds, medians.",
        "",
        "| model | batch | fp32 ms | int8 ms | int8 speedup | fp32 size | int8 size | int8 recipe | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
        f"| {model} | {batch} | {medians['fp32']:.2f} | {medians['int8']:.2f} | {speedup:.2f}x "
        f"| {sizes['fp32'] / 2**20:.1f} MiB | {sizes['int8'] / 2**20:.1f} MiB | {report.chosen_recipe} | {verdict or '-'} |",
        "",
        "Recipe search (from the export report; speedups vs fp32 at batch 1 and at the large batch):",
        "",
        "| recipe | speedup b=1 | speedup b=" + str(batch) + " | accuracy change |",
        "|---|---:|---:|---:|",
    ]
    for r in report.recipes:
        if r.error:
            lines.append(f"| {r.name} | failed: {r.error} | | |")
        else:
            lines.append(f"| {r.name} | {r.speedup_latency:.2f}x | {r.speedup_throughput:.2f}x | {r.accuracy_change * 100:+.2f} pt |")
    return "\n".join(lines)


if __name__ == "__main__":
    app()
