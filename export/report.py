"""The export report: one row per variant, one per int8 recipe tried; as a terminal table, JSON and Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

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
    accuracy_change: float  # vs PyTorch, in accuracy fraction (-0.002 = lost 0.2 points)
    max_abs_logit_diff: float  # vs PyTorch on the same test images
    top1_agreement: float  # vs PyTorch
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
    run_dir: str
    out_dir: str
    model_name: str
    architecture: str
    version: str
    test_set: str
    test_images: int
    pytorch_accuracy: float
    normalisation_fold: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    variants: list[VariantResult] = field(default_factory=list)
    recipes: list[RecipeResult] = field(default_factory=list)
    chosen_recipe: str = ""
    recipe_choice: str = ""  # why the chosen recipe won (or why none did)

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
    table = Table(title=f"{report.model_name} v{report.version}: PyTorch test accuracy {report.pytorch_accuracy:.4f}")
    table.add_column("variant")
    for column in ("size", "accuracy", "vs PyTorch", f"ms @{s['latency_batch']}", f"img/s @{s['throughput_batch']}"):
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
    for v in report.variants:
        if v.message:
            console.print(f"{v.variant}{f' ({v.recipe})' if v.recipe else ''}: {v.message}", highlight=False)
    if report.recipe_choice:
        console.print(f"int8 recipe: {report.recipe_choice}", highlight=False)


def to_markdown(report: ExportReport) -> str:
    s = report.settings
    lines = [
        f"# Export of {report.model_name} v{report.version} ({report.architecture})",
        "",
        f"- Source run: `{report.run_dir}`",
        f"- Test set: {report.test_set} ({report.test_images} images); PyTorch accuracy {report.pytorch_accuracy:.4f}",
        f"- Normalisation in the graph: {report.normalisation_fold}",
        f"- Machine: {report.machine['cpu']}; {report.machine['vnni']}; onnxruntime {report.machine['onnxruntime']}, "
        f"intra-op threads {report.machine['threads']}",
        f"- Timing: in-process onnxruntime CPU, all variants interleaved, {s['timing_rounds']} rounds, medians; "
        f"latency at batch {s['latency_batch']}, throughput at batch {s['throughput_batch']}",
        f"- Accuracy bound: a variant may lose at most {s['max_accuracy_drop'] * 100:.2f} points vs PyTorch",
        "",
        "## Variants",
        "",
        "| variant | file | size | accuracy | vs PyTorch | max abs logit diff | top-1 agreement "
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
            f"| recipe | size | accuracy | vs PyTorch | latency ms | images/s | speedup b={s['latency_batch']} "
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


def _size(size_bytes: int) -> str:
    if size_bytes >= 1 << 20:
        return f"{size_bytes / (1 << 20):.1f} MiB"
    return f"{size_bytes / 1024:.0f} KiB"


def _points(change: float) -> str:
    return f"{change * 100:+.2f} pt"
