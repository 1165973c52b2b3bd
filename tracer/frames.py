"""A trace as polars DataFrames: the one shape summaries, compare and exports are built on.

Times are seconds since the session header's `t0_mono_ns`.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import polars as pl

from tracer.events import BatchEvent, Event, ExpertsEvent, MarkEvent, RequestEvent, SessionHeader, StageEvent, TickEvent
from tracer.marks import read_marks
from tracer.reader import TraceReader, open_trace

TICK_SCHEMA = {
    "tick": pl.Int64, "start_s": pl.Float64, "end_s": pl.Float64, "wait_s": pl.Float64,
    "forward_s": pl.Float64, "seqs": pl.Int64, "prefill_tokens": pl.Int64, "decode_tokens": pl.Int64,
    "queue_depth": pl.Int64, "running": pl.Int64, "kv_used": pl.Int64, "kv_capacity": pl.Int64,
}
REQUEST_SCHEMA = {
    "request": pl.Int64, "arrival_s": pl.Float64, "admit_s": pl.Float64, "first_token_s": pl.Float64,
    "finish_s": pl.Float64, "prompt_tokens": pl.Int64, "output_tokens": pl.Int64, "status": pl.String,
    "reason": pl.String, "preemptions": pl.Int64, "ttft_s": pl.Float64, "tpot_s": pl.Float64,
    "e2e_s": pl.Float64, "queue_wait_s": pl.Float64,
}
EXPERT_SCHEMA = {"tick": pl.Int64, "layer": pl.Int64, "expert": pl.Int64, "tokens": pl.Int64}
STAGE_SCHEMA = {
    "tick": pl.Int64, "stage": pl.Int64, "micro_batch": pl.Int64, "tick_start_s": pl.Float64,
    "measured_start_s": pl.Float64, "measured_end_s": pl.Float64,
    "modelled_start_s": pl.Float64, "modelled_end_s": pl.Float64, "modelled": pl.Boolean,
}
MARK_SCHEMA = {"t_s": pl.Float64, "tick": pl.Int64, "text": pl.String}
BATCH_SCHEMA = {"tick": pl.Int64, "request": pl.Int64, "prefill_tokens": pl.Int64, "decode_tokens": pl.Int64,
                "group": pl.Int64}


@dataclass
class Trace:
    """One recording, loaded.

    `stages` times are relative to their tick's start (add `tick_start_s` for session time).
    `itl_s` pools every finished request's inter-token latencies (from `token_us`).
    `expert_load` is the [ticks, layers, experts] stack behind `experts`, with `expert_ticks`
    naming its rows; None when the ticks' shapes differ.
    `batches` links requests to ticks, one row per (tick, sequence in its batch): empty for
    traces older than format 1.1 and for client-side traces (`record --target`).
    """

    header: SessionHeader
    ticks: pl.DataFrame
    requests: pl.DataFrame
    experts: pl.DataFrame
    stages: pl.DataFrame
    marks: pl.DataFrame
    itl_s: np.ndarray
    expert_ticks: np.ndarray
    expert_load: np.ndarray | None
    batches: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=BATCH_SCHEMA))
    dropped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    path: str | None = None


def load(source: str | os.PathLike[str] | TraceReader, *, progress: bool | None = None) -> Trace:
    """Read a whole trace file (or an open reader) into DataFrames."""
    if isinstance(source, TraceReader):
        # Notes added while watching live beside the trace (it stays append-only): merge them in.
        side_marks, side_problems = read_marks(source.path)
        trace = from_events(source.header, itertools.chain(source.events(), side_marks))
        trace.dropped, trace.path = dict(source.dropped), source.path
        trace.problems = list(source.problems) + side_problems
        return trace
    with open_trace(source, progress=progress) as reader:
        return load(reader)


def _ns_to_s(values: list[int], t0: int) -> np.ndarray:
    return (np.asarray(values, dtype=np.int64) - t0) / 1e9


def from_events(header: SessionHeader, events: Iterable[Event]) -> Trace:
    """Build a Trace from events in memory (a ListRecorder's, say) or streamed from a reader."""
    t0 = header.t0_mono_ns
    ticks: list[TickEvent] = []
    experts: list[ExpertsEvent] = []
    stages: list[StageEvent] = []
    marks: list[MarkEvent] = []
    batches: list[BatchEvent] = []
    requests: dict[int, dict[str, Any]] = {}
    for ev in events:
        t = type(ev)
        if t is RequestEvent:
            _request_step(requests, ev)
        elif t is TickEvent:
            ticks.append(ev)
        elif t is ExpertsEvent:
            experts.append(ev)
        elif t is StageEvent:
            stages.append(ev)
        elif t is MarkEvent:
            marks.append(ev)
        elif t is BatchEvent:
            batches.append(ev)
    tick_df = _ticks_frame(ticks, t0)
    expert_df, expert_ticks, expert_load = _experts_frame(experts)
    request_df, itl = _requests_frame(requests, t0)
    return Trace(
        header=header, ticks=tick_df, requests=request_df, experts=expert_df,
        stages=_stages_frame(stages, tick_df), marks=_marks_frame(marks, t0), itl_s=itl,
        expert_ticks=expert_ticks, expert_load=expert_load, batches=_batches_frame(batches),
    )


def _ticks_frame(ticks: list[TickEvent], t0: int) -> pl.DataFrame:
    cols = {
        "tick": [e.tick for e in ticks],
        "start_s": _ns_to_s([e.start_ns for e in ticks], t0),
        "end_s": _ns_to_s([e.end_ns for e in ticks], t0),
        "wait_s": np.asarray([e.wait_ns for e in ticks], dtype=np.int64) / 1e9,
        "forward_s": np.asarray([e.forward_ns for e in ticks], dtype=np.int64) / 1e9,
    }
    for name in ("seqs", "prefill_tokens", "decode_tokens", "queue_depth", "running", "kv_used", "kv_capacity"):
        cols[name] = [getattr(e, name) for e in ticks]
    return pl.DataFrame(cols, schema=TICK_SCHEMA)


def _experts_frame(events: list[ExpertsEvent]) -> tuple[pl.DataFrame, np.ndarray, np.ndarray | None]:
    ticks = np.asarray([e.tick for e in events], dtype=np.int64)
    if not events:
        return pl.DataFrame(schema=EXPERT_SCHEMA), ticks, None
    shapes = {e.counts.shape for e in events}
    if len(shapes) == 1:
        (layers, n_exp), = shapes
        load = np.stack([e.counts for e in events]).astype(np.int64)
        df = pl.DataFrame({
            "tick": np.repeat(ticks, layers * n_exp),
            "layer": np.tile(np.repeat(np.arange(layers), n_exp), len(events)),
            "expert": np.tile(np.arange(n_exp), layers * len(events)),
            "tokens": load.ravel(),
        }, schema=EXPERT_SCHEMA)
        return df, ticks, load
    parts = []
    for e in events:  # shapes changed mid-recording: build row blocks one tick at a time
        layers, n_exp = e.counts.shape
        parts.append(pl.DataFrame({
            "tick": np.full(layers * n_exp, e.tick, dtype=np.int64),
            "layer": np.repeat(np.arange(layers), n_exp),
            "expert": np.tile(np.arange(n_exp), layers),
            "tokens": e.counts.ravel().astype(np.int64),
        }, schema=EXPERT_SCHEMA))
    return pl.concat(parts), ticks, None


def _stages_frame(events: list[StageEvent], ticks: pl.DataFrame) -> pl.DataFrame:
    if not events:
        return pl.DataFrame(schema=STAGE_SCHEMA)
    parts = []
    for e in events:
        s, m = e.measured_start_ns.shape
        parts.append({
            "tick": np.full(s * m, e.tick, dtype=np.int64),
            "stage": np.repeat(np.arange(s), m),
            "micro_batch": np.tile(np.arange(m), s),
            "measured_start_s": e.measured_start_ns.ravel() / 1e9,
            "measured_end_s": e.measured_end_ns.ravel() / 1e9,
            "modelled_start_s": e.modelled_start_ns.ravel() / 1e9,
            "modelled_end_s": e.modelled_end_ns.ravel() / 1e9,
            "modelled": np.full(s * m, e.modelled),
        })
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    df = pl.DataFrame(cols).join(ticks.select("tick", pl.col("start_s").alias("tick_start_s")),
                                 on="tick", how="left")
    return df.select([pl.col(k).cast(v) for k, v in STAGE_SCHEMA.items()])


def _batches_frame(events: list[BatchEvent]) -> pl.DataFrame:
    if not events:
        return pl.DataFrame(schema=BATCH_SCHEMA)
    return pl.DataFrame({
        "tick": np.repeat([e.tick for e in events], [len(e.requests) for e in events]),
        "request": np.concatenate([e.requests for e in events]),
        "prefill_tokens": np.concatenate([e.prefill_tokens for e in events]),
        "decode_tokens": np.concatenate([e.decode_tokens for e in events]),
        "group": np.concatenate([e.groups for e in events]),
    }).cast(BATCH_SCHEMA)


def _marks_frame(events: list[MarkEvent], t0: int) -> pl.DataFrame:
    return pl.DataFrame({
        "t_s": _ns_to_s([e.t_ns for e in events], t0),
        "tick": [e.tick for e in events],
        "text": [e.text for e in events],
    }, schema=MARK_SCHEMA).sort("t_s", maintain_order=True)  # sidecar marks interleave by time


def _request_step(requests: dict[int, dict[str, Any]], ev: RequestEvent) -> None:
    r = requests.get(ev.request)
    if r is None:
        r = requests[ev.request] = {"preemptions": 0, "prompt_tokens": 0, "output_tokens": 0}
    phase = ev.phase
    if ev.prompt_tokens:
        r["prompt_tokens"] = ev.prompt_tokens
    if ev.output_tokens:
        r["output_tokens"] = ev.output_tokens
    if phase == "arrive":
        r.setdefault("arrive", ev.t_ns)
    elif phase == "admit":
        r.setdefault("admit", ev.t_ns)  # the first admission; a preempted request is readmitted
    elif phase == "first_token":
        r.setdefault("first_token", ev.t_ns)
    elif phase == "preempt":
        r["preemptions"] += 1
    elif phase == "finish":
        r["finish"] = ev.t_ns
        r["status"] = ev.status or None
        r["reason"] = ev.reason or None
        r["token_us"] = ev.token_us


def _requests_frame(requests: dict[int, dict[str, Any]], t0: int) -> tuple[pl.DataFrame, np.ndarray]:
    rows: dict[str, list[Any]] = {k: [] for k in REQUEST_SCHEMA}
    itl: list[np.ndarray] = []

    def sec(ns: int | None) -> float | None:
        return None if ns is None else (ns - t0) / 1e9

    for rid in sorted(requests):
        r = requests[rid]
        arrival, admit, first, finish = r.get("arrive"), r.get("admit"), r.get("first_token"), r.get("finish")
        token_us = r.get("token_us")
        if first is None and arrival is not None and token_us is not None and len(token_us):
            first = arrival + int(token_us[0]) * 1000  # no client event: the finish record knows
        if token_us is not None and len(token_us) >= 2:
            itl.append(np.diff(token_us.astype(np.int64)) / 1e6)
        out = r["output_tokens"]
        ttft = None if first is None or arrival is None else (first - arrival) / 1e9
        e2e = None if finish is None or arrival is None else (finish - arrival) / 1e9
        tpot = (e2e - ttft) / (out - 1) if ttft is not None and e2e is not None and out >= 2 else None
        values = {
            "request": rid, "arrival_s": sec(arrival), "admit_s": sec(admit), "first_token_s": sec(first),
            "finish_s": sec(finish), "prompt_tokens": r["prompt_tokens"], "output_tokens": out,
            "status": r.get("status"), "reason": r.get("reason"), "preemptions": r["preemptions"],
            "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e,
            "queue_wait_s": None if admit is None or arrival is None else (admit - arrival) / 1e9,
        }
        for k, v in values.items():
            rows[k].append(v)
    pooled = np.concatenate(itl) if itl else np.zeros(0, dtype=np.float64)
    return pl.DataFrame(rows, schema=REQUEST_SCHEMA), pooled
