"""`edgecnn export`: a trainer run directory, or any ONNX image classifier (import), -> self-describing ONNX
models (fp32 + variants) and a report.

The SOURCE argument decides: a folder is a run directory (export.exporter), a file is an ONNX
classifier to import (export.importer). Both end in the same pipeline (export.pipeline).
Torch-free at import: torch loads inside the command, and only for a run directory. Option
defaults come from ExportSettings and ImportSettings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from edgecnn.train.commandline import needs_extra
from edgecnn.export.settings import (
    CALIBRATION_METHODS,
    CalibrationMethod,
    ChannelOrder,
    Layout,
    SoftmaxMode,
    CHANNEL_ORDERS,
    LAYOUTS,
    SOFTMAX_MODES,
    VARIANTS,
    ExportError,
    ExportSettings,
    ImportSettings,
    parse_image_size,
    parse_numbers,
    parse_scale,
)

DEFAULTS = ExportSettings()
IMPORT_DEFAULTS = ImportSettings()
stdout = Console()
stderr = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add this part's commands to the root `edgecnn` app."""
    app.command("export")(export_command)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list; 'none' or nothing is the empty list."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    return () if names == ("none",) else names


def is_onnx_file(source: Path) -> bool:
    """A file (or a path ending in .onnx) is an ONNX classifier to import; anything else a run directory."""
    return source.is_file() or (source.suffix.lower() == ".onnx" and not source.is_dir())


def check_paths(source: Path, output: Path, labels: Path | None, calibration_data: Path | None) -> None:
    """Refuse, before any work, a SOURCE, --labels, --calibration-data or -o/--output that is missing or of the
    wrong kind, in one sentence naming the flag and the path."""
    from edgecnn.serve.userfiles import UserFileError, check_readable, folder_problem

    if not source.exists():
        kind = "file" if source.suffix.lower() == ".onnx" else "run directory or ONNX file"
        raise ExportError(f"SOURCE {source}: no such {kind}")
    if labels is not None:
        try:
            check_readable(labels, "--labels")
        except UserFileError as exc:
            raise ExportError(str(exc)) from None
    if calibration_data is not None and not calibration_data.is_dir():
        kind = "a file, not a folder" if calibration_data.exists() else "no such folder"
        raise ExportError(f"--calibration-data {calibration_data}: {kind}")
    problem = folder_problem(output)
    if problem:
        raise ExportError(f"-o/--output {output}: {problem}")


def check_run_directory(source: Path, import_flags: list[str]) -> None:
    """Refuse a folder SOURCE given options that only an import takes, or one that holds no run.json."""
    if import_flags:
        verb = "is an option" if len(import_flags) == 1 else "are options"
        raise ExportError(f"{', '.join(import_flags)} {verb} for importing an ONNX file, and {source} is not a file")
    from edgecnn.train.checkpoint import RUN_JSON

    if not (source / RUN_JSON).exists():
        raise ExportError(f"SOURCE {source}: a folder without {RUN_JSON}, so not a run directory of `edgecnn train`")


def export_command(
    source: Path = typer.Argument(
        ...,
        help="Run directory written by `edgecnn train`, or an ONNX image classifier file (MODEL.onnx) to import.",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for model.onnx, its variants, report.json and report.md."),
    quantize: Optional[str] = typer.Option(
        None,
        show_default=False,
        help=f"Variants besides fp32, comma-separated: {', '.join(VARIANTS)}, or none. int8 is the fast CPU path; "
        "fp16 is for CUDA; dynamic quantisation is slow for convolutions (ConvInteger) and only there to compare. "
        f"Default: {','.join(DEFAULTS.quantize)} for a run directory; for an import, int8 with --calibration-data, "
        "else none.",
    ),
    opset: int = typer.Option(DEFAULTS.opset, help="ONNX opset to export a run to (an import keeps the model's own opset)."),
    calibration_size: int = typer.Option(
        DEFAULTS.calibration_size, help="Images the int8 calibration sees (training images, or --calibration-data's)."
    ),
    calibration_method: CalibrationMethod = typer.Option(
        DEFAULTS.calibration_method, help=f"int8 calibration: {', '.join(CALIBRATION_METHODS)}."
    ),
    max_accuracy_drop: float = typer.Option(
        DEFAULTS.max_accuracy_drop,
        help="A variant losing more accuracy than this fraction vs its reference (PyTorch, or the imported "
        "model) fails (0.005 = half a point).",
    ),
    name: Optional[str] = typer.Option(
        DEFAULTS.name,
        help="Model name in the metadata (default: the architecture, or the imported file's name); "
        "variants get -int8, -fp16, -dynamic.",
    ),
    version: str = typer.Option(DEFAULTS.version, help="Model version in the metadata."),
    int8_recipes: str = typer.Option(
        ",".join(DEFAULTS.int8_recipes), help="int8 recipes to try, comma-separated (default: all of them)."
    ),
    evaluation_size: Optional[int] = typer.Option(
        DEFAULTS.evaluation_size,
        help="Images to evaluate on (default: the whole test split, or every held-out --calibration-data image).",
    ),
    threads: int = typer.Option(DEFAULTS.threads, help="onnxruntime intra-op threads for evaluation and timing (0: its default)."),
    latency_batch: int = typer.Option(DEFAULTS.latency_batch, help="Batch size of the latency figure."),
    throughput_batch: int = typer.Option(DEFAULTS.throughput_batch, help="Batch size of the throughput figure."),
    timing_rounds: int = typer.Option(DEFAULTS.timing_rounds, help="Interleaved timing windows per model and batch size."),
    # --- importing an ONNX classifier (SOURCE is a file) ---
    labels: Optional[Path] = typer.Option(
        None, show_default=False, help="Import: a text file of class labels, one per line, in class-index order."
    ),
    labels_key: Optional[str] = typer.Option(
        None,
        show_default=False,
        help="Import: read the labels from this key of the model's own metadata_props (a JSON list, a JSON "
        'dict {"0": "cat", ...}, or comma- or newline-separated). Without --labels or --labels-key the labels '
        "are 0..K-1.",
    ),
    scale: Optional[str] = typer.Option(
        None,
        show_default=False,
        help="Import: multiplies the uint8 pixels before mean and std (a number or a fraction; default 1/255).",
    ),
    mean: Optional[str] = typer.Option(
        None,
        show_default=False,
        help="Import: subtracted after --scale, one value per channel in the model's channel order, e.g. "
        "0.485,0.456,0.406 (one value for a gray model; default 0).",
    ),
    std: Optional[str] = typer.Option(
        None,
        show_default=False,
        help="Import: divides after --mean, one value per channel in the model's channel order, e.g. "
        "0.229,0.224,0.225 (default 1).",
    ),
    channel_order: Optional[ChannelOrder] = typer.Option(
        None,
        show_default=False,
        help=f"Import: the channel order the model expects, {' or '.join(CHANNEL_ORDERS)} (default "
        f"{IMPORT_DEFAULTS.channel_order}). Clients always send RGB (or gray); bgr reverses the channels inside the graph.",
    ),
    layout: Optional[Layout] = typer.Option(
        None,
        show_default=False,
        help=f"Import: the model's input layout, {' or '.join(LAYOUTS)}; read from the graph when one of axes 1 "
        "and 3 holds 1 or 3 channels, else required.",
    ),
    image_size: Optional[str] = typer.Option(
        None,
        show_default=False,
        help="Import: HEIGHTxWIDTH the model takes, e.g. 224x224; read from the graph, required when it leaves "
        "height and width dynamic. Clients' images are resized to it.",
    ),
    input_name: Optional[str] = typer.Option(
        None, show_default=False, help="Import: the graph's image input, when it has several inputs."
    ),
    output_name: Optional[str] = typer.Option(
        None, show_default=False, help="Import: the graph output holding the class scores, when it has several outputs."
    ),
    softmax: Optional[SoftmaxMode] = typer.Option(
        None,
        show_default=False,
        help=f"Import: {'|'.join(SOFTMAX_MODES)} (default {IMPORT_DEFAULTS.softmax}). auto adds a Softmax for "
        "`probabilities` unless the graph's output already is one (then `logits` are its input, or the log of "
        "the probabilities); yes always adds one; no takes the output as probabilities.",
    ),
    calibration_data: Optional[Path] = typer.Option(
        None,
        show_default=False,
        help="Import: a folder of PNG/JPEG images (sub-folders allowed). Every 5th is held out to check the "
        "exported models against the original (true accuracy when the sub-folders are named as the labels, "
        "else top-1 agreement); the rest calibrate int8, which needs this folder. Without it, parity is "
        "checked on 64 random images.",
    ),
) -> None:
    """Export a trained run, or import any ONNX image classifier, to ONNX (uint8 NHWC in, logits and
    probabilities out, preprocessing inside), quantise, check and time it."""
    log = lambda line: stderr.print(line, style="dim", highlight=False, markup=False)  # noqa: E731
    common = dict(
        opset=opset,
        calibration_size=calibration_size,
        calibration_method=calibration_method,
        max_accuracy_drop=max_accuracy_drop,
        name=name,
        version=version,
        int8_recipes=_names(int8_recipes),
        evaluation_size=evaluation_size,
        threads=threads,
        latency_batch=latency_batch,
        throughput_batch=throughput_batch,
        timing_rounds=timing_rounds,
    )
    import_flags = {
        "--labels": labels, "--labels-key": labels_key, "--scale": scale, "--mean": mean, "--std": std,
        "--channel-order": channel_order, "--layout": layout, "--image-size": image_size,
        "--input-name": input_name, "--output-name": output_name, "--softmax": softmax,
        "--calibration-data": calibration_data,
    }
    with needs_extra("train", "export"):  # an edge install has no torch or onnx
        try:
            check_paths(source, output, labels, calibration_data)
            if is_onnx_file(source):
                settings = ImportSettings(
                    **common,
                    quantize=_names(quantize) if quantize is not None else (("int8",) if calibration_data else ()),
                    labels_file=str(labels) if labels is not None else None,
                    labels_key=labels_key,
                    scale=parse_scale(scale) if scale is not None else IMPORT_DEFAULTS.scale,
                    mean=parse_numbers("--mean", mean) if mean is not None else (),
                    std=parse_numbers("--std", std) if std is not None else (),
                    channel_order=(channel_order or IMPORT_DEFAULTS.channel_order).lower(),
                    layout=layout.lower() if layout is not None else None,
                    image_size=parse_image_size(image_size) if image_size is not None else None,
                    input_name=input_name,
                    output_name=output_name,
                    softmax=(softmax or IMPORT_DEFAULTS.softmax).lower(),
                    calibration_data=str(calibration_data) if calibration_data is not None else None,
                )
                from edgecnn.export.importer import import_onnx

                report = import_onnx(source, output, settings, log=log)
            else:
                check_run_directory(source, [flag for flag, value in import_flags.items() if value is not None])
                settings = ExportSettings(**common, quantize=_names(quantize) if quantize is not None else DEFAULTS.quantize)
                from edgecnn.export.exporter import export_run

                report = export_run(source, output, settings, log=log)
        except ExportError as exc:
            stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    from edgecnn.export.report import next_steps, print_report

    print_report(report, stdout)
    failed = [v for v in report.variants if not v.ok]
    if failed:
        for v in failed:
            stderr.print(f"[bold red]error:[/] {v.variant} failed: {escape(v.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    wrote = f"wrote {', '.join(v.file for v in report.variants)} and the report to {output}"
    for line in [wrote, *next_steps(report, output)]:  # unwrapped: paths and commands to copy
        stdout.print(line, highlight=False, markup=False, soft_wrap=True)
