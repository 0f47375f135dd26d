"""`edgecnn export`: a trainer run directory -> self-describing ONNX models (fp32 + variants) and a report.

Torch-free at import: torch loads inside the command. Option defaults come from ExportSettings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from edgecnn.export.settings import CALIBRATION_METHODS, VARIANTS, ExportError, ExportSettings

DEFAULTS = ExportSettings()
stdout = Console()
stderr = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add this part's commands to the root `edgecnn` app."""
    app.command("export")(export_command)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list; 'none' or nothing is the empty list."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    return () if names == ("none",) else names


def export_command(
    run_dir: Path = typer.Argument(..., help="Run directory written by `edgecnn train`."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for model.onnx, its variants, report.json and report.md."),
    quantize: str = typer.Option(
        ",".join(DEFAULTS.quantize),
        help=f"Variants besides fp32, comma-separated: {', '.join(VARIANTS)}, or none. int8 is the fast CPU path; "
        "fp16 is for CUDA; dynamic quantisation is slow for convolutions (ConvInteger) and only there to compare.",
    ),
    opset: int = typer.Option(DEFAULTS.opset, help="ONNX opset to export to."),
    calibration_size: int = typer.Option(DEFAULTS.calibration_size, help="Training images the int8 calibration sees."),
    calibration_method: str = typer.Option(
        DEFAULTS.calibration_method, help=f"int8 calibration: {', '.join(CALIBRATION_METHODS)}."
    ),
    max_accuracy_drop: float = typer.Option(
        DEFAULTS.max_accuracy_drop,
        help="A variant losing more test accuracy than this fraction vs PyTorch fails (0.005 = half a point).",
    ),
    name: Optional[str] = typer.Option(
        DEFAULTS.name, help="Model name in the metadata (default: the architecture); variants get -int8, -fp16, -dynamic."
    ),
    version: str = typer.Option(DEFAULTS.version, help="Model version in the metadata."),
    int8_recipes: str = typer.Option(
        ",".join(DEFAULTS.int8_recipes), help="int8 recipes to try, comma-separated (default: all of them)."
    ),
    evaluation_size: Optional[int] = typer.Option(
        DEFAULTS.evaluation_size, help="Test images to evaluate on (default: the whole test split)."
    ),
    threads: int = typer.Option(DEFAULTS.threads, help="onnxruntime intra-op threads for evaluation and timing (0: its default)."),
    latency_batch: int = typer.Option(DEFAULTS.latency_batch, help="Batch size of the latency figure."),
    throughput_batch: int = typer.Option(DEFAULTS.throughput_batch, help="Batch size of the throughput figure."),
    timing_rounds: int = typer.Option(DEFAULTS.timing_rounds, help="Interleaved timing windows per model and batch size."),
) -> None:
    """Export a trained run to ONNX (uint8 NHWC in, logits and probabilities out), quantise, check and time it."""
    settings = ExportSettings(
        quantize=_names(quantize),
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
    from edgecnn.export.exporter import export_run
    from edgecnn.export.report import print_report

    try:
        report = export_run(run_dir, output, settings, log=lambda line: stderr.print(line, style="dim", highlight=False))
    except ExportError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    print_report(report, stdout)
    failed = [v for v in report.variants if not v.ok]
    if failed:
        for v in failed:
            stderr.print(f"[bold red]error:[/] {v.variant} failed: {v.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    stdout.print(f"wrote {', '.join(v.file for v in report.variants)} and the report to {output}", highlight=False)
