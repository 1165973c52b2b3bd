"""Two recordings, figure by figure: which is better on each, by how much, and how their setups differ.

Built on `summarize` (the same figures `tickscope summary` prints; the pipeline bubble share is
modelled on one device and measured across ranks, and the table says which). Every figure has a
direction: for latency lower is better; for throughput,
goodput, batch size and experts active higher is better — the last two because expert weights are
read from memory once per tick whatever the batch, so a bigger batch that touches more experts
gets more tokens out of each read (the efficiency the article is about).

"By how much" is a ratio when both values are positive (`2.4× lower`, or `18% higher` under 2×),
else an absolute difference (`5 fewer`). Figures within `SAME_WITHIN` of each other are called
even: recordings on a shared CPU jitter by about that much run to run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from rich import box
from rich.table import Table

from tracer.frames import Trace
from tracer.pipeline import bubble_share as stage_bubble_share, timeline_kind
from tracer.summary import summarize

SAME_WITHIN = 0.01  # relative difference under which two figures are reported as even


@dataclass(frozen=True, slots=True)
class Figure:
    key: str  # the figure's key in `figures()`
    label: str
    unit: str  # "s" (shown in ms), "tok/s", "req/s", "share", "×", "count", "seqs"
    higher_is_better: bool


FIGURES: tuple[Figure, ...] = (
    Figure("throughput_tok_s", "throughput", "tok/s", True),
    Figure("ttft_p50_s", "TTFT p50", "s", False),
    Figure("ttft_p99_s", "TTFT p99", "s", False),
    Figure("tpot_p50_s", "TPOT p50", "s", False),
    Figure("tpot_p99_s", "TPOT p99", "s", False),
    Figure("goodput_req_s", "goodput", "req/s", True),
    Figure("mean_batch_seqs", "mean batch", "seqs", True),
    Figure("experts_active_frac", "experts active", "share", True),
    Figure("expert_imbalance", "imbalance max/mean", "×", False),
    Figure("bubble_share", "bubble share", "share", False),
    Figure("requests_rejected", "rejections", "count", False),
)


@dataclass(frozen=True, slots=True)
class Delta:
    """One figure of both recordings, and the verdict on it."""

    figure: Figure
    a: float | None
    b: float | None

    @property
    def winner(self) -> str | None:
        """"A", "B", "even", or None when either recording lacks the figure."""
        if self.a is None or self.b is None:
            return None
        if _relative(self.a, self.b) <= SAME_WITHIN:
            return "even"
        b_higher = self.b > self.a
        return "B" if b_higher == self.figure.higher_is_better else "A"

    @property
    def by(self) -> str:
        """How much better the winner is, in words: "2.4× lower", "18% higher", "5 fewer"."""
        a, b, winner = self.a, self.b, self.winner
        if winner is None:
            return "no data"
        if winner == "even":
            return "same" if a == b else f"within {SAME_WITHIN:.0%}"
        assert a is not None and b is not None
        hi, lo = max(a, b), min(a, b)
        direction = "higher" if self.figure.higher_is_better else "lower"
        if lo > 0:
            ratio = hi / lo
            return f"{ratio:.1f}× {direction}" if ratio >= 2 else f"{(ratio - 1) * 100:.0f}% {direction}"
        if self.figure.unit == "count":
            return f"{hi - lo:g} {'more' if self.figure.higher_is_better else 'fewer'}"
        return f"{format_value(self.figure, hi - lo)} {direction}"

    @property
    def verdict(self) -> str:
        """"B, 2.4× lower" — the winner and by how much, in one cell."""
        winner = self.winner
        if winner in (None, "even"):
            return self.by
        return f"{winner}, {self.by}"


@dataclass(frozen=True, slots=True)
class ConfigDifference:
    key: str  # dotted path into header.config, e.g. "scheduler.window_ms"
    a: Any  # None when only B has the key
    b: Any


@dataclass(frozen=True, slots=True)
class Comparison:
    a_name: str
    b_name: str
    deltas: tuple[Delta, ...]
    config: tuple[ConfigDifference, ...]
    # where each side's stage timeline comes from: "modelled", "measured", "mixed" or None (no stages)
    stage_timelines: tuple[str | None, str | None] = (None, None)

    def delta(self, key: str) -> Delta:
        return next(d for d in self.deltas if d.figure.key == key)

    def tally(self) -> dict[str, int]:
        """Figures won by A, by B, even, and without data."""
        counts = {"A": 0, "B": 0, "even": 0, "no data": 0}
        for d in self.deltas:
            counts[d.winner or "no data"] += 1
        return counts


def _relative(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


def bubble_share(trace: Trace) -> float | None:
    """Share of stage-time idle on the pipeline timeline (warmup, drain, bubbles), summed over ticks;
    None without stage cells. Defined once, in tracer/pipeline.py, for the summary and here alike."""
    return stage_bubble_share(trace.stages)


def figures(trace: Trace, summary: dict[str, Any] | None = None) -> dict[str, float | None]:
    """The compared figures of one recording (pass its `summarize` result to skip recomputing)."""
    summary = summarize(trace) if summary is None else summary
    values: dict[str, float | None] = {}
    for fig in FIGURES:
        v = summary.get(fig.key)
        values[fig.key] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
    return values


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {"dotted.key": leaf}; lists stay whole (they are compared as values)."""
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


# What a reader wants to see first when two setups differ; the rest follows alphabetically.
_SECTION_ORDER = ("preset", "model", "device", "scheduler", "workload", "seed", "duration_s")


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> tuple[ConfigDifference, ...]:
    """Keys whose values differ between two header configs (a key one lacks counts as None there).

    Software versions and the platform string are left out: they differ between any two machines
    and say nothing about the setup being compared.
    """
    fa, fb = flatten(a), flatten(b)

    def rank(key: str) -> tuple[int, str]:
        top = key.split(".", 1)[0]
        return (_SECTION_ORDER.index(top) if top in _SECTION_ORDER else len(_SECTION_ORDER), key)

    keys = sorted((k for k in fa.keys() | fb.keys() if not k.startswith("versions.")), key=rank)
    return tuple(ConfigDifference(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k))


def compare(a: Trace, b: Trace, *, a_name: str = "A", b_name: str = "B") -> Comparison:
    """Every figure of both recordings with its verdict, and their configuration differences."""
    fa, fb = figures(a), figures(b)
    deltas = tuple(Delta(fig, fa[fig.key], fb[fig.key]) for fig in FIGURES)
    cfg_a = a.header.config if isinstance(a.header.config, dict) else {}
    cfg_b = b.header.config if isinstance(b.header.config, dict) else {}
    kinds = (timeline_kind(a.stages), timeline_kind(b.stages))
    return Comparison(a_name, b_name, deltas, config_diff(cfg_a, cfg_b), kinds)


def format_value(figure: Figure, value: float | None) -> str:
    """A figure's value in the unit people read it in (latencies in ms, shares in %)."""
    if value is None:
        return "—"
    if figure.unit == "s":
        return f"{value * 1000:.2f} ms" if abs(value) < 10 else f"{value:.2f} s"
    if figure.unit == "share":
        return f"{value:.1%}"
    if figure.unit == "count":
        return f"{value:,.0f}"
    if figure.unit == "×":
        return f"{value:.2f}×"
    if figure.unit == "seqs":
        return f"{value:.2f}"
    return f"{value:,.1f} {figure.unit}"


def format_change(delta: Delta) -> str:
    """B relative to A: "+12.5%", or "×35.8" past a doubling or halving ("n/a" when A is 0 or missing)."""
    if delta.a is None or delta.b is None:
        return "n/a"
    if delta.a == 0:
        return "n/a" if delta.b != 0 else "+0%"
    ratio = delta.b / delta.a
    return f"×{ratio:.2f}" if ratio >= 2 or 0 < ratio <= 0.5 else f"{ratio - 1:+.1%}"


def format_config_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def figure_label(comparison: Comparison, figure: Figure) -> str:
    """The figure's name; the bubble share's says whether each side's timeline is modelled or measured."""
    a, b = comparison.stage_timelines
    if figure.key != "bubble_share" or (a is None and b is None):
        return figure.label
    return f"{figure.label} ({a})" if a == b else f"{figure.label} (A {a or '—'}, B {b or '—'})"


def delta_rows(comparison: Comparison) -> list[tuple[str, str, str, str, str]]:
    """The delta table as text rows: figure, A, B, B vs A, better."""
    return [
        (figure_label(comparison, d.figure), format_value(d.figure, d.a), format_value(d.figure, d.b),
         format_change(d), d.verdict)
        for d in comparison.deltas
    ]


DELTA_COLUMNS = ("figure", "A", "B", "B vs A", "better")


def delta_table(comparison: Comparison, title: str | None = None) -> Table:
    """The delta table as a rich Table (the terminal's and the dashboard's)."""
    table = Table(title=title, show_header=True, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in DELTA_COLUMNS:
        table.add_column(name, justify="left" if name in ("figure", "better") else "right", no_wrap=True)
    for row, d in zip(delta_rows(comparison), comparison.deltas):
        style = {"A": "cyan", "B": "magenta"}.get(d.winner or "", "dim")
        table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]")
    return table


def expert_mean(trace: Trace) -> np.ndarray | None:
    """Mean tokens per tick routed to each [layer, expert] over the whole recording."""
    if trace.expert_load is not None and len(trace.expert_load):
        return trace.expert_load.mean(axis=0)
    if trace.experts.height == 0:
        return None
    per_cell = trace.experts.group_by("layer", "expert").agg(pl.col("tokens").sum())
    layers = int(per_cell.get_column("layer").max()) + 1
    experts = int(per_cell.get_column("expert").max()) + 1
    grid = np.zeros((layers, experts))
    grid[per_cell.get_column("layer").to_numpy(), per_cell.get_column("expert").to_numpy()] = (
        per_cell.get_column("tokens").to_numpy()
    )
    return grid / max(trace.experts.get_column("tick").n_unique(), 1)
