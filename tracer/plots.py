"""PNG figures for compare reports and sweeps, drawn with matplotlib's object API.

`matplotlib.figure.Figure` renders through the Agg canvas by itself, so nothing here touches
pyplot's global state or needs a display: it works the same in a test, over ssh and in CI.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter
from matplotlib.transforms import Bbox

from tracer.atomic import atomic_path
from tracer.compare import DELTA_COLUMNS, NOT_JUDGED, Comparison, delta_rows, expert_mean, headline
from tracer.frames import Trace

COLORS = ("#1f77b4", "#d62728")  # A, B: the same pair in every figure
DPI = 110


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=DPI, bbox_inches="tight")


def _plain(text: str) -> str:
    """Text matplotlib shows as written: a pair of "$" would start its math mode ("$0.73 vs $0.23")."""
    return text.replace("$", r"\$")


def bin_width(traces: Sequence[Trace], bins: int = 80) -> float:
    """One time bin for every recording in a figure: about `bins` over the longest, and at least
    two of the slowest recording's typical tick gaps, so a 200 ms window does not alias into a
    sawtooth of full and empty bins."""
    span, gap = 0.0, 0.0
    for trace in traces:
        end = trace.ticks.get_column("end_s").to_numpy()
        if len(end):
            span = max(span, float(end.max()))
        if len(end) > 1:
            gap = max(gap, float(np.median(np.diff(end))))
    return max(span / bins, 2 * gap, 1e-3)


def served_rate_series(trace: Trace, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Served rate: generated tokens per second in time bins `width` seconds wide: (bin centres, tok/s).

    Binned by time rather than per tick so two recordings with very different tick rates read
    on the same scale (a per-tick rate swings with every collection window).
    """
    ticks = trace.ticks
    if ticks.height == 0:
        return np.zeros(0), np.zeros(0)
    end = ticks.get_column("end_s").to_numpy()
    tokens = ticks.get_column("decode_tokens").to_numpy().astype(np.float64)
    edges = np.arange(0.0, float(end.max()) + width, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    counts, _ = np.histogram(end, bins=edges, weights=tokens)
    return (edges[:-1] + edges[1:]) / 2, counts / width


def _mark_lines(ax: Axes, trace: Trace, color: str) -> None:
    for t in trace.marks.get_column("t_s").to_list():
        ax.axvline(t, color=color, linestyle=":", linewidth=1)


def plot_timeline(a: Trace, b: Trace, names: tuple[str, str], path: str | os.PathLike[str]) -> None:
    """Served rate and batch size over time since each recording's start; marks as dotted lines."""
    fig = Figure(figsize=(10, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    width = bin_width((a, b))
    for trace, name, color in zip((a, b), names, COLORS):
        x, y = served_rate_series(trace, width)
        top.plot(x, y, color=color, label=name)
        t = trace.ticks
        bottom.step(
            t.get_column("end_s").to_numpy(),
            t.get_column("seqs").to_numpy(),
            where="post",
            color=color,
            label=name,
            linewidth=0.8,
        )
        _mark_lines(top, trace, color)
        _mark_lines(bottom, trace, color)
    top.set_ylabel(f"served rate (tok/s, {width * 1000:.0f} ms bins)")
    top.set_title("served rate and batch over time")
    top.legend(loc="upper right")
    bottom.set_ylabel("batch (sequences)")
    bottom.set_xlabel("seconds since start")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    _save(fig, path)


def _cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(values)
    return v, np.arange(1, len(v) + 1) / len(v)


def plot_latency_cdfs(a: Trace, b: Trace, names: tuple[str, str], path: str | os.PathLike[str]) -> None:
    """Empirical CDFs of TTFT and TPOT of finished requests, in milliseconds, log x."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, col, label in zip(axes, ("ttft_s", "tpot_s"), ("TTFT", "TPOT")):
        for trace, name, color in zip((a, b), names, COLORS):
            values = trace.requests.get_column(col).drop_nulls().to_numpy() * 1000
            values = values[values > 0]  # log axis
            if len(values):
                x, y = _cdf(values)
                ax.step(x, y, where="post", color=color, label=f"{name} (n={len(values)})")
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (ms)")
        ax.set_ylabel("share of requests")
        ax.set_title(f"{label} CDF")
        ax.grid(alpha=0.3, which="both")
    # One legend under both plots: inside either it covered the curves' lower ends.
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, -0.02))
        fig.subplots_adjust(bottom=0.22)
    _save(fig, path)


def plot_expert_heatmaps(a: Trace, b: Trace, names: tuple[str, str], path: str | os.PathLike[str]) -> None:
    """Mean tokens per tick on each expert (columns) of each layer (rows), side by side.

    One colour scale for both when their shapes match, so brighter means more load in either.
    """
    grids = [expert_mean(a), expert_mean(b)]
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 2)
    same_shape = all(g is not None for g in grids) and grids[0].shape == grids[1].shape  # type: ignore[union-attr]
    vmax = max(float(g.max()) for g in grids if g is not None) if same_shape else None
    for ax, grid, name in zip(axes, grids, names):
        ax.set_title(name)
        if grid is None:
            ax.text(0.5, 0.5, "no expert load in this trace", ha="center", va="center")
            ax.set_axis_off()
            continue
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=ax, label="mean tokens / tick")
    fig.suptitle("expert load, mean over the recording")
    _save(fig, path)


def plot_delta_table(comparison: Comparison, path: str | os.PathLike[str]) -> None:
    """The delta table as an image, winners' cells tinted in their recording's colour, the headline
    above it."""
    rows = delta_rows(comparison)
    fig = Figure(figsize=(11, 0.3 * (len(rows) + 5)))
    ax = fig.subplots()
    ax.set_axis_off()
    header = list(DELTA_COLUMNS)
    # The names go in the title: in the column headers long file names ran into each other.
    title = f"A: {comparison.a_name}    B: {comparison.b_name}\n" + "\n".join(textwrap.wrap(headline(comparison), 120))
    ax.set_title(_plain(title), fontsize=10, loc="left")
    # The table fills the axes, so the figure holds no empty band above and below it.
    table = ax.table(
        cellText=[[_plain(c) for c in r] for r in rows],
        colLabels=header,
        cellLoc="right",
        bbox=Bbox.from_bounds(0, 0, 1, 1),
        colWidths=[0.32, 0.16, 0.16, 0.14, 0.22],
    )  # room for the longest names
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    tint = {"A": "#d6e6f5", "B": "#f7d6d6"}
    for i, d in enumerate(comparison.deltas, start=1):
        if d.winner in tint:
            table[i, len(header) - 1].set_facecolor(tint[d.winner])
        elif d.winner == NOT_JUDGED:
            table[i, len(header) - 1].set_text_props(color="#777777", style="italic")
    for j in range(len(header)):
        table[0, j].set_text_props(weight="bold")
    for i in range(len(rows) + 1):  # names read from the left, numbers from the right
        for j in (0, len(header) - 1):
            table[i, j].set_text_props(ha="left")
            table[i, j].PAD = 0.05
    _save(fig, path)


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One grid cell of a sweep, as the sweep plot needs it."""

    label: str
    window_ms: float
    max_seqs: int | None
    cost: float | None  # per output token(s), in the sweep's cost measure
    capacity: float | None  # output tok/s per busy second
    latency_p50: float | None  # s
    latency_p99: float | None  # s
    experts_touched: float | None  # distinct experts per tick and layer
    experts_uniform: float | None  # the same under uniform routing


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _ring(ax: Axes, x: float | None, y: float | None) -> None:
    if x is not None and y is not None:
        ax.plot(
            x, y, "o", markersize=16, markerfacecolor="none", markeredgecolor="black", markeredgewidth=2, label="knee"
        )


def plot_sweep(
    points: Sequence[CurvePoint],
    knee: int | None,
    path: str | os.PathLike[str],
    *,
    cost_name: str,
    latency_name: str,
    rule: str,
) -> None:
    """What a token costs against the latency each user pays: cost against p50 and p99 latency,
    capacity against p99 latency (a labelled dot per grid cell, a line per max-seqs cap), and the
    experts a tick touches against the window; the knee ringed in every panel and its rule under them."""
    fig = Figure(figsize=(13, 9), layout="constrained")  # keeps the four panels' labels apart
    (ax50, ax99), (axcap, axe) = fig.subplots(2, 2)
    caps = sorted({p.max_seqs for p in points}, key=lambda c: (c is None, c or 0))
    at_knee = points[knee] if knee is not None else None
    panels = (
        (ax50, "latency_p50", "p50", "cost", cost_name),
        (ax99, "latency_p99", "p99", "cost", cost_name),
        (axcap, "latency_p99", "p99", "capacity", "capacity (output tok/s per busy second)"),
    )
    for ax, attr, pct, value, value_name in panels:
        for ci, cap in enumerate(caps):
            pts = sorted(
                (
                    p
                    for p in points
                    if p.max_seqs == cap and getattr(p, attr) is not None and getattr(p, value) is not None
                ),
                key=lambda p: p.window_ms,
            )
            xs = [getattr(p, attr) * 1000 for p in pts]
            ys = [getattr(p, value) for p in pts]
            label = "grid" if cap is None else f"max seqs {cap}"
            ax.plot(xs, ys, "o-", color=_PALETTE[ci % len(_PALETTE)], label=label)
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(p.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if at_knee is not None and getattr(at_knee, attr) is not None:
            _ring(ax, getattr(at_knee, attr) * 1000, getattr(at_knee, value))
        ax.set_xscale("log")
        # Plain numbers on the log axis: "2000" reads faster than "2×10³" beside its neighbours.
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{latency_name} {pct} (ms)")
        ax.set_ylabel(_plain(value_name))
        ax.set_title(f"{'cost' if value == 'cost' else 'capacity'} vs {latency_name} {pct}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=8)
    for ci, cap in enumerate(caps):
        color = _PALETTE[ci % len(_PALETTE)]
        pts = sorted(
            (
                p
                for p in points
                if p.max_seqs == cap and p.experts_touched is not None and p.experts_uniform is not None
            ),
            key=lambda p: p.window_ms,
        )
        label = "grid" if cap is None else f"max seqs {cap}"
        axe.plot([p.window_ms for p in pts], [p.experts_touched for p in pts], "o-", color=color, label=label)
        axe.plot(
            [p.window_ms for p in pts],
            [p.experts_uniform for p in pts],
            "--",
            color=color,
            label=f"{label}: if routed uniformly",
        )
    if at_knee is not None:
        _ring(axe, at_knee.window_ms, at_knee.experts_touched)
    # symlog: the grid usually starts at 0 ms (continuous batching) and spans orders of magnitude.
    axe.set_xscale("symlog", linthresh=1)
    axe.set_xlabel("collection window (ms)")
    axe.set_ylabel("experts touched per tick and layer")
    axe.set_title("experts touched vs window")
    axe.grid(alpha=0.3, which="both")
    axe.legend(loc="best", fontsize=8)
    fig.supxlabel(_plain(rule), fontsize=10)
    _save(fig, path)
