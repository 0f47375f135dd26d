"""int8 vs fp32 is judged round by round: one round slower than fp32 means "never slower" is not met,
whatever the median says. Synthetic timings: no clock involved."""

from __future__ import annotations

import json

import pytest
from edgecnn.export.evaluate import compare_rounds
from edgecnn.export.report import ExportReport, never_slower_verdict

from tests.helpers.exporting import MS, int8_speed, rounds_of


def test_one_slow_round_fails_never_slower_though_the_median_is_faster():
    judged = compare_rounds(1, rounds_of(10, 10, 10, 10, 10), rounds_of(5, 5, 11, 5, 5))
    assert judged.round_speedups[2] < 1.0
    assert judged.median_speedup == 2.0
    assert judged.worst_speedup == pytest.approx(10 / 11)
    assert judged.never_slower is False
    assert judged.int8.round_ms == pytest.approx([5, 5, 11, 5, 5])
    assert judged.int8.images_per_s == pytest.approx(1 / (5 * MS))


def test_rounds_are_paired_not_pooled():
    # int8 is faster than the fp32 of its own round every time, though not than fp32's fastest round
    judged = compare_rounds(64, rounds_of(10, 20, 10), rounds_of(9, 18, 9))
    assert judged.never_slower and judged.worst_speedup > 1.0
    assert judged.fp32.images_per_s == pytest.approx(64 / (10 * MS))


def test_verdict_names_the_failing_batch_and_its_worst_round():
    speed = int8_speed((5, 5, 11, 5, 5), (4, 4, 4, 4, 4))
    assert speed.never_slower is False
    verdict = never_slower_verdict(speed)
    assert "not met" in verdict and "1 of 5 rounds at batch 1 (worst 0.91x)" in verdict
    assert "batch 64" not in verdict
    assert never_slower_verdict(int8_speed((5, 5, 9, 5, 5), (4, 4, 4, 4, 4))).startswith("never slower than fp32: met")


def test_report_shows_median_worst_and_the_verdict_in_markdown_and_json(tmp_path):
    speed = int8_speed((5, 5, 11, 5, 5), (4, 4, 4, 4, 4))
    report = ExportReport(
        run_dir="run", out_dir=str(tmp_path), model_name="m", architecture="a", version="1", test_set="test",
        test_images=10, pytorch_accuracy=0.9, normalisation_fold="none",
        machine={"cpu": "Some CPU", "cpu_path": "avx2", "vnni": "AVX2", "onnxruntime": "1", "threads": 1},
        settings={"timing_rounds": 5, "latency_batch": 1, "throughput_batch": 64, "max_accuracy_drop": 0.005},
        chosen_recipe="u8s8", int8_speed=speed,
    )
    report.write(tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "| 1 | 10.000 | 5.000 | 100 | 200 | 2.00x | 0.91x | 1 of 5 |" in markdown
    assert "| 64 | 10.000 | 4.000 | 6,400 | 16,000 | 2.50x | 2.50x | 0 of 5 |" in markdown
    assert "**Never slower than fp32: not met" in markdown
    assert "`u8s8`" in markdown and "`avx2`" in markdown
    written = json.loads((tmp_path / "report.json").read_text())["int8_speed"]
    assert written["never_slower"] is False
    assert written["recipe"] == "u8s8" and written["cpu_path"] == "avx2"
    assert written["latency"]["worst_speedup"] < 1.0 < written["latency"]["median_speedup"]
    assert written["throughput"]["never_slower"] is True
    assert len(written["latency"]["round_speedups"]) == 5
