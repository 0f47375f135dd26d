"""`edgecnn bench --compare A.json B.json`: the ratios B/A of every figure two runs both measured
(two devices, or two variants on one device)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from edgecnn.benchmarks.report import load_report
from edgecnn.benchmarks.stats import ratio
from edgecnn.benchmarks.tables import TextTable, device_line, load, ms, num, times


def comparison_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, float | None, float | None]]:
    """(what, metric, value in A, value in B) for every figure both runs measured.

    Rows match on the model variant and the load (the same variants on two devices); when the two runs
    share no variant (fp32 in A, int8 in B) they match on the load alone.
    """
    rows = []
    for keyed in (_inprocess_figures, _served_figures):
        figures_a, figures_b = keyed(a), keyed(b)
        if not figures_a.keys() & figures_b.keys():
            figures_a, figures_b = _without_label(figures_a), _without_label(figures_b)
        for key in figures_a:
            if key in figures_b:
                for metric, value in figures_a[key].items():
                    rows.append((" ".join(str(k) for k in key if k != ""), metric, value, figures_b[key].get(metric)))
    return rows


def _inprocess_figures(report: dict[str, Any]) -> dict[tuple, dict[str, float | None]]:
    return {
        (r["variant"], "in-process", r["provider"].replace("ExecutionProvider", ""), f"batch {r['batch_size']}"): {
            "images/s": r["images_per_s"], "p50 ms": r["latency"]["p50_ms"], "p99 ms": r["latency"]["p99_ms"]}
        for r in report["inprocess"]
    }


def _served_figures(report: dict[str, Any]) -> dict[tuple, dict[str, float | None]]:
    figures = {}
    for run in report["served"]:
        for point in run["points"]:
            s = point["served"]
            lat = s["latency"] or {}
            figures[(run["label"], "served", f"batch {s['batch_size']}", load(s))] = {
                "req/s": s["requests_per_s"], "p50 ms": lat.get("p50_ms"), "p99 ms": lat.get("p99_ms")}
        scenarios = run["scenarios"]
        if "single-stream" in scenarios:
            figures[(run["label"], "single-stream", "", "")] = {"p90 ms": scenarios["single-stream"]["p90_ms"]}
        if "offline" in scenarios:
            figures[(run["label"], "offline", "", "")] = {"images/s": scenarios["offline"]["images_per_s"]}
        if "server" in scenarios:
            figures[(run["label"], "server", "", "")] = {"max req/s": scenarios["server"]["max_rate"]}
    return figures


def _without_label(figures: dict[tuple, Any]) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for key, value in figures.items():
        out.setdefault(("", *key[1:]), value)
    return out


def print_comparison(path_a: str | Path, path_b: str | Path, console: Console | None = None) -> None:
    console = console or Console()
    a, b = load_report(path_a), load_report(path_b)
    table = TextTable(f"B / A   (A = {path_a}, B = {path_b})", ["what", "metric", "A", "B", "B/A"], left=2)
    for what, metric, value_a, value_b in comparison_rows(a, b):
        shown = num if "/s" in metric else ms
        table.rows.append([what, metric, shown(value_a), shown(value_b), times(ratio(value_b, value_a))])
    console.print(f"A: {device_line(a['device'])} ({a['created']})", highlight=False)
    console.print(f"B: {device_line(b['device'])} ({b['created']})", highlight=False)
    console.print(table.rich())
