"""Events frames decoded straight into per-kind columns, for `tracer.load`.

Building a dataclass per event and then reading its fields back costs most of a load. Here each
frame's msgpack items are grouped by event code, their fields transposed into tuples, and checked a
whole column at a time (the type sets of a column, the lengths of its packed arrays against their
shapes), keeping packed arrays as the file's bytes until one `np.frombuffer` per column at the end.
The checks are those of `codec.decode_event`, so a frame is accepted here exactly when
`decode_events` accepts it; a rejected frame is decoded again by `decode_events` only to raise the
same TraceFormatError, naming the first bad event, as a reader of events would report. Which
columns a kind has, and how each is checked, come from its row in `tracer.events.KINDS`.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NoReturn

import numpy as np

from tracer.codec import decode_events, encode_event, unpackb, wire_columns
from tracer.errors import TraceFormatError
from tracer.events import KIND_BY_CODE, KINDS, TICK_FIELDS, Event, EventKind
from tracer.limits import MAX_ARRAY_DIM, MAX_BIN_LEN

_INSTANTS = ("start_ns", "end_ns")  # tick fields on the recording's clock; the other _ns are durations
# The tick fields as readers show them: times in seconds (instants since the header's t0).
TICK_COLUMNS = tuple(name.removesuffix("_ns") + "_s" if name.endswith("_ns") else name for name in TICK_FIELDS)
# Allowed types of a column of each field type: bools and floats compare equal to ints, so columns
# are checked by exact type.
_TYPES: dict[str, set[type]] = {"int": {int}, "str": {str}, "text": {str}, "bool": {bool}}
_LIST: set[type] = {list}
_BYTES: set[type] = {bytes}


def tick_seconds(raw: np.ndarray, t0_ns: int) -> np.ndarray:
    """Tick events' fields as an int64 [n, TICK_FIELDS] array -> float64 TICK_COLUMNS rows."""
    rows = raw.astype(np.float64)
    for i, name in enumerate(TICK_FIELDS):
        if name in _INSTANTS:  # subtract in integers: ns since boot overflow a float's 53 bits
            rows[:, i] = (raw[:, i] - t0_ns) / 1e9
        elif name.endswith("_ns"):
            rows[:, i] /= 1e9
    return rows


class Rejected(Exception):
    """Events break a rule of the format; `decode_events` (or `decode_event`) will say which."""


@dataclass
class KindColumns:
    """One kind's events in file order: a list per field of the class, values as the file holds
    them (packed arrays as their bytes, or None), and for a kind with a shape field, the shapes
    as an [events, ndim] int64 array per frame."""

    kind: EventKind
    fields: dict[str, list[Any]]
    shapes: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.fields[self.kind.names[0]])

    def ints(self, name: str) -> np.ndarray:
        return np.array(self.fields[name], dtype=np.int64)

    def dims(self) -> np.ndarray:
        """Every event's shape, [events, ndim]."""
        ndim = len(self.kind.wire_field("shape").dims)
        return np.concatenate(self.shapes) if self.shapes else np.zeros((0, ndim), dtype=np.int64)

    def packed(self, name: str) -> np.ndarray:
        """A packed field's values, every event's (but None's) concatenated, in its dtype."""
        return np.frombuffer(b"".join(filter(None, self.fields[name])), self.kind.wire_field(name).dtype)

    def lengths(self, name: str) -> np.ndarray:
        """A packed field's element count per event (0 for None)."""
        size = np.dtype(self.kind.wire_field(name).dtype).itemsize
        values = self.fields[name]
        return np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values)) // size


def _empty(kind: EventKind) -> KindColumns:
    return KindColumns(kind, {name: [] for name in kind.names})


@dataclass
class EventColumns:
    """Every events frame added so far, one KindColumns per kind of `tracer.events.KINDS`."""

    kinds: dict[str, KindColumns] = field(default_factory=lambda: {kind.name: _empty(kind) for kind in KINDS})

    def __getitem__(self, name: str) -> KindColumns:
        return self.kinds[name]

    def add_frame(self, payload: bytes) -> None:
        """Decode one events frame's payload and append its events; TraceFormatError (and nothing
        appended) when any event in it is malformed."""
        items = unpackb(payload, "events frame")
        if type(items) is not list:
            raise TraceFormatError("events frame is not an array")
        try:
            staged = _Frame(items)
        except Rejected:
            _reject(payload)
        staged.commit(self)

    def add_events(self, events: Iterable[Event]) -> None:
        """Events held as objects (a sidecar's marks), appended as though read from a frame."""
        items = [encode_event(ev) for ev in events]
        try:
            staged = _Frame(items)
        except Rejected:
            raise TraceFormatError("malformed events") from None
        staged.commit(self)


def _reject(payload: bytes) -> NoReturn:
    decode_events(payload)  # raises the TraceFormatError that names the first bad event
    raise TraceFormatError("events frame: malformed event")  # unreachable while both decoders agree


def _require(ok: bool) -> None:
    if not ok:
        raise Rejected


def _types_within(values: Iterable[Any], allowed: set[type]) -> bool:
    return set(map(type, values)) <= allowed


def _shapes(shapes: tuple[Any, ...], ndim: int) -> np.ndarray:
    """[events, ndim] int64 dims, each an int in 0..MAX_ARRAY_DIM."""
    _require(_types_within(shapes, _LIST) and set(map(len, shapes)) == {ndim})
    flat = list(itertools.chain.from_iterable(shapes))
    _require(_types_within(flat, _TYPES["int"]) and min(flat) >= 0 and max(flat) <= MAX_ARRAY_DIM)
    return np.array(flat, dtype=np.int64).reshape(len(shapes), ndim)


def _packed(data: tuple[Any, ...], nbytes: np.ndarray) -> None:
    """Each value is bytes of exactly its array's size (which is within MAX_BIN_LEN)."""
    _require(_types_within(data, _BYTES))
    _require(bool((np.fromiter(map(len, data), np.int64, len(data)) == nbytes).all()))
    _require(bool((nbytes <= MAX_BIN_LEN).all()))


def checked_columns(kind: EventKind, items: list[list[Any]]) -> tuple[dict[str, tuple[Any, ...]], np.ndarray | None]:
    """Events of one kind as columns, checked a whole column at a time as `decode_event` checks
    each event: the class's fields by name, and the shapes ([events, ndim] int64) when the kind
    has a shape field. Rejected when any event is malformed."""
    try:
        columns = wire_columns(kind, items)
    except TraceFormatError:
        raise Rejected from None
    out: dict[str, tuple[Any, ...]] = {}
    shapes: np.ndarray | None = None
    lengths: dict[str, np.ndarray] = {}  # elements per event of the 1-D arrays other arrays share
    for f, column in zip(kind.wire, columns):
        if f.type == "shape":
            shapes = _shapes(column, len(f.dims))
            continue
        if f.type != "packed":
            _require(_types_within(column, _TYPES[f.type]))
        elif f.shape == "shape":
            assert shapes is not None  # the table puts the shape field first
            _packed(column, shapes.prod(axis=1) * np.dtype(f.dtype).itemsize)
        elif f.shape:
            _packed(column, lengths[f.shape] * np.dtype(f.dtype).itemsize)
        else:  # one dimension, as long as its bytes make it
            data = [v for v in column if v is not None] if f.optional else column
            _require(_types_within(data, _BYTES))
            size = np.dtype(f.dtype).itemsize
            nbytes = np.fromiter(map(len, data), np.int64, len(data))
            _require(bool((nbytes % size == 0).all() and (nbytes // size <= MAX_ARRAY_DIM).all()))
            lengths[f.name] = nbytes // size
        out[f.name] = column
    return out, shapes


class _Frame:
    """One frame's events, checked, waiting to be appended (all of them or, if one is bad, none)."""

    def __init__(self, items: list[Any]) -> None:
        self.kinds: list[tuple[EventKind, dict[str, tuple[Any, ...]], np.ndarray | None]] = []
        if not items:
            return
        _require(_types_within(items, _LIST) and min(map(len, items)) > 0)
        codes = list(map(itemgetter(0), items))
        _require(_types_within(codes, _TYPES["int"]))
        by_code: defaultdict[int, list[list[Any]]] = defaultdict(list)
        for code, item in zip(codes, items):
            by_code[code].append(item)  # unknown codes too: ignored below, as later minor versions may add them
        for code, group in by_code.items():
            kind = KIND_BY_CODE.get(code)
            if kind is not None:
                self.kinds.append((kind, *checked_columns(kind, group)))

    def commit(self, into: EventColumns) -> None:
        for kind, columns, shapes in self.kinds:
            held = into.kinds[kind.name]
            for name, values in columns.items():
                held.fields[name] += values
            if shapes is not None:
                held.shapes.append(shapes)
