"""Events and the session header <-> msgpack payloads.

Each event is a msgpack array `[code, field, ...]` in the dataclass's field order, so payloads stay
small and positional; per-tick arrays travel as `[shape, raw little-endian bytes]`. Decoding checks
every type and length, because the bytes may come from anyone: anything unexpected is a
`TraceFormatError`, never an exception from deeper down.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import numpy as np

from tracer.errors import TraceFormatError
from tracer.events import (
    FORMAT_VERSION,
    BatchEvent,
    Event,
    ExpertsEvent,
    MarkEvent,
    RequestEvent,
    SessionHeader,
    StageEvent,
    TickEvent,
    TICK_FIELDS,
)
from tracer.limits import MAX_ARRAY_DIM, MAX_BIN_LEN, MAX_CONTAINER_LEN, MAX_STR_LEN, MAX_TEXT_CHARS

TICK, EXPERTS, STAGE, REQUEST, MARK, BATCH = 1, 2, 3, 4, 5, 6
KIND_NAMES = {TickEvent: "tick", ExpertsEvent: "experts", StageEvent: "stage", RequestEvent: "request", MarkEvent: "mark",
              BatchEvent: "batch"}

_COUNTS = np.dtype("<i4")
_STAGE_NS = np.dtype("<i8")
_TOKEN_US = np.dtype("<u4")
_BATCH_COLUMNS = (np.dtype("<i8"), np.dtype("<i4"), np.dtype("<i4"), np.dtype("<i2"))  # requests, prefill, decode, groups
_DECODE_TOKENS = 1 + TICK_FIELDS.index("decode_tokens")  # its place in a tick event, after the code

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
    return msgpack.packb(obj, use_bin_type=True, default=_plain)


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


def encode_event(ev: Event) -> list[Any]:
    t = type(ev)
    if t is TickEvent:
        return [TICK, *map(ev.__getattribute__, TICK_FIELDS)]
    if t is ExpertsEvent:
        return [EXPERTS, ev.tick, list(ev.counts.shape), _raw(ev.counts, _COUNTS)]
    if t is RequestEvent:
        tok = None if ev.token_us is None else _raw(ev.token_us, _TOKEN_US)
        return [REQUEST, ev.request, ev.phase, ev.t_ns, ev.prompt_tokens, ev.output_tokens,
                ev.tick, ev.status, _text(ev.reason), tok]
    if t is StageEvent:
        return [STAGE, ev.tick, list(ev.measured_start_ns.shape),
                _raw(ev.measured_start_ns, _STAGE_NS), _raw(ev.measured_end_ns, _STAGE_NS),
                _raw(ev.modelled_start_ns, _STAGE_NS), _raw(ev.modelled_end_ns, _STAGE_NS),
                bool(ev.modelled)]
    if t is MarkEvent:
        return [MARK, ev.t_ns, ev.tick, _text(ev.text)]
    if t is BatchEvent:
        columns = (ev.requests, ev.prefill_tokens, ev.decode_tokens, ev.groups)
        return [BATCH, ev.tick, *(_raw(c, d) for c, d in zip(columns, _BATCH_COLUMNS))]
    raise TypeError(f"not a trace event: {t.__name__}")


def _bad(what: str) -> TraceFormatError:
    return TraceFormatError(what)


def _ints(values: list[Any], what: str) -> None:
    for v in values:
        if type(v) is not int:
            raise _bad(f"{what}: expected an integer, got {type(v).__name__}")


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


def decode_event(item: Any) -> Event | None:
    """One event from its msgpack form; None for an event code this version does not know."""
    if type(item) is not list or not item or type(item[0]) is not int:
        raise _bad("event is not an array with a code")
    code = item[0]
    n = len(item)
    if code == TICK:
        fields = [column[0] for column in tick_columns([item])]
        _ints(fields, "tick event")
        return TickEvent(*fields)
    if code == EXPERTS:
        if n < 4:
            raise _bad("experts event too short")
        _ints(item[1:2], "experts event")
        return ExpertsEvent(item[1], _array(item[2], item[3], _COUNTS, 2, "experts event"))
    if code == REQUEST:
        if n < 10:
            raise _bad("request event too short")
        _ints([item[1], item[3], item[4], item[5], item[6]], "request event")
        tok = item[9]
        if tok is None:
            token_us = None
        elif type(tok) is bytes:
            token_us = _array([len(tok) // _TOKEN_US.itemsize], tok, _TOKEN_US, 1, "request token_us")
        else:
            raise _bad("request event: token_us is not packed bytes")
        return RequestEvent(
            request=item[1], phase=_str(item[2], "request phase"), t_ns=item[3],
            prompt_tokens=item[4], output_tokens=item[5], tick=item[6],
            status=_str(item[7], "request status"), reason=_str(item[8], "request reason"),
            token_us=token_us,
        )
    if code == STAGE:
        if n < 8:
            raise _bad("stage event too short")
        _ints(item[1:2], "stage event")
        if type(item[7]) is not bool:
            raise _bad("stage event: modelled is not a boolean")
        arrays = [_array(item[2], item[i], _STAGE_NS, 2, "stage event") for i in range(3, 7)]
        return StageEvent(item[1], *arrays, modelled=item[7])
    if code == MARK:
        if n < 4:
            raise _bad("mark event too short")
        _ints(item[1:3], "mark event")
        return MarkEvent(item[1], item[2], _str(item[3], "mark text"))
    if code == BATCH:
        if n < 6:
            raise _bad("batch event too short")
        _ints(item[1:2], "batch event")
        if type(item[2]) is not bytes:
            raise _bad("batch event: requests is not packed bytes")
        seqs = [len(item[2]) // _BATCH_COLUMNS[0].itemsize]  # every column has one value per sequence
        columns = [_array(seqs, data, dtype, 1, "batch event") for data, dtype in zip(item[2:6], _BATCH_COLUMNS)]
        return BatchEvent(item[1], *columns)
    return None


def tick_columns(items: list[list[Any]]) -> list[tuple[Any, ...]]:
    """Tick events' fields after their code, one tuple per TICK_FIELDS name (fields of later minor
    versions dropped). 1.2 events lack `sampled_tokens`: they get their decode tokens there, the
    tokens 1.2 counted as generated."""
    n = len(TICK_FIELDS)
    if not items or min(map(len, items)) < n:
        raise _bad("tick event too short")
    columns = list(zip(*items))[1 : 1 + n]  # zip stops at the shortest item
    if len(columns) < n:
        columns.append(columns[_DECODE_TOKENS - 1])
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
    return packb({
        "format_version": list(header.format_version),
        "t0_mono_ns": header.t0_mono_ns,
        "t0_wall_ns": header.t0_wall_ns,
        "config": header.config,
    })


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
    t0_mono, t0_wall, config = obj.get("t0_mono_ns"), obj.get("t0_wall_ns"), obj.get("config")
    _ints([t0_mono, t0_wall], "session header clock anchor")
    if type(config) is not dict:
        raise _bad("session header config is not a map")
    return SessionHeader(t0_mono, t0_wall, config, (major, minor))
