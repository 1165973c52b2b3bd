"""PNG figures for compare reports and sweeps, drawn with matplotlib's object API.

`matplotlib.figure.Figure` renders through the Agg canvas by itself, so nothing here touches
pyplot's global state or needs a display: it works the same in a test, over ssh and in CI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

from tracer.compare import DELTA_COLUMNS, Comparison, delta_rows, expert_mean
from tracer.frames import Trace

COLORS = ("#1f77b4", "#d62728")  # A, B: the same pair in every figure
DPI = 110


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


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


def throughput_series(trace: Trace, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Generated tokens per second in time bins `width` seconds wide: (bin centres, tok/s).

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


def _mark_lines(ax, trace: Trace, color: str) -> None:
    for t in trace.marks.get_column("t_s").to_list():
        ax.axvline(t, color=color, linestyle=":", linewidth=1)


def plot_timeline(a: Trace, b: Trace, names: tuple[str, str], path: str | os.PathLike[str]) -> None:
    """Throughput and batch size over time since each recording's start; marks as dotted lines."""
    fig = Figure(figsize=(10, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    width = bin_width((a, b))
    for trace, name, color in zip((a, b), names, COLORS):
        x, y = throughput_series(trace, width)
        top.plot(x, y, color=color, label=name)
        t = trace.ticks
        bottom.step(t.get_column("end_s").to_numpy(), t.get_column("seqs").to_numpy(),
                    where="post", color=color, label=name, linewidth=0.8)
        _mark_lines(top, trace, color)
        _mark_lines(bottom, trace, color)
    top.set_ylabel(f"throughput (tok/s, {width * 1000:.0f} ms bins)")
    top.set_title("throughput and batch over time")
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
    """The delta table as an image, winners' cells tinted in their recording's colour."""
    rows = delta_rows(comparison)
    fig = Figure(figsize=(10, 0.3 * (len(rows) + 3)))
    ax = fig.subplots()
    ax.set_axis_off()
    header = list(DELTA_COLUMNS)
    # The names go in the title: in the column headers long file names ran into each other.
    ax.set_title(f"A: {comparison.a_name}    B: {comparison.b_name}", fontsize=10, loc="left")
    # The table fills the axes, so the figure holds no empty band above and below it.
    table = ax.table(cellText=[list(r) for r in rows], colLabels=header, bbox=[0, 0, 1, 1], cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    tint = {"A": "#d6e6f5", "B": "#f7d6d6"}
    for i, d in enumerate(comparison.deltas, start=1):
        if d.winner in tint:
            table[i, len(header) - 1].set_facecolor(tint[d.winner])
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
    throughput: float | None  # tok/s
    latency_p50: float | None  # s
    latency_p99: float | None  # s
    active_share: float | None


def plot_sweep(
    points: Sequence[CurvePoint],
    knee: int | None,
    path: str | os.PathLike[str],
    *,
    latency_name: str,
    rule: str,
) -> None:
    """Throughput against p50 and p99 latency (a labelled dot per grid cell), and experts active
    share against the window; the knee ringed in every panel and the rule written under them."""
    fig = Figure(figsize=(15, 5))
    ax50, ax99, axe = fig.subplots(1, 3)
    caps = sorted({p.max_seqs for p in points}, key=lambda c: (c is None, c or 0))
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for ax, attr, pct in ((ax50, "latency_p50", "p50"), (ax99, "latency_p99", "p99")):
        for ci, cap in enumerate(caps):
            pts = sorted((p for p in points if p.max_seqs == cap and getattr(p, attr) is not None
                          and p.throughput is not None), key=lambda p: p.window_ms)
            xs = [getattr(p, attr) * 1000 for p in pts]
            ys = [p.throughput for p in pts]
            label = "grid" if cap is None else f"max seqs {cap}"
            ax.plot(xs, ys, "o-", color=palette[ci % len(palette)], label=label)
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(p.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if knee is not None and getattr(points[knee], attr) is not None and points[knee].throughput is not None:
            ax.plot(getattr(points[knee], attr) * 1000, points[knee].throughput, "o", markersize=16,
                    markerfacecolor="none", markeredgecolor="black", markeredgewidth=2, label="knee")
        ax.set_xscale("log")
        # Plain numbers on the log axis: "2000" reads faster than "2×10³" beside its neighbours.
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{latency_name} {pct} (ms)")
        ax.set_ylabel("throughput (tok/s)")
        ax.set_title(f"throughput vs {pct} latency")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=8)
    for ci, cap in enumerate(caps):
        pts = sorted((p for p in points if p.max_seqs == cap and p.active_share is not None),
                     key=lambda p: p.window_ms)
        axe.plot([p.window_ms for p in pts], [p.active_share * 100 for p in pts], "o-",
                 color=palette[ci % len(palette)], label="grid" if cap is None else f"max seqs {cap}")
    if knee is not None and points[knee].active_share is not None:
        axe.plot(points[knee].window_ms, points[knee].active_share * 100, "o", markersize=16,
                 markerfacecolor="none", markeredgecolor="black", markeredgewidth=2, label="knee")
    # symlog: the grid usually starts at 0 ms (continuous batching) and spans orders of magnitude.
    axe.set_xscale("symlog", linthresh=1)
    axe.set_xlabel("collection window (ms)")
    axe.set_ylabel("experts active (% of layer × expert cells)")
    axe.set_title("experts active vs window")
    axe.grid(alpha=0.3, which="both")
    axe.legend(loc="best", fontsize=8)
    fig.text(0.5, -0.02, rule, ha="center", va="top", fontsize=9, wrap=True)
    _save(fig, path)
