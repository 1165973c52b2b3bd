"""A sweep: one recording per grid point of collection windows (x max sequences per tick), the
trade-off table, and its knee.

Each grid point is recorded to `OUT/w{window}_s{max_seqs}.msgpack` (`w5_s32.msgpack`; `w5.msgpack`
when the sweep does not vary max sequences), so `tickscope compare` opens any two of them. A point
whose trace exists, was closed cleanly and reads without damage is skipped, so an interrupted
sweep resumes where it stopped; a torn leftover is recorded again. A point is recorded into
`NAME.msgpack.partial` and renamed when it completes. A window of 0 runs the
`continuous` policy (continuous batching), any other the `window` policy with that window.

The curve is what a token costs against the latency each user pays: cost per million output tokens
(or device time per output token, without a price) and capacity, against p50 and p99 time to first
token. TTFT is where a collection window is paid: a request waits for the tick that admits it, and
that wait buys the batch that makes its tokens cheap. The cost on the curve is, in this order of
preference, the modelled $ on `--accelerator` (its price, or `--price`), the measured $ at `--price`,
else the measured device time per output token (`cost_measure`).

The knee (`knee`) is the operating point this rule picks, printed under the table and on the plot:

    the cheapest point whose p99 TTFT is within KNEE_LATENCY_FACTOR (2x) of the lowest p99 TTFT
    of the sweep.

So it is what the cheapest tokens cost when users may wait at most twice as long for their first
token as the quickest setting makes them wait: a latency budget relative to the sweep itself, so the
rule needs no milliseconds that would suit one machine and not another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.policies.continuous import Continuous
from engine.policies.window import Window
from tracer.compare import Costing, summary_value
from tracer.errors import TraceFormatError
from tracer.frames import load
from tracer.plots import CurvePoint
from tracer.reader import open_trace
from workloads.loadgen import Progress
from workloads.run import Recording, RecordingPlan

KNEE_LATENCY_FACTOR = 2.0
LATENCY_NAME = "TTFT"
KNEE_RULE = (
    f"knee: the cheapest point whose p99 {LATENCY_NAME} is within {KNEE_LATENCY_FACTOR:g}× of the "
    f"sweep's lowest p99 {LATENCY_NAME}"
)


@dataclass(frozen=True, slots=True)
class GridPoint:
    window_ms: float
    max_seqs: int | None  # None: the workload's own

    @property
    def name(self) -> str:
        """The trace's file stem: `w5_s32`, `w0.5`, `w200`."""
        stem = f"w{self.window_ms:g}"
        return stem if self.max_seqs is None else f"{stem}_s{self.max_seqs}"

    def scheduler_overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = (
            {"policy": Continuous.name, "window_ms": 0.0}
            if self.window_ms == 0
            else {"policy": Window.name, "window_ms": self.window_ms}
        )
        if self.max_seqs is not None:
            overrides["max_seqs"] = self.max_seqs
        return overrides


@dataclass
class SweepPlan:
    preset: str
    workload: str
    windows_ms: Sequence[float]
    out_dir: Path
    max_seqs: Sequence[int] = ()  # empty: every point uses the workload's max_seqs
    duration_s: float | None = None
    device: str = "auto"
    seed: int | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # a checkpoint directory instead of the preset

    def grid(self) -> list[GridPoint]:
        """Every (window, max_seqs) combination, windows varying fastest within each cap."""
        caps: Sequence[int | None] = list(self.max_seqs) or [None]
        return [GridPoint(float(w), cap) for cap in caps for w in self.windows_ms]

    def trace_path(self, point: GridPoint) -> Path:
        return self.out_dir / f"{point.name}.msgpack"

    def recording_plan(self, point: GridPoint) -> RecordingPlan:
        return RecordingPlan(
            preset=self.preset,
            workload=self.workload,
            out=self.trace_path(point),
            duration_s=self.duration_s,
            device=self.device,
            seed=self.seed,
            scheduler_overrides=point.scheduler_overrides(),
            model_overrides=dict(self.model_overrides),
            model=self.model,
        )


@dataclass(frozen=True, slots=True)
class CostMeasure:
    """The cost on a sweep's curve: a figure of `summarize`'s result, and how it is shown."""

    key: str  # in `summarize`'s result; "accelerator.KEY" for the modelled accelerator's
    name: str  # the axis's and the column's
    scale: float = 1.0  # from the summary's unit to the shown one

    def of(self, summary: dict[str, Any]) -> float | None:
        value = summary_value(summary, self.key)
        return None if value is None else value * self.scale


def cost_measure(summaries: Sequence[dict[str, Any]], costing: Costing) -> CostMeasure:
    """The cost the curve shows: modelled $ on the accelerator, else measured $ at the price, else
    measured device time per output token; the first that some point has."""
    modelled = [
        s["accelerator"]["name"] for s in summaries if summary_value(s, "accelerator.usd_per_mtok_modelled") is not None
    ]
    if modelled:
        return CostMeasure("accelerator.usd_per_mtok_modelled", f"$/M output tok on {modelled[0]}, modelled")
    if costing.price is not None:
        return CostMeasure("usd_per_mtok_measured", f"$/M output tok at ${costing.price:,.2f}/h, measured")
    return CostMeasure("device_s_per_output_token", "device ms/output tok, measured", 1000.0)


@dataclass(frozen=True, slots=True)
class SweepRow:
    point: GridPoint
    path: Path
    skipped: bool  # already recorded by an earlier run
    summary: dict[str, Any]  # `summarize`, costed as the sweep asks
    not_modelled: str | None = None  # why the accelerator asked for could not be modelled

    def curve_point(self, measure: CostMeasure) -> CurvePoint:
        s = self.summary
        return CurvePoint(
            label=self.point.name,
            window_ms=self.point.window_ms,
            max_seqs=self.point.max_seqs,
            cost=measure.of(s),
            capacity=s.get("capacity_output_tok_s"),
            latency_p50=s.get("ttft_p50_s"),
            latency_p99=s.get("ttft_p99_s"),
            experts_touched=s.get("experts_touched_per_layer"),
            experts_uniform=s.get("experts_expected_uniform"),
        )


def recorded_cleanly(path: Path) -> bool:
    """The trace exists, its writer closed it, and every frame reads back undamaged."""
    if not path.is_file():
        return False
    try:
        with open_trace(path) as reader:
            for _ in reader.events():
                pass
            return reader.closed_cleanly and not reader.problems
    except (TraceFormatError, OSError):
        return False


def run_sweep(
    plan: SweepPlan,
    *,
    costing: Costing | None = None,
    on_point: Callable[[int, GridPoint, bool], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[SweepRow]:
    """Record every grid point not already recorded, then summarise all of them (costed as `costing`
    asks), in grid order.

    `on_point(i, point, skipped)` is called as each point starts (or is skipped); `on_progress`
    receives the running recording's progress. Every plan is checked (`Recording` builds and
    validates it) before its file is touched, so a bad knob fails before a torn file is removed.
    """
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, point in enumerate(plan.grid()):
        path = plan.trace_path(point)
        skipped = recorded_cleanly(path)
        if on_point is not None:
            on_point(i, point, skipped)
        if not skipped:
            _record(plan, point, on_progress)
        summary, not_modelled = (costing or Costing()).summarize(load(path))
        rows.append(SweepRow(point, path, skipped, summary, not_modelled))
    return rows


def _record(plan: SweepPlan, point: GridPoint, on_progress: Callable[[Progress], None] | None) -> None:
    """Record into `NAME.msgpack.partial` and rename it when the recording ran to its end, so the
    final name only ever holds whole recordings (a stopped one is closed cleanly, but short)."""
    final = plan.trace_path(point)
    partial = final.with_name(final.name + ".partial")
    recording_plan = plan.recording_plan(point)
    recording_plan.out = partial
    recording = Recording(recording_plan)
    partial.unlink(missing_ok=True)
    result = recording.run(on_progress)
    if result.interrupted:
        raise KeyboardInterrupt  # the point is incomplete; the next run records it again
    final.unlink(missing_ok=True)  # a torn leftover under the final name
    partial.replace(final)


def knee(points: Sequence[CurvePoint], factor: float = KNEE_LATENCY_FACTOR) -> int | None:
    """Index of the knee by KNEE_RULE (the cheaper of equal costs: the quicker); None when no point has
    both a cost and a p99 latency."""
    usable = [i for i, p in enumerate(points) if p.cost is not None and p.latency_p99 is not None]
    if not usable:
        return None
    quickest = min(points[i].latency_p99 for i in usable)  # type: ignore[type-var]
    within = [i for i in usable if points[i].latency_p99 <= factor * quickest]  # type: ignore[operator]
    return min(within, key=lambda i: (points[i].cost, points[i].latency_p99))
