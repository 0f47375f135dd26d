"""One `edgecnn bench` run: how long it will take, in-process figures for each model file, then served
figures against a given server or against `edgecnn serve` started for each model; then the JSON, plots
and tables."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc

from edgecnn.benchmarks.device import describe_device
from edgecnn.benchmarks.echo import SERVICE
from edgecnn.benchmarks.inprocess import (STABLE_WINDOWS, InProcessResult, resolve_provider, run_inprocess,
                                          server_layout_callers)
from edgecnn.benchmarks.loadgen import START_DELAY_S, LoadGenerator
from edgecnn.benchmarks.plots import PLOTS_EXTRA_HINT, plots_available, write_plots
from edgecnn.benchmarks.report import build_report, write_report
from edgecnn.benchmarks.scenarios import ServedRun, run_served
from edgecnn.benchmarks.servers import start_edgecnn_server
from edgecnn.benchmarks.settings import BenchSettings
from edgecnn.benchmarks.tables import markdown_report
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.client import ChannelSecurity, describe_rpc_error

# What the settings do not time, measured on a 2-core EPYC with tiny models and rounded up: the load
# generator's spawned processes (2.5 s), `edgecnn serve` until ready plus its drain at the end (2.5 + 1.3 s),
# a served run's echo server and metadata calls (0.3 s), the tables and plots (4 s).
LOADGEN_START_S = 3.0
SERVER_START_S = 5.0
RUN_SETUP_S = 1.0
REPORT_S = 6.0


@dataclass
class BenchOutcome:
    report: dict[str, Any]
    json_path: Path
    plots: list[Path]


def run_bench(
    models: list[Path], settings: BenchSettings, command: str, progress: Callable[[str], None] = print
) -> BenchOutcome:
    """Measure, then write bench.json, bench.md and the plots under ``settings.out``; ``progress`` gets
    one line per step, the first of them how long the run will take."""
    _check_targets(models, settings)
    served_wanted = bool(settings.server or settings.start_server)
    # The request's batch size is measured in-process too: it is the served latency's compute floor.
    batch_sizes = tuple(sorted(set(settings.batch_sizes) | ({settings.batch_size} if served_wanted else set())))
    security = settings.security() if served_wanted else None  # the token and TLS files, read once for every run
    if settings.server:  # named now, not after minutes of in-process timing
        model_file = models[0] if models else None
        name, label = _name_and_label(model_file, settings.model)
        if not name:  # as `predict` does
            name = label = only_served_model(settings.server, settings.timeout_s, security)
    served_runs = (1 if settings.server else len(models)) if served_wanted else 0
    progress(estimate_run(settings, inprocess_configs(models, settings, batch_sizes), served_runs,
                          started_servers=len(models) if settings.start_server else 0).line())

    inprocess: list[InProcessResult] = []
    for model in models:
        progress(f"in-process: {model} ({', '.join(settings.providers)}; batch {', '.join(map(str, batch_sizes))})")
        inprocess += run_inprocess([model], settings, batch_sizes)

    served: list[ServedRun] = []
    if served_wanted:
        with LoadGenerator(settings.client_processes()) as loadgen:
            progress(f"served: {loadgen.processes} client process(es), {settings.duration_s:g} s per point")
            if settings.server:
                served.append(run_served(settings.server, name, label, settings, loadgen,
                                         _of(inprocess, model_file), progress, security))
            else:
                for model in models:
                    name, label = _name_and_label(model, settings.model)
                    log = Path(settings.out) / f"server_{label}.log"
                    log.parent.mkdir(parents=True, exist_ok=True)
                    with start_edgecnn_server(model, settings.server_args, log=log, security=security) as server:
                        flags = f" {settings.server_args}" if settings.server_args else ""
                        progress(f"started edgecnn serve {model}{flags} at {server.address} (log: {log})")
                        served.append(run_served(server.address, name, label, settings, loadgen,
                                                 _of(inprocess, model), progress, security))

    report = build_report(command, settings.as_dict(), describe_device(), inprocess, served)
    out = Path(settings.out)
    json_path = write_report(report, out)
    plots = write_plots(out, inprocess, served)
    if not plots_available():
        progress(PLOTS_EXTRA_HINT)
    (out / "bench.md").write_text(markdown_report(report, [p.name for p in plots]))
    return BenchOutcome(report, json_path, plots)


def _check_targets(models: list[Path], settings: BenchSettings) -> None:
    """Model files and server flags that cannot make a run, refused before anything is timed."""
    if not models and not settings.server:
        raise ValueError("give MODEL file(s) to benchmark in-process, or --server HOST:PORT")
    if settings.start_server and not models:
        raise ValueError("--start-server needs MODEL file(s) to serve")
    if settings.server and len(models) > 1:
        raise ValueError("with --server give at most one MODEL file: the served model's compute floor")


def _name_and_label(model_file: Path | None, model_name: str) -> tuple[str, str]:
    """The model's name on the server and the run's label (its variant), from the file's metadata."""
    if model_file is None:
        return model_name, model_name
    from edgecnn.export.metadata import MetadataError, read_metadata

    try:
        meta = read_metadata(model_file)
    except MetadataError:
        return model_name or model_file.stem, model_file.stem
    return model_name or meta.name, meta.variant


def _of(results: list[InProcessResult], model_file: Path | None) -> list[InProcessResult]:
    return [r for r in results if model_file is not None and r.model == str(model_file)]


def only_served_model(address: str, timeout_s: float, security: ChannelSecurity) -> str:
    """The name of the only model a server serves (READY in its repository index, an RPC Triton has too),
    as `predict` picks it; one sentence naming them when it serves several."""
    with security.channel(address) as channel:
        index = channel.unary_unary(f"/{SERVICE}/RepositoryIndex",
                                    request_serializer=pb.RepositoryIndexRequest.SerializeToString,
                                    response_deserializer=pb.RepositoryIndexResponse.FromString)
        try:
            models = index(pb.RepositoryIndexRequest(ready=True), timeout=timeout_s, metadata=security.metadata).models
        except grpc.RpcError as error:  # nothing listening, a token refused, a server without a repository index
            why = describe_rpc_error(error, security)
            raise ValueError(f"--server {address}: its models could not be listed ({why}); "
                             "name one with --model NAME") from None
    names = sorted({model.name for model in models})
    if len(names) == 1:
        return names[0]
    if not names:
        raise ValueError(f"--server {address} serves no model that is ready")
    raise ValueError(f"--server {address} serves {len(names)} models ({', '.join(names)}): "
                     "choose one with --model NAME")


def inprocess_configs(models: list[Path], settings: BenchSettings, batch_sizes: tuple[int, ...]) -> int:
    """How many in-process configurations a run times: model x provider x batch size x layout (one caller,
    and on the CPU the server's layout of one-thread callers side by side)."""
    if not models:
        return 0
    layouts = sum(1 + ((settings.side_by_side or server_layout_callers(resolve_provider(p))) > 1)
                  for p in settings.providers)
    return len(models) * layouts * len(batch_sizes)


@dataclass(frozen=True)
class RunEstimate:
    """How long a bench run will take at most, from its settings, and what that time goes to."""

    seconds: float
    parts: tuple[str, ...]

    def line(self) -> str:
        return f"bench will take up to about {duration_text(self.seconds)}: {'; '.join(self.parts)}"


def estimate_run(settings: BenchSettings, configs: int, served_runs: int, started_servers: int = 0) -> RunEstimate:
    """An upper bound of a run's time: ``configs`` in-process configurations, each at most its warm-up and
    ``--max-seconds`` plus the window then under way (at least three windows); ``served_runs`` runs of every
    served point (``--point-warmup`` + ``--duration``, on the model and then on the echo floor) and the server
    scenario's steps; and allowances for starting servers and writing the report."""
    s = settings
    per_config = s.warmup_s + max(s.max_seconds + s.window_s, STABLE_WINDOWS * s.window_s)
    per_point = START_DELAY_S + s.point_warmup_s + s.duration_s
    points = served_runs * served_points(s) * (2 if s.floors else 1)
    steps = served_runs * (s.search_steps if "server" in s.scenarios else 0)
    setup = REPORT_S + served_runs * RUN_SETUP_S + started_servers * SERVER_START_S
    setup += LOADGEN_START_S if served_runs else 0
    parts = [f"{_count(configs, 'in-process configuration')} x <= {per_config:g} s"] if configs else []
    if points:
        floors = " (each load on the model, then on the echo server)" if s.floors else ""
        parts.append(f"{_count(points, 'served point')} x {per_point:g} s{floors}")
    if steps:
        parts.append(f"{_count(steps, 'server-scenario step')} x {per_point:g} s")
    started = f"starting {_count(started_servers, 'server')}, " if started_servers else ""
    parts.append(f"~{setup:g} s {started}{'the load generator, ' if served_runs else ''}the report and plots")
    return RunEstimate(configs * per_config + (points + steps) * per_point + setup, tuple(parts))


def served_points(settings: BenchSettings) -> int:
    """The points of one served run measured on the model and on the echo: the sweep, and the scenarios'
    own where the sweep lacks them (single stream: concurrency 1; offline and server: any concurrency)."""
    sweep = settings.concurrency
    single_stream = "single-stream" in settings.scenarios and 1 not in sweep
    offline = bool({"offline", "server"} & set(settings.scenarios)) and not sweep
    return len(sweep) + len(settings.rates) + single_stream + offline


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'s' * (number != 1)}"


def duration_text(seconds: float) -> str:
    """45 s, 2 min 40 s, 1 h 5 min: rounded up (to 5 s past a minute)."""
    total = math.ceil(seconds) if seconds < 60 else 5 * math.ceil(seconds / 5)
    if total < 60:
        return f"{total} s"
    minutes, rest = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
