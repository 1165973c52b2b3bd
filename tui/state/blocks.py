"""What sources hand the dashboard's state: `FrameData` blocks of tick rows, request events as
columns, marks and per-tick detail."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tracer.columns import tick_seconds
from tracer.cost import distinct_experts
from tracer.events import TICK_FIELDS, ExpertsEvent, MarkEvent, RequestEvent, ScrapeEvent, StageEvent, TickEvent

NS = 1e9

REQUEST_COLUMNS = (
    "request", "arrive_s", "admit_s", "first_token_s", "finish_s", "prompt_tokens",
    "output_tokens", "status", "preempts", "arrive_read",
)  # fmt: skip

# Request status codes in the numeric request table (NaN times mean "not yet").
STATUS_CODES = {"": 0, "finished": 1, "rejected": 2, "cancelled": 3, "failed": 4}
STATUS_NAMES = {code: name for name, code in STATUS_CODES.items()}
PHASE_CODES = {"arrive": 0, "admit": 1, "first_token": 2, "preempt": 3, "finish": 4}
ARRIVE, ADMIT, FIRST_TOKEN, PREEMPT, FINISH = range(5)


@dataclass(slots=True)
class RequestBlock:
    """Request events as columns, in file order (applied to the request table in one go)."""

    ids: np.ndarray  # int64
    phase: np.ndarray  # int8, PHASE_CODES
    t_s: np.ndarray  # float64 seconds since t0
    prompt: np.ndarray  # int64
    output: np.ndarray  # int64
    status: np.ndarray  # int8, STATUS_CODES
    token_us: dict[int, np.ndarray] = field(default_factory=dict)  # finish: uint32, owned copies


def request_block(events: Iterable[RequestEvent], t0_ns: int) -> RequestBlock:
    evs = list(events)
    tokens = {
        ev.request: np.array(ev.token_us, dtype=np.uint32)  # a copy: views would pin the frame
        for ev in evs
        if ev.phase == "finish" and ev.token_us is not None and len(ev.token_us)
    }
    return RequestBlock(
        ids=np.fromiter((ev.request for ev in evs), np.int64, len(evs)),
        phase=np.fromiter((PHASE_CODES.get(ev.phase, -1) for ev in evs), np.int8, len(evs)),
        t_s=(np.fromiter((ev.t_ns for ev in evs), np.int64, len(evs)) - t0_ns) / NS,
        prompt=np.fromiter((ev.prompt_tokens for ev in evs), np.int64, len(evs)),
        output=np.fromiter((ev.output_tokens for ev in evs), np.int64, len(evs)),
        status=np.fromiter((STATUS_CODES.get(ev.status, 0) for ev in evs), np.int8, len(evs)),
        token_us=tokens,
    )


@dataclass(slots=True)
class Detail:
    """The bulky part of one tick, kept only for a bounded set of ticks."""

    experts: np.ndarray | None = None
    stages: StageEvent | None = None


@dataclass(slots=True)
class FrameData:
    """One block of a recording: an events frame of a replay, or what one live poll brought."""

    ticks: np.ndarray  # float64 [n, len(TICK_COLUMNS)], in file order
    requests: RequestBlock
    marks: list[MarkEvent] = field(default_factory=list)
    details: dict[int, Detail] = field(default_factory=dict)  # by tick number
    has_stages: bool = False
    frame: int = -1  # the index entry it came from; -1 appends (live)
    # Ticks whose tick event came in an earlier block: what `details` holds of them is only the
    # rest of their detail (a frame, or a poll, may end between a tick's events).
    partial: set[int] = field(default_factory=set)
    # What a token costs needs of every tick, not only those whose detail is held: its distinct
    # active experts (summed over layers) and, for a pipelined tick, its busy time (the modelled
    # makespan) and devices (one per stage), by tick number.
    distinct: dict[int, int] = field(default_factory=dict)
    busy: dict[int, tuple[float, int]] = field(default_factory=dict)
    # A watched server's scrape values (tracer.events.SCRAPE_SERIES), by tick number.
    scrapes: dict[int, np.ndarray] = field(default_factory=dict)

    def detail_only(self) -> FrameData:
        """The same block with only its detail: for ticks whose rows the state already has."""
        return FrameData(
            self.ticks[:0],
            request_block((), 0),
            details=self.details,
            has_stages=self.has_stages,
            partial=self.partial,
            distinct=self.distinct,
            busy=self.busy,
        )

    def find_partial(self) -> None:
        self.partial = set(self.details).difference(self.ticks[:, 0].tolist())


def frame_from_events(events: Iterable[Any], t0_ns: int, frame: int = -1) -> FrameData:
    """Trace events (anything else is ignored) as one FrameData."""
    ticks: list[list[int]] = []
    requests: list[RequestEvent] = []
    marks: list[MarkEvent] = []
    details: dict[int, Detail] = {}
    distinct: dict[int, int] = {}
    busy: dict[int, tuple[float, int]] = {}
    scrapes: dict[int, np.ndarray] = {}
    has_stages = False
    for ev in events:
        if isinstance(ev, TickEvent):
            ticks.append([getattr(ev, name) for name in TICK_FIELDS])
        elif isinstance(ev, RequestEvent):
            requests.append(ev)
        elif isinstance(ev, ExpertsEvent):
            # A copy: a view of the decoded frame would keep its whole payload in memory.
            details.setdefault(ev.tick, Detail()).experts = np.array(ev.counts)
            distinct[ev.tick] = int(distinct_experts(ev.counts).sum())
        elif isinstance(ev, StageEvent):
            has_stages = True
            details.setdefault(ev.tick, Detail()).stages = ev
            if ev.modelled_start_ns.size:
                makespan = int(ev.modelled_end_ns.max()) - int(ev.modelled_start_ns.min())
                busy[ev.tick] = (makespan / NS, ev.modelled_start_ns.shape[0])
        elif isinstance(ev, MarkEvent):
            marks.append(ev)
        elif isinstance(ev, ScrapeEvent):
            scrapes[ev.tick] = np.array(ev.values)  # a copy, as for expert counts
    raw = np.array(ticks, dtype=np.int64).reshape(-1, len(TICK_FIELDS))
    data = FrameData(
        tick_seconds(raw, t0_ns),
        request_block(requests, t0_ns),
        marks,
        details,
        has_stages,
        frame,
        distinct=distinct,
        busy=busy,
        scrapes=scrapes,
    )
    data.find_partial()
    return data
