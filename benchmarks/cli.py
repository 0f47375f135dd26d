"""`edgecnn bench` and `edgecnn demo`. Flags, defaults and help come from BenchSettings and DemoSettings;
heavy imports happen inside the commands, so `edgecnn --help` stays instant and torch-free."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from edgecnn.benchmarks.settings import BenchSettings, DemoSettings, as_csv, help_of

B, D = BenchSettings(), DemoSettings()


def _bench(name: str, *flags: str) -> typer.models.OptionInfo:
    return typer.Option(*flags, **help_of(BenchSettings, name))


# The comma-separated flags: setting -> (the flag, the type of each value).
LISTS = {"providers": ("--provider", str), "batch_sizes": ("--batch-sizes", int), "concurrency": ("--concurrency", int),
         "rates": ("--rate", float), "scenarios": ("--scenario", str)}


def _parse(text: str, flag: str, kind: type) -> tuple:
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of {kind.__name__}s",
                                 param_hint=flag) from None


def _check_inputs(models: list[Path], settings: BenchSettings) -> None:
    """Bad model files, TLS and token files, an --images that is no folder and an --out that cannot be one fail
    now, in one sentence, not after minutes of timing."""
    from edgecnn.serve.userfiles import check_model_file, folder_problem

    for model in models:
        check_model_file(model)
    if settings.server or settings.start_server:
        settings.security()  # reads and checks --tls-ca, --tls-cert, --tls-key and --token-file
    if settings.images and not Path(settings.images).is_dir():
        missing = not Path(settings.images).exists()
        raise ValueError(f"--images {settings.images}: {'no such folder' if missing else 'a file, not a folder'}")
    problem = folder_problem(settings.out)
    if problem:
        raise ValueError(f"--out {settings.out}: {problem}")


def _fail(message: object) -> typer.Exit:
    """A user error: one line on stderr, exit code 1 (typer's own usage errors keep theirs, 2)."""
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def bench(
    models: Annotated[Optional[list[Path]], typer.Argument(
        help="ONNX model file(s), e.g. fp32 and int8 variants: benchmarked in-process, and the compute floor "
        "of the served model.", show_default=False)] = None,
    providers: Annotated[str, _bench("providers", "--provider")] = as_csv(B.providers),
    batch_sizes: Annotated[str, _bench("batch_sizes")] = as_csv(B.batch_sizes),
    threads: Annotated[int, _bench("threads")] = B.threads,
    side_by_side: Annotated[int, _bench("side_by_side")] = B.side_by_side,
    warmup_s: Annotated[float, _bench("warmup_s", "--warmup")] = B.warmup_s,
    window_s: Annotated[float, _bench("window_s", "--window")] = B.window_s,
    stability: Annotated[float, _bench("stability")] = B.stability,
    max_seconds: Annotated[float, _bench("max_seconds")] = B.max_seconds,
    server: Annotated[str, _bench("server")] = B.server,
    start_server: Annotated[bool, _bench("start_server")] = B.start_server,
    server_args: Annotated[str, _bench("server_args")] = B.server_args,
    model: Annotated[str, _bench("model")] = B.model,
    model_version: Annotated[str, _bench("model_version")] = B.model_version,
    batch_size: Annotated[int, _bench("batch_size")] = B.batch_size,
    concurrency: Annotated[str, _bench("concurrency")] = as_csv(B.concurrency),
    rates: Annotated[str, _bench("rates", "--rate")] = as_csv(B.rates),
    scenarios: Annotated[str, _bench("scenarios", "--scenario")] = as_csv(B.scenarios),
    latency_bound_ms: Annotated[float, _bench("latency_bound_ms")] = B.latency_bound_ms,
    search_steps: Annotated[int, _bench("search_steps")] = B.search_steps,
    point_warmup_s: Annotated[float, _bench("point_warmup_s", "--point-warmup")] = B.point_warmup_s,
    duration_s: Annotated[float, _bench("duration_s", "--duration")] = B.duration_s,
    clients: Annotated[int, _bench("clients")] = B.clients,
    images: Annotated[str, _bench("images")] = B.images,
    distinct_requests: Annotated[int, _bench("distinct_requests")] = B.distinct_requests,
    timeout_s: Annotated[float, _bench("timeout_s", "--timeout")] = B.timeout_s,
    floors: Annotated[bool, _bench("floors")] = B.floors,
    tls: Annotated[bool, _bench("tls")] = B.tls,
    tls_ca: Annotated[str, _bench("tls_ca")] = B.tls_ca,
    tls_cert: Annotated[str, _bench("tls_cert")] = B.tls_cert,
    tls_key: Annotated[str, _bench("tls_key")] = B.tls_key,
    token_file: Annotated[str, _bench("token_file")] = B.token_file,
    seed: Annotated[int, _bench("seed")] = B.seed,
    out: Annotated[str, _bench("out")] = B.out,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option(
        help="Print the ratios B/A of two bench.json files (two devices, or two variants) and exit.",
        rich_help_panel="Output", show_default=False)] = None,
) -> None:
    """Latency and throughput, in-process and over gRPC, with the transport and compute floors. Runs without torch."""
    flags = dict(locals())  # every parameter but models and compare is a BenchSettings field of the same name
    del flags["models"], flags["compare"]
    from edgecnn.serve.extras import needs_extra

    with needs_extra("serve", "bench"):  # a train-only install has no gRPC
        _bench_command(list(models or []), compare, flags)


def _bench_command(models: list[Path], compare: Optional[tuple[Path, Path]], flags: dict) -> None:
    """`edgecnn bench` past its flags: a comparison of two reports, or a run."""
    from rich.console import Console

    from edgecnn.benchmarks.compare import print_comparison
    from edgecnn.benchmarks.tables import print_report

    from edgecnn.benchmarks.servers import exit_on_sigterm

    exit_on_sigterm()
    console = Console(width=None if sys.stdout.isatty() else 120)  # piped into a file: keep the tables whole
    if compare:
        from edgecnn.serve.userfiles import check_readable

        try:
            print_comparison(*(check_readable(path, "--compare") for path in compare), console=console)
        except ValueError as exc:  # a file that is missing, not JSON, or not a bench report
            raise _fail(exc) from None
        return
    try:
        settings = BenchSettings(**(flags | {name: _parse(flags[name], *LISTS[name]) for name in LISTS}))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc

    from edgecnn.benchmarks.bench import run_bench
    from edgecnn.benchmarks.servers import ServerStartError

    command = "edgecnn bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])

    def plain(text: str) -> None:  # paths and hints such as 'edgecnn[plots]' are not rich markup
        console.print(text, markup=False, highlight=False)

    try:
        _check_inputs(models, settings)
        outcome = run_bench(models, settings, command, progress=plain)
    except (ValueError, ServerStartError) as exc:
        raise _fail(exc) from None
    print_report(outcome.report, console)
    plain(f"wrote {outcome.json_path}, bench.md and {len(outcome.plots)} plot(s) in {outcome.json_path.parent}")


def _demo(name: str) -> typer.models.OptionInfo:
    return typer.Option(**help_of(DemoSettings, name))


def demo(
    out: Annotated[str, _demo("out")] = D.out,
    model: Annotated[str, _demo("model")] = D.model,
    epochs: Annotated[int, _demo("epochs")] = D.epochs,
    images: Annotated[int, _demo("images")] = D.images,
    top_k: Annotated[int, _demo("top_k")] = D.top_k,
    bench_seconds: Annotated[float, _demo("bench_seconds")] = D.bench_seconds,
    seed: Annotated[int, _demo("seed")] = D.seed,
) -> None:
    """The whole pipeline on the embedded MNIST set: train, export fp32 + int8, serve, classify over gRPC, benchmark."""
    from rich.console import Console

    from edgecnn.serve.extras import needs_extra
    from edgecnn.serve.userfiles import folder_problem
    from edgecnn.train.cli import catching_user_errors

    try:
        settings = DemoSettings(out=out, model=model, epochs=epochs, images=images, top_k=top_k,
                                bench_seconds=bench_seconds, seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console = Console(width=None if sys.stdout.isatty() else 120)
    problem = folder_problem(out)
    if problem:
        raise _fail(f"--out {out}: {problem}")
    with needs_extra("train,serve", "demo"), catching_user_errors():  # a bad --model ends in one line
        from edgecnn.benchmarks.demo import run_demo

        run_demo(settings, console)


def register(app: typer.Typer) -> None:
    """Add this part's commands to the root `edgecnn` app."""
    app.command("bench")(bench)
    app.command("demo")(demo)
