"""PNG plots of a bench run (matplotlib, Agg backend: no display needed).

- ``inprocess.png``: images/s against batch size, one line per variant and provider.
- ``latency_vs_throughput_<label>.png``: p50/p90/p99 against requests/s over the sweep, served and echo.
- ``latency_histogram_<label>.png``: latency distributions at single stream and at the highest throughput.
- ``comparison.png`` (two or more variants): every served variant's p50 and p99 against requests/s on one
  axes, and every variant's in-process images/s (its best layout) against batch size.

Axes read as plain numbers (1, 2, 5, 10 ms; 500, 1k, 2k images/s), never as powers of ten, and only
major ticks are labelled, so no two labels overlap.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from edgecnn.benchmarks.inprocess import InProcessResult
from edgecnn.benchmarks.scenarios import ServedRun

PERCENTILE_STYLES = (("p50_ms", "p50", "o", "C0"), ("p90_ms", "p90", "s", "C1"), ("p99_ms", "p99", "^", "C3"))
MOST_TICKS = 8  # labels on one axis; more and they crowd a 6-inch axis
# Mantissas of log-axis ticks, per decade: 1-2-5 first; finer for an axis spanning less than a decade.
STEPS_125 = (1, 2, 5)
STEPS_FINE = (1, 1.5, 2, 3, 4, 5, 6, 7, 8)


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
    if len(variants_of(inprocess, served)) > 1:
        paths.append(plot_comparison(inprocess, served, folder / "comparison.png"))
    return paths


def variants_of(inprocess: list[InProcessResult], served: list[ServedRun]) -> list[str]:
    """The variants a run measured (fp32, int8, ...), in the order they were measured."""
    names = [r.variant for r in inprocess] + [run.label for run in served if run.points]
    return list(dict.fromkeys(names))


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
    _batch_size_axis(ax, [r.batch_size for r in results])
    _plain_linear_axis(ax.yaxis)
    ax.set_ylabel("images/s")
    ax.set_title("In-process onnxruntime throughput")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_latency_vs_throughput(run: ServedRun, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for target, line in (("served", "-"), ("echo", ":")):
        points = [getattr(p, target) for p in run.points if getattr(p, target) is not None]
        closed = _closed_sweep(points)
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
    _latency_axes(ax, f"{run.label}: latency vs throughput ({run.batch_size} image(s)/request, closed-loop sweep)")
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
            readable_log_axis(ax.xaxis)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("requests")
        ax.set_title(f"{run.label}: {title}")
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_comparison(inprocess: list[InProcessResult], served: list[ServedRun], path: Path) -> Path:
    """Every variant side by side: served p50/p99 against requests/s (one colour per variant, the first
    run's echo as the transport floor), and in-process images/s of each variant's best layout by batch size."""
    plt = _pyplot()
    runs = [run for run in served if run.points]
    panels = (["served"] if runs else []) + (["inprocess"] if inprocess else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    colors = {variant: f"C{i}" for i, variant in enumerate(variants_of(inprocess, served))}
    for ax, panel in zip(axes[0], panels):
        if panel == "served":
            _served_comparison(ax, runs, colors)
        else:
            _inprocess_comparison(ax, inprocess, colors)
    return _save(fig, path)


def _served_comparison(ax, runs: list[ServedRun], colors: dict[str, str]) -> None:
    for run in runs:
        closed = _closed_sweep([p.served for p in run.points])
        for key, name, line, marker in (("p50_ms", "p50", "-", "o"), ("p99_ms", "p99", "--", "^")):
            ax.plot([p.requests_per_s for p in closed], [getattr(p.latency, key) for p in closed], line,
                    marker=marker, color=colors[run.label], label=f"{run.label} {name}")
    echo = next((run for run in runs if any(p.echo and p.echo.latency for p in run.points)), None)
    if echo:
        floor = _closed_sweep([p.echo for p in echo.points if p.echo])
        ax.plot([p.requests_per_s for p in floor], [p.latency.p50_ms for p in floor], ":", marker=".",
                color="grey", label="echo p50 (transport floor)")
    _latency_axes(ax, f"Served: latency vs throughput ({runs[0].batch_size} image(s)/request)")


def _closed_sweep(points: list) -> list:
    """The closed-loop points that were answered, by concurrency."""
    return sorted((p for p in points if p.mode == "closed" and p.latency), key=lambda p: p.concurrency)


def _latency_axes(ax, title: str) -> None:
    """Latency (log, in ms) against requests/s, both labelled as plain numbers."""
    ax.set_yscale("log")
    readable_log_axis(ax.yaxis)
    _plain_linear_axis(ax.xaxis)
    ax.set_xlabel("requests/s")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)


def _inprocess_comparison(ax, results: list[InProcessResult], colors: dict[str, str]) -> None:
    for variant in dict.fromkeys(r.variant for r in results):
        best: dict[int, float] = {}
        for r in results:
            if r.variant == variant:
                best[r.batch_size] = max(best.get(r.batch_size, 0.0), r.images_per_s)
        sizes = sorted(best)
        ax.plot(sizes, [best[b] for b in sizes], marker="o", color=colors[variant], label=variant)
    _batch_size_axis(ax, [r.batch_size for r in results])
    ax.set_ylim(bottom=0)
    _plain_linear_axis(ax.yaxis)
    ax.set_ylabel("images/s")
    ax.set_title("In-process: images/s of the best layout")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def log_ticks(low: float, high: float, most: int = MOST_TICKS) -> list[float]:
    """Tick values for a log axis over [low, high] that read as plain numbers: 1, 2, 5 per decade (finer on
    an axis spanning less than a decade, round values on a very short one), thinned to powers of ten, then every few decades, to at most ``most``."""
    if not 0 < low < high:
        return []
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)

    def within(steps: tuple[float, ...]) -> list[float]:
        values = (float(f"{step * 10.0 ** decade:.12g}") for decade in decades for step in steps)
        return [v for v in values if low <= v <= high]

    ticks = within(STEPS_125)
    if len(ticks) < 2:
        ticks = within(STEPS_FINE)
    if len(ticks) < 2:  # a tenth of a decade or less: evenly spaced round values
        from matplotlib.ticker import MaxNLocator

        return [float(f"{v:.12g}") for v in MaxNLocator(4).tick_values(low, high) if low <= v <= high]
    powers, every = within((1,)), 1
    while len(ticks) > most:
        ticks, every = powers[::every], every + 1
    return ticks


def tick_label(value: float) -> str:
    """A tick as a plain number: 0.5, 2, 20, 500, 1k, 2.5k, 10k, 2M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def readable_log_axis(axis) -> None:
    """Label a log axis (after its data is drawn) at plain 1-2-5 values; its minor ticks stay unlabelled."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    low, high = sorted(axis.get_view_interval())
    ticks = log_ticks(low, high)
    if ticks:
        axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda value, _: tick_label(value)))
    axis.set_minor_formatter(NullFormatter())


def _plain_linear_axis(axis) -> None:
    """A linear axis labelled 500, 1k, 1.5k, ... (no "1e5" offset above it)."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: tick_label(value)))


def _batch_size_axis(ax, batch_sizes: list[int]) -> None:
    """A log2 x axis with a tick at each measured batch size, written as the number."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(batch_sizes))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("batch size")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
