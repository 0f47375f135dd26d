"""A bench report as tables: built once as plain rows, shown in the terminal (rich) or as markdown
(``bench.md``, ready to paste into benchmarks/RESULTS.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class TextTable:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""
    left: int = 1  # the first `left` columns are text (left-aligned); the rest are figures

    def rich(self) -> Table:
        table = Table(title=self.title, caption=self.caption or None)
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="left" if i < self.left else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        align = ["---" if i < self.left else "---:" for i in range(len(self.columns))]
        lines = [f"**{self.title}**", "", _md_row(self.columns), _md_row(align)]
        lines += [_md_row(row) for row in self.rows]
        if self.caption:
            lines += ["", f"_{self.caption}_"]
        return "\n".join(lines)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def device_line(device: dict[str, Any]) -> str:
    gpus = "".join(f"; GPU {gpu['name']}" for gpu in device["gpus"])
    cpu_path = f" (int8 path: {device['cpu_path']})" if device.get("cpu_path") else ""
    return (f"{device['cpu_model']}{cpu_path}, {device['usable_cores']} usable cores, {device['memory_gib']} GiB, "
            f"{device['os']}; onnxruntime {device['onnxruntime']} ({', '.join(device['onnxruntime_providers'])}){gpus}")


def report_tables(report: dict[str, Any]) -> list[TextTable]:
    tables = [inprocess_table(report["inprocess"])] if report["inprocess"] else []
    for run in report["served"]:
        tables += [served_table(run), floors_table(run)]
        if run["scenarios"]:
            tables.append(scenario_table(run))
    return tables


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(device_line(report["device"]), highlight=False)
    for table in report_tables(report):
        console.print(table.rich())


def markdown_report(report: dict[str, Any], plots: list[str]) -> str:
    """The whole report in markdown: the command, the device, every table, and the plots (relative paths)."""
    commit = f"; commit {report['commit']}" if report.get("commit") else ""
    parts = ["```", report["command"], "```", "", device_line(report["device"]) + f"; {report['created']}{commit}"]
    parts += ["\n" + table.markdown() for table in report_tables(report)]
    parts += [""] + [f"![{plot}]({plot})" for plot in plots]
    return "\n".join(parts) + "\n"


def inprocess_table(rows: list[dict[str, Any]]) -> TextTable:
    table = TextTable("In-process onnxruntime (compute floor: the fastest layout)",
                      ["variant", "provider", "layout", "batch", "images/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
                       "stable"], left=3, caption=recipes_caption(rows))
    for r in rows:
        lat = r["latency"]
        layout = r.get("layout", "1 caller")
        table.rows.append([r["variant"], r["provider"].replace("ExecutionProvider", ""), layout, str(r["batch_size"]),
                           num(r["images_per_s"]), ms(lat["p50_ms"]), ms(lat["p90_ms"]), ms(lat["p99_ms"]),
                           ms(lat["max_ms"]), "yes" if r["stable"] else "no"])
    return table


def recipes_caption(rows: list[dict[str, Any]]) -> str:
    """Which int8 recipe each int8 file runs and the CPU path it was chosen on: a recipe chosen on another
    path (say avx2, served on avx512_vnni) was never timed here against the others."""
    recipes = {(r["model"], r.get("int8_recipe"), r.get("recipe_cpu_path")) for r in rows if r.get("int8_recipe")}
    return "; ".join(f"{Path(model).name}: int8 recipe {recipe}, chosen on {path or 'an unrecorded CPU path'}"
                     for model, recipe, path in sorted(recipes))


def served_table(run: dict[str, Any]) -> TextTable:
    table = TextTable(f"Served: {run['label']} ({run['model']} at {run['address']}, {run['batch_size']} image(s)/request)",
                      ["load", "req/s", "images/s", "p50 ms", "p90", "p95", "p99", "max", "errors", "queue / compute ms"])
    for point in run["points"]:
        s = point["served"]
        lat = s["latency"] or {}
        server = s["server"]
        queue_compute = f"{server['queue_ms']:.2f} / {server['compute_ms']:.2f}" if "compute_ms" in server else "-"
        table.rows.append([load(s), num(s["requests_per_s"]), num(s["images_per_s"]),
                           *(ms(lat.get(k)) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")),
                           ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "-", queue_compute])
    return table


def floors_table(run: dict[str, Any]) -> TextTable:
    floor = run["compute_floor"]
    caption = "no compute floor (no model file)"
    if floor:
        caption = (f"compute floor: {num(floor['best_images_per_s'])} images/s at batch {floor['best_batch_size']}"
                   f"{_layout_of(floor)}; p50 {ms(floor['p50_ms_at_request_batch'])} ms at batch {run['batch_size']}")
    table = TextTable(f"Floors: {run['label']} against the echo server (same load) and in-process onnxruntime",
                      ["load", "echo req/s", "echo p50 ms", "req/s / echo", "images/s / compute", "p50 / (echo + compute)",
                       "client cpu", "machine cpu"], caption=caption)
    for point in run["points"]:
        s, echo, ratios = point["served"], point["echo"], point["ratios"]
        client = f"{s['client']['cpu_per_process_max']:.2f}" + (" saturated" if s["client"]["saturated"] else "")
        machine = "-" if s["client"]["host_cpu_busy"] is None else f"{s['client']['host_cpu_busy']:.0%}"
        table.rows.append([load(s), num(echo["requests_per_s"]) if echo else "-",
                           ms(echo["latency"]["p50_ms"]) if echo and echo["latency"] else "-",
                           times(ratios["requests_per_s_vs_echo"]), times(ratios["images_per_s_vs_compute"]),
                           times(ratios["p50_vs_echo_plus_compute"]), client, machine])
    return table


def _layout_of(floor: dict[str, Any]) -> str:
    """The floor's layout, and the best single caller beside it when the layout is not one (reports
    written before layouts were measured have neither)."""
    if "best_layout" not in floor:
        return ""
    single = floor.get("single_caller_images_per_s")
    beside = f"; one caller at best: {num(single)} images/s" if single and single != floor["best_images_per_s"] else ""
    return f", {floor['best_layout']}{beside}"


def scenario_table(run: dict[str, Any]) -> TextTable:
    table = TextTable(f"MLPerf-style scenarios: {run['label']}", ["scenario", "result", "detail"], left=3)
    scenarios = run["scenarios"]
    if "single-stream" in scenarios:
        s = scenarios["single-stream"]
        detail = f"p50 {ms(s['p50_ms'])} ms, {num(s['requests_per_s'])} req/s"
        table.rows.append(["single-stream", f"p90 {ms(s['p90_ms'])} ms", detail])
    if "offline" in scenarios:
        s = scenarios["offline"]
        table.rows.append(["offline", f"{num(s['images_per_s'])} images/s", f"at concurrency {s['concurrency']}"])
    if "server" in scenarios:
        s = scenarios["server"]
        result = f"{num(s['max_rate'])} req/s" if s["max_rate"] else "no rate met the bound"
        table.rows.append(["server", result, f"Poisson, p99 <= {s['latency_bound_ms']:g} ms (p99 {ms(s['p99_ms'])} ms)"])
    return table


def load(point: dict[str, Any]) -> str:
    return f"c={point['concurrency']}" if point["mode"] == "closed" else f"{point['rate']:g}/s"


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
