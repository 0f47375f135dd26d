"""What the numbers were measured on: CPU, cores, memory, OS, onnxruntime and GPU, for the JSON report."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgecnn.export.cpu import cpu_model
from edgecnn.serve.settings import cgroup_cpu_quota, usable_cores


def describe_device() -> dict[str, Any]:
    import grpc
    import numpy as np
    import onnxruntime as ort

    from edgecnn.export.cpu import cpu_path

    return {
        "cpu_model": cpu_model(),
        "cpu_path": cpu_path(),  # the int8 kernels' path: avx512_vnni, avx2, neon/dotprod, ...
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "cgroup_cpu_limit": cgroup_cpu_quota(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
        "gpus": _nvidia_gpus(),
    }


def _memory_gib() -> float | None:
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _nvidia_gpus() -> list[dict[str, str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    fields = ["name", "driver_version", "memory.total"]
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]


def host_cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; two samples give the machine's busy fraction."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    values = [float(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_fraction(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
