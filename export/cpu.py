"""The CPU's instruction-set path for int8: recorded when an int8 recipe is chosen, compared when it is served.

Which int8 recipe is fastest, and how much faster than float32 it is, depends on the kernels
onnxruntime can use: VNNI dot products (AVX-512 or AVX), AVX-512 or AVX2 pair sums without
VNNI, or ARM's NEON with or without the dot-product instructions. A recipe chosen on one path
may lose on another. Torch-free and onnx-free: serve/ reads it.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# (flag in /proc/cpuinfo, path), fastest first: the first flag the CPU has names its path.
X86_PATHS = (("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"), ("avx512bw", "avx512"), ("avx2", "avx2"))
ARM_PATHS = (("i8mm", "neon/i8mm"), ("asimddp", "neon/dotprod"), ("asimd", "neon"))
ARM_MACHINES = ("aarch64", "arm64")
OTHER = "other"

DESCRIPTIONS = {
    "avx512_vnni": "AVX-512 VNNI int8 dot products",
    "avx_vnni": "AVX VNNI int8 dot products",
    "avx512": "AVX-512 without VNNI: int8 convolutions gain at most about 2x over float32",
    "avx2": "AVX2 without VNNI: int8 convolutions gain at most about 2x over float32",
    "neon/i8mm": "ARM NEON with int8 matrix multiply (i8mm)",
    "neon/dotprod": "ARM NEON with int8 dot products",
    "neon": "ARM NEON without int8 dot products",
    OTHER: "no AVX2, VNNI or NEON flags seen",
}


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@functools.cache
def host_cpuinfo() -> str:
    """This machine's /proc/cpuinfo, read once per process (an export asks for its flags and model many
    times); empty where unreadable (macOS, Windows)."""
    return _read_text(CPUINFO)


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The first CPU's feature flags: ``flags`` on x86, ``Features`` on ARM; empty where unreadable.

    This machine's file (the default) is read once per process; another (a test's) every call."""
    text = host_cpuinfo() if cpuinfo == CPUINFO else _read_text(cpuinfo)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_path(flags: set[str] | None = None, machine: str | None = None) -> str:
    """This CPU's int8 path, a short stable name such as avx512_vnni, avx2 or neon/dotprod (see DESCRIPTIONS)."""
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    paths = ARM_PATHS if machine in ARM_MACHINES else X86_PATHS
    for flag, path in paths:
        if flag in flags:
            return path
    if machine in ARM_MACHINES:
        return "neon"  # every AArch64 CPU has NEON; without /proc/cpuinfo (macOS) the extensions are unknown
    return OTHER


def describe_cpu_path(path: str) -> str:
    return DESCRIPTIONS.get(path, path)


def cpu_model() -> str:
    """The CPU's model name (x86, Raspberry Pi and other ARM boards), for reports and int8 metadata."""
    for line in host_cpuinfo().splitlines():
        if line.startswith(("model name", "Model", "Hardware")):  # x86, Raspberry Pi, other ARM boards
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
