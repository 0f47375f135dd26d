"""The bench report: one JSON document with this schema (tables.py shows it, compare.py compares two).

    {"schema": "edgecnn-bench/1", "created", "commit", "command", "settings", "device",
     "inprocess": [{model, variant, provider, batch_size, threads, callers, layout, stable, window_images_per_s,
                    images_per_s, latency: {count, mean_ms, p50_ms, p90_ms, p95_ms, p99_ms, max_ms, items_per_s}}],
     "served": [{label, address, model, platform, batch_size, compute_floor,
                 points: [{served: POINT, echo: POINT | null, ratios: {...}}],
                 scenarios: {"single-stream", "offline", "server"}}]}

    POINT = {target, mode, concurrency, rate, batch_size, duration_s, requests_per_s, images_per_s,
             latency, errors: {STATUS: count}, server: {queue_ms, compute_ms, batch_size},
             client: {processes, cpu_per_process_max, host_cpu_busy, send_lag_p50_ms, send_lag_p99_ms, saturated}}
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any, Iterable

SCHEMA = "edgecnn-bench/1"
TOP_LEVEL_KEYS = ("schema", "created", "command", "settings", "device", "inprocess", "served")
DEVICE_KEYS = ("cpu_model", "logical_cores", "memory_gib", "os", "onnxruntime", "onnxruntime_providers", "gpus")
INPROCESS_KEYS = ("model", "variant", "provider", "batch_size", "stable", "images_per_s", "latency")
LATENCY_KEYS = ("count", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")
SERVED_KEYS = ("label", "address", "model", "batch_size", "compute_floor", "points", "scenarios")
POINT_KEYS = ("target", "mode", "concurrency", "rate", "requests_per_s", "images_per_s", "latency", "errors", "server",
              "client")


def build_report(command: str, settings: dict[str, Any], device: dict[str, Any],
                 inprocess: Iterable[Any], served: Iterable[Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": source_commit(),
        "command": command,
        "settings": settings,
        "device": device,
        "inprocess": [r.as_dict() for r in inprocess],
        "served": [r.as_dict() for r in served],
    }


def source_commit() -> str:
    """The commit of the edgecnn checkout that measured ("+ uncommitted changes" when dirty), or "" when
    edgecnn is not run from a git checkout (an installed wheel)."""
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return ""
    return f"{head} + uncommitted changes" if dirty else head


def schema_problems(report: dict[str, Any]) -> list[str]:
    """What is missing from a report; empty when it has the documented shape."""
    problems = _missing(report, TOP_LEVEL_KEYS, "report")
    if report.get("schema") != SCHEMA:
        problems.append(f"schema is {report.get('schema')!r}, expected {SCHEMA!r}")
    problems += _missing(report.get("device", {}), DEVICE_KEYS, "device")
    for i, row in enumerate(report.get("inprocess", [])):
        problems += _missing(row, INPROCESS_KEYS, f"inprocess[{i}]")
        problems += _missing(row.get("latency", {}), LATENCY_KEYS, f"inprocess[{i}].latency")
    for i, run in enumerate(report.get("served", [])):
        problems += _missing(run, SERVED_KEYS, f"served[{i}]")
        for j, point in enumerate(run.get("points", [])):
            for side in ("served", "echo"):
                if point.get(side) is not None:
                    problems += _missing(point[side], POINT_KEYS, f"served[{i}].points[{j}].{side}")
            if "ratios" not in point:
                problems.append(f"served[{i}].points[{j}] has no ratios")
    return problems


def _missing(mapping: dict[str, Any], keys: Iterable[str], where: str) -> list[str]:
    return [f"{where} has no {key!r}" for key in keys if key not in mapping]


def write_report(report: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.json"
    path.write_text(json.dumps(report, indent=2, allow_nan=False, default=_json_default) + "\n")
    return path


def load_report(path: str | Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a bench.json file (not JSON: {exc})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{path} is not an edgecnn bench report (not a JSON object)")
    problems = schema_problems(report)
    if problems:
        raise ValueError(f"{path} is not an edgecnn bench report: {'; '.join(problems[:5])}")
    return report


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
