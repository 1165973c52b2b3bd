"""FORMAT.md is enough to read a trace: a reader written from it alone, with struct, zlib and msgpack."""

import re
import struct
import zlib
from pathlib import Path

import msgpack
import numpy as np

import tracer
from tracer import MarkEvent, TraceWriter
from tracer.events import KINDS, TICK_FIELDS
from tracer.index import ENTRY_FIELDS
from tracer.synth import synthetic_session


def read_per_format_md(data: bytes):
    assert data[:8] == b"\x89TICK\r\n\x1a"
    frames, off = [], 8
    while off < len(data):
        sync, kind, _flags, _res, length, crc = struct.unpack_from("<4sBBHII", data, off)
        assert sync == b"\xf1TKS"
        payload = data[off + 16 : off + 16 + length]
        assert zlib.crc32(payload, zlib.crc32(data[off + 4 : off + 12])) == crc
        if kind == 6:  # compressed events: read as an events frame
            kind, payload = 2, zlib.decompress(payload)
        frames.append((off, kind, payload))
        off += 16 + length
    return frames


def test_a_reader_written_from_format_md(tmp_path):
    header, events = synthetic_session(30)
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, header) as w:
        for ev in events:
            w.emit(ev)
    data = path.read_bytes()
    frames = read_per_format_md(data)

    kind, payload = frames[0][1], frames[0][2]
    head = msgpack.unpackb(payload)
    assert kind == 1 and head["format_version"] == [1, 4] and head["t0_mono_ns"] == header.t0_mono_ns

    decoded = [e for _, k, p in frames if k == 2 for e in msgpack.unpackb(p)]
    assert len(decoded) == len(events)
    tick = next(e for e in decoded if e[0] == 1)
    assert len(tick) == 15
    experts = next(e for e in decoded if e[0] == 2)
    counts = np.frombuffer(experts[3], "<i4").reshape(experts[2])
    assert counts.shape == (4, 16)
    stage = next(e for e in decoded if e[0] == 3)
    assert np.frombuffer(stage[4], "<i8").reshape(stage[2]).shape == tuple(stage[2]) and stage[7] is True
    finish = next(e for e in decoded if e[0] == 4 and e[2] == "finish" and e[7] == "finished")
    assert len(np.frombuffer(finish[9], "<u4")) == finish[5]

    # The footer is the last 24 bytes and points at the last index frame, whose entries list
    # every events frame.
    foot_off, foot_kind, foot_payload = frames[-1]
    assert foot_kind == 5 and foot_off == len(data) - 24
    (index_off,) = struct.unpack("<Q", foot_payload)
    index = {off: p for off, k, p in frames if k == 3}
    entries = []
    while index_off != -1:
        obj = msgpack.unpackb(index[index_off])
        entries.append(np.frombuffer(obj["entries"], "<i8").reshape(-1, 7))
        index_off = obj["prev"]
    entries = np.concatenate(entries[::-1])
    assert sorted(entries[:, 0].tolist()) == [off for off, k, _ in frames if k == 2]
    assert entries[:, 3].sum() == 30


def test_the_example_in_format_md(tmp_path):
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, synthetic_session(1)[0]) as w:
        w.emit(MarkEvent(1, 0, "note"))
    events_frame = next(p for _, k, p in read_per_format_md(path.read_bytes()) if k == 2)
    assert events_frame.hex(" ").upper() == "91 94 05 01 00 A4 6E 6F 74 65"


def test_format_md_lists_the_tick_fields_in_their_order():
    row = next(
        line
        for line in (Path(tracer.__file__).parent / "FORMAT.md").read_text().splitlines()
        if line.startswith("| 1 | tick")
    )
    written = row.split("`")[1].split(", ")
    assert tuple(written) == TICK_FIELDS


def format_md_section(heading: str) -> str:
    """The text of FORMAT.md under `## heading`, up to the next heading of that level."""
    text = (Path(tracer.__file__).parent / "FORMAT.md").read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def test_format_md_event_table_is_the_kinds_table():
    rows = {}
    for line in format_md_section("Events frame (kind 2)").splitlines():
        m = re.match(r"\| (\d+) \| (\w+) *\| (.*) \|$", line)
        if m:
            rows[int(m[1])] = (m[2], m[3])
    assert sorted(rows) == sorted(kind.code for kind in KINDS)
    for kind in KINDS:
        name, elements = rows[kind.code]
        assert name == kind.name
        written = re.split(r", (?![^\[]*\])", elements.split("`")[1])  # commas outside a [shape]
        assert written == [f.wire_name for f in kind.wire], kind.name
        for f in kind.wire:
            if f.type == "packed":  # its element type is named (int32, uint32, ...)
                assert np.dtype(f.dtype).name in elements, (kind.name, f.name)
            if f.optional:
                assert "nil" in elements, (kind.name, f.name)


def test_format_md_names_the_kinds_the_writer_drops():
    stats = format_md_section("Stats frame (kind 4)")
    counted = set(re.findall(r'`"(\w+)"`', stats)) - {"invalid", "oversize"}
    assert counted == {kind.name for kind in KINDS if kind.priority != "kept"}
    for kind in KINDS:
        if kind.priority == "kept":
            assert f"{kind.name.capitalize()} events are never dropped" in stats


def test_format_md_lists_the_index_columns_in_their_order():
    index = format_md_section("Index frame (kind 3)")
    assert f"int64 `[n, {len(ENTRY_FIELDS)}]`" in index
    columns = [m[1] for m in re.finditer(r"^\| (\w+) +\| ", index, re.M)][1:]  # after the table's heading row
    assert tuple(columns) == ENTRY_FIELDS
