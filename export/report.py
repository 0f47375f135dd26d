"""The export report: one row per variant, one per int8 recipe tried; as a terminal table, JSON and Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgecnn.train.files import atomic_write_text

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


@dataclass
class VariantResult:
    variant: str  # fp32 | int8 | fp16 | dynamic
    file: str  # file name in the output folder (not written when status is "failed")
    model_name: str  # the name recorded in the file's metadata
    size_bytes: int
    accuracy: float
    accuracy_change: float  # vs the reference (PyTorch, or the imported model), in accuracy fraction (-0.002 = 0.2 points)
    max_abs_logit_diff: float  # vs the reference on the same images
    top1_agreement: float  # vs the reference
    latency_ms: float
    throughput_ips: float
    status: str  # ok | failed
    message: str = ""
    recipe: str = ""  # int8: the recipe that won

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class RecipeResult:
    name: str
    why: str
    size_bytes: int = 0
    accuracy: float = 0.0
    accuracy_change: float = 0.0
    latency_ms: float = 0.0
    throughput_ips: float = 0.0
    speedup_latency: float = 0.0  # fp32 latency / this latency
    speedup_throughput: float = 0.0  # this throughput / fp32 throughput
    within_accuracy_bound: bool = False
    error: str = ""  # quantisation or evaluation failed

    @property
    def speedup(self) -> float:
        """Geometric mean of the batch-1 and large-batch speedups: the figure recipes are ranked by."""
        return (self.speedup_latency * self.speedup_throughput) ** 0.5


@dataclass
class ExportReport:
    run_dir: str  # the source: a run directory, or the imported ONNX file
    out_dir: str
    model_name: str
    architecture: str
    version: str
    test_set: str  # the images accuracy and parity are measured on, in words
    test_images: int
    pytorch_accuracy: float  # the reference's accuracy on them (PyTorch's, or the imported model's)
    normalisation_fold: str  # the preprocessing inside the graph, in words
    machine: dict[str, Any]
    settings: dict[str, Any]
    variants: list[VariantResult] = field(default_factory=list)
    recipes: list[RecipeResult] = field(default_factory=list)
    chosen_recipe: str = ""
    recipe_choice: str = ""  # why the chosen recipe won (or why none did)
    source: str = "run"  # run | onnx (an imported classifier)
    reference: str = "PyTorch"  # what every variant is compared with
    accuracy_basis: str = ""  # what "accuracy" means here, when it is not plain test accuracy
    notes: list[str] = field(default_factory=list)  # an import: how the graph was wrapped, label source, opset

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.variants)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: Path) -> None:
        atomic_write_text(out_dir / REPORT_JSON, json.dumps(self.to_json(), indent=2) + "\n")
        atomic_write_text(out_dir / REPORT_MD, to_markdown(self))


def print_report(report: ExportReport, console: Console) -> None:
    s = report.settings
    table = Table(title=Text(f"{report.model_name} v{report.version}: {_reference_accuracy(report)}"))
    table.add_column("variant")
    for column in ("size", "accuracy", f"vs {report.reference}", f"ms @{s['latency_batch']}", f"img/s @{s['throughput_batch']}"):
        table.add_column(column, justify="right")
    table.add_column("status")
    for v in report.variants:
        table.add_row(
            v.variant,
            _size(v.size_bytes),
            f"{v.accuracy:.4f}",
            _points(v.accuracy_change),
            f"{v.latency_ms:.3f}",
            f"{v.throughput_ips:,.0f}",
            "[green]ok[/]" if v.ok else "[red]FAILED[/]",
        )
    console.print(table)
    for note in report.notes:
        console.print(note, highlight=False, markup=False)
    if report.accuracy_basis:
        console.print(f"accuracy: {report.accuracy_basis}", highlight=False, markup=False)
    for v in report.variants:
        if v.message:
            console.print(f"{v.variant}{f' ({v.recipe})' if v.recipe else ''}: {v.message}", highlight=False, markup=False)
    if report.recipe_choice:
        console.print(f"int8 recipe: {report.recipe_choice}", highlight=False, markup=False)


def to_markdown(report: ExportReport) -> str:
    s = report.settings
    source = "Source run" if report.source == "run" else "Imported from"
    lines = [
        f"# Export of {report.model_name} v{report.version} ({report.architecture})",
        "",
        f"- {source}: `{report.run_dir}`",
        f"- Test set: {report.test_set} ({report.test_images} images); "
        f"{'PyTorch accuracy' if report.source == 'run' else f'accuracy of {report.reference}'} {report.pytorch_accuracy:.4f}",
        *([f"- Accuracy here: {report.accuracy_basis}"] if report.accuracy_basis else []),
        f"- Normalisation in the graph: {report.normalisation_fold}",
        *[f"- {note}" for note in report.notes],
        f"- Machine: {report.machine['cpu']}; {report.machine['vnni']}; onnxruntime {report.machine['onnxruntime']}, "
        f"intra-op threads {report.machine['threads']}",
        f"- Timing: in-process onnxruntime CPU, all variants interleaved, {s['timing_rounds']} rounds, medians; "
        f"latency at batch {s['latency_batch']}, throughput at batch {s['throughput_batch']}",
        f"- Accuracy bound: a variant may lose at most {s['max_accuracy_drop'] * 100:.2f} points vs {report.reference}",
        "",
        "## Variants",
        "",
        f"| variant | file | size | accuracy | vs {report.reference} | max abs logit diff | top-1 agreement "
        f"| latency ms (b={s['latency_batch']}) | images/s (b={s['throughput_batch']}) | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v in report.variants:
        status = "ok" if v.ok else f"**failed**: {v.message}"
        name = v.variant + (f" ({v.recipe})" if v.recipe else "")
        lines.append(
            f"| {name} | {v.file if v.ok else '-'} | {_size(v.size_bytes)} | {v.accuracy:.4f} | {_points(v.accuracy_change)} "
            f"| {v.max_abs_logit_diff:.2e} | {v.top1_agreement:.2%} | {v.latency_ms:.3f} | {v.throughput_ips:,.0f} | {status} |"
        )
    notes = [f"- {v.variant}: {v.message}" for v in report.variants if v.ok and v.message]
    if notes:
        lines += ["", *notes]
    if report.recipes:
        lines += [
            "",
            "## int8 recipes tried",
            "",
            f"| recipe | size | accuracy | vs {report.reference} | latency ms | images/s | speedup b={s['latency_batch']} "
            f"| speedup b={s['throughput_batch']} | within bound | what it tests |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in report.recipes:
            if r.error:
                lines.append(f"| {r.name} | - | - | - | - | - | - | - | no | failed: {r.error} |")
                continue
            marker = " **(chosen)**" if r.name == report.chosen_recipe else ""
            lines.append(
                f"| {r.name}{marker} | {_size(r.size_bytes)} | {r.accuracy:.4f} | {_points(r.accuracy_change)} "
                f"| {r.latency_ms:.3f} | {r.throughput_ips:,.0f} | {r.speedup_latency:.2f}x | {r.speedup_throughput:.2f}x "
                f"| {'yes' if r.within_accuracy_bound else 'no'} | {r.why} |"
            )
        lines += ["", report.recipe_choice]
    return "\n".join(lines) + "\n"


def _reference_accuracy(report: ExportReport) -> str:
    if report.source == "run":
        return f"{report.reference} test accuracy {report.pytorch_accuracy:.4f}"
    return f"imported; {report.reference} model scores {report.pytorch_accuracy:.4f} on {report.test_images} {report.test_set}"


def _size(size_bytes: int) -> str:
    if size_bytes >= 1 << 20:
        return f"{size_bytes / (1 << 20):.1f} MiB"
    return f"{size_bytes / 1024:.0f} KiB"


def _points(change: float) -> str:
    return f"{change * 100:+.2f} pt"
