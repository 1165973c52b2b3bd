"""A sweep: one recording per grid point of collection windows (x max sequences per tick), the
trade-off table, and its knee.

Each grid point is recorded to `OUT/w{window}_s{max_seqs}.msgpack` (`w5_s32.msgpack`; `w5.msgpack`
when the sweep does not vary max sequences), so `tickscope compare` opens any two of them. A point
whose trace exists, was closed cleanly and reads without damage is skipped, so an interrupted
sweep resumes where it stopped; a torn leftover is recorded again. A point is recorded into
`NAME.msgpack.partial` and renamed when it completes. A window of 0 runs the
`continuous` policy (continuous batching), any other the `window` policy with that window.

Latency here is end-to-end request latency (arrival to last token): the window is paid before the
first token and again on every decode tick, and E2E is where both land.

The knee (`knee`) is chosen by this rule, the one printed under the table and on the plot:

    Walk the throughput-latency frontier in order of rising p99 latency (a point is on it when it
    has more throughput than every point with lower p99). The knee is the first frontier point
    from which the next one gains less than KNEE_ELASTICITY (0.25) % of throughput for each 1 %
    of added p99 latency, measured as the log-log slope ln(tput2/tput1) / ln(p992/p991). When
    every step keeps paying, the knee is the frontier's last point.

A log-log slope makes the rule independent of units and of how fast the hardware is: 0.25 means
"doubling p99 latency now buys less than 19 % more throughput".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.errors import TraceFormatError
from tracer.frames import load
from tracer.plots import CurvePoint
from tracer.reader import open_trace
from tracer.summary import summarize
from workloads.loadgen import Progress
from workloads.run import Recording, RecordingPlan

KNEE_ELASTICITY = 0.25
KNEE_RULE = (
    f"knee: on the throughput-vs-p99 frontier, the first point after which each 1% of added p99 "
    f"latency buys less than {KNEE_ELASTICITY:g}% more throughput (log-log slope < {KNEE_ELASTICITY:g})"
)
LATENCY_NAME = "E2E latency"


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
            {"policy": "continuous", "window_ms": 0.0} if self.window_ms == 0
            else {"policy": "window", "window_ms": self.window_ms}
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
        )


@dataclass(frozen=True, slots=True)
class SweepRow:
    point: GridPoint
    path: Path
    skipped: bool  # already recorded by an earlier run
    summary: dict[str, Any]

    def curve_point(self) -> CurvePoint:
        s = self.summary
        return CurvePoint(
            label=self.point.name,
            window_ms=self.point.window_ms,
            max_seqs=self.point.max_seqs,
            throughput=s.get("throughput_tok_s"),
            latency_p50=s.get("e2e_p50_s"),
            latency_p99=s.get("e2e_p99_s"),
            active_share=s.get("experts_active_frac"),
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
    on_point: Callable[[int, GridPoint, bool], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[SweepRow]:
    """Record every grid point not already recorded, then summarise all of them, in grid order.

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
        trace = load(path)
        rows.append(SweepRow(point, path, skipped, summarize(trace)))
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


def frontier(points: Sequence[CurvePoint]) -> list[int]:
    """Indices of the throughput-latency frontier, in order of rising p99 latency."""
    usable = [i for i, p in enumerate(points)
              if p.throughput is not None and p.latency_p99 is not None and p.latency_p99 > 0]
    usable.sort(key=lambda i: (points[i].latency_p99, -(points[i].throughput or 0.0)))
    best = -math.inf
    chosen = []
    for i in usable:
        tput = points[i].throughput
        assert tput is not None
        if tput > best:
            chosen.append(i)
            best = tput
    return chosen


def knee(points: Sequence[CurvePoint], elasticity: float = KNEE_ELASTICITY) -> int | None:
    """Index of the knee by the rule in this module's docstring; None when no point has both figures."""
    front = frontier(points)
    if not front:
        return None
    for here, after in zip(front, front[1:]):
        p, q = points[here], points[after]
        assert p.throughput and q.throughput and p.latency_p99 and q.latency_p99
        if p.throughput <= 0:
            continue  # nothing to be elastic about yet: any throughput is a gain
        slope = math.log(q.throughput / p.throughput) / math.log(q.latency_p99 / p.latency_p99)
        if slope < elasticity:
            return here
    return front[-1]
