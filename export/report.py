"""The export report: one row per variant, one per int8 recipe tried; as a terminal table, JSON and Markdown."""

from __future__ import annotations

import json
import shlex
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
    timing: str = ""  # "fresh": fp32 and the chosen int8 timed again after the search; "search": every candidate interleaved

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
class SideTiming:
    """One model's speed in a fresh A/B timing at one batch size."""

    ms: float  # median per call over every round's samples
    images_per_s: float  # batch / that median
    round_ms: list[float]  # median per call within each round


@dataclass
class SpeedupRounds:
    """fp32 vs int8 at one batch size, timed A B A B: "never slower" holds only if it holds in every round."""

    batch: int
    fp32: SideTiming
    int8: SideTiming
    round_speedups: list[float]  # fp32 time / int8 time within each round
    median_speedup: float  # the median of round_speedups
    worst_speedup: float  # the smallest of round_speedups
    never_slower: bool  # no round below 1.0x


@dataclass
class Int8Speed:
    """The chosen int8 recipe against fp32, timed afresh in new sessions after the search chose it.

    The search's own samples would flatter the winner (the largest of several noisy figures);
    a second, independent timing is the figure to report.
    """

    recipe: str
    cpu_path: str  # the CPU's int8 path (export/cpu.py) the recipe was chosen and timed on
    rounds: int
    latency: SpeedupRounds  # at the latency batch
    throughput: SpeedupRounds  # at the throughput batch
    never_slower: bool  # every round at both batch sizes at least 1.0x

    def figures(self, variant: str) -> dict[str, float]:
        """``variant``'s (fp32 or int8) latency and throughput, as a VariantResult holds them."""
        return {
            "latency_ms": getattr(self.latency, variant).ms,
            "throughput_ips": getattr(self.throughput, variant).images_per_s,
        }


def never_slower_verdict(speed: Int8Speed) -> str:
    """The "int8 is never slower than fp32" verdict in words, judged on every round at both batch sizes."""
    if speed.never_slower:
        return f"never slower than fp32: met ({_rounds(speed.rounds)} at each batch size, none slower)"
    failed = [
        f"{sum(r < 1.0 for r in s.round_speedups)} of {_rounds(speed.rounds)} at batch {s.batch} (worst {s.worst_speedup:.2f}x)"
        for s in batch_comparisons(speed)
        if not s.never_slower
    ]
    return "never slower than fp32: not met: slower in " + ", ".join(failed)


def int8_speed_summary(speed: Int8Speed) -> str:
    """One line: the median and worst-round speedups at both batch sizes, and the verdict."""
    figures = ", ".join(
        f"{s.median_speedup:.2f}x fp32 at batch {s.batch} (worst round {s.worst_speedup:.2f}x)" for s in batch_comparisons(speed)
    )
    return (
        f"{figures}; fresh A/B timing of {speed.recipe} on {speed.cpu_path}, {_rounds(speed.rounds)}; "
        f"{never_slower_verdict(speed)}"
    )


def batch_comparisons(speed: Int8Speed) -> list[SpeedupRounds]:
    """Both comparisons, once when the latency and throughput batches are the same size."""
    return [speed.latency] if speed.latency.batch == speed.throughput.batch else [speed.latency, speed.throughput]


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
    recipe_choice: str = ""  # why the chosen recipe won (or why none did), from the search's timing
    int8_speed: Int8Speed | None = None  # the chosen recipe timed afresh: the int8 figures to quote
    source: str = "run"  # run | onnx (an imported classifier)
    reference: str = "PyTorch"  # what every variant is compared with
    accuracy_basis: str = ""  # what "accuracy" means here, when it is not plain test accuracy
    notes: list[str] = field(default_factory=list)  # an import: how the graph was wrapped, label source, opset
    serve_file: str = ""  # the file to serve on this machine (pipeline.serving_choice); "" when none passed
    served_as: str = ""  # the model name a server gives that file (its metadata name)
    serve_reason: str = ""  # why that file, in a few words

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
    table.add_column("timing")
    table.add_column("status")
    for v in report.variants:
        table.add_row(
            v.variant,
            _size(v.size_bytes),
            f"{v.accuracy:.4f}",
            _points(v.accuracy_change),
            f"{v.latency_ms:.3f}",
            f"{v.throughput_ips:,.0f}",
            v.timing,
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
        console.print(f"int8 recipe search: {report.recipe_choice}", highlight=False, markup=False)


def serve_commands(report: ExportReport, out_dir: str | Path) -> list[str]:
    """`edgecnn serve` of the file to serve on this machine (in ``out_dir`` as the user wrote it) and the
    `edgecnn predict` that reaches it by the name it is served under."""
    path = shlex.quote(str(Path(out_dir) / report.serve_file))
    return [
        f"edgecnn serve {path} --port 8001",
        f"edgecnn predict IMAGE --server localhost:8001 --model {report.served_as}",
    ]


def next_steps(report: ExportReport, out_dir: str | Path) -> list[str]:
    """The lines that end `edgecnn export`: the file to serve on this machine and why, the name it is served
    under and the commands that serve and reach it, and its place in a repository."""
    if not report.serve_file:
        return [f"nothing to serve: {report.serve_reason}"]
    return [
        f"serve {report.serve_file} on this machine: {report.serve_reason}",
        f"it is served as model {report.served_as}:",
        *[f"  {command}" for command in serve_commands(report, out_dir)],
        _repository_entry(report),
    ]


def _repository_entry(report: ExportReport, start: str = "in") -> str:
    """Where the file goes in a repository (NAME/VERSION/model.onnx), and the name it is served under there."""
    entry = f"REPO/{report.model_name}/1/model.onnx"
    return f"{start} a repository (edgecnn serve REPO), copy {report.serve_file} to {entry}: served as {report.model_name}"


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
        f"- Machine: {report.machine['cpu']}; int8 path {report.machine['cpu_path']} ({report.machine['vnni']}); "
        f"onnxruntime {report.machine['onnxruntime']}, intra-op threads {report.machine['threads']}",
        f"- Timing: in-process onnxruntime CPU, {_rounds(s['timing_rounds'])} interleaved, medians; latency at batch "
        f"{s['latency_batch']}, throughput at batch {s['throughput_batch']}. Rows timed *search*: every candidate "
        "interleaved (these samples chose the int8 recipe); rows timed *fresh*: fp32 and the chosen int8 file timed "
        "again in new sessions after the choice, A B A B",
        f"- Accuracy bound: a variant may lose at most {s['max_accuracy_drop'] * 100:.2f} points vs {report.reference}",
        "",
        "## Variants",
        "",
        f"| variant | file | size | accuracy | vs {report.reference} | max abs logit diff | top-1 agreement "
        f"| latency ms (b={s['latency_batch']}) | images/s (b={s['throughput_batch']}) | timing | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for v in report.variants:
        status = "ok" if v.ok else f"**failed**: {v.message}"
        name = v.variant + (f" ({v.recipe})" if v.recipe else "")
        lines.append(
            f"| {name} | {v.file if v.ok else '-'} | {_size(v.size_bytes)} | {v.accuracy:.4f} | {_points(v.accuracy_change)} "
            f"| {v.max_abs_logit_diff:.2e} | {v.top1_agreement:.2%} | {v.latency_ms:.3f} | {v.throughput_ips:,.0f} | {v.timing} | {status} |"
        )
    notes = [f"- {v.variant}: {v.message}" for v in report.variants if v.ok and v.message]
    if notes:
        lines += ["", *notes]
    if report.serve_file or report.serve_reason:
        lines += ["", *_serving_markdown(report)]
    if report.int8_speed:
        lines += ["", *_int8_speed_markdown(report.int8_speed)]
    if report.recipes:
        lines += [
            "",
            "## int8 recipes tried (the search's timing)",
            "",
            "Every candidate timed interleaved; these samples chose the recipe, the fresh timing above reports it.",
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


def _serving_markdown(report: ExportReport) -> list[str]:
    lines = ["## Serving on this machine", ""]
    if not report.serve_file:
        return [*lines, f"Nothing to serve: {report.serve_reason}."]
    return [
        *lines,
        f"Serve `{report.serve_file}`: {report.serve_reason}. It is served as model `{report.served_as}`:",
        "",
        "```bash",
        *serve_commands(report, report.out_dir),
        "```",
        "",
        _repository_entry(report, start="In") + ".",
    ]


def _int8_speed_markdown(speed: Int8Speed) -> list[str]:
    lines = [
        "## int8 vs fp32: a fresh timing of the chosen recipe",
        "",
        f"Recipe `{speed.recipe}`, chosen and timed on CPU int8 path `{speed.cpu_path}`. fp32 and int8 in new "
        f"sessions, A B A B, {_rounds(speed.rounds)}; a round's speedup is fp32 time / int8 time within that round.",
        "",
        "| batch | fp32 ms | int8 ms | fp32 images/s | int8 images/s | median speedup | worst round | rounds below 1.0x |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in batch_comparisons(speed):
        slower = sum(r < 1.0 for r in s.round_speedups)
        lines.append(
            f"| {s.batch} | {s.fp32.ms:.3f} | {s.int8.ms:.3f} | {s.fp32.images_per_s:,.0f} | {s.int8.images_per_s:,.0f} "
            f"| {s.median_speedup:.2f}x | {s.worst_speedup:.2f}x | {slower} of {len(s.round_speedups)} |"
        )
    return [*lines, "", f"**{never_slower_verdict(speed).capitalize()}**"]


def _rounds(count: int) -> str:
    return f"{count} round{'s' if count != 1 else ''}"


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
