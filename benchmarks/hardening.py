"""The hardening issue's benchmarks: what security costs, and memory under bursts and a long soak.

    python -m edgecnn.benchmarks.hardening security MODEL.onnx [--rounds 5] [--window 3]
    python -m edgecnn.benchmarks.hardening burst MODEL.onnx [--seconds 10] [--server-args "..."]
    python -m edgecnn.benchmarks.hardening soak MODEL.onnx [--minutes 10] [--fraction 0.8]
    python -m edgecnn.benchmarks.hardening before-after MODEL.onnx --before-python OTHER_VENV/bin/python

security  Four `edgecnn serve` processes of MODEL side by side: plaintext, TLS, mutual TLS, and
          plaintext with a bearer token (certificates and the token made here). Each round measures
          every server in turn (A B C D, A B C D, ...): 1-image RPCs at concurrency 16 (requests/s)
          and at concurrency 1 (p50). Ratios to plaintext are taken within a round; the block gives
          their median and the worst round.
burst     The largest allowed requests (--max-request-images images each; by default --max-batch-size)
          from 16 closed-loop streams for --seconds; the server's RSS before (after warm-up), its
          peak (VmHWM), and after it has been idle 1 s and --settle seconds.
soak      The maximum request rate (1-image RPCs, concurrency 16, 5 s), then Poisson arrivals at
          --fraction of it for --minutes, one line per minute: requests, errors, p50/p99, RSS.
before-after  The hot path before and after a change: `edgecnn serve` of another installed
          checkout (--before-python) beside this one, plaintext, measured as in `security`, plus
          64-image RPCs at concurrency 4 (images/s).

Every subcommand prints a markdown block for benchmarks/RESULTS.md with its command and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from statistics import median

from edgecnn.benchmarks.loadgen import LoadGenerator, LoadPoint
from edgecnn.benchmarks.payload import build_requests, fetch_model_spec
from edgecnn.benchmarks.servers import exit_on_sigterm, start_edgecnn_server
from edgecnn.benchmarks.stats import median_and_worst
from edgecnn.export.metadata import read_metadata
from edgecnn.serve.client import PLAINTEXT, ChannelSecurity
from edgecnn.serve.settings import ServeSettings

CONCURRENCY = 16
TOKEN = "benchmark-token-0123456789abcdef"


def rss_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that made a block, as RESULTS.md quotes it."""
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))


def side_by_side_parser(doc: str, rounds: int = 5) -> argparse.ArgumentParser:
    """The flags every side-by-side script shares: MODEL, rounds, window, warm-up, clients, --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="an exported MODEL.onnx")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds; figures are medians over them")
    parser.add_argument("--window", type=float, default=2.0, help="seconds measured per window")
    parser.add_argument("--warmup", type=float, default=0.3, help="unrecorded load before each window, seconds")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument("--out", type=Path, help="also write the markdown block to this file")
    return parser


def print_block(block: str, out: Path | None) -> None:
    """Print a markdown block for RESULTS.md, and write it to ``out`` too."""
    print(block)
    if out:
        out.write_text(block + "\n")


def machine_line() -> str:
    from edgecnn.export.cpu import cpu_model, cpu_path, describe_cpu_path

    return f"{cpu_model()}, {describe_cpu_path(cpu_path())}, {datetime.date.today().isoformat()}"


# --- security ----------------------------------------------------------------------------------


def security(args: argparse.Namespace) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="edgecnn-security-"))
    from edgecnn.benchmarks.certs import issue, make_pki

    pki = make_pki(tmp)
    server_leaf = issue(pki, tmp, "localhost", server=True)
    client_leaf = issue(pki, tmp, "client", server=False)
    tokens = tmp / "tokens.txt"
    tokens.write_text(f"{TOKEN}\n")
    tls_flags = f"--tls-cert {server_leaf.cert} --tls-key {server_leaf.key}"
    configs = {  # name: (server flags, how the client reaches it)
        "plaintext": ("", PLAINTEXT),
        "TLS": (tls_flags, ChannelSecurity(tls=True, tls_ca=pki.cert)),
        "mutual TLS": (f"{tls_flags} --tls-client-ca {pki.cert}",
                       ChannelSecurity(tls=True, tls_ca=pki.cert, tls_cert=client_leaf.cert, tls_key=client_leaf.key)),
        "token": (f"--auth-token-file {tokens}", ChannelSecurity(token=TOKEN)),
    }
    table = compare_servers(args, configs, tmp)
    return "\n".join([
        f"Machine: {machine_line()}. Model: {args.model}. {args.rounds} rounds, {args.window:g} s windows, "
        f"servers started with default flags{(' + ' + args.server_args) if args.server_args else ''}.",
        "",
        table,
    ])


def before_after(args: argparse.Namespace) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="edgecnn-before-after-"))
    configs = {"before": ("", PLAINTEXT, args.before_python), "after": ("", PLAINTEXT, sys.executable)}
    table = compare_servers(args, configs, tmp, big_batch=ServeSettings.max_batch_size)
    return "\n".join([
        f"Machine: {machine_line()}. Model: {args.model}. before: {args.before_python}; after: this checkout. "
        f"{args.rounds} rounds, {args.window:g} s windows, default flags{(' + ' + args.server_args) if args.server_args else ''}.",
        "",
        table,
    ])


def compare_servers(args: argparse.Namespace, configs: dict, tmp: Path, big_batch: int = 0) -> str:
    """Every server of ``configs`` (name: (flags, security[, python])) measured in turn, round after round;
    a markdown table of medians and of ratios to the first, with the worst round."""
    first = next(iter(configs))
    figures: dict[str, dict[str, list[float]]] = {name: {"rps": [], "p50": [], "big": []} for name in configs}
    with ExitStack() as stack:
        loadgen = stack.enter_context(LoadGenerator(args.clients))
        addresses = {}
        for name, (flags, reach, *python) in configs.items():
            server = stack.enter_context(start_edgecnn_server(
                args.model, f"{flags} {args.server_args}", log=tmp / f"{name.replace(' ', '-')}.log", security=reach,
                python=python[0] if python else sys.executable))
            addresses[name] = f"localhost:{server.port}"  # the test certificates name localhost
        spec, _ = fetch_model_spec(addresses[first], read_metadata(args.model).name)
        single = build_requests(spec, 1, 8)
        big = build_requests(spec, big_batch, 4) if big_batch else []
        for round_ in range(args.rounds):
            for name, (_, reach, *_python) in configs.items():
                timing = dict(warmup_s=args.warmup, duration_s=args.window, security=reach)
                for key, requests, batch, concurrency in (("rps", single, 1, CONCURRENCY), ("p50", single, 1, 1),
                                                           ("big", big, big_batch, 4)):
                    if not requests:
                        continue
                    point = loadgen.closed_loop(name, addresses[name], requests, batch, concurrency, **timing)
                    _no_errors(point, name)
                    figures[name][key].append({"rps": point.requests_per_s, "p50": point.p50_ms,
                                               "big": point.images_per_s}[key])
            print(f"round {round_ + 1}: " + ", ".join(
                f"{n} {f['rps'][-1]:.0f} req/s p50 {f['p50'][-1]:.3f} ms" for n, f in figures.items()), file=sys.stderr)
    columns = [("rps", f"req/s, 1-image RPCs, concurrency {CONCURRENCY}", False),
               ("p50", "p50 ms, 1-image RPCs, concurrency 1", True)]
    if big_batch:
        columns.append(("big", f"images/s, {big_batch}-image RPCs, concurrency 4", False))
    header = "| |" + "".join(f" {title} (median) | vs {first}: median | worst round |" for _, title, _ in columns)
    lines = [header, "|---|" + "---:|---:|---:|" * len(columns)]
    for name, f in figures.items():
        cells = []
        for key, _, lower_is_better in columns:
            mid, worst = median_and_worst([a / b for a, b in zip(f[key], figures[first][key])], lower_is_better)
            cells.append(f" {median(f[key]):,.{3 if key == 'p50' else 0}f} | {mid:.3f}x | {worst:.3f}x |")
        lines.append(f"| {name} |" + "".join(cells))
    return "\n".join(lines)


def _no_errors(point: LoadPoint, name: str) -> None:
    if point.errors:
        raise RuntimeError(f"{name}: requests failed: {point.errors}")


# --- burst -------------------------------------------------------------------------------------


@contextmanager
def served_model(args: argparse.Namespace, what: str):
    """`edgecnn serve MODEL --server-args` and the load generator; yields (server, loadgen, model name, spec)."""
    log = Path(tempfile.gettempdir()) / f"edgecnn-{what}.log"
    with start_edgecnn_server(args.model, args.server_args, log=log) as server, LoadGenerator(args.clients) as loadgen:
        name = read_metadata(args.model).name
        spec, _ = fetch_model_spec(server.address, name)
        yield server, loadgen, name, spec


def burst(args: argparse.Namespace) -> str:
    with served_model(args, "burst") as (server, loadgen, name, spec):
        pid = server.process.pid
        images = args.images or ServeSettings.max_batch_size
        requests = build_requests(spec, images, 4)
        loadgen.closed_loop("warm-up", server.address, requests, images, 2, warmup_s=0.2, duration_s=1.0)
        time.sleep(args.settle)
        before = rss_mib(pid)
        point = loadgen.closed_loop("burst", server.address, requests, images, CONCURRENCY, warmup_s=0.0,
                                    duration_s=args.seconds)
        peak = rss_mib(pid)["VmHWM"]
        time.sleep(1.0)
        after_1s = rss_mib(pid)["VmRSS"]
        time.sleep(max(0.0, args.settle - 1.0))
        settled = rss_mib(pid)["VmRSS"]
    request_mib = len(requests[0]) / 2**20
    return "\n".join([
        f"Machine: {machine_line()}. Model: {args.model} ({name}, input {list(spec.inputs[0].shape)}). "
        f"Server flags: {args.server_args or '(defaults)'}.",
        "",
        "| requests of | streams | seconds | requests answered | errors | RSS before (MiB) | peak | after 1 s idle "
        f"| after {args.settle:g} s idle | settled - before |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        f"| {images} images ({request_mib:.2f} MiB) | {CONCURRENCY} | {args.seconds:g} "
        f"| {point.requests_per_s * args.seconds:,.0f} | {point.errors or 'none'} | {before['VmRSS']:.1f} "
        f"| {peak:.1f} | {after_1s:.1f} | {settled:.1f} | {settled - before['VmRSS']:+.1f} |",
    ])


# --- soak --------------------------------------------------------------------------------------


def soak(args: argparse.Namespace) -> str:
    with served_model(args, "soak") as (server, loadgen, name, spec):
        pid = server.process.pid
        requests = build_requests(spec, 1, 8)
        top = loadgen.closed_loop("max", server.address, requests, 1, CONCURRENCY, warmup_s=1.0, duration_s=5.0)
        rate = args.fraction * top.requests_per_s
        start_rss = rss_mib(pid)["VmRSS"]
        rows = []
        for minute in range(1, args.minutes + 1):
            point = loadgen.open_loop("soak", server.address, requests, 1, rate, warmup_s=0.0, duration_s=60.0,
                                      seed=minute)
            memory = rss_mib(pid)["VmRSS"]
            latency = point.latency
            rows.append(f"| {minute} | {point.requests_per_s * 60:,.0f} | {sum(point.errors.values())} "
                        f"| {latency.p50_ms:.2f} | {latency.p99_ms:.2f} | {memory:.1f} "
                        f"| {'yes' if point.client.saturated else 'no'} |")
            print(rows[-1], file=sys.stderr)
    return "\n".join([
        f"Machine: {machine_line()}. Model: {args.model} ({name}). Maximum: {top.requests_per_s:,.0f} req/s "
        f"(1-image RPCs, concurrency {CONCURRENCY}, 5 s); soak at {args.fraction:.0%} of it: {rate:,.0f} req/s Poisson, "
        f"{args.minutes} min. RSS at the start: {start_rss:.1f} MiB.",
        "",
        "| minute | requests | errors | p50 ms | p99 ms | RSS MiB | client saturated |",
        "|---:|---:|---:|---:|---:|---:|---|",
        *rows,
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="what", required=True)
    for name, helptext in (("security", "TLS, mTLS and token cost"), ("burst", "RSS after the largest requests"),
                           ("soak", "a long run at a fraction of the maximum rate"),
                           ("before-after", "the hot path of another checkout beside this one")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("model", type=Path, help="an exported MODEL.onnx")
        sub.add_argument("--server-args", default="", help="more `edgecnn serve` flags")
        sub.add_argument("--clients", type=int, default=1, help="load-generator processes")
        sub.add_argument("--out", type=Path, help="also write the markdown block to this file")
        if name == "before-after":
            sub.add_argument("--before-python", required=True, help="python of a venv with the other edgecnn")
        if name in ("security", "before-after"):
            sub.add_argument("--rounds", type=int, default=5)
            sub.add_argument("--window", type=float, default=3.0, help="seconds measured per point")
            sub.add_argument("--warmup", type=float, default=0.5, help="unrecorded load before each point")
        if name == "burst":
            sub.add_argument("--seconds", type=float, default=10.0)
            sub.add_argument("--images", type=int, default=0, help="images per request (0: the default limit)")
            sub.add_argument("--settle", type=float, default=5.0, help="idle seconds before the last reading")
        if name == "soak":
            sub.add_argument("--minutes", type=int, default=10)
            sub.add_argument("--fraction", type=float, default=0.8)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    command = command_line("edgecnn.benchmarks.hardening", argv)
    body = {"security": security, "burst": burst, "soak": soak, "before-after": before_after}[args.what](args)
    print_block(f"```\n{command}\n```\n\n{body}", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
