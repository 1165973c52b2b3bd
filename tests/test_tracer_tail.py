"""TraceTail and follow: reading a trace while it is being written."""

import asyncio
import os
import time

import pytest

from tracer import MarkEvent, SessionHeader, TraceFormatError, TraceTail, TraceWriter, follow
from tracer.framing import MAGIC


def test_waits_for_the_file_then_reads_incrementally(tmp_path):
    path = tmp_path / "live.msgpack"
    tail = TraceTail(path)
    assert tail.poll() == [] and tail.state == "waiting" and tail.header is None
    w = TraceWriter(path, SessionHeader(7, 8, {"a": 1}), flush_interval_s=10)
    assert tail.poll() == [] and tail.state == "ok" and tail.header.config == {"a": 1}
    w.emit(MarkEvent(1, 0, "one"))
    w.flush()
    assert tail.poll() == [MarkEvent(1, 0, "one")]
    assert tail.poll() == []
    w.emit(MarkEvent(2, 1, "two"))
    w.emit(MarkEvent(3, 2, "three"))
    w.close()
    assert tail.poll() == [MarkEvent(2, 1, "two"), MarkEvent(3, 2, "three")]
    assert tail.finished and tail.problems == []
    tail.close()


def test_events_reach_the_file_without_flush_or_close(tmp_path):
    path = tmp_path / "live.msgpack"
    tail = TraceTail(path)
    with TraceWriter(path, SessionHeader(0, 0), flush_interval_s=0.02) as w:
        w.emit(MarkEvent(1, 0, "periodic"))
        got = []
        for _ in range(500):  # the writer's own timer must get it there; give it up to 5 s
            got += tail.poll()
            if got:
                break
            time.sleep(0.01)
        assert got == [MarkEvent(1, 0, "periodic")] and not tail.finished
    tail.close()


def test_partial_frames_wait_for_the_next_poll(tmp_path):
    src = tmp_path / "whole.msgpack"
    with TraceWriter(src, SessionHeader(0, 0)) as w:
        for i in range(3):
            w.emit(MarkEvent(i, i, "x" * 50))
            w.flush()
    data = src.read_bytes()
    live = tmp_path / "live.msgpack"
    tail = TraceTail(live)
    got = []
    with open(live, "wb") as f:
        for i in range(0, len(data), 7):  # the file grows a few bytes at a time
            f.write(data[i : i + 7])
            f.flush()
            got += tail.poll()
    assert got == [MarkEvent(i, i, "x" * 50) for i in range(3)]
    assert tail.problems == [] and tail.finished


def test_truncation_and_replacement_are_noticed(tmp_path):
    path = tmp_path / "live.msgpack"
    with TraceWriter(path, SessionHeader(0, 0)) as w:
        w.emit(MarkEvent(1, 1, "a"))
    tail = TraceTail(path)
    assert len(tail.poll()) == 1
    with open(path, "r+b") as f:
        f.truncate(len(MAGIC) + 5)
    assert tail.poll() == [] and tail.state == "truncated"

    other = tmp_path / "other.msgpack"
    tail = TraceTail(other)
    with TraceWriter(other, SessionHeader(0, 0)):
        pass
    tail.poll()
    os.replace(path, other)
    assert tail.poll() == [] and tail.state == "replaced"


def test_rewritten_in_place_counts_as_truncated(tmp_path):
    path = tmp_path / "live.msgpack"
    with TraceWriter(path, SessionHeader(1, 1)) as w:
        w.emit(MarkEvent(1, 1, "a"))
    tail = TraceTail(path)
    tail.poll()
    with TraceWriter(path, SessionHeader(2, 2)) as w:  # a new recording to the same name
        for i in range(50):
            w.emit(MarkEvent(i, i, "b" * 20))
    assert tail.poll() == [] and tail.state == "truncated"


def test_not_a_trace_raises(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(TraceFormatError, match="bad magic"):
        TraceTail(path).poll()


async def test_follow_yields_events_as_written_and_ends_at_close(tmp_path):
    path = tmp_path / "live.msgpack"

    async def record():
        await asyncio.sleep(0.05)
        with TraceWriter(path, SessionHeader(0, 0), flush_interval_s=0.01) as w:
            for i in range(20):
                w.emit(MarkEvent(i, i, "m"))
                await asyncio.sleep(0.005)

    task = asyncio.create_task(record())
    got = [ev async for ev in follow(path, poll_s=0.01)]
    await task
    assert got == [MarkEvent(i, i, "m") for i in range(20)]
