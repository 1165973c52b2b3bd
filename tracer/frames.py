"""A trace as polars DataFrames: the one shape summaries, compare and exports are built on.

Times are seconds since the session header's `t0_mono_ns`.
"""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tracer.columns import TICK_COLUMNS, EventColumns, tick_seconds
from tracer.events import (
    KIND_OF,
    REQUEST_PHASES,
    SCRAPE_SERIES,
    TICK_FIELDS,
    Event,
    RequestEvent,
    SessionHeader,
)
from tracer.marks import read_marks
from tracer.reader import TraceReader, open_trace

TICK_SCHEMA = {name: pl.Float64 if name.endswith("_s") else pl.Int64 for name in TICK_COLUMNS}
REQUEST_SCHEMA = {
    "request": pl.Int64,
    "arrival_s": pl.Float64,
    "admit_s": pl.Float64,
    "first_token_s": pl.Float64,
    "finish_s": pl.Float64,
    "prompt_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "status": pl.String,
    "reason": pl.String,
    "preemptions": pl.Int64,
    "ttft_s": pl.Float64,
    "tpot_s": pl.Float64,
    "e2e_s": pl.Float64,
    "queue_wait_s": pl.Float64,
}
EXPERT_SCHEMA = {"tick": pl.Int64, "layer": pl.Int64, "expert": pl.Int64, "tokens": pl.Int64}
STAGE_SCHEMA = {
    "tick": pl.Int64,
    "stage": pl.Int64,
    "micro_batch": pl.Int64,
    "tick_start_s": pl.Float64,
    "measured_start_s": pl.Float64,
    "measured_end_s": pl.Float64,
    "modelled_start_s": pl.Float64,
    "modelled_end_s": pl.Float64,
    "modelled": pl.Boolean,
}
MARK_SCHEMA = {"t_s": pl.Float64, "tick": pl.Int64, "text": pl.String}
BATCH_SCHEMA = {
    "tick": pl.Int64,
    "request": pl.Int64,
    "prefill_tokens": pl.Int64,
    "decode_tokens": pl.Int64,
    "group": pl.Int64,
}
SCRAPE_SCHEMA = {"tick": pl.Int64, "t_s": pl.Float64, **{name: pl.Float64 for name in SCRAPE_SERIES}}
_PHASES = {phase: i for i, phase in enumerate(REQUEST_PHASES)}  # request phases as small ints, for numpy
_STAGE_ARRAYS = ("measured_start_ns", "measured_end_ns", "modelled_start_ns", "modelled_end_ns")
_BATCH_ARRAYS = ("requests", "prefill_tokens", "decode_tokens", "groups")  # BATCH_SCHEMA's columns after its tick
_TOKEN_US = np.dtype(KIND_OF[RequestEvent].wire_field("token_us").dtype)


@dataclass
class Trace:
    """One recording, loaded.

    `stages` times are relative to their tick's start (add `tick_start_s` for session time).
    `itl_s` pools every finished request's inter-token latencies (from `token_us`).
    `expert_load` is the [ticks, layers, experts] stack behind `experts`, with `expert_ticks`
    naming its rows; None when the ticks' shapes differ.
    `batches` links requests to ticks, one row per (tick, sequence in its batch): empty for
    traces older than format 1.1 and for client-side traces (`record --target`).
    `scrapes` holds a watched server's metrics per scrape (`tickscope watch`), one row per tick,
    SCRAPE_SERIES as columns (null: no data); empty for any other trace.
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
    scrapes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SCRAPE_SCHEMA))
    dropped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    path: str | None = None


def load(source: str | os.PathLike[str] | TraceReader, *, progress: bool | None = None) -> Trace:
    """Read a whole trace file (or an open reader) into DataFrames.

    The same Trace as `from_events(reader.header, reader.events())` plus the sidecar's marks, built
    from columns decoded frame by frame rather than from event objects (several times faster).
    """
    if isinstance(source, TraceReader):
        columns = EventColumns()
        with _gc_paused():
            for _ in source.decoded_frames(columns.add_frame):
                pass
        # Notes added while watching live beside the trace (it stays append-only): merge them in.
        side_marks, side_problems = read_marks(source.path)
        columns.add_events(side_marks)
        trace = _from_columns(source.header, columns)
        trace.dropped, trace.path = dict(source.dropped), source.path
        trace.problems = list(source.problems) + side_problems
        return trace
    with open_trace(source, progress=progress) as reader:
        return load(reader)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Decoding allocates millions of acyclic lists and tuples, and the cyclic collector's passes
    over them cost about as much as the decoding itself: hold it off meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def scalar_int(value: object) -> int:
    """An integer column's aggregate (a polars Series' min, max or sum) as an int: polars types every
    aggregate as any Python literal or None. TypeError for anything else (an empty column's None)."""
    if not isinstance(value, int):
        raise TypeError(f"expected an integer aggregate, got {type(value).__name__}")
    return value


def scalar_float(value: object) -> float:
    """A numeric column's aggregate as a float, as `scalar_int` for an int."""
    if not isinstance(value, (int, float)):
        raise TypeError(f"expected a numeric aggregate, got {type(value).__name__}")
    return float(value)


def _ns_to_s(values: list[int], t0: int) -> np.ndarray:
    return (np.asarray(values, dtype=np.int64) - t0) / 1e9


def from_events(header: SessionHeader, events: Iterable[Event]) -> Trace:
    """Build a Trace from events in memory (a ListRecorder's, say) or streamed from a reader: the
    same columns `load` builds from a file's frames, so both fold requests and lay out tables by
    one implementation."""
    columns = EventColumns()
    columns.add_events(events)
    return _from_columns(header, columns)


def _cell_indices(dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every cell of a run of [rows, cols] arrays, in C order, concatenated."""
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    rows, cols = [], []
    for shape in map(tuple, dims.tolist()):
        pair = cache.get(shape)
        if pair is None:
            r, c = shape
            pair = cache[shape] = (np.repeat(np.arange(r), c), np.tile(np.arange(c), r))
        rows.append(pair[0])
        cols.append(pair[1])
    return np.concatenate(rows), np.concatenate(cols)


def _expert_rows(
    ticks: np.ndarray, dims: np.ndarray, counts: np.ndarray
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray | None]:
    """`counts`: every tick's int64 [layers, experts] block, flattened and concatenated."""
    if not len(ticks):
        return pl.DataFrame(schema=EXPERT_SCHEMA), ticks, None
    if (dims == dims[0]).all():
        layers, n_exp = dims[0].tolist()
        load = counts.reshape(len(ticks), layers, n_exp)
        shape = load.shape  # broadcasting copies are much faster than np.repeat / np.tile at this size
        df = pl.DataFrame(
            {
                "tick": np.broadcast_to(ticks[:, None, None], shape).ravel(),
                "layer": np.broadcast_to(np.arange(layers)[:, None], shape).ravel(),
                "expert": np.broadcast_to(np.arange(n_exp), shape).ravel(),
                "tokens": counts,
            },
            schema=EXPERT_SCHEMA,
        )
        return df, ticks, load
    layer, expert = _cell_indices(dims)  # shapes changed mid-recording: no [ticks, ...] stack
    df = pl.DataFrame(
        {"tick": np.repeat(ticks, dims.prod(axis=1)), "layer": layer, "expert": expert, "tokens": counts},
        schema=EXPERT_SCHEMA,
    )
    return df, ticks, None


def _stage_rows(
    stage_ticks: np.ndarray, dims: np.ndarray, times_ns: list[np.ndarray], modelled: np.ndarray, ticks: pl.DataFrame
) -> pl.DataFrame:
    """`times_ns`: measured start and end, modelled start and end, each every event's cells concatenated."""
    sizes = dims.prod(axis=1)
    stage, micro_batch = _cell_indices(dims)
    cols = {"tick": np.repeat(stage_ticks, sizes), "stage": stage, "micro_batch": micro_batch}
    for name, values in zip(("measured_start_s", "measured_end_s", "modelled_start_s", "modelled_end_s"), times_ns):
        cols[name] = values / 1e9
    cols["modelled"] = np.repeat(modelled, sizes)
    df = pl.DataFrame(cols).join(ticks.select("tick", pl.col("start_s").alias("tick_start_s")), on="tick", how="left")
    return df.select([pl.col(k).cast(v) for k, v in STAGE_SCHEMA.items()])


def _batch_rows(batch_ticks: np.ndarray, seqs: np.ndarray, columns: list[np.ndarray]) -> pl.DataFrame:
    """`columns`: _BATCH_ARRAYS, each every event's values concatenated."""
    cols = {"tick": np.repeat(batch_ticks, seqs)}
    cols.update(zip(("request", "prefill_tokens", "decode_tokens", "group"), columns))
    # A Schema, not the dict: cast's mapping is keyed by column names or selectors, which a dict of
    # names does not type-check as.
    return pl.DataFrame(cols).cast(pl.Schema(BATCH_SCHEMA))


def _marks_frame(t_ns: list[int], tick: list[int], text: list[str], t0: int) -> pl.DataFrame:
    return pl.DataFrame({"t_s": _ns_to_s(t_ns, t0), "tick": tick, "text": text}, schema=MARK_SCHEMA).sort(
        "t_s", maintain_order=True
    )  # sidecar marks interleave by time


def _from_columns(header: SessionHeader, c: EventColumns) -> Trace:
    """`from_events`'s Trace, from columns decoded straight out of the file's frames."""
    t0 = header.t0_mono_ns
    ticks, experts, stages, batches, marks = (c[name] for name in ("tick", "experts", "stage", "batch", "mark"))
    tick_raw = np.array([ticks.fields[name] for name in TICK_FIELDS], dtype=np.int64)
    tick_df = _tick_rows(tick_raw.reshape(len(TICK_FIELDS), -1).T, t0)
    expert_df, expert_ticks, expert_load = _expert_rows(
        experts.ints("tick"), experts.dims(), experts.packed("counts").astype(np.int64)
    )
    if len(stages):
        stage_df = _stage_rows(
            stages.ints("tick"),
            stages.dims(),
            [stages.packed(name) for name in _STAGE_ARRAYS],
            np.array(stages.fields["modelled"], dtype=bool),
            tick_df,
        )
    else:
        stage_df = pl.DataFrame(schema=STAGE_SCHEMA)
    if len(batches):
        batch_df = _batch_rows(
            batches.ints("tick"), batches.lengths("requests"), [batches.packed(name) for name in _BATCH_ARRAYS]
        )
    else:
        batch_df = pl.DataFrame(schema=BATCH_SCHEMA)
    request_df, itl = _request_rows(c["request"].fields, t0)
    scrapes = c["scrape"]
    return Trace(
        header=header,
        ticks=tick_df,
        requests=request_df,
        experts=expert_df,
        stages=stage_df,
        marks=_marks_frame(marks.fields["t_ns"], marks.fields["tick"], marks.fields["text"], t0),
        itl_s=itl,
        expert_ticks=expert_ticks,
        expert_load=expert_load,
        batches=batch_df,
        scrapes=_scrape_rows(scrapes.ints("tick"), scrapes.ints("t_ns"), scrapes.fields["values"], t0),
    )


def _scrape_rows(ticks: np.ndarray, t_ns: np.ndarray, values: list[bytes], t0: int) -> pl.DataFrame:
    """`values`: each scrape's packed float64 values, SCRAPE_SERIES first (a later version's extra
    ones dropped, an earlier one's missing ones null)."""
    n = len(SCRAPE_SERIES)
    table = np.full((len(values), n), np.nan)
    for row, data in enumerate(values):
        known = np.frombuffer(data, "<f8")[:n]
        table[row, : len(known)] = known
    cols = {"tick": ticks, "t_s": (t_ns - t0) / 1e9}
    series = {
        name: pl.Series(name, table[:, i], dtype=pl.Float64, nan_to_null=True) for i, name in enumerate(SCRAPE_SERIES)
    }
    return pl.DataFrame(cols, schema={"tick": pl.Int64, "t_s": pl.Float64}).with_columns(**series)


def _tick_rows(raw: np.ndarray, t0: int) -> pl.DataFrame:
    """Tick events' fields, an int64 [ticks, TICK_FIELDS] array, as the ticks frame."""
    seconds = tick_seconds(raw.reshape(-1, len(TICK_FIELDS)), t0)
    return pl.DataFrame(dict(zip(TICK_COLUMNS, seconds.T)), schema=TICK_SCHEMA, strict=False)


def _request_rows(fields: dict[str, list[Any]], t0: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Each request's row from the request events' columns, vectorised.

    Events are sorted by request, file order kept within one: firsts are the first arrive, admit and
    first_token, lasts the last nonzero token counts and the last finish (its status, reason and
    token_us).
    """
    request, phase, t_ns, prompt, output = (
        fields[name] for name in ("request", "phase", "t_ns", "prompt_tokens", "output_tokens")
    )
    status, reason, token_us = fields["status"], fields["reason"], fields["token_us"]
    n = len(request)
    rid = np.array(request, dtype=np.int64)
    order = np.argsort(rid, kind="stable")
    rid = rid[order]
    code = np.fromiter(map(_PHASES.get, phase, itertools.repeat(-1)), np.int8, n)[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = rid[1:] != rid[:-1]
    group = np.cumsum(starts) - 1
    n_requests = int(starts.sum())

    def last(mask: np.ndarray) -> np.ndarray:
        """Per request, the sorted position of its last event in `mask`, or -1."""
        pos = np.flatnonzero(mask)
        at = np.full(n_requests, -1, dtype=np.int64)
        at[group[pos]] = pos  # numpy assigns repeated indices in order: the last one stays
        return at

    def first(mask: np.ndarray) -> np.ndarray:
        pos = np.flatnonzero(mask)[::-1]
        at = np.full(n_requests, -1, dtype=np.int64)
        at[group[pos]] = pos
        return at

    def counts(values: list[int]) -> np.ndarray:
        v = np.array(values, dtype=np.int64)[order]
        at = last(v != 0)
        return np.where(at >= 0, v[at], 0)

    t = np.array(t_ns, dtype=np.int64)[order]
    arrive_at, admit_at, first_at = (first(code == _PHASES[p]) for p in ("arrive", "admit", "first_token"))
    finish_at = last(code == _PHASES["finish"])
    arrive, admit, first_token, finish = (t[at] for at in (arrive_at, admit_at, first_at, finish_at))
    has_arrive, has_admit, has_first_event, has_finish = (at >= 0 for at in (arrive_at, admit_at, first_at, finish_at))
    finish_event = [-1 if i < 0 else int(order[i]) for i in finish_at.tolist()]  # in file order

    # Each request's last finish's token_us, concatenated in request order.
    tokens = [None if i < 0 else token_us[i] for i in finish_event]
    lengths = np.array([0 if t is None else len(t) // _TOKEN_US.itemsize for t in tokens], dtype=np.int64)
    times = np.frombuffer(b"".join(t for t in tokens if t), _TOKEN_US).astype(np.int64)
    ends = np.cumsum(lengths)
    has_tokens = lengths > 0
    first_us = np.zeros(n_requests, dtype=np.int64)
    first_us[has_tokens] = times[(ends - lengths)[has_tokens]]
    steps = np.diff(times)
    within = np.ones(len(steps), dtype=bool)  # drop the steps from one request's last token to the next's first
    crossing = ends[has_tokens] - 1
    within[crossing[crossing < len(steps)]] = False
    itl = steps[within] / 1e6

    # Python's arithmetic, elementwise (polars divides by a constant as a multiplication by its
    # reciprocal, which can differ in the last bit); NaN stands for null: no real value here is NaN.
    def known(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.where(mask, values, np.nan)

    from_tokens = ~has_first_event & has_arrive & has_tokens  # no client first_token event: the finish record knows
    first_token = np.where(from_tokens, arrive + first_us * 1000, first_token)
    has_first = has_first_event | from_tokens
    out = counts(output)
    ttft = known((first_token - arrive) / 1e9, has_first & has_arrive)
    e2e = known((finish - arrive) / 1e9, has_finish & has_arrive)
    with np.errstate(divide="ignore", invalid="ignore"):  # requests of fewer than two tokens have no TPOT
        tpot = known((e2e - ttft) / (out - 1), out >= 2)
    cols: dict[str, Any] = {
        "request": rid[starts],
        "arrival_s": known((arrive - t0) / 1e9, has_arrive),
        "admit_s": known((admit - t0) / 1e9, has_admit),
        "first_token_s": known((first_token - t0) / 1e9, has_first),
        "finish_s": known((finish - t0) / 1e9, has_finish),
        "prompt_tokens": counts(prompt),
        "output_tokens": out,
        "status": [None if i < 0 else status[i] or None for i in finish_event],
        "reason": [None if i < 0 else reason[i] or None for i in finish_event],
        "preemptions": np.bincount(group[code == _PHASES["preempt"]], minlength=n_requests),
        "ttft_s": ttft,
        "tpot_s": tpot,
        "e2e_s": e2e,
        "queue_wait_s": known((admit - arrive) / 1e9, has_admit & has_arrive),
    }
    return pl.DataFrame({k: pl.Series(k, v, dtype=REQUEST_SCHEMA[k], nan_to_null=True) for k, v in cols.items()}), itl
