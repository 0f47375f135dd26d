"""One `edgecnn bench` run: in-process figures for each model file, then served figures against
a given server or against `edgecnn serve` started for each model; then the JSON, plots and tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgecnn.benchmarks.device import describe_device
from edgecnn.benchmarks.inprocess import InProcessResult, run_inprocess
from edgecnn.benchmarks.loadgen import LoadGenerator
from edgecnn.benchmarks.plots import PLOTS_EXTRA_HINT, plots_available, write_plots
from edgecnn.benchmarks.report import build_report, write_report
from edgecnn.benchmarks.scenarios import ServedRun, run_served
from edgecnn.benchmarks.servers import start_edgecnn_server
from edgecnn.benchmarks.settings import BenchSettings
from edgecnn.benchmarks.tables import markdown_report


@dataclass
class BenchOutcome:
    report: dict[str, Any]
    json_path: Path
    plots: list[Path]


def run_bench(
    models: list[Path], settings: BenchSettings, command: str, progress: Callable[[str], None] = print
) -> BenchOutcome:
    served_wanted = bool(settings.server or settings.start_server)
    if not models and not settings.server:
        raise ValueError("give MODEL file(s) to benchmark in-process, or --server HOST:PORT --model NAME")
    if settings.start_server and not models:
        raise ValueError("--start-server needs MODEL file(s) to serve")
    if settings.server and len(models) > 1:
        raise ValueError("with --server give at most one MODEL file: the served model's compute floor")
    if settings.server and not (settings.model or models):
        raise ValueError("with --server name the served model: --model NAME (or give its MODEL file)")

    # The request's batch size is measured in-process too: it is the served latency's compute floor.
    batch_sizes = tuple(sorted(set(settings.batch_sizes) | ({settings.batch_size} if served_wanted else set())))
    inprocess: list[InProcessResult] = []
    for model in models:
        progress(f"in-process: {model} ({', '.join(settings.providers)}; batch {', '.join(map(str, batch_sizes))})")
        inprocess += run_inprocess([model], settings, batch_sizes)

    served: list[ServedRun] = []
    if served_wanted:
        security = settings.security()  # reads the token and TLS files once for every served model
        with LoadGenerator(settings.client_processes()) as loadgen:
            progress(f"served: {loadgen.processes} client process(es), {settings.duration_s:g} s per point")
            if settings.server:
                model_file = models[0] if models else None
                name, label = _name_and_label(model_file, settings.model)
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
