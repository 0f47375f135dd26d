"""The CPU's int8 path: from /proc/cpuinfo flags, on x86 and ARM, with a fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgecnn.export.cpu import OTHER, cpu_flags, cpu_path, describe_cpu_path


@pytest.mark.parametrize(
    "flags, machine, path",
    [
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64", "avx512_vnni"),
        ({"avx2", "avx_vnni"}, "x86_64", "avx_vnni"),
        ({"avx2", "avx512f", "avx512bw"}, "x86_64", "avx512"),
        ({"sse4_2", "avx2"}, "x86_64", "avx2"),
        ({"sse4_2"}, "x86_64", OTHER),
        (set(), "AMD64", OTHER),
        ({"fp", "asimd", "asimddp"}, "aarch64", "neon/dotprod"),
        ({"fp", "asimd", "asimddp", "i8mm"}, "aarch64", "neon/i8mm"),
        ({"fp", "asimd"}, "aarch64", "neon"),
        (set(), "arm64", "neon"),  # macOS: no /proc/cpuinfo, but every AArch64 CPU has NEON
    ],
)
def test_cpu_path_from_flags(flags, machine, path):
    assert cpu_path(flags, machine) == path
    assert describe_cpu_path(path)


def test_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path: Path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_this_machine_has_a_path():
    assert cpu_path() in {"avx512_vnni", "avx_vnni", "avx512", "avx2", "neon/i8mm", "neon/dotprod", "neon", OTHER}
