"""`edgecnn bench` for a reader: plots whose labels read as plain numbers and never overlap, one plot that
compares every variant, a printed estimate of how long the run will take, and `--server` without `--model`
picking the only served model as `predict` does."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from edgecnn.benchmarks import plots
from edgecnn.benchmarks.bench import (
    LOADGEN_START_S,
    REPORT_S,
    RUN_SETUP_S,
    SERVER_START_S,
    duration_text,
    estimate_run,
    inprocess_configs,
    run_bench,
    served_points,
)
from edgecnn.benchmarks.inprocess import InProcessResult
from edgecnn.benchmarks.loadgen import JobResult, merge
from edgecnn.benchmarks.scenarios import ComparedPoint, ServedRun
from edgecnn.benchmarks.servers import start_edgecnn_server
from edgecnn.benchmarks.settings import BenchSettings
from edgecnn.benchmarks.stats import summarize
from edgecnn.serve.cli import app
from typer.testing import CliRunner

from tests.helpers.benching import QUICK
from tests.helpers.models import write_tiny_model

needs_plots = pytest.mark.skipif(not plots.plots_available(), reason="the plots extra (matplotlib) is not installed")


# --- plots ------------------------------------------------------------------------------------------------


def load_point(target: str, concurrency: int, p50_ms: float, seconds: float = 1.0, seed: int = 0):
    """A closed-loop point as the load generator merges it: log-normal latencies around ``p50_ms`` with a
    tail to 8x, ``concurrency`` / p50 requests a second (the shape of real runs, whose histograms spanned a
    little over a decade and had overlapping labels)."""
    rng = np.random.default_rng(seed)
    latencies = rng.lognormal(np.log(p50_ms / 1e3), 0.15, int(concurrency / (p50_ms / 1e3) * seconds))
    latencies[:20] *= np.linspace(2, 8, 20)
    job = JobResult(latencies_s=latencies, errors=Counter(), send_lag_s=np.empty(0), cpu_s=0.5, wall_s=seconds,
                    server_sums={}, server_counts={})
    return merge(target, "closed", [job], 1, seconds, concurrency, None, 0.5)


def served_run(label: str, slowdown: float) -> ServedRun:
    run = ServedRun(label, "127.0.0.1:8001", "tiny", "onnxruntime_onnx", 1)
    for i, concurrency in enumerate((1, 2, 4, 8, 16, 32)):
        served = load_point("served", concurrency, slowdown * 0.9 * concurrency ** 0.75, seed=i)
        echo = load_point("echo", concurrency, 0.55 * concurrency ** 0.75, seed=10 + i)
        run.points.append(ComparedPoint(served, echo, {}))
    run.scenarios = {"server": {"latency_bound_ms": 10.0}}
    return run


def inprocess_results(variant: str, speed: float) -> list[InProcessResult]:
    results = []
    for callers, batch_size in itertools.product((1, 2), (1, 8, 64)):
        latencies = np.full(50, batch_size / (speed * callers * np.sqrt(batch_size)))
        results.append(InProcessResult(f"/m/model.{variant}.onnx", variant, "CPUExecutionProvider", batch_size,
                                       0 if callers == 1 else 1, True, [1.0], speed * callers * np.sqrt(batch_size),
                                       summarize(latencies, batch_size), callers=callers))
    return results


@pytest.fixture(scope="module")
def two_variants():
    return (inprocess_results("fp32", 11_000) + inprocess_results("int8", 20_000),
            [served_run("fp32", 1.0), served_run("int8", 0.8)])


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots draw, rendered on the Agg canvas and kept open for inspection."""
    figures = {}

    def keep(figure, path):
        figure.tight_layout()
        figure.canvas.draw()
        figures[Path(path).name] = figure
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    yield figures
    plt = plots._pyplot()
    for figure in figures.values():
        plt.close(figure)


def tick_labels(axis) -> list:
    """The tick labels drawn: those of major and minor ticks inside the axis' view."""
    low, high = sorted(axis.get_view_interval())
    pairs = [*zip(axis.get_majorticklocs(), axis.get_majorticklabels()),
             *zip(axis.get_minorticklocs(), axis.get_minorticklabels())]
    return [label for loc, label in pairs if low <= loc <= high and label.get_text()]


def labels_of(figure) -> list:
    """Every text a reader sees: tick labels (major and minor), axis labels, titles, annotations, legends."""
    texts = []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            texts += tick_labels(axis) + [axis.label]
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        legend = ax.get_legend()
        texts += legend.get_texts() if legend else []
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def overlapping(figure) -> list[tuple[str, str]]:
    renderer = figure.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels_of(figure)]
    pairs = []
    for (text_a, a), (text_b, b) in itertools.combinations(boxes, 2):
        width, height = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
        if width > 0 and height > 0:
            pairs.append((text_a, text_b))
    return pairs


def tick_texts(figure) -> list[str]:
    return [t.get_text() for ax in figure.axes for axis in (ax.xaxis, ax.yaxis) for t in tick_labels(axis)]


@needs_plots
def test_log_ticks_are_plain_1_2_5_numbers():
    assert plots.log_ticks(0.4, 7) == [0.5, 1, 2, 5]
    assert plots.log_ticks(0.45, 22) == [0.5, 1, 2, 5, 10, 20]
    assert plots.log_ticks(100, 90_000) == [100, 1_000, 10_000]  # 1-2-5 would be 9 labels: decades only
    assert plots.log_ticks(0.8, 1.6) == [0.8, 1, 1.5]  # less than a decade: finer steps
    assert len(plots.log_ticks(0.97, 1.01)) >= 2
    assert [plots.tick_label(v) for v in (0.5, 2, 20, 500, 1_000, 2_500, 10_000, 2e6)] == \
        ["0.5", "2", "20", "500", "1k", "2.5k", "10k", "2M"]


@needs_plots
def test_every_plot_has_plain_number_ticks_and_no_overlapping_labels(two_variants, drawn, tmp_path):
    inprocess, served = two_variants
    plots.write_plots(tmp_path, inprocess, served)
    assert sorted(drawn) == ["comparison.png", "inprocess.png", "latency_histogram_fp32.png",
                             "latency_histogram_int8.png", "latency_vs_throughput_fp32.png",
                             "latency_vs_throughput_int8.png"]
    for name, figure in drawn.items():
        ticks = tick_texts(figure)
        assert ticks and not [t for t in ticks if "$" in t or "^" in t or "e+" in t], (name, ticks)
        assert overlapping(figure) == [], name
    histogram = drawn["latency_histogram_fp32.png"]
    assert [t.get_text() for t in tick_labels(histogram.axes[0].xaxis)] == ["0.5", "1", "2", "5", "10"]
    assert [t.get_text() for t in tick_labels(drawn["inprocess.png"].axes[0].xaxis)] == ["1", "8", "64"]


@needs_plots
def test_the_comparison_plot_shows_every_variant_served_and_in_process(two_variants, drawn, tmp_path):
    inprocess, served = two_variants
    plots.write_plots(tmp_path, inprocess, served)
    served_axes, inprocess_axes = drawn["comparison.png"].axes
    assert [t.get_text() for t in served_axes.get_legend().get_texts()] == \
        ["fp32 p50", "fp32 p99", "int8 p50", "int8 p99", "echo p50 (transport floor)"]
    assert [t.get_text() for t in inprocess_axes.get_legend().get_texts()] == ["fp32", "int8"]
    int8_line = inprocess_axes.get_lines()[1]
    best_int8 = {r.batch_size: r.images_per_s for r in inprocess if r.variant == "int8" and r.callers == 2}
    assert list(int8_line.get_xdata()) == [1, 8, 64] and list(int8_line.get_ydata()) == list(best_int8.values())


@needs_plots
def test_one_variant_gets_no_comparison_plot(two_variants, drawn, tmp_path):
    inprocess, served = two_variants
    plots.write_plots(tmp_path, [r for r in inprocess if r.variant == "fp32"], served[:1])
    assert "comparison.png" not in drawn and "inprocess.png" in drawn


@needs_plots
def test_the_pngs_are_written(two_variants, tmp_path):
    inprocess, served = two_variants
    paths = plots.write_plots(tmp_path, inprocess, served)
    assert {p.name for p in paths} == {p.name for p in tmp_path.glob("*.png")} and len(paths) == 6
    assert all(p.stat().st_size > 1000 for p in paths)


# --- how long a run will take -------------------------------------------------------------------------------


def test_the_default_sweep_is_estimated_from_its_settings():
    settings = BenchSettings(start_server=True, side_by_side=2)
    configs = inprocess_configs([Path("model.onnx"), Path("model.int8.onnx")], settings, settings.batch_sizes)
    assert configs == 12  # 2 models x 3 batch sizes x 2 layouts
    estimate = estimate_run(settings, configs, served_runs=2, started_servers=2)
    # 0.5 s warm-up + 8 s + the window under way; 6 concurrencies on the model and the echo; 6 bisection steps
    point = 0.05 + 0.5 + 3.0
    setup = REPORT_S + 2 * RUN_SETUP_S + 2 * SERVER_START_S + LOADGEN_START_S
    assert estimate.seconds == pytest.approx(12 * 9.0 + 2 * (12 + 6) * point + setup)
    assert estimate.line() == (
        "bench will take up to about 4 min 20 s: 12 in-process configurations x <= 9 s; 24 served points x 3.55 s "
        "(each load on the model, then on the echo server); 12 server-scenario steps x 3.55 s; ~21 s starting "
        "2 servers, the load generator, the report and plots")


def test_the_estimate_counts_what_the_settings_add_and_remove():
    windows = BenchSettings(window_s=4.0, max_seconds=8.0, warmup_s=1.0)  # three windows outlast --max-seconds
    assert estimate_run(windows, 1, 0).seconds == pytest.approx(1.0 + 12.0 + REPORT_S)
    # no sweep: the single-stream and offline scenarios measure a point each, on the model and the echo
    assert served_points(BenchSettings(concurrency=(), scenarios=("single-stream", "offline"))) == 2
    assert served_points(BenchSettings(concurrency=(2, 4), rates=(50.0,), scenarios=("single-stream",))) == 4
    assert served_points(BenchSettings(concurrency=(1,), scenarios=())) == 1
    bare = BenchSettings(server="h:1", concurrency=(1,), scenarios=("server",), search_steps=3, floors=False,
                         point_warmup_s=0.45, duration_s=1.5)
    assert estimate_run(bare, 0, 1).parts == ("1 served point x 2 s", "3 server-scenario steps x 2 s",
                                              "~10 s the load generator, the report and plots")
    assert [duration_text(s) for s in (0.2, 44.1, 60, 159, 160.5, 3725)] == \
        ["1 s", "45 s", "1 min", "2 min 40 s", "2 min 45 s", "1 h 2 min"]


def test_bench_prints_the_estimate_before_it_starts(tiny_model, tmp_path):
    result = CliRunner().invoke(app, ["bench", str(tiny_model), "--batch-sizes", "1,4", "--side-by-side", "1",
                                      "--warmup", "0.05", "--window", "0.05", "--max-seconds", "0.2",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()[:2]
    settings = BenchSettings(batch_sizes=(1, 4), side_by_side=1, warmup_s=0.05, window_s=0.05, max_seconds=0.2)
    assert first == estimate_run(settings, 2, 0).line() == \
        "bench will take up to about 7 s: 2 in-process configurations x <= 0.3 s; ~6 s the report and plots"
    assert second.startswith(f"in-process: {tiny_model}")


@pytest.mark.slow
def test_the_estimate_counts_every_point_a_served_run_measures(tmp_path):
    """fp32 and int8 served and timed in-process: the run measures exactly the points and steps the estimate
    counts, and its plots compare the two variants."""
    models = [write_tiny_model(tmp_path / f"model.{v}.onnx", name="tiny", variant=v, seed=i)
              for i, v in enumerate(("fp32", "int8"))]
    settings = BenchSettings(**{**QUICK, "search_steps": 1}, start_server=True, batch_sizes=(1,), side_by_side=1,
                             concurrency=(2,), scenarios=("single-stream", "server"), clients=1, out=str(tmp_path / "b"))
    lines = []
    outcome = run_bench(models, settings, "edgecnn bench", progress=lines.append)
    assert lines[0] == estimate_run(settings, 2, 2, started_servers=2).line()
    runs = outcome.report["served"]
    assert len(outcome.report["inprocess"]) == 2
    assert sum(2 * len(run["points"]) for run in runs) == 2 * 2 * served_points(settings)  # c=2, then c=1
    assert sum(len(run["scenarios"]["server"]["steps"]) for run in runs) == 2 * settings.search_steps
    assert "comparison.png" in {p.name for p in outcome.plots}


# --- --server without --model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_server_without_model_picks_the_only_served_model(tiny_model, tmp_path):
    settings = BenchSettings(concurrency=(1,), scenarios=(), clients=1, out=str(tmp_path), **QUICK)
    with start_edgecnn_server(tiny_model) as server:
        outcome = run_bench([], replace(settings, server=server.address), "edgecnn bench", progress=lambda _: None)
    (run,) = outcome.report["served"]
    assert run["model"] == "tiny" and run["label"] == "tiny" and run["points"][0]["served"]["errors"] == {}


@pytest.mark.slow
def test_bench_server_with_several_models_and_no_model_names_them(tmp_path):
    for name in ("beta", "alpha"):
        write_tiny_model(tmp_path / "repo" / name / "1" / "model.onnx", name=name)
    with start_edgecnn_server(tmp_path / "repo") as server:
        result = CliRunner().invoke(app, ["bench", "--server", server.address, "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: --server {server.address} serves 2 models (alpha, beta): choose one with --model NAME"]


def test_bench_server_without_model_that_cannot_be_reached_says_so(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--server", "127.0.0.1:1", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "error: --server 127.0.0.1:1: its models could not be listed (UNAVAILABLE" in result.output
    assert "name one with --model NAME" in result.output
