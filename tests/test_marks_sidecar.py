"""The marks sidecar (tracer/marks.py): its size limit, on reading and on writing, and its
replacement, which is atomic: a rename of a complete new file over the old one, never a rewrite in
place, and a failure part way leaves the old notes as they were."""

from __future__ import annotations

import json
import os

import pytest

import tracer
import tracer.marks as marks_module
from tracer.events import MarkEvent
from tracer.marks import (
    MAX_MARK_TEXT,
    MAX_SIDECAR_BYTES,
    add_mark,
    read_marks,
    sidecar_path,
)
from tracer.synth import synthetic_session


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.msgpack"
    header, events = synthetic_session(10)
    with tracer.TraceWriter(path, header) as w:
        for ev in events:
            w.emit(ev)
    return path


def sidecar_of_size(path, size: int) -> None:
    """A valid sidecar with one mark, padded with JSON whitespace to exactly `size` bytes."""
    body = json.dumps({"version": 1, "marks": [{"t_ns": 5, "tick": 1, "text": "kept"}]})
    path.write_text(body + " " * (size - len(body)))
    assert path.stat().st_size == size


def test_a_sidecar_at_the_limit_is_read_and_one_byte_more_is_refused(trace):
    side = sidecar_path(trace)
    sidecar_of_size(side, MAX_SIDECAR_BYTES)
    marks, problems = read_marks(trace)
    assert [m.text for m in marks] == ["kept"] and problems == []
    sidecar_of_size(side, MAX_SIDECAR_BYTES + 1)
    marks, problems = read_marks(trace)
    assert marks == [] and problems == [f"{side.name}: larger than {MAX_SIDECAR_BYTES} bytes: marks ignored"]
    # the trace still opens, with the problem reported; and the file someone made is not overwritten
    loaded = tracer.load(trace)
    assert problems[0] in loaded.problems and "kept" not in loaded.marks["text"].to_list()
    before = side.read_bytes()
    with pytest.raises(ValueError, match="cannot be read"):
        add_mark(trace, MarkEvent(t_ns=1, tick=1, text="new"))
    assert side.read_bytes() == before


def sidecar_body(n: int, text: str) -> bytes:
    """A sidecar of `n` marks as add_mark writes one."""
    marks = [{"t_ns": 7, "tick": 7, "text": text}] * n
    return json.dumps({"version": 1, "marks": marks}, ensure_ascii=False, indent=1).encode()


def test_adding_a_mark_never_writes_a_sidecar_past_the_limit(trace):
    note = "n" * MAX_MARK_TEXT
    per_mark = len(sidecar_body(2, note)) - len(sidecar_body(1, note))
    n = (MAX_SIDECAR_BYTES - len(sidecar_body(0, note))) // per_mark  # as many long notes as fit
    full = sidecar_body(n, note)
    assert MAX_SIDECAR_BYTES - per_mark < len(full) <= MAX_SIDECAR_BYTES
    side = sidecar_path(trace)
    side.write_bytes(full)
    assert len(read_marks(trace)[0]) == n
    # one more long note would make a sidecar that every reader ignores, all its notes with it:
    # refused, and what was saved stays as it was
    with pytest.raises(ValueError, match=f"{MAX_SIDECAR_BYTES} bytes"):
        add_mark(trace, MarkEvent(t_ns=7, tick=7, text=note))
    assert side.read_bytes() == full
    marks, problems = read_marks(trace)
    assert problems == [] and len(marks) == n


def test_a_mark_replaces_the_sidecar_by_a_rename_never_in_place(trace, tmp_path):
    add_mark(trace, MarkEvent(t_ns=1, tick=1, text="first"))
    side = sidecar_path(trace)
    old = side.read_bytes()
    with open(side, "rb") as reader_open_meanwhile:
        inode = os.fstat(reader_open_meanwhile.fileno()).st_ino
        add_mark(trace, MarkEvent(t_ns=2, tick=2, text="second"))
        # a reader that had the old file open still reads it whole: it was not truncated or rewritten
        assert reader_open_meanwhile.read() == old
    assert os.stat(side).st_ino != inode
    assert [m.text for m in read_marks(trace)[0]] == ["first", "second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.msgpack", "t.msgpack.marks.json"]  # no temp left


@pytest.mark.parametrize("fails_in", ["writing", "renaming"])
def test_a_failed_replacement_leaves_the_old_sidecar_and_no_temporary(trace, tmp_path, monkeypatch, fails_in):
    add_mark(trace, MarkEvent(t_ns=1, tick=1, text="first"))
    side = sidecar_path(trace)
    old = side.read_bytes()

    if fails_in == "writing":
        real_fdopen = os.fdopen

        class HalfThenFull:
            """The temporary file takes half the bytes, then the disk is full."""

            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                raise OSError(28, "No space left on device")

        monkeypatch.setattr(marks_module.os, "fdopen", lambda fd, *a, **kw: HalfThenFull(real_fdopen(fd, *a, **kw)))
    else:

        def no_rename(src, dst):
            raise OSError(13, "Permission denied")

        monkeypatch.setattr(marks_module.os, "replace", no_rename)
    with pytest.raises(OSError):
        add_mark(trace, MarkEvent(t_ns=2, tick=2, text="second"))
    assert side.read_bytes() == old
    assert [m.text for m in read_marks(trace)[0]] == ["first"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.msgpack", "t.msgpack.marks.json"]
