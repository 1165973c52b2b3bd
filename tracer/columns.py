"""Events frames decoded straight into per-kind columns, for `tracer.load`.

Building a dataclass per event and then reading its fields back costs most of a load. Here each
frame's msgpack items are grouped by event code, their fields transposed into tuples, and checked a
whole column at a time (the type sets of a column, the lengths of its packed arrays against their
shapes), keeping packed arrays as the file's bytes until one `np.frombuffer` per column at the end.
The checks are those of `codec.decode_event`, so a frame is accepted here exactly when
`decode_events` accepts it; a rejected frame is decoded again by `decode_events` only to raise the
same TraceFormatError, naming the first bad event, as a reader of events would report.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Iterable, NoReturn

import numpy as np

from tracer.codec import BATCH, EXPERTS, MARK, REQUEST, STAGE, TICK, decode_events, tick_columns, unpackb
from tracer.errors import TraceFormatError
from tracer.events import TICK_FIELDS, MarkEvent
from tracer.limits import MAX_ARRAY_DIM, MAX_BIN_LEN

REQUEST_FIELDS = 9
_INSTANTS = ("start_ns", "end_ns")  # tick fields on the recording's clock; the other _ns are durations
# The tick fields as readers show them: times in seconds (instants since the header's t0).
TICK_COLUMNS = tuple(name.removesuffix("_ns") + "_s" if name.endswith("_ns") else name for name in TICK_FIELDS)
_INT = {int}  # bools and floats compare equal to ints, so columns are checked by exact type
_STR = {str}
_BYTES = {bytes}
_LIST = {list}
_TOKEN_TYPES = {bytes, type(None)}
_COUNTS_SIZE, _STAGE_SIZE, _TOKEN_SIZE = 4, 8, 4  # int32 counts, int64 stage times, uint32 token_us
BATCH_SIZES = (8, 4, 4, 2)  # requests int64, prefill int32, decode int32, groups int16


def tick_seconds(raw: np.ndarray, t0_ns: int) -> np.ndarray:
    """Tick events' fields as an int64 [n, TICK_FIELDS] array -> float64 TICK_COLUMNS rows."""
    rows = raw.astype(np.float64)
    for i, name in enumerate(TICK_FIELDS):
        if name in _INSTANTS:  # subtract in integers: ns since boot overflow a float's 53 bits
            rows[:, i] = (raw[:, i] - t0_ns) / 1e9
        elif name.endswith("_ns"):
            rows[:, i] /= 1e9
    return rows


class _Rejected(Exception):
    """The frame breaks a rule of the format; `decode_events` will say which."""


@dataclass
class EventColumns:
    """Every events frame added so far, as columns in file order.

    Packed arrays stay as the bytes read from the file (`*_data`), one entry per event, with their
    shapes in `*_shapes` as an [events, ndim] int64 array per frame.
    """

    tick_rows: list[tuple[int, ...]] = field(default_factory=list)  # TICK_FIELDS ints per tick event
    expert_ticks: list[int] = field(default_factory=list)
    expert_shapes: list[np.ndarray] = field(default_factory=list)
    expert_data: list[bytes] = field(default_factory=list)
    stage_ticks: list[int] = field(default_factory=list)
    stage_shapes: list[np.ndarray] = field(default_factory=list)
    stage_data: tuple[list[bytes], ...] = field(default_factory=lambda: ([], [], [], []))
    stage_modelled: list[bool] = field(default_factory=list)
    request_fields: tuple[list[Any], ...] = field(default_factory=lambda: tuple([] for _ in range(REQUEST_FIELDS)))
    batch_ticks: list[int] = field(default_factory=list)
    batch_data: tuple[list[bytes], ...] = field(default_factory=lambda: ([], [], [], []))
    marks: list[MarkEvent] = field(default_factory=list)

    def add_frame(self, payload: bytes) -> None:
        """Decode one events frame's payload and append its events; TraceFormatError (and nothing
        appended) when any event in it is malformed."""
        items = unpackb(payload, "events frame")
        if type(items) is not list:
            raise TraceFormatError("events frame is not an array")
        try:
            staged = _Frame(items)
        except _Rejected:
            _reject(payload)
        staged.commit(self)


def _reject(payload: bytes) -> NoReturn:
    decode_events(payload)  # raises the TraceFormatError that names the first bad event
    raise TraceFormatError("events frame: malformed event")  # unreachable while both decoders agree


def _require(ok: bool) -> None:
    if not ok:
        raise _Rejected


def _types_within(values: Iterable[Any], allowed: set[type]) -> bool:
    return set(map(type, values)) <= allowed


def _columns(items: list[list[Any]], n_fields: int) -> list[tuple[Any, ...]]:
    """The first `n_fields` elements after the code, transposed; later (newer minor) ones ignored."""
    _require(min(map(len, items)) > n_fields)
    return list(zip(*items))[1 : 1 + n_fields]  # zip stops at the shortest item, which is long enough


def _shapes(shapes: tuple[Any, ...], ndim: int) -> np.ndarray:
    """[events, ndim] int64 dims, each an int in 0..MAX_ARRAY_DIM."""
    _require(_types_within(shapes, _LIST) and set(map(len, shapes)) == {ndim})
    flat = list(itertools.chain.from_iterable(shapes))
    _require(_types_within(flat, _INT) and min(flat) >= 0 and max(flat) <= MAX_ARRAY_DIM)
    return np.array(flat, dtype=np.int64).reshape(len(shapes), ndim)


def _packed(data: tuple[Any, ...], nbytes: np.ndarray) -> None:
    """Each value is bytes of exactly its array's size (which is within MAX_BIN_LEN)."""
    _require(_types_within(data, _BYTES))
    _require(bool((np.fromiter(map(len, data), np.int64, len(data)) == nbytes).all()))
    _require(bool((nbytes <= MAX_BIN_LEN).all()))


class _Frame:
    """One frame's events, checked, waiting to be appended (all of them or, if one is bad, none)."""

    def __init__(self, items: list[Any]) -> None:
        self.ticks: list[tuple[Any, ...]] = []
        self.experts: list[tuple[Any, ...]] = []
        self.expert_shapes = self.stage_shapes = np.zeros((0, 2), dtype=np.int64)
        self.stages: list[tuple[Any, ...]] = []
        self.requests: list[tuple[Any, ...]] = []
        self.marks: list[MarkEvent] = []
        self.batches: list[tuple[Any, ...]] = []
        if not items:
            return
        _require(_types_within(items, _LIST) and min(map(len, items)) > 0)
        codes = list(map(itemgetter(0), items))
        _require(_types_within(codes, _INT))
        by_code: defaultdict[int, list[list[Any]]] = defaultdict(list)
        for code, item in zip(codes, items):
            by_code[code].append(item)  # unknown codes too: ignored below, as later minor versions may add them
        if TICK in by_code:
            cols = tick_columns(by_code[TICK])
            _require(all(_types_within(c, _INT) for c in cols))
            self.ticks = list(zip(*cols))
        if EXPERTS in by_code:
            cols = _columns(by_code[EXPERTS], 3)
            _require(_types_within(cols[0], _INT))
            self.expert_shapes = _shapes(cols[1], 2)
            _packed(cols[2], self.expert_shapes.prod(axis=1) * _COUNTS_SIZE)
            self.experts = [cols[0], cols[2]]
        if STAGE in by_code:
            cols = _columns(by_code[STAGE], 7)
            _require(_types_within(cols[0], _INT) and _types_within(cols[6], {bool}))
            self.stage_shapes = _shapes(cols[1], 2)
            nbytes = self.stage_shapes.prod(axis=1) * _STAGE_SIZE
            for data in cols[2:6]:
                _packed(data, nbytes)
            self.stages = cols
        if REQUEST in by_code:
            cols = _columns(by_code[REQUEST], REQUEST_FIELDS)
            request, phase, t_ns, prompt, output, tick, status, reason, token_us = cols
            _require(all(_types_within(c, _INT) for c in (request, t_ns, prompt, output, tick)))
            _require(all(_types_within(c, _STR) for c in (phase, status, reason)))
            _require(_types_within(token_us, _TOKEN_TYPES))
            lengths = [len(t) for t in token_us if t is not None]
            _require(all(n % _TOKEN_SIZE == 0 and n // _TOKEN_SIZE <= MAX_ARRAY_DIM for n in lengths))
            self.requests = cols
        if MARK in by_code:
            t_ns, tick, text = _columns(by_code[MARK], 3)
            _require(_types_within(t_ns, _INT) and _types_within(tick, _INT) and _types_within(text, _STR))
            self.marks = list(map(MarkEvent, t_ns, tick, text))
        if BATCH in by_code:
            cols = _columns(by_code[BATCH], 5)
            _require(_types_within(cols[0], _INT) and _types_within(cols[1], _BYTES))
            # The request ids' length gives the sequence count every column must match.
            seqs = np.fromiter(map(len, cols[1]), np.int64, len(cols[1])) // BATCH_SIZES[0]
            _require(bool((seqs <= MAX_ARRAY_DIM).all()))
            for data, size in zip(cols[1:], BATCH_SIZES):
                _packed(data, seqs * size)
            self.batches = cols

    def commit(self, into: EventColumns) -> None:
        into.tick_rows += self.ticks
        if self.experts:
            into.expert_ticks += self.experts[0]
            into.expert_data += self.experts[1]
            into.expert_shapes.append(self.expert_shapes)
        if self.stages:
            into.stage_ticks += self.stages[0]
            for column, data in zip(into.stage_data, self.stages[2:6]):
                column += data
            into.stage_modelled += self.stages[6]
            into.stage_shapes.append(self.stage_shapes)
        for column, values in zip(into.request_fields, self.requests):
            column += values
        into.marks += self.marks
        if self.batches:
            into.batch_ticks += self.batches[0]
            for column, data in zip(into.batch_data, self.batches[1:]):
                column += data
