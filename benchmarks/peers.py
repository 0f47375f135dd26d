"""Peers side by side: `edgecnn serve`, NVIDIA Triton and Seldon MLServer on the same model, the same
client and the same load, in one run on this machine, each held against the same floors.

    python -m edgecnn.benchmarks.peers MODEL.onnx --mlserver-python /tmp/peer-mlserver/bin/python \\
        --triton-python /tmp/peer-triton/bin/python [--rounds 3] [--window 2] [--out FILE]

The peers run in throwaway venvs (they are not edgecnn dependencies):

    python3 -m venv /tmp/peer-mlserver && /tmp/peer-mlserver/bin/pip install "mlserver==1.7.1" "uvloop<0.22" onnxruntime
    python3 -m venv /tmp/peer-triton && /tmp/peer-triton/bin/pip install nvidia-pytriton onnxruntime

(uvloop 0.22 and later break MLServer 1.7.1's inference workers: "There is no current event loop in thread
'MainThread'", SeldonIO/MLServer#2286.)

Servers, all on loopback, all for the same MODEL.onnx (uint8 NHWC ``images`` in; ``logits`` and
``probabilities`` float32 out):

- `edgecnn serve MODEL` with its default flags;
- Triton (the tritonserver binary nvidia-pytriton ships) with its Python backend: peer_setup/triton_launcher.py
  binds an ``@batch`` function running an onnxruntime session, max_batch_size 64, dynamic batcher with
  max_queue_delay_microseconds 100. Started with LD_LIBRARY_PATH set to its interpreter's LIBDIR (the Python
  backend stub links the system libpython otherwise: a pyenv Python fails with '_thread.RLock' ...
  '_recursion_count');
- MLServer with a custom runtime (peer_setup/mlserver_runtime.py: onnxruntime in load(), NumpyCodec in
  predict()), adaptive batching max_batch_size 64, max_batch_time 0.0005 s, parallel_workers 1 (its default).

Both peers' onnxruntime sessions are set up as `edgecnn serve` sets up its own (peer_setup/peer_session.py):
onnxruntime's default intra-op threads (one per physical core; --peer-threads to change), no spinning.

Each round measures every server in turn (A B C, A B C, ...) with the same load generator and the same
pre-serialised requests (benchmarks/loadgen.py, benchmarks/payload.py), then the floors:

  (i)   64-image RPCs at concurrency 4, images/s    vs  the best in-process onnxruntime layout at batch 64
  (ii)  1-image RPCs at concurrency 16, requests/s  vs  the echo server (same requests, same client)
  (iii) 1-image p50 at concurrency 1                vs  echo p50 + the best in-process batch-1 p50

Before the rounds, every server answers the same 64-image request: their probabilities must match
`edgecnn serve`'s, so the table compares servers doing the same work. Ratios are taken within a round;
the block gives their median and the worst round, and every error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Iterator

import grpc
import numpy as np

from edgecnn.benchmarks.echo import SERVICE
from edgecnn.benchmarks.hardening import command_line, machine_line, print_block, side_by_side_parser
from edgecnn.benchmarks.inprocess import ORT_DTYPES, ComputeFloor, best_of
from edgecnn.benchmarks.loadgen import LoadGenerator, LoadPoint
from edgecnn.benchmarks.payload import build_requests, fetch_model_spec, infer_once
from edgecnn.benchmarks.servers import exit_on_sigterm, free_port, start_echo_server, start_edgecnn_server
from edgecnn.benchmarks.stats import median_and_worst
from edgecnn.export.metadata import PROBABILITIES, read_metadata
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.codec import response_arrays
from edgecnn.serve.settings import usable_cores

PEER_SETUP = Path(__file__).parent / "peer_setup"
MLSERVER_INSTALL = ('python3 -m venv /tmp/peer-mlserver && '
                    '/tmp/peer-mlserver/bin/pip install "mlserver==1.7.1" "uvloop<0.22" onnxruntime')
TRITON_INSTALL = "python3 -m venv /tmp/peer-triton && /tmp/peer-triton/bin/pip install nvidia-pytriton onnxruntime"

MAX_BATCH_SIZE = 64  # both peers' batchers, as `edgecnn serve`'s default --max-batch-size
MLSERVER_MAX_BATCH_TIME_S = 0.0005
MLSERVER_PARALLEL_WORKERS = 1  # MLServer's default: inference in one worker process
TRITON_MAX_QUEUE_DELAY_US = 100

BIG_BATCH = 64
BIG_CONCURRENCY = 4
SMALL_CONCURRENCY = 16
PEER_READY_TIMEOUT_S = 180.0
PEER_STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 30

EDGECNN = "edgecnn serve"
TRITON = "Triton (Python backend + onnxruntime)"
MLSERVER = "MLServer (onnxruntime runtime)"


# --- the model's tensors, and the peers' configuration -------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: uint8, float32
    dims: tuple[int, ...]  # without the batch axis; -1 where variable


@dataclass(frozen=True)
class ModelTensors:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


# numpy dtype name -> Open Inference Protocol datatype, for MLServer's model-settings.json
OIP_DATATYPES = {"uint8": "UINT8", "int8": "INT8", "int32": "INT32", "int64": "INT64", "float16": "FP16",
                 "float32": "FP32", "float64": "FP64", "bool": "BOOL"}


def model_tensors(model: Path) -> ModelTensors:
    """The model's name (from its edgecnn metadata) and its inputs and outputs as onnxruntime reads them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return ModelTensors(read_metadata(model).name, tuple(map(_tensor_spec, session.get_inputs())),
                        tuple(map(_tensor_spec, session.get_outputs())))


def _tensor_spec(node) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) else -1 for d in node.shape[1:])
    return TensorSpec(node.name, ORT_DTYPES[node.type].__name__, dims)


def mlserver_model_settings(tensors: ModelTensors, model: Path, threads: int) -> dict:
    """MLServer's model-settings.json: the custom runtime, the model file, adaptive batching, the tensors."""
    def metadata(spec: TensorSpec) -> dict:
        return {"name": spec.name, "datatype": OIP_DATATYPES[spec.dtype], "shape": [-1, *spec.dims]}

    return {
        "name": tensors.name,
        "implementation": "mlserver_runtime.OnnxRuntimeModel",
        "parameters": {"uri": str(model.resolve()), "extra": {"intra_op_threads": threads}},
        "max_batch_size": MAX_BATCH_SIZE,
        "max_batch_time": MLSERVER_MAX_BATCH_TIME_S,
        "inputs": [metadata(spec) for spec in tensors.inputs],
        "outputs": [metadata(spec) for spec in tensors.outputs],
    }


def mlserver_settings(ports: dict[str, int]) -> dict:
    """MLServer's settings.json: loopback, free ports for gRPC, HTTP and metrics."""
    return {"host": "127.0.0.1", "grpc_port": ports["grpc"], "http_port": ports["http"],
            "metrics_port": ports["metrics"], "parallel_workers": MLSERVER_PARALLEL_WORKERS}


def triton_launcher_config(tensors: ModelTensors, model: Path, threads: int, ports: dict[str, int]) -> dict:
    """The JSON peer_setup/triton_launcher.py reads: the model, its tensors, Triton's batching and ports."""
    def tensor(spec: TensorSpec) -> dict:
        return {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.dims)}

    return {
        "name": tensors.name,
        "model": str(model.resolve()),
        "inputs": [tensor(spec) for spec in tensors.inputs],
        "outputs": [tensor(spec) for spec in tensors.outputs],
        "max_batch_size": MAX_BATCH_SIZE,
        "max_queue_delay_microseconds": TRITON_MAX_QUEUE_DELAY_US,
        "intra_op_threads": threads,
        "ports": ports,
    }


def free_ports() -> dict[str, int]:
    return {kind: free_port() for kind in ("grpc", "http", "metrics")}


def write_mlserver_folder(folder: Path, tensors: ModelTensors, model: Path, threads: int,
                          ports: dict[str, int]) -> None:
    """settings.json, model-settings.json and the runtime's two files, in one folder for `mlserver start`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(mlserver_settings(ports), indent=2))
    (folder / "model-settings.json").write_text(json.dumps(mlserver_model_settings(tensors, model, threads), indent=2))
    for name in ("mlserver_runtime.py", "peer_session.py"):
        shutil.copy(PEER_SETUP / name, folder / name)


# --- starting and stopping the peers ------------------------------------------------------------


@dataclass
class Peer:
    name: str
    address: str
    log: Path


@contextlib.contextmanager
def start_mlserver(python: str, tensors: ModelTensors, model: Path, threads: int, workdir: Path) -> Iterator[Peer]:
    folder = workdir / "mlserver"
    ports = free_ports()
    write_mlserver_folder(folder, tensors, model, threads, ports)
    command = [str(Path(python).parent / "mlserver"), "start", str(folder)]
    with peer_process(MLSERVER, command, os.environ.copy(), folder, ports["grpc"], tensors.name) as peer:
        yield peer


@contextlib.contextmanager
def start_triton(python: str, tensors: ModelTensors, model: Path, threads: int, workdir: Path) -> Iterator[Peer]:
    folder = workdir / "triton"
    folder.mkdir(parents=True, exist_ok=True)
    ports = free_ports()
    config = folder / "launcher.json"
    config.write_text(json.dumps(triton_launcher_config(tensors, model, threads, ports), indent=2))
    command = [python, str(PEER_SETUP / "triton_launcher.py"), str(config)]
    env = {**os.environ, "LD_LIBRARY_PATH": triton_library_path(python), "PYTHONUNBUFFERED": "1"}
    with peer_process(TRITON, command, env, folder, ports["grpc"], tensors.name) as peer:
        yield peer


def triton_library_path(python: str) -> str:
    """The interpreter's own LIBDIR first, so Triton's Python backend stub loads that libpython (PEERS.md)."""
    libdir = python_says(python, "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
    return os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)


@contextlib.contextmanager
def peer_process(name: str, command: list[str], env: dict[str, str], workdir: Path, grpc_port: int,
                 model_name: str) -> Iterator[Peer]:
    """Run ``command`` in its own process group (its log in ``workdir``) until the model is ready; stop the
    whole group when the block ends, on errors and Ctrl-C too."""
    log = workdir / "server.log"
    peer = Peer(name, f"127.0.0.1:{grpc_port}", log)
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                   start_new_session=True)
    try:
        wait_for_model(peer, process, model_name)
        yield peer
    finally:
        stop_process_group(process)


def wait_for_model(peer: Peer, process: subprocess.Popen, model_name: str,
                   timeout_s: float = PEER_READY_TIMEOUT_S) -> None:
    """Poll ServerReady and ModelReady over gRPC; a clear error with the log's last lines if the server
    exits or is not ready in time."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(peer.address) as channel:
        server_ready = channel.unary_unary(f"/{SERVICE}/ServerReady", pb.ServerReadyRequest.SerializeToString,
                                           pb.ServerReadyResponse.FromString)
        model_ready = channel.unary_unary(f"/{SERVICE}/ModelReady", pb.ModelReadyRequest.SerializeToString,
                                          pb.ModelReadyResponse.FromString)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{peer.name} exited with code {process.returncode} before it was ready. "
                                   f"Last lines of {peer.log}:\n{log_tail(peer.log)}")
            try:
                if (server_ready(pb.ServerReadyRequest(), timeout=1.0).ready
                        and model_ready(pb.ModelReadyRequest(name=model_name), timeout=1.0).ready):
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{peer.name} was not ready (ServerReady and ModelReady {model_name!r}) after "
                                   f"{timeout_s:.0f} s. Last lines of {peer.log}:\n{log_tail(peer.log)}")
            time.sleep(0.25)



def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def stop_process_group(process: subprocess.Popen, timeout_s: float = PEER_STOP_TIMEOUT_S,
                       grace_s: float = 5.0) -> None:
    """SIGINT to the leader (both peers stop their children on it), then SIGKILL to whatever of its
    process group is still there: no stray tritonserver, stub or MLServer worker."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + grace_s
    while live_group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def live_group_members(pgid: int) -> list[int]:
    """The processes of a process group that are not zombies (a container's init may reap those late)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


# --- versions -----------------------------------------------------------------------------------


def python_says(python: str, code: str) -> str:
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def package_versions(python: str, packages: tuple[str, ...]) -> dict[str, str]:
    code = f"import importlib.metadata as m, json; print(json.dumps({{p: m.version(p) for p in {list(packages)!r}}}))"
    return json.loads(python_says(python, code))


def server_version(address: str) -> str:
    """``name version`` from the ServerMetadata RPC (Triton says ``triton 2.51.0``)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/ServerMetadata", pb.ServerMetadataRequest.SerializeToString,
                                   pb.ServerMetadataResponse.FromString)
        response = call(pb.ServerMetadataRequest(), timeout=10.0)
    return f"{response.name} {response.version}"


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Target:
    """A server under test: its address and the requests built from its own ModelMetadata."""

    name: str
    address: str
    single: list[bytes]  # 1-image requests
    big: list[bytes]  # 64-image requests


@dataclass
class ServerFigures:
    """One server's figures, one entry per round, and every error of its windows."""

    images_per_s: list[float] = field(default_factory=list)
    requests_per_s: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)


@dataclass
class Floors:
    """The floors, one entry per round: in-process onnxruntime (best layout) and the echo server."""

    inprocess_layout: list[str] = field(default_factory=list)
    inprocess_images_per_s: list[float] = field(default_factory=list)  # batch 64, best layout
    inprocess_p50_ms: list[float] = field(default_factory=list)  # batch 1
    echo_requests_per_s: list[float] = field(default_factory=list)
    echo_p50_ms: list[float] = field(default_factory=list)
    echo_errors: Counter = field(default_factory=Counter)


@dataclass
class Run:
    loadgen: LoadGenerator
    targets: list[Target]
    echo: Target
    compute: ComputeFloor
    window_s: float
    warmup_s: float
    figures: dict[str, ServerFigures]
    answer_difference: float  # the largest difference of the servers' probabilities for the same request
    floors: Floors = field(default_factory=Floors)
    points: list[LoadPoint] = field(default_factory=list)

    def point(self, target: Target, big: bool, concurrency: int) -> LoadPoint:
        requests, batch = (target.big, BIG_BATCH) if big else (target.single, 1)
        point = self.loadgen.closed_loop(target.name, target.address, requests, batch, concurrency,
                                         warmup_s=self.warmup_s, duration_s=self.window_s)
        errors = self.floors.echo_errors if target is self.echo else self.figures[target.name].errors
        errors.update(point.errors)
        self.points.append(point)
        return point


def one_round(run: Run) -> None:
    """Every server in turn for each figure, then that figure's floors."""
    for target in run.targets:
        run.figures[target.name].images_per_s.append(run.point(target, True, BIG_CONCURRENCY).images_per_s)
    layout, best = best_of(run.compute.images_per_s(BIG_BATCH, run.window_s))
    run.floors.inprocess_layout.append(layout)
    run.floors.inprocess_images_per_s.append(best)

    for target in run.targets:
        run.figures[target.name].requests_per_s.append(run.point(target, False, SMALL_CONCURRENCY).requests_per_s)
    run.floors.echo_requests_per_s.append(run.point(run.echo, False, SMALL_CONCURRENCY).requests_per_s)

    for target in run.targets:
        run.figures[target.name].p50_ms.append(run.point(target, False, 1).p50_ms)
    run.floors.echo_p50_ms.append(run.point(run.echo, False, 1).p50_ms)
    run.floors.inprocess_p50_ms.append(run.compute.p50_ms(1, run.window_s))


def target_of(name: str, address: str, model_name: str) -> Target:
    spec, _ = fetch_model_spec(address, model_name)
    return Target(name, address, build_requests(spec, 1, 8), build_requests(spec, BIG_BATCH, 2))


def same_answers(targets: list[Target], tolerance: float = 1e-4) -> float:
    """Every server's probabilities for the first server's 64-image request; raises unless they all match
    the first's within ``tolerance``. Returns the largest difference."""
    request = targets[0].big[0]
    answers = {t.name: response_arrays(pb.ModelInferResponse.FromString(infer_once(t.address, request)))[PROBABILITIES]
               for t in targets}
    reference = answers[targets[0].name]
    largest = 0.0
    for name, answer in answers.items():
        if answer.shape != reference.shape:
            raise RuntimeError(f"{name} answers {PROBABILITIES} of shape {answer.shape}; "
                               f"{targets[0].name} answers {reference.shape}")
        largest = max(largest, float(np.abs(answer - reference).max()))
    if largest > tolerance:
        raise RuntimeError(f"the servers' {PROBABILITIES} differ by up to {largest:.2g} (> {tolerance:g}) "
                           "for the same request: they do not serve the same model")
    return largest


def measure(args: argparse.Namespace) -> tuple[Run, dict[str, str]]:
    """Start the three servers and the echo, run the rounds, stop everything; the run and the versions."""
    tensors = model_tensors(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="edgecnn-peers-"))
    print(f"servers' logs under {workdir}", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        edgecnn = stack.enter_context(start_edgecnn_server(args.model, log=workdir / "edgecnn-serve.log"))
        triton = stack.enter_context(start_triton(args.triton_python, tensors, args.model, args.peer_threads, workdir))
        mlserver = stack.enter_context(
            start_mlserver(args.mlserver_python, tensors, args.model, args.peer_threads, workdir))
        loadgen = stack.enter_context(LoadGenerator(args.clients))
        targets = [target_of(EDGECNN, edgecnn.address, tensors.name), target_of(TRITON, triton.address, tensors.name),
                   target_of(MLSERVER, mlserver.address, tensors.name)]
        echo_server = stack.enter_context(start_echo_server(infer_once(edgecnn.address, targets[0].single[0])))
        echo = Target("echo", echo_server.address, targets[0].single, targets[0].big)
        versions = {TRITON: server_version(triton.address), MLSERVER: server_version(mlserver.address)}
        difference = same_answers(targets)
        run = Run(loadgen, targets, echo, ComputeFloor(args.model), args.window, args.warmup,
                  {target.name: ServerFigures() for target in targets}, difference)
        for round_ in range(1, args.rounds + 1):
            started = time.monotonic()
            one_round(run)
            print(f"round {round_}/{args.rounds} ({time.monotonic() - started:.0f} s): " + "; ".join(
                f"{name} {f.images_per_s[-1]:,.0f} img/s, {f.requests_per_s[-1]:,.0f} req/s, {f.p50_ms[-1]:.2f} ms"
                for name, f in run.figures.items()), file=sys.stderr, flush=True)
    return run, versions


# --- the block ----------------------------------------------------------------------------------


def ratio_cells(figures: list[float], floors: list[float], lower_is_better: bool = False) -> str:
    """``median figure | median ratio | worst round's ratio`` for one server and one column; "n/a" for all
    three when a round has no figure (no request answered) or no floor."""
    ratios = [f / fl if fl > 0 else math.nan for f, fl in zip(figures, floors)]
    if any(math.isnan(r) for r in ratios):
        return "n/a | n/a | n/a"
    mid, worst = median_and_worst(ratios, lower_is_better)
    digits = 2 if lower_is_better else 0
    return f"{median(figures):,.{digits}f} | {mid:.2f}x | {worst:.2f}x"


def peer_table(figures: dict[str, ServerFigures], floors: Floors) -> str:
    """ONE table: each server's three figures, each against its floor (median over rounds and worst round)."""
    latency_floor = [e + c for e, c in zip(floors.echo_p50_ms, floors.inprocess_p50_ms)]
    lines = [
        f"| Server | images/s, {BIG_BATCH}-image RPCs, c={BIG_CONCURRENCY} | / best in-process (median) | worst round "
        f"| requests/s, 1-image RPCs, c={SMALL_CONCURRENCY} | / echo (median) | worst round "
        "| p50 ms, 1-image RPCs, c=1 | / (echo + in-process) (median) | worst round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in figures.items():
        lines.append(f"| {name} | {ratio_cells(f.images_per_s, floors.inprocess_images_per_s)} "
                     f"| {ratio_cells(f.requests_per_s, floors.echo_requests_per_s)} "
                     f"| {ratio_cells(f.p50_ms, latency_floor, lower_is_better=True)} |")
    return "\n".join(lines)


def floors_line(floors: Floors) -> str:
    layouts = Counter(floors.inprocess_layout).most_common()
    layout_text = ", ".join(f"{layout} ({count} of {len(floors.inprocess_layout)} rounds)" for layout, count in layouts)
    return (f"- Floors (medians over rounds): best in-process onnxruntime at batch {BIG_BATCH} "
            f"{median(floors.inprocess_images_per_s):,.0f} images/s (best layout: {layout_text}); in-process batch-1 "
            f"p50 {median(floors.inprocess_p50_ms):.3f} ms; echo server {median(floors.echo_requests_per_s):,.0f} "
            f"requests/s at c={SMALL_CONCURRENCY}, p50 {median(floors.echo_p50_ms):.3f} ms at c=1.")


def errors_line(figures: dict[str, ServerFigures], floors: Floors) -> str:
    def text(errors: Counter) -> str:
        return ", ".join(f"**{code} {count}**" for code, count in sorted(errors.items())) or "none"

    parts = [f"{name}: {text(f.errors)}" for name, f in figures.items()] + [f"echo: {text(floors.echo_errors)}"]
    return "- Errors (every window, warm-up excluded): " + "; ".join(parts) + "."


def client_line(points: list[LoadPoint]) -> str:
    busiest = max(p.client.cpu_per_process_max for p in points)
    saturated = any(p.client.saturated for p in points)
    return (f"- Client: {points[0].client.processes} load-generator process(es), the busiest used {busiest:.2f} of a "
            f"core at most; saturated in any window: {'**yes**' if saturated else 'no'}.")


def setup_lines(args: argparse.Namespace, versions: dict[str, str]) -> list[str]:
    import onnxruntime as ort

    triton = package_versions(args.triton_python, ("nvidia-pytriton", "onnxruntime"))
    mlserver = package_versions(args.mlserver_python, ("mlserver", "onnxruntime"))
    threads = ("onnxruntime's default intra-op threads (one per physical core)" if args.peer_threads == 0
               else f"{args.peer_threads} intra-op threads")
    return [
        f"- edgecnn serve: default flags (dynamic batching, its own instance layout); onnxruntime {ort.__version__}.",
        f"- {TRITON}: {versions[TRITON]} from nvidia-pytriton {triton['nvidia-pytriton']}, onnxruntime "
        f"{triton['onnxruntime']}. `{TRITON_INSTALL}`. benchmarks/peer_setup/triton_launcher.py: Triton.bind of an "
        f"`@batch` function, ModelConfig(max_batch_size={MAX_BATCH_SIZE}, "
        f"batcher=DynamicBatcher(max_queue_delay_microseconds={TRITON_MAX_QUEUE_DELAY_US})), one model instance; "
        "run with LD_LIBRARY_PATH set to the interpreter's LIBDIR.",
        f"- {MLSERVER}: {versions[MLSERVER]}, onnxruntime {mlserver['onnxruntime']}. `{MLSERVER_INSTALL}`. "
        f"benchmarks/peer_setup/mlserver_runtime.py (an MLModel: onnxruntime in load(), NumpyCodec in predict()), "
        f"adaptive batching max_batch_size {MAX_BATCH_SIZE}, max_batch_time {MLSERVER_MAX_BATCH_TIME_S} s, "
        f"parallel_workers {MLSERVER_PARALLEL_WORKERS}.",
        f"- Both peers' sessions: {threads}, one inter-op thread, no spinning, all graph optimisations "
        "(benchmarks/peer_setup/peer_session.py, as `edgecnn serve` sets up its sessions).",
    ]


def markdown(args: argparse.Namespace, command: str, run: Run, versions: dict[str, str]) -> str:
    return "\n".join([
        f"### Peers side by side: `{args.model}` ({read_metadata(args.model).name})",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {machine_line()}, {os.cpu_count()} logical cores ({usable_cores()} usable). {args.rounds} "
        f"interleaved rounds (each figure: every server in turn, then its floors) of {args.window:g} s windows after "
        f"{args.warmup:g} s of unrecorded load; the same client (benchmarks/loadgen.py, pre-serialised raw-tensor "
        "requests) for every server. Ratios are taken within a round: the median and the worst round are shown.",
        "",
        *setup_lines(args, versions),
        "",
        peer_table(run.figures, run.floors),
        "",
        floors_line(run.floors),
        errors_line(run.figures, run.floors),
        f"- Answers: for the same {BIG_BATCH}-image request every server's {PROBABILITIES} match edgecnn serve's "
        f"(largest difference {run.answer_difference:.1g}).",
        client_line(run.points),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = side_by_side_parser(__doc__, rounds=3)
    parser.add_argument("--mlserver-python", required=True, help="python of a venv with mlserver and onnxruntime")
    parser.add_argument("--triton-python", required=True, help="python of a venv with nvidia-pytriton and onnxruntime")
    parser.add_argument("--peer-threads", type=int, default=0,
                        help="intra-op threads of the peers' onnxruntime sessions (0: onnxruntime's default)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    run, versions = measure(args)
    print_block(markdown(args, command_line("edgecnn.benchmarks.peers", argv), run, versions), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
