"""Every event kind and the header survive encode -> msgpack -> decode unchanged."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracer import ExpertsEvent, MarkEvent, RequestEvent, SessionHeader, StageEvent, TickEvent, TraceFormatError
from tracer.codec import decode_event, decode_events, decode_header, encode_event, encode_header, packb, wire_columns
from tracer.columns import EventColumns
from tracer.events import KINDS, EventKind, Field, absent_fields, absent_mask

i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
text = st.text(max_size=40)


def roundtrip(ev):
    return decode_events(packb([encode_event(ev)]))[0]


def assert_same(a, b):
    assert type(a) is type(b)
    for name in a.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(x, y)
        else:
            assert x == y, name


@given(st.lists(i64, min_size=14, max_size=14))
def test_tick_roundtrip(fields):
    ev = TickEvent(*fields)
    assert_same(roundtrip(ev), ev)


def test_a_1_2_tick_event_counts_its_decode_tokens_as_sampled():
    old = encode_event(TickEvent(*range(13)))[:-2]  # 1.2 wrote no sampled_tokens (nor 1.4's absent)
    assert decode_event(old) == TickEvent(*range(12), 6)


@given(st.integers(0, 6), st.integers(0, 70), i64)
def test_experts_roundtrip(layers, experts, tick):
    counts = np.arange(layers * experts, dtype=np.int32).reshape(layers, experts)
    assert_same(roundtrip(ExpertsEvent(tick, counts)), ExpertsEvent(tick, counts))


def test_experts_accepts_other_int_dtypes_and_views():
    counts = np.arange(24, dtype=np.int64).reshape(4, 6)[:, ::2]
    back = roundtrip(ExpertsEvent(3, counts))
    assert back.counts.dtype == np.int32 and np.array_equal(back.counts, counts)


@given(st.integers(1, 4), st.integers(1, 5), st.booleans())
def test_stage_roundtrip(stages, mbs, modelled):
    a = np.arange(stages * mbs, dtype=np.int64).reshape(stages, mbs) * 1000
    ev = StageEvent(7, a, a + 5, a * 2, a * 2 + 5, modelled=modelled)
    assert_same(roundtrip(ev), ev)


@given(
    i64,
    st.sampled_from(["arrive", "admit", "first_token", "preempt", "finish"]),
    i64,
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    text,
    text,
    st.one_of(st.none(), st.lists(st.integers(0, 2**32 - 1), max_size=50)),
)
def test_request_roundtrip(rid, phase, t, prompt, out, status, reason, tokens):
    tok = None if tokens is None else np.array(tokens, dtype=np.uint32)
    ev = RequestEvent(rid, phase, t, prompt, out, tick=3, status=status, reason=reason, token_us=tok)
    assert_same(roundtrip(ev), ev)


@given(i64, i64, text)
def test_mark_roundtrip(t, tick, note):
    assert_same(roundtrip(MarkEvent(t, tick, note)), MarkEvent(t, tick, note))


def test_numpy_scalars_in_fields_are_stored_as_ints():
    ev = TickEvent(*[np.int64(i) for i in range(13)])
    assert roundtrip(ev) == TickEvent(*range(13))


def test_header_roundtrip_with_nested_config():
    h = SessionHeader(5, 6, {"model": {"layers": np.int64(4), "dims": (1, 2)}, "device": "cpu"})
    back = decode_header(encode_header(h))
    assert back == SessionHeader(5, 6, {"model": {"layers": 4, "dims": [1, 2]}, "device": "cpu"})


def test_newer_major_version_is_refused_naming_both():
    h = SessionHeader(0, 0, {}, format_version=(9, 1))
    with pytest.raises(TraceFormatError, match=r"9\.1.*newer.*1\.4"):
        decode_header(encode_header(h))


def test_newer_minor_version_is_read():
    h = SessionHeader(0, 0, {}, format_version=(1, 7))
    assert decode_header(encode_header(h)).format_version == (1, 7)


@pytest.mark.parametrize(
    "item",
    [
        "x",
        [],
        ["1"],
        [1, 2, 3],
        [1] + ["a"] * 12,
        [2, 0, [2, 2], b"\0" * 15],
        [2, 0, [2], b"\0" * 8],
        [2, 0, [-1, 2], b""],
        [3, 0, [1, 1], b"\0" * 8, b"", b"", b"", True],
        [4, 0, 5, 0, 0, 0, 0, "", "", None],
        [4, 0, "arrive", 0, 0, 0, 0, "", "", "notbytes"],
        [4, 0, "arrive", 0, 0, 0, 0, "", "", b"\0" * 3],
        [5, 0, 0, 7],
        [1, True] + [0] * 11,
    ],
)
def test_malformed_events_raise_trace_format_error(item):
    with pytest.raises(TraceFormatError):
        decode_event(item)


def test_unknown_event_codes_are_skipped_for_forward_compatibility():
    payload = packb([[99, "future"], encode_event(MarkEvent(1, 2, "x"))])
    assert decode_events(payload) == [MarkEvent(1, 2, "x")]


def test_a_tick_before_1_4_has_no_absent_fields():
    ev = TickEvent(*range(13), absent=absent_mask(["forward_ns"]))
    older = encode_event(ev)[:-1]
    assert decode_event(older).absent == 0 and absent_fields(decode_event(encode_event(ev)).absent) == ("forward_ns",)
    kind = KINDS[0]
    columns = wire_columns(kind, [older, encode_event(ev)])  # one frame, two versions' events
    assert columns[-1] == (0, ev.absent) and columns[-2] == (12, 12)


def test_longer_events_from_a_newer_minor_version_are_read():
    item = encode_event(MarkEvent(1, 2, "x")) + ["a new optional field"]
    assert decode_event(item) == MarkEvent(1, 2, "x")


@st.composite
def events_of(draw, kind: EventKind):
    """Events of `kind`, drawn from its row in the table alone."""
    values, shape = {}, None
    for f in kind.wire:
        if f.type == "shape":
            shape = draw(st.lists(st.integers(0, 4), min_size=len(f.dims), max_size=len(f.dims)))
            continue
        if f.type == "int":
            values[f.name] = draw(i64)
        elif f.type in ("str", "text"):
            values[f.name] = draw(text)
        elif f.type == "bool":
            values[f.name] = draw(st.booleans())
        elif f.optional and draw(st.booleans()):
            values[f.name] = None
        else:
            dims = shape if f.shape == "shape" else [len(values[f.shape])] if f.shape else [draw(st.integers(0, 9))]
            n = int(np.prod(dims))
            if np.dtype(f.dtype).kind == "f":
                element = st.floats(allow_nan=False, width=np.dtype(f.dtype).itemsize * 8)
            else:
                info = np.iinfo(np.dtype(f.dtype))
                element = st.integers(int(info.min), int(info.max))
            elements = draw(st.lists(element, min_size=n, max_size=n))
            values[f.name] = np.array(elements, dtype=f.dtype).reshape(dims)
    return kind.cls(**values)


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
@given(data=st.data())
def test_every_kind_round_trips_through_the_codec_and_the_columns(kind, data):
    ev = data.draw(events_of(kind))
    assert encode_event(ev)[0] == kind.code
    assert_same(roundtrip(ev), ev)
    columns = EventColumns()
    columns.add_frame(packb([encode_event(ev)]))
    held = columns[kind.name]
    assert len(held) == 1 and all(len(other) == 0 for other in columns.kinds.values() if other is not held)
    for f in kind.wire:
        value = getattr(ev, f.name, None)
        if f.type == "shape":
            shaped = next(getattr(ev, g.name) for g in kind.wire if g.shape == "shape")
            assert held.dims().tolist() == [list(shaped.shape)]
        elif f.type != "packed":
            assert held.fields[f.name] == [value]
        elif value is None:
            assert held.fields[f.name] == [None]
        else:
            got = held.packed(f.name)
            assert got.dtype == np.dtype(f.dtype) and np.array_equal(got, value.ravel())


def test_a_kinds_row_names_its_class_fields_in_their_order():
    with pytest.raises(TypeError, match="not MarkEvent's fields"):
        EventKind(
            99,
            "note",
            MarkEvent,
            (Field("tick"), Field("t_ns"), Field("text", "text")),
            priority="core",
            ticked=False,
            frame="marks",
        )
    with pytest.raises(TypeError, match="fallback"):
        EventKind(
            99,
            "note",
            MarkEvent,
            (Field("t_ns", fallback="tick"), Field("tick"), Field("text", "text")),
            priority="core",
            ticked=False,
            frame="marks",
        )
