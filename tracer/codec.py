"""Events and the session header <-> msgpack payloads.

Each event is a msgpack array `[code, field, ...]` in the order of its kind's row in
`tracer.events.KINDS` (the dataclass's field order), so payloads stay small and positional;
per-tick arrays travel as `[shape, raw little-endian bytes]`. The encoder and decoder of each kind
are built from that row. Decoding checks every type and length, because the bytes may come from
anyone: anything unexpected is a `TraceFormatError`, never an exception from deeper down.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from tracer.errors import TraceFormatError
from tracer.events import FORMAT_VERSION, KIND_NAMED, KINDS, Event, EventKind, SessionHeader
from tracer.limits import MAX_ARRAY_DIM, MAX_BIN_LEN, MAX_CONTAINER_LEN, MAX_STR_LEN, MAX_TEXT_CHARS

# The codes by name, for readers that sort a frame's events by kind.
TICK, EXPERTS, STAGE, REQUEST, MARK, BATCH = (
    KIND_NAMED[name].code for name in ("tick", "experts", "stage", "request", "mark", "batch")
)
KIND_NAMES = {kind.cls: kind.name for kind in KINDS}

_UNPACK_OPTIONS: dict[str, Any] = dict(
    raw=False,
    strict_map_key=True,
    use_list=True,
    max_str_len=MAX_STR_LEN,
    max_bin_len=MAX_BIN_LEN,
    max_array_len=MAX_CONTAINER_LEN,
    max_map_len=MAX_CONTAINER_LEN,
    max_ext_len=0,  # no ext types at all: nothing of ours uses them
)


def _plain(obj: Any) -> Any:
    """msgpack's fallback for values the engine hands us as numpy or path objects."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a trace")


def new_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, default=_plain)


def packb(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True, default=_plain)  # msgpack is untyped: its packb returns bytes
    return packed


def unpackb(payload: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(payload, **_UNPACK_OPTIONS)
    except Exception as exc:  # the C decoder raises several types for hostile bytes; all mean the same
        raise TraceFormatError(f"{what}: undecodable msgpack ({type(exc).__name__})") from None


def _raw(a: np.ndarray, dtype: np.dtype) -> bytes:
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


def _text(s: str) -> str:
    # Readers refuse strings over MAX_STR_LEN bytes, and with them the whole frame: cut here.
    return s if len(s) <= MAX_TEXT_CHARS else s[:MAX_TEXT_CHARS]


def _encoder(kind: EventKind) -> Callable[[Any], list[Any]]:
    """`encode_event` for one kind, compiled from its row into one list display, as it would be
    written by hand: the writer thread encodes every event, and a loop over the fields cost a
    fifth of its rate."""
    env: dict[str, Any] = {"_raw": _raw, "_text": _text}
    parts = [str(kind.code)]
    for f in kind.wire:
        value = f"ev.{f.name}"  # field names are identifiers: the dataclass's
        if f.type == "shape":  # the shape of the first array it shapes
            parts.append(f"list(ev.{next(g.name for g in kind.wire if g.shape == 'shape')}.shape)")
        elif f.type == "text":
            parts.append(f"_text({value})")
        elif f.type == "bool":
            parts.append(f"bool({value})")
        elif f.type == "packed":
            env[f"_{f.name}_dtype"] = np.dtype(f.dtype)
            raw = f"_raw({value}, _{f.name}_dtype)"
            parts.append(f"(None if {value} is None else {raw})" if f.optional else raw)
        else:
            parts.append(value)
    exec(f"def encode(ev):\n    return [{', '.join(parts)}]\n", env)
    encode: Callable[[Any], list[Any]] = env["encode"]
    return encode


_ENCODERS = {kind.cls: _encoder(kind) for kind in KINDS}


def encode_event(ev: Event) -> list[Any]:
    encode = _ENCODERS.get(type(ev))
    if encode is None:
        raise TypeError(f"not a trace event: {type(ev).__name__}")
    return encode(ev)


def _bad(what: str) -> TraceFormatError:
    return TraceFormatError(what)


def _int(v: object, what: str) -> int:
    if type(v) is not int:
        raise _bad(f"{what}: expected an integer, got {type(v).__name__}")
    return v


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise _bad(f"{what}: expected a string, got {type(v).__name__}")
    return v


def _array(shape: Any, data: Any, dtype: np.dtype, ndim: int, what: str) -> np.ndarray:
    if type(shape) is not list or len(shape) != ndim:
        raise _bad(f"{what}: bad array shape")
    size = dtype.itemsize
    for d in shape:
        if type(d) is not int or not 0 <= d <= MAX_ARRAY_DIM:
            raise _bad(f"{what}: bad array dimension")
        size *= d
    if type(data) is not bytes or len(data) != size or size > MAX_BIN_LEN:
        raise _bad(f"{what}: array bytes do not match shape {shape}")
    # Zero-copy and read-only: events decoded from a trace are records, not scratch space.
    return np.frombuffer(data, dtype).reshape(shape)


def _decoder(kind: EventKind) -> Callable[[list[Any]], Event]:
    """`decode_event` for one kind: every field's type checked, packed arrays read, as the table says."""
    cls, name, n, required = kind.cls, kind.name, len(kind.wire), kind.required
    what = f"{name} event"
    # Places in the list of fields after the code (so one less than in the event); a field of a later
    # minor version takes its fallback field's value (a place) or its default (-1).
    late = [
        (i, kind.at[f.fallback] - 1 if f.fallback else -1, f.default)
        for i, f in enumerate(kind.wire)
        if f.fallback or f.default is not None
    ]
    ints = [i for i, f in enumerate(kind.wire) if f.type == "int"]
    strs = [(i, f"{name} {f.name}") for i, f in enumerate(kind.wire) if f.type in ("str", "text")]
    bools = [(i, f"{what}: {f.name} is not a boolean") for i, f in enumerate(kind.wire) if f.type == "bool"]
    shape_at = next((i for i, f in enumerate(kind.wire) if f.type == "shape"), -1)
    ndim = len(kind.wire[shape_at].dims) if shape_at >= 0 else 0
    # (place, dtype, where its shape comes from: -1 its own bytes, -2 the shape field, else the
    # place of the 1-D array whose length it shares; nil allowed; what a bad one is called)
    arrays = [
        (
            i,
            np.dtype(f.dtype),
            -2 if f.shape == "shape" else kind.at[f.shape] - 1 if f.shape else -1,
            f.optional,
            f"{what}: {f.name} is not packed bytes",
        )
        for i, f in enumerate(kind.wire)
        if f.type == "packed"
    ]

    def decode(item: list[Any]) -> Event:
        if len(item) <= required:
            raise _bad(f"{what} too short")
        values = item[1 : n + 1]
        for i, source, default in late:
            if len(values) <= i:
                values.append(values[source] if source >= 0 else default)
        for i in ints:
            if type(values[i]) is not int:
                raise _bad(f"{what}: expected an integer, got {type(values[i]).__name__}")
        for i, label in strs:
            _str(values[i], label)
        for i, message in bools:
            if type(values[i]) is not bool:
                raise _bad(message)
        for i, dtype, source, optional, message in arrays:
            data = values[i]
            if data is None and optional:
                continue
            if source == -2:
                values[i] = _array(values[shape_at], data, dtype, ndim, what)
                continue
            if source == -1:
                if type(data) is not bytes:
                    raise _bad(message)
                length = len(data) // dtype.itemsize
            else:
                length = len(values[source])  # an array by now: it comes earlier
            values[i] = _array([length], data, dtype, 1, what)
        if shape_at >= 0:
            del values[shape_at]
        event: Event = cls(*values)  # EventKind.cls is a bare `type`: the table pairs it with this kind
        return event

    return decode


_DECODERS = {kind.code: _decoder(kind) for kind in KINDS}


def decode_event(item: Any) -> Event | None:
    """One event from its msgpack form; None for an event code this version does not know."""
    if type(item) is not list or not item or type(item[0]) is not int:
        raise _bad("event is not an array with a code")
    decode = _DECODERS.get(item[0])
    return None if decode is None else decode(item)


def wire_columns(kind: EventKind, items: list[list[Any]]) -> list[tuple[Any, ...]]:
    """Events of one kind (each starting with its code) as columns: one tuple per field of
    `kind.wire`. Fields of later minor versions are dropped; a field an older version lacks gets
    its fallback's values (1.2 tick events lack `sampled_tokens`: they get their decode tokens
    there, the tokens 1.2 counted as generated) or its default (before 1.4 a tick's `absent` is 0).
    A frame's events may differ in length (a file written by two versions): each column is filled
    from the events that have it. TraceFormatError when an event is too short."""
    n = len(kind.wire)
    if not items or min(map(len, items)) <= kind.required:
        raise _bad(f"{kind.name} event too short")
    columns = list(zip(*items))[1 : 1 + n]  # zip stops at the shortest item
    for at in range(len(columns), n):
        f = kind.wire[at]
        column = tuple(item[at + 1] for item in items if len(item) > at + 1)
        if len(column) == len(items):
            columns.append(column)
        elif f.fallback:
            source = columns[kind.at[f.fallback] - 1]
            columns.append(tuple(item[at + 1] if len(item) > at + 1 else v for item, v in zip(items, source)))
        else:
            columns.append(tuple(item[at + 1] if len(item) > at + 1 else f.default for item in items))
    return columns


def decode_events(payload: bytes) -> list[Event]:
    items = unpackb(payload, "events frame")
    if type(items) is not list:
        raise _bad("events frame is not an array")
    out = []
    for item in items:
        ev = decode_event(item)
        if ev is not None:
            out.append(ev)
    return out


def encode_header(header: SessionHeader) -> bytes:
    return packb(
        {
            "format_version": list(header.format_version),
            "t0_mono_ns": header.t0_mono_ns,
            "t0_wall_ns": header.t0_wall_ns,
            "config": header.config,
        }
    )


def decode_header(payload: bytes) -> SessionHeader:
    obj = unpackb(payload, "session header")
    if type(obj) is not dict:
        raise _bad("session header is not a map")
    version = obj.get("format_version")
    if type(version) is not list or len(version) != 2 or any(type(v) is not int for v in version):
        raise _bad("session header has no format version")
    major, minor = version
    ours = f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}"
    if major > FORMAT_VERSION[0]:
        raise _bad(f"trace format {major}.{minor} is newer than this tickscope reads ({ours}); upgrade tickscope")
    if major < FORMAT_VERSION[0]:
        raise _bad(f"trace format {major}.{minor} is older than this tickscope reads ({ours})")
    t0_mono = _int(obj.get("t0_mono_ns"), "session header clock anchor")
    t0_wall = _int(obj.get("t0_wall_ns"), "session header clock anchor")
    config = obj.get("config")
    if type(config) is not dict:
        raise _bad("session header config is not a map")
    return SessionHeader(t0_mono, t0_wall, config, (major, minor))
