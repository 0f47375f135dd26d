"""Where a served 1-image request's time goes: the server taken apart, measured side by side.

    python -m edgecnn.benchmarks.decompose MODEL.onnx [--rounds 5] [--window 2] [--out FILE]

Four servers answer the same pre-serialised 1-image requests from the same client, in turn in each
round (A B C D, A B C D, ...), at concurrency 16 (requests/s) and at concurrency 1 (p50):

  echo          benchmarks/echo.py: a bytes-in, bytes-out gRPC server answering a canned response;
                the transport floor (gRPC, HTTP/2, the client)
  echo + hop    the same, answering after a round trip through a worker thread (echo.py --hop):
                what handing a request to a compute thread costs before any compute
  no compute    `edgecnn serve` (default flags) of a model with MODEL's input, outputs and labels
                whose graph only averages the pixels: every part of the server (checks, decoding,
                batching, answers, metrics) but onnxruntime's compute
  edgecnn       `edgecnn serve MODEL`, default flags

Ratios to the echo are taken within a round; the block gives the median and the worst round. It
needs the `onnx` package to write the no-compute model (the `export` extra, or dev).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median

from edgecnn.benchmarks.hardening import command_line, machine_line, print_block, side_by_side_parser
from edgecnn.benchmarks.loadgen import LoadGenerator
from edgecnn.benchmarks.payload import build_requests, fetch_model_spec, infer_once
from edgecnn.benchmarks.servers import exit_on_sigterm, start_echo_server, start_edgecnn_server
from edgecnn.benchmarks.stats import median_and_worst
from edgecnn.export.metadata import ModelMetadata, read_metadata, write_metadata

CONCURRENCY = 16
SERVERS = ("echo", "echo + hop", "no compute", "edgecnn")


@dataclass
class Series:
    """One server's figures, one per round."""

    requests_per_s: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    errors: int = 0


def write_no_compute_model(meta: ModelMetadata, path: Path) -> Path:
    """A model with ``meta``'s input, outputs and labels whose graph only averages the pixels of each
    channel and maps them to the classes: microseconds of compute for any image size."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    classes, channels = meta.num_classes, meta.channels
    weights = numpy_helper.from_array(np.full((channels, classes), 1e-3, np.float32), "weights")
    nodes = [
        helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels", "spatial"], ["means"], keepdims=0),
        helper.make_node("MatMul", ["means", "weights"], [meta.output_names[0]]),
        helper.make_node("Softmax", [meta.output_names[0]], [meta.output_names[1]], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "no_compute",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", meta.height, meta.width, channels])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", classes]) for name in meta.output_names],
        initializer=[weights, numpy_helper.from_array(np.array([1, 2], np.int64), "spatial")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    write_metadata(model, replace(meta, name=f"{meta.name}-no-compute", variant="fp32"))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def measure(args: argparse.Namespace) -> dict[str, Series]:
    meta = read_metadata(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="edgecnn-decompose-"))
    no_compute = write_no_compute_model(meta, tmp / "no_compute.onnx")
    with ExitStack() as stack:
        real = stack.enter_context(start_edgecnn_server(args.model, log=tmp / "edgecnn.log"))
        bare = stack.enter_context(start_edgecnn_server(no_compute, log=tmp / "no_compute.log"))
        spec, metadata_raw = fetch_model_spec(real.address, meta.name)
        requests = {"edgecnn": build_requests(spec, 1, 8)}
        bare_spec, _ = fetch_model_spec(bare.address, f"{meta.name}-no-compute")
        requests["no compute"] = build_requests(bare_spec, 1, 8)
        canned = infer_once(real.address, requests["edgecnn"][0])
        echo = stack.enter_context(start_echo_server(canned, metadata_raw))
        hop = stack.enter_context(start_echo_server(canned, metadata_raw, hop=True))
        requests["echo"] = requests["echo + hop"] = requests["edgecnn"]
        addresses = {"echo": echo.address, "echo + hop": hop.address, "no compute": bare.address,
                     "edgecnn": real.address}
        loadgen = stack.enter_context(LoadGenerator(args.clients))
        series = {name: Series() for name in SERVERS}
        for round_ in range(1, args.rounds + 1):
            for name in SERVERS:
                timing = dict(warmup_s=args.warmup, duration_s=args.window)
                busy = loadgen.closed_loop(name, addresses[name], requests[name], 1, CONCURRENCY, **timing)
                idle = loadgen.closed_loop(name, addresses[name], requests[name], 1, 1, **timing)
                series[name].requests_per_s.append(busy.requests_per_s)
                series[name].p50_ms.append(idle.p50_ms)
                series[name].errors += sum(busy.errors.values()) + sum(idle.errors.values())
            print(f"round {round_}/{args.rounds}: " + "; ".join(
                f"{name} {s.requests_per_s[-1]:.0f} req/s, p50 {s.p50_ms[-1]:.2f} ms" for name, s in series.items()
            ), file=sys.stderr, flush=True)
    return series


def markdown(args: argparse.Namespace, command: str, series: dict[str, Series]) -> str:
    echo = series["echo"]
    lines = [
        f"### Where a 1-image request's time goes: `{args.model}`, {machine_line()}",
        "",
        "```",
        command,
        "```",
        "",
        f"{args.rounds} rounds; in each, every server in turn: 1-image RPCs at concurrency {CONCURRENCY} and at "
        f"concurrency 1, {args.window:g} s windows after {args.warmup:g} s of unrecorded load; {args.clients} client "
        "process(es). Ratios to the echo are taken within a round: median (worst round).",
        "",
        f"| Server | req/s at c={CONCURRENCY} | vs echo | p50 ms at c=1 | vs echo | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in series.items():
        rps = median_and_worst([a / b for a, b in zip(s.requests_per_s, echo.requests_per_s)])
        p50 = median_and_worst([a / b for a, b in zip(s.p50_ms, echo.p50_ms)], lower_is_better=True)
        lines.append(f"| {name} | {median(s.requests_per_s):,.0f} | {rps[0]:.2f}x ({rps[1]:.2f}x) | "
                     f"{median(s.p50_ms):.2f} | {p50[0]:.2f}x ({p50[1]:.2f}x) | {s.errors} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = side_by_side_parser(__doc__)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    print_block(markdown(args, command_line("edgecnn.benchmarks.decompose", argv), measure(args)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
