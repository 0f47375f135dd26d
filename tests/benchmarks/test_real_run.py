"""Short real runs on loopback: in-process onnxruntime, and `edgecnn serve` (a subprocess) with the
echo server as its floor, through the same code path as `edgecnn bench`. No timing thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from edgecnn.benchmarks.bench import run_bench
from edgecnn.benchmarks.compare import comparison_rows
from edgecnn.benchmarks.inprocess import run_inprocess
from edgecnn.benchmarks.payload import build_requests, fetch_model_spec, infer_once
from edgecnn.benchmarks.report import SCHEMA, load_report, schema_problems
from edgecnn.benchmarks.servers import start_echo_server, start_edgecnn_server
from edgecnn.benchmarks.settings import BenchSettings
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.cli import app
from typer.testing import CliRunner

from tests.helpers.benching import QUICK

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def bench_run(tiny_model, tmp_path_factory):
    """One short `edgecnn bench MODEL --start-server` run, shared by the tests below."""
    out = tmp_path_factory.mktemp("bench")
    settings = BenchSettings(start_server=True, batch_sizes=(1, 4), batch_size=2, concurrency=(1, 3), rates=(100.0,),
                             clients=2, side_by_side=2, out=str(out), **QUICK)
    return run_bench([tiny_model], settings, "edgecnn bench tiny.onnx --start-server", progress=lambda _: None)


def test_the_report_has_the_documented_schema_and_is_plain_json(bench_run):
    report = bench_run.report
    assert schema_problems(report) == []
    assert report["schema"] == SCHEMA
    assert json.loads(bench_run.json_path.read_text()) == json.loads(json.dumps(report))
    assert load_report(bench_run.json_path)["command"] == "edgecnn bench tiny.onnx --start-server"
    assert report["device"]["onnxruntime_providers"] and report["device"]["logical_cores"] >= 1


def test_broken_reports_are_named(bench_run):
    report = json.loads(bench_run.json_path.read_text())
    del report["device"]["cpu_model"]
    del report["served"][0]["points"][0]["served"]["latency"]
    problems = schema_problems(report)
    assert any("cpu_model" in p for p in problems) and any("latency" in p for p in problems)


def test_in_process_figures_cover_every_batch_size_in_both_layouts(bench_run):
    rows = bench_run.report["inprocess"]
    # 2: the served request's batch, its compute floor; 2 callers: the server's layout, side by side
    assert sorted((r["callers"], r["batch_size"]) for r in rows) == [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (2, 4)]
    assert {r["layout"] for r in rows if r["callers"] == 2} == {"2 callers side by side, 1 thread each"}
    for r in rows:
        lat = r["latency"]
        assert r["variant"] == "fp32" and r["provider"] == "CPUExecutionProvider"
        assert lat["count"] > 0 and lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert r["images_per_s"] > 0 and isinstance(r["stable"], bool) and len(r["window_images_per_s"]) >= 3


def test_the_compute_floor_is_the_fastest_layout_with_the_single_caller_beside_it(bench_run):
    rows = bench_run.report["inprocess"]
    (run,) = bench_run.report["served"]
    floor = run["compute_floor"]
    fastest = max(rows, key=lambda r: r["images_per_s"])
    assert floor["best_images_per_s"] == fastest["images_per_s"] and floor["best_layout"] == fastest["layout"]
    assert floor["single_caller_images_per_s"] == max(r["images_per_s"] for r in rows if r["callers"] == 1)
    assert floor["p50_ms_at_request_batch"] == min(r["latency"]["p50_ms"] for r in rows if r["batch_size"] == 2)
    assert fastest["layout"] in (bench_run.json_path.parent / "bench.md").read_text()


def test_the_report_names_the_commit_it_measured(bench_run):
    commit = bench_run.report["commit"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert commit.startswith(head) if head else commit == ""


def test_served_points_have_floors_ratios_and_the_servers_own_times(bench_run):
    (run,) = bench_run.report["served"]
    assert run["model"] == "tiny" and run["label"] == "fp32" and run["batch_size"] == 2
    loads = [(p["served"]["mode"], p["served"]["concurrency"], p["served"]["rate"]) for p in run["points"]]
    assert loads == [("closed", 1, None), ("closed", 3, None), ("open", None, 100.0)]
    for point in run["points"]:
        served, echo = point["served"], point["echo"]
        assert served["errors"] == {} and served["requests_per_s"] > 0
        assert served["images_per_s"] == pytest.approx(2 * served["requests_per_s"])
        assert served["client"]["processes"] == min(2, served["concurrency"] or 2)  # c=1 needs one process
        # edgecnn serve reports queue and compute time and the batch it ran each request in.
        assert served["server"]["compute_ms"] > 0 and served["server"]["batch_size"] >= 2
        assert echo["target"] == "echo" and echo["requests_per_s"] > 0 and echo["server"] == {}
        assert all(point["ratios"][k] > 0 for k in point["ratios"])
    assert run["points"][2]["served"]["client"]["send_lag_p99_ms"] is not None


def test_scenarios(bench_run):
    (run,) = bench_run.report["served"]
    scenarios = run["scenarios"]
    closed = {p["served"]["concurrency"]: p["served"] for p in run["points"] if p["served"]["mode"] == "closed"}
    # single-stream and offline reuse the sweep's points: c=1, and the closed point with the most images/s
    assert scenarios["single-stream"]["concurrency"] == 1
    assert scenarios["single-stream"]["p90_ms"] == closed[1]["latency"]["p90_ms"] > 0
    offline = max(closed.values(), key=lambda s: s["images_per_s"])
    assert scenarios["offline"]["concurrency"] == offline["concurrency"]
    assert scenarios["offline"]["images_per_s"] == offline["images_per_s"]
    # server: bisect the Poisson rate below the offline ceiling; a step passes within 10 ms p99 without errors
    server = scenarios["server"]
    steps = server["steps"]
    assert len(steps) == 2 and server["latency_bound_ms"] == 10.0
    ceiling = offline["requests_per_s"]
    assert steps[0]["rate"] == pytest.approx(ceiling / 2)
    assert steps[1]["rate"] == pytest.approx(ceiling * (3 / 4 if steps[0]["passed"] else 1 / 4))
    for step in steps:
        assert step["passed"] == (step["p99_ms"] is not None and step["p99_ms"] <= 10.0 and not step["errors"]), step
    passed = [step for step in steps if step["passed"]]
    best = max(passed, key=lambda step: step["rate"]) if passed else None
    assert server["max_rate"] == (best["rate"] if best else None)
    assert server["p99_ms"] == (best["p99_ms"] if best else None)


def test_plots_and_markdown_are_written(bench_run):
    names = sorted(p.name for p in bench_run.plots)
    assert names == ["inprocess.png", "latency_histogram_fp32.png", "latency_vs_throughput_fp32.png"]
    assert all(p.stat().st_size > 1000 for p in bench_run.plots)
    markdown = (bench_run.json_path.parent / "bench.md").read_text()
    assert "edgecnn bench tiny.onnx --start-server" in markdown and "| c=3 |" in markdown
    assert all(f"]({name})" in markdown for name in names)


def _throughput_doubled(report: dict) -> dict:
    """The same run as if measured on a machine twice as fast in-process and over the wire."""
    faster = json.loads(json.dumps(report))
    for row in faster["inprocess"]:
        row["images_per_s"] *= 2
    for run in faster["served"]:
        for point in run["points"]:
            point["served"]["requests_per_s"] *= 2
    return faster


def test_compare_prints_ratios_between_two_runs(bench_run, tmp_path):
    report = bench_run.report
    faster = _throughput_doubled(report)
    rows = comparison_rows(report, faster)
    # one entry per batch size in-process, per served load, and per scenario, each row matched with itself
    assert {what for what, _, _, _ in rows} == {
        "fp32 in-process CPU batch 1", "fp32 in-process CPU batch 2", "fp32 in-process CPU batch 4",
        "fp32 served batch 2 c=1", "fp32 served batch 2 c=3", "fp32 served batch 2 100/s",
        "fp32 single-stream", "fp32 offline", "fp32 server"}
    doubled = [(what, metric) for what, metric, a, b in rows if b is not None and a is not None and b == 2 * a]
    assert sorted(doubled) == sorted((what, metric) for what, metric, _, _ in rows
                                     if metric in ("images/s", "req/s") and ("in-process" in what or "served" in what))
    assert all(a == b for what, metric, a, b in rows if (what, metric) not in doubled)
    (tmp_path / "faster.json").write_text(json.dumps(faster))
    result = CliRunner().invoke(app, ["bench", "--compare", str(bench_run.json_path), str(tmp_path / "faster.json")],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    batch_4 = next(line for line in lines if "in-process CPU batch 4" in line and "images/s" in line)
    p50_c3 = next(line for line in lines if "served batch 2 c=3" in line and "p50 ms" in line)
    assert "2.00x" in batch_4 and "1.00x" in p50_c3, result.output


def test_compare_matches_two_variants_on_the_load_alone(bench_run):
    other = json.loads(json.dumps(bench_run.report))
    for row in other["inprocess"]:
        row["variant"] = "int8"
    for run in other["served"]:
        run["label"] = "int8"
    # int8 on a faster machine against fp32: each figure matched with the same load's, as for one variant
    rows = comparison_rows(bench_run.report, _throughput_doubled(other))
    same_variant = comparison_rows(bench_run.report, _throughput_doubled(bench_run.report))
    assert rows == [(what.removeprefix("fp32 "), metric, a, b) for what, metric, a, b in same_variant]
    assert not any(what.startswith(("fp32", "int8")) for what, _, _, _ in rows)


def test_errors_are_counted_by_status_code(tiny_model, loadgen):
    with start_edgecnn_server(tiny_model, "--max-batch-size 8") as server:
        spec, _ = fetch_model_spec(server.address, "tiny")
        good = build_requests(spec, 1, 2)
        unknown_model = pb.ModelInferRequest.FromString(good[0])
        unknown_model.model_name = "no-such-model"
        wrong_shape = pb.ModelInferRequest.FromString(good[0])
        wrong_shape.raw_input_contents[0] = b"\x00" * 3
        requests = [good[0], unknown_model.SerializeToString(), wrong_shape.SerializeToString()]
        point = loadgen.closed_loop("served", server.address, requests, 1, 3, warmup_s=0.0, duration_s=0.5)
    assert set(point.errors) == {"NOT_FOUND", "INVALID_ARGUMENT"}
    assert point.latency is not None and point.latency.count > 0  # the good requests still succeed


def test_the_echo_server_answers_with_the_canned_response_or_the_inputs(tiny_model, loadgen):
    with start_edgecnn_server(tiny_model) as server:
        spec, metadata = fetch_model_spec(server.address, "tiny")
        request = build_requests(spec, 3, 1)[0]
        real = infer_once(server.address, request)
    with start_echo_server(real, metadata) as echo:
        echoed = pb.ModelInferResponse.FromString(infer_once(echo.address, request))
        assert echoed.raw_output_contents == pb.ModelInferResponse.FromString(real).raw_output_contents
        assert dict(echoed.parameters) == {}  # the echo does not claim the real server's queue/compute times
        assert fetch_model_spec(echo.address, "tiny")[1] == metadata
    with start_echo_server() as echo:
        response = pb.ModelInferResponse.FromString(infer_once(echo.address, request))
        assert response.raw_output_contents[0] == pb.ModelInferRequest.FromString(request).raw_input_contents[0]
        point = loadgen.open_loop("echo", echo.address, [request], 3, 200.0, warmup_s=0.1, duration_s=0.5)
    assert point.errors == {} and point.latency.count > 20 and point.images_per_s == pytest.approx(3 * point.requests_per_s)


def test_in_process_runs_without_a_server(tiny_model):
    (result,) = run_inprocess([tiny_model], BenchSettings(side_by_side=1, **QUICK), batch_sizes=(2,))
    assert result.batch_size == 2 and result.latency.count == result.latencies_s.size


def test_unavailable_provider_is_an_error_not_a_fallback(tiny_model):
    with pytest.raises(ValueError, match="not available"):
        run_inprocess([tiny_model], BenchSettings(providers=("NoSuchExecutionProvider",), **QUICK))


def test_benchmarks_never_import_torch():
    modules = ["bench", "cli", "compare", "decompose", "demo", "device", "echo", "inprocess", "loadgen", "payload", "plots",
               "report", "scenarios", "servers", "serve_ratios", "settings", "stats", "tables", "timing"]
    code = "; ".join(f"import edgecnn.benchmarks.{m}" for m in modules) + "; import sys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
