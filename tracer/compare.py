"""Two recordings, figure by figure: what a token costs in each, what latency each user pays, which
is better on each figure and by how much, and how their setups differ.

Built on `summarize` (the figures `tickscope summary` prints; what a token costs is tracer/cost.py's).
The cost of a token leads: device time per processed and per output token and modelled bytes per
token (lower is better), capacity (higher is better). Then the latency each user pays (lower is
better), goodput, the batch and the pipeline. `headline` states the trade-off in one sentence: which
is cheaper per token (device time per processed token), which is faster to first token (p50 TTFT).

Some figures are shown but not judged (`Figure.higher_is_better` None), because which way is better
depends on the load rather than on the recording: the served rate (output tokens over the span:
under open-loop arrivals, the offered load) and the experts a tick touches (what they cost is in bytes
per token; the uniform-routing expectation is shown beside them). The pipeline bubble share is
modelled on one device and measured across ranks, and the table says which.

A pipelined recording's capacity and device time come from tracer/cost.py's busy time: each tick's
stage-timeline makespan with one device per stage, so capacity is tokens per makespan-second and
device time is makespan x stages (the comparison's notes say so).

A `Costing` costs both recordings' very ticks on an accelerator profile (modelled) and prices their
measured device time.

"By how much" is a ratio past a doubling (`2.4× lower`), else the difference as a share of the
other value (`18% higher`, `15% lower`), or an absolute difference from zero (`5 fewer`, `+2.5 req/s`).
Figures within `SAME_WITHIN` of each other are called even: recordings on a shared CPU jitter by
about that much run to run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table

from tracer.cost import CostUnavailable, accelerator
from tracer.frames import Trace, scalar_int
from tracer.pipeline import stage_ticks, timeline_kind
from tracer.summary import summarize

SAME_WITHIN = 0.01  # relative difference under which two figures are reported as even
NOT_JUDGED = "not judged"
SIDES = ("A", "B")


@dataclass(frozen=True, slots=True)
class Figure:
    key: str  # its key in `summarize`'s result; "accelerator.KEY" for a key of the modelled accelerator
    label: str  # "{accelerator}" stands for the modelled accelerator's name
    unit: str  # "s", "s/tok", "B/tok", "$/Mtok", "tok/s", "req/s", "share", "×", "count", "seqs", "experts"
    higher_is_better: bool | None  # None: shown but not judged, for the reason in `note`
    note: str = ""  # what the figure is, or why it is not judged (the report's "how to read")
    # a row only when "price" or "accelerator" costing was asked for, or when "stages" exist in either
    needs: str | None = None
    beside: str | None = None  # key of a reference figure shown in brackets beside this one's values


# What a token costs (tracer/cost.py's figures): the delta table leads with them.
COST_FIGURES: tuple[Figure, ...] = (
    Figure(
        "device_s_per_token",
        "device time/processed tok",
        "s/tok",
        False,
        "busy device time over prefill + decode tokens: the measured cost",
    ),
    Figure(
        "device_s_per_output_token", "device time/output tok", "s/tok", False, "busy device time over sampled tokens"
    ),
    Figure(
        "capacity_output_tok_s",
        "capacity",
        "tok/s",
        True,
        "output tokens per busy second: what the device would serve at this batch mix were it never idle",
    ),
    Figure(
        "served_rate_tok_s",
        "served rate",
        "tok/s",
        None,
        "output tokens over the recording's span: under open-loop arrivals the offered load, not efficiency",
    ),
    Figure(
        "usd_per_mtok_measured",
        "measured $/M output tok",
        "$/Mtok",
        False,
        "busy device time at the given price per device-hour",
        needs="price",
    ),
    Figure(
        "bytes_per_token",
        "modelled B/processed tok",
        "B/tok",
        False,
        "weights and KV a tick reads (dense weights once, its distinct active experts), per token",
    ),
    Figure(
        "experts_touched_per_layer",
        "experts/layer (uniform)",
        "experts",
        None,
        "distinct routed experts per tick and layer, and in brackets the same for a router choosing "
        "uniformly, E(1 - (1 - k/E)^T), the gap being the router's skew; what they cost is in bytes per token",
        beside="experts_expected_uniform",
    ),
    Figure(
        "accelerator.capacity_output_tok_s",
        "modelled capacity, {accelerator}",
        "tok/s",
        True,
        "output tokens per second of roofline time, the recording's own ticks on that accelerator",
        needs="accelerator",
    ),
    Figure(
        "accelerator.usd_per_mtok_modelled",
        "modelled $/M output tok, {accelerator}",
        "$/Mtok",
        False,
        "roofline time at that accelerator's price per hour",
        needs="accelerator",
    ),
)
# Every figure compare shows, in the order it shows them: one table.
FIGURES: tuple[Figure, ...] = COST_FIGURES + (
    Figure("ttft_p50_s", "TTFT p50", "s", False),
    Figure("ttft_p99_s", "TTFT p99", "s", False),
    Figure("tpot_p50_s", "TPOT p50", "s", False),
    Figure("tpot_p99_s", "TPOT p99", "s", False),
    Figure("goodput_req_s", "goodput", "req/s", True, "finished requests within the SLOs, per second of span"),
    Figure(
        "mean_batch_seqs",
        "mean batch",
        "seqs",
        True,
        "sequences per tick: weights are read once per tick, so a bigger batch spreads them over more tokens",
    ),
    Figure("expert_imbalance", "imbalance max/mean", "×", False),
    Figure("bubble_share", "bubble share", "share", False, "idle stage-time on the pipeline timeline", needs="stages"),
    Figure("requests_rejected", "rejections", "count", False),
)


@dataclass(frozen=True, slots=True)
class Costing:
    """What a token is costed on: an accelerator profile by name, modelled on each recording's own ticks
    (`this-device` is each recording's own device probe), and a price in $ per device-hour for the
    measured device time (it replaces the profile's price too)."""

    accelerator: str | None = None
    price: float | None = None

    def summarize(self, trace: Trace) -> tuple[dict[str, Any], str | None]:
        """`summarize(trace)` costed so, and why the accelerator could not be modelled (None when it
        could, or none was asked for). An unknown profile name raises `AcceleratorError`."""
        profile, why = None, None
        if self.accelerator is not None:
            try:
                profile = accelerator(self.accelerator, trace.header.config, usd_per_hour=self.price)
            except CostUnavailable as exc:
                why = exc.reason
        return summarize(trace, profile, self.price), why

    def shows(self, figure: Figure, pipelined: bool = False) -> bool:
        """Whether the delta table has a row for `figure` under this costing, `pipelined` when either
        recording has stage cells."""
        return {
            None: True,
            "price": self.price is not None,
            "accelerator": self.accelerator is not None,
            "stages": pipelined,
        }[figure.needs]


def _apart(hi: float, lo: float, higher: bool) -> str:
    """How far apart two positive values are, seen from the one named: "2.4× higher" past a doubling,
    else the difference as a share of the other: "18% higher" (hi over lo), "15% lower" (lo under hi)."""
    ratio = hi / lo
    if ratio >= 2:
        return f"{ratio:.1f}× {'higher' if higher else 'lower'}"
    return f"{ratio - 1:.0%} higher" if higher else f"{1 - lo / hi:.0%} lower"


@dataclass(frozen=True, slots=True)
class Delta:
    """One figure of both recordings, and the verdict on it."""

    figure: Figure
    a: float | None
    b: float | None
    beside: tuple[float | None, float | None] = (None, None)  # A's and B's `figure.beside`

    @property
    def winner(self) -> str | None:
        """ "A", "B", "even", "not judged", or None when either recording lacks the figure."""
        if self.a is None or self.b is None:
            return None
        if self.figure.higher_is_better is None:
            return NOT_JUDGED
        if _relative(self.a, self.b) <= SAME_WITHIN:
            return "even"
        b_higher = self.b > self.a
        return "B" if b_higher == self.figure.higher_is_better else "A"

    @property
    def by(self) -> str:
        """How much better the winner is, in words: "2.4× lower", "18% higher", "5 fewer", "+2.5 req/s"
        (from zero); for a figure not judged, how B stands to A: "B 32% lower"."""
        a, b, winner = self.a, self.b, self.winner
        if winner is None:
            return "no data"
        assert a is not None and b is not None
        if _relative(a, b) <= SAME_WITHIN:
            return "same" if a == b else f"within {SAME_WITHIN:.0%}"
        higher = b > a if winner == NOT_JUDGED else bool(self.figure.higher_is_better)
        margin = self._margin(max(a, b), min(a, b), higher)
        return f"B {margin}" if winner == NOT_JUDGED else margin

    def _margin(self, hi: float, lo: float, higher: bool) -> str:
        if lo > 0:
            return _apart(hi, lo, higher)
        if self.figure.unit == "count":
            return f"{hi - lo:g} {'more' if higher else 'fewer'}"
        return f"{'+' if higher else '-'}{format_value(self.figure, hi - lo)}"

    @property
    def verdict(self) -> str:
        """ "B, 2.4× lower" — the winner and by how much, in one cell."""
        winner = self.winner
        if winner in (None, "even", NOT_JUDGED):
            return NOT_JUDGED if winner == NOT_JUDGED else self.by
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
    costing: Costing = field(default_factory=Costing)
    accelerator: str | None = None  # the modelled accelerator's name, as its profile spells it
    # why each side has no cost figures (tracer/cost.py's `unavailable`), None where it has them
    unavailable: tuple[str | None, str | None] = (None, None)
    # what a reader needs to read the table right: missing data and why, pipelines, what-ifs
    notes: tuple[str, ...] = ()

    def delta(self, key: str) -> Delta:
        return next(d for d in self.deltas if d.figure.key == key)

    def tally(self) -> dict[str, int]:
        """Figures won by A, by B, even, not judged, and without data."""
        counts = {"A": 0, "B": 0, "even": 0, NOT_JUDGED: 0, "no data": 0}
        for d in self.deltas:
            counts[d.winner or "no data"] += 1
        return counts

    def missing(self, delta: Delta) -> str:
        """Which recording lacks a figure and, for a cost figure, why."""
        sides = [side for side, v in zip(SIDES, (delta.a, delta.b)) if v is None]
        reasons = [f"{side}: {why}" for side, why in zip(SIDES, self.unavailable) if side in sides and why]
        if reasons and delta.figure in COST_FIGURES:
            return "; ".join(reasons)
        return "no data in " + (" or ".join(sides) if len(sides) < 2 else "either")


def _relative(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


def summary_value(summary: dict[str, Any], key: str) -> float | None:
    """A number in a `summarize` result by key, "accelerator.KEY" for the modelled accelerator's;
    None where it has none."""
    v: Any = summary
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """Every figure of FIGURES, and the figures beside them, in one recording's `summarize` result
    (None where it has no value)."""
    keys = [fig.key for fig in FIGURES] + [fig.beside for fig in FIGURES if fig.beside]
    return {key: summary_value(summary, key) for key in keys}


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
_NOT_SETUP = ("versions.", "device_probe.")


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> tuple[ConfigDifference, ...]:
    """Keys whose values differ between two header configs (a key one lacks counts as None there).

    Software versions and the device probe are left out: they differ between any two machines (the
    probe between any two runs on one) and say nothing about the setup being compared.
    """
    fa, fb = flatten(a), flatten(b)

    def rank(key: str) -> tuple[int, str]:
        top = key.split(".", 1)[0]
        return (_SECTION_ORDER.index(top) if top in _SECTION_ORDER else len(_SECTION_ORDER), key)

    keys = sorted((k for k in fa.keys() | fb.keys() if not k.startswith(_NOT_SETUP)), key=rank)
    return tuple(ConfigDifference(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k))


def pipeline_shape(trace: Trace) -> str | None:
    """ "2 stages × 4 micro-batches" for a recording with stage cells, else None."""
    per_tick = stage_ticks(trace.stages)
    if per_tick.height == 0:
        return None
    stages = scalar_int(per_tick.get_column("stages").max())
    fewest, most = (
        scalar_int(v) for v in (per_tick.get_column("micro_batches").min(), per_tick.get_column("micro_batches").max())
    )
    batches = f"{most} micro-batch{'es' if most > 1 else ''}" if fewest == most else f"{fewest}-{most} micro-batches"
    return f"{stages} stages × {batches}"


def _notes(
    traces: tuple[Trace, Trace],
    summaries: tuple[dict[str, Any], dict[str, Any]],
    not_modelled: tuple[str | None, str | None],
    costing: Costing,
    name: str | None,
) -> tuple[str, ...]:
    """What a reader needs to read the table right: data missing and why, pipelines, what-ifs."""
    notes = [
        f"{side}: cost figures unavailable: {s['unavailable']}"
        for side, s in zip(SIDES, summaries)
        if s.get("unavailable")
    ]
    shapes = [pipeline_shape(t) for t in traces]
    if any(shapes):
        each = "; ".join(
            f"{side} {shape}, {timeline_kind(t.stages)}" for side, shape, t in zip(SIDES, shapes, traces) if shape
        )
        notes.append(
            f"pipelined ({each}): a tick is busy for its stage timeline's makespan on one device per "
            "stage, so capacity is tokens per makespan-second and device time is makespan × stages"
        )
    if costing.price is not None:
        notes.append(f"measured $ at ${costing.price:,.2f} per device-hour of the recording's device")
    if name is not None:
        modelled = [s["accelerator"] for s in summaries if s.get("accelerator")]
        prices = {m["usd_per_hour"] for m in modelled}
        priced = f", at ${prices.pop():,.2f}/h" if len(prices) == 1 and None not in prices else ""
        notes.append(
            f"modelled on {name}: each recording's own ticks (same batches, same expert activations) "
            f"at the roofline, max(bytes / bandwidth, FLOPs / peak){priced}"
        )
        notes += [
            f"{side}: not modelled on {name}: {why.removeprefix(f'{name}: ')}"
            for side, why in zip(SIDES, not_modelled)
            if why
        ]
        if any(m["usd_per_hour"] is None for m in modelled):
            notes.append(f"{name} has no price per hour: give one (--price) for its $")
    return tuple(notes)


def compare(a: Trace, b: Trace, *, a_name: str = "A", b_name: str = "B", costing: Costing | None = None) -> Comparison:
    """Every figure of both recordings with its verdict, and their configuration differences."""
    costing = costing or Costing()
    (sa, why_a), (sb, why_b) = costing.summarize(a), costing.summarize(b)
    fa, fb = figures(sa), figures(sb)
    pipelined = a.stages.height > 0 or b.stages.height > 0
    deltas = tuple(
        Delta(fig, fa[fig.key], fb[fig.key], (fa[fig.beside], fb[fig.beside]) if fig.beside else (None, None))
        for fig in FIGURES
        if costing.shows(fig, pipelined)
    )
    cfg_a = a.header.config if isinstance(a.header.config, dict) else {}
    cfg_b = b.header.config if isinstance(b.header.config, dict) else {}
    modelled = [s["accelerator"]["name"] for s in (sa, sb) if s.get("accelerator")]
    name = modelled[0] if modelled else costing.accelerator
    return Comparison(
        a_name,
        b_name,
        deltas,
        config_diff(cfg_a, cfg_b),
        stage_timelines=(timeline_kind(a.stages), timeline_kind(b.stages)),
        costing=costing,
        accelerator=name,
        unavailable=(sa.get("unavailable"), sb.get("unavailable")),
        notes=_notes((a, b), (sa, sb), (why_a, why_b), costing, name),
    )


def headline(comparison: Comparison) -> str:
    """The trade-off in one sentence: which is cheaper per token (device time per processed token),
    which is faster to first token (p50 TTFT), and by how much."""
    cost, speed = comparison.delta("device_s_per_token"), comparison.delta("ttft_p50_s")
    cheap = cost.winner if cost.winner in SIDES else None
    fast = speed.winner if speed.winner in SIDES else None

    if cheap:
        assert cost.a is not None and cost.b is not None  # a winner has both figures
        hi, lo = max(cost.a, cost.b), min(cost.a, cost.b)
        cost_clause = f"{cheap} costs {1 - lo / hi:.0%} less device time per processed token"
    elif cost.winner == "even":
        cost_clause = f"both cost the same device time per processed token ({cost.by})"
    else:
        cost_clause = f"device time per token not compared ({comparison.missing(cost)})"
    subject = cheap or fast
    if fast:
        assert speed.a is not None and speed.b is not None  # a winner has both figures
        hi, lo = max(speed.a, speed.b), min(speed.a, speed.b)
        whose = "its" if subject == cheap else f"{fast}'s"
        if cheap and fast != cheap:
            speed_clause = f"its p50 TTFT is {_apart(hi, lo, True)}"
        else:
            too = " too" if cheap else ""
            speed_clause = f"{whose} p50 TTFT is {_apart(hi, lo, False)}{too}"
    elif speed.winner == "even":
        speed_clause = f"the same p50 TTFT ({speed.by})"
    else:
        speed_clause = f"p50 TTFT not compared ({comparison.missing(speed)})"
    if cheap and fast:
        lead = (
            f"{cheap} is cheaper per token and faster to first token"
            if cheap == fast
            else f"{cheap} is cheaper per token, {fast} faster to first token"
        )
    elif cheap or fast:
        lead = f"{cheap} is cheaper per token" if cheap else f"{fast} is faster to first token"
    else:
        lead = "Neither is cheaper per token nor faster to first token"
    return f"{lead}: {cost_clause}; {speed_clause}."


_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def _si(value: float, unit: str) -> str:
    """3 significant digits and an SI prefix: 4.7e-4 s -> "470 µs", 1.72e5 B -> "172 kB"."""
    scale, prefix = next(((s, p) for s, p in _PREFIXES if abs(value) >= s), (1.0, ""))
    return f"{value / scale:.3g} {prefix}{unit}"


def format_value(figure: Figure, value: float | None) -> str:
    """A figure's value in the unit people read it in (latencies in ms, shares in %)."""
    if value is None:
        return "—"
    unit = figure.unit
    if unit in ("s", "s/tok", "B/tok"):  # the label says per which token
        return _si(value, unit[0])
    if unit == "$/Mtok":
        return f"${value:,.2f}" if abs(value) >= 0.01 else f"${value:.2g}"
    if unit == "share":
        return f"{value:.1%}"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "seqs":
        return f"{value:.2f}"
    if unit == "experts":
        return f"{value:.1f}"
    if abs(value) >= 1e5:  # a modelled accelerator's millions of tokens a second
        return _si(value, unit)
    return f"{value:,.1f} {unit}" if abs(value) < 100 else f"{value:,.0f} {unit}"


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
    """The figure's name, with the modelled accelerator's; the bubble share's says whether each side's
    timeline is modelled or measured."""
    label = figure.label.replace("{accelerator}", comparison.accelerator or "?")
    a, b = comparison.stage_timelines
    if figure.key != "bubble_share" or (a is None and b is None):
        return label
    return f"{label} ({a})" if a == b else f"{label} (A {a or '—'}, B {b or '—'})"


def delta_row(comparison: Comparison, delta: Delta) -> tuple[str, str, str, str, str]:
    """One row of the delta table as text: figure, A, B, B vs A, better."""
    fig = delta.figure
    a, b = (
        format_value(fig, v) + (f" ({format_value(fig, r)})" if fig.beside else "")
        for v, r in zip((delta.a, delta.b), delta.beside)
    )
    return figure_label(comparison, fig), a, b, format_change(delta), delta.verdict


def delta_rows(comparison: Comparison) -> list[tuple[str, str, str, str, str]]:
    """The delta table as text rows: figure, A, B, B vs A, better."""
    return [delta_row(comparison, d) for d in comparison.deltas]


DELTA_COLUMNS = ("figure", "A", "B", "B vs A", "better")


class DeltaTable(Table):
    """The delta table. Where the width holds both, it shows its cost rows and the rest side by side,
    so that a wide dashboard keeps its height for the panels above it; else one table, top to bottom."""

    SPLIT_GAP = 3  # columns between the halves

    def __init__(self, halves: tuple[Table, Table], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.halves = halves

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = [Measurement.get(console, options, half).maximum for half in self.halves]
        if sum(widths) + self.SPLIT_GAP > options.max_width:
            yield from super().__rich_console__(console, options)
            return
        side_by_side = Table(
            title=self.title,
            caption=self.caption,
            caption_justify="left",
            caption_style="none",
            box=None,
            show_header=False,
            pad_edge=False,
            padding=(0, self.SPLIT_GAP, 0, 0),
        )
        for half in self.halves:
            half.show_edge = self.show_edge
            side_by_side.add_column(vertical="top")
        side_by_side.add_row(*self.halves)
        yield side_by_side


_TABLE_STYLE: dict[str, Any] = {
    "header_style": "bold",
    "box": box.SIMPLE_HEAD,
    "pad_edge": False,
    "collapse_padding": True,
}


def _fill(table: Table, comparison: Comparison, deltas: tuple[Delta, ...]) -> Table:
    rows = [delta_row(comparison, d) for d in deltas]
    for i, name in enumerate(DELTA_COLUMNS):
        text = name in ("figure", "better")
        widest = max((len(row[i]) for row in rows), default=0)
        table.add_column(
            name,
            justify="left" if text else "right",
            no_wrap=not text,
            min_width=None if text else max(widest, len(name)),
        )
    for row, d in zip(rows, deltas):
        style = {"A": "cyan", "B": "magenta"}.get(d.winner or "", "dim")
        table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]")
    return table


def delta_table(comparison: Comparison, title: str | None = None) -> Table:
    """The delta table as a rich Table (the terminal's and the dashboard's), the headline and the
    notes under it. On a narrow terminal the figure names and verdicts wrap, and no number is cut."""
    cost = tuple(d for d in comparison.deltas if d.figure in COST_FIGURES)
    rest = tuple(d for d in comparison.deltas if d.figure not in COST_FIGURES)
    halves = (_fill(Table(**_TABLE_STYLE), comparison, cost), _fill(Table(**_TABLE_STYLE), comparison, rest))
    caption = "\n".join((headline(comparison), *comparison.notes))
    table = DeltaTable(
        halves, title=title, caption=caption, caption_justify="left", caption_style="none", **_TABLE_STYLE
    )
    return _fill(table, comparison, comparison.deltas)


def expert_mean(trace: Trace) -> np.ndarray | None:
    """Mean tokens per tick routed to each [layer, expert] over the whole recording."""
    if trace.expert_load is not None and len(trace.expert_load):
        mean: np.ndarray = trace.expert_load.mean(axis=0)  # numpy types a mean as Any
        return mean
    if trace.experts.height == 0:
        return None
    per_cell = trace.experts.group_by("layer", "expert").agg(pl.col("tokens").sum())
    layers = scalar_int(per_cell.get_column("layer").max()) + 1
    experts = scalar_int(per_cell.get_column("expert").max()) + 1
    grid = np.zeros((layers, experts))
    grid[per_cell.get_column("layer").to_numpy(), per_cell.get_column("expert").to_numpy()] = per_cell.get_column(
        "tokens"
    ).to_numpy()
    return grid / max(trace.experts.get_column("tick").n_unique(), 1)
