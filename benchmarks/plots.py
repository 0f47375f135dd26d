"""PNG plots of a bench run (matplotlib, Agg backend: no display needed).

- ``inprocess.png``: images/s against batch size, one line per variant and provider.
- ``latency_vs_throughput_<label>.png``: p50/p90/p99 against requests/s over the sweep, served and echo.
- ``latency_histogram_<label>.png``: latency distributions at single stream and at the highest throughput.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgecnn.benchmarks.inprocess import InProcessResult
from edgecnn.benchmarks.scenarios import ServedRun

PERCENTILE_STYLES = (("p50_ms", "p50", "o", "C0"), ("p90_ms", "p90", "s", "C1"), ("p99_ms", "p99", "^", "C3"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


PLOTS_EXTRA_HINT = "no plots: matplotlib is not installed (pip install 'edgecnn[plots]')"


def plots_available() -> bool:
    """Plots need matplotlib, the `plots` extra: the edge install (`edgecnn[serve]`) leaves it out (~70 MB)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(folder: Path, inprocess: list[InProcessResult], served: list[ServedRun]) -> list[Path]:
    """Every plot of a run; none (and the caller says why) without matplotlib."""
    if not plots_available():
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if inprocess:
        paths.append(plot_inprocess(inprocess, folder / "inprocess.png"))
    for run in served:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", run.label)
        if run.points:
            paths.append(plot_latency_vs_throughput(run, folder / f"latency_vs_throughput_{slug}.png"))
            paths.append(plot_histograms(run, folder / f"latency_histogram_{slug}.png"))
    return paths


def plot_inprocess(results: list[InProcessResult], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[InProcessResult]] = {}
    for r in results:
        provider = r.provider.replace("ExecutionProvider", "")
        series.setdefault(f"{r.variant} ({provider}, {r.layout})", []).append(r)
    for name, rows in series.items():
        rows.sort(key=lambda r: r.batch_size)
        ax.plot([r.batch_size for r in rows], [r.images_per_s for r in rows], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    ax.set_title("In-process onnxruntime throughput")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_latency_vs_throughput(run: ServedRun, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for target, line in (("served", "-"), ("echo", ":")):
        points = [getattr(p, target) for p in run.points if getattr(p, target) is not None]
        closed = sorted((p for p in points if p.mode == "closed" and p.latency), key=lambda p: p.concurrency)
        for key, name, marker, color in PERCENTILE_STYLES:
            if closed:
                ax.plot([p.requests_per_s for p in closed], [getattr(p.latency, key) for p in closed],
                        line, marker=marker, color=color, label=f"{target} {name}")
        opened = [p for p in points if p.mode == "open" and p.latency]
        if opened:
            ax.scatter([p.requests_per_s for p in opened], [p.latency.p99_ms for p in opened], marker="x",
                       color="C3" if target == "served" else "C7", label=f"{target} p99, Poisson")
    if "server" in run.scenarios:
        ax.axhline(run.scenarios["server"]["latency_bound_ms"], color="grey", linewidth=0.8, label="p99 bound")
    ax.set_yscale("log")
    ax.set_xlabel("requests/s")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{run.label}: latency vs throughput ({run.batch_size} image(s)/request, closed-loop sweep)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


def plot_histograms(run: ServedRun, path: Path) -> Path:
    plt = _pyplot()
    single = next((p for p in run.points if p.served.mode == "closed" and p.served.concurrency == 1), None)
    busiest = max(run.points, key=lambda p: p.served.requests_per_s)
    panels = [(f"concurrency {p.served.concurrency}" if p.served.mode == "closed" else f"{p.served.rate:g} req/s", p)
              for p in ([single] if single else []) + ([busiest] if busiest is not single else [])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, point) in zip(axes[0], panels):
        samples = [(name, p.latencies_s * 1e3) for name, p in (("served", point.served), ("echo", point.echo))
                   if p is not None and p.latencies_s.size]
        if samples:
            everything = np.concatenate([s for _, s in samples])
            bins = np.geomspace(max(everything.min(), 1e-3), everything.max() * 1.01, 60)
            for name, values in samples:
                ax.hist(values, bins=bins, alpha=0.6, label=f"{name} (p50 {np.median(values):.2f} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("requests")
        ax.set_title(f"{run.label}: {title}")
        ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
