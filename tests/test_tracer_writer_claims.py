"""Two promises of the trace writer, held to their numbers: a recording killed under the *default*
flush loses at most its last 100 ms (README, tracer/FORMAT.md), and events frames are written plain
while the writer is behind, more than 4,096 events queued in one drain, compressed otherwise."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zlib

import msgpack
import numpy as np
import pytest

from tracer import TickEvent, TraceWriter, open_trace
from tracer.framing import FRAME_HEADER, MAGIC, SYNC, Kind
from tracer.synth import synthetic_session
from tracer.writer import COMPRESS_MAX_EVENTS

LOSS_BOUND_NS = 100_000_000
SLOTS = 200_000  # ticks the child may emit: 200 s at one per millisecond, far past any run here

# Emits a tick about every millisecond, stamped with the monotonic clock (one clock for every
# process on this machine), through a TraceWriter with every setting at its default, and records
# each tick's time in a shared file as soon as it is emitted: what the parent kills it in the middle of.
WRITER = r"""
import dataclasses, mmap, sys, time
import numpy as np
from tracer import SessionHeader, TickEvent, TraceWriter
from tracer.synth import synthetic_session

path, emitted_path, slots = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(emitted_path, "r+b") as f:
    emitted = np.frombuffer(mmap.mmap(f.fileno(), 8 * slots), dtype=np.int64)
template = next(e for e in synthetic_session(1)[1] if type(e) is TickEvent)
w = TraceWriter(path, SessionHeader(time.monotonic_ns(), time.time_ns(), {"test": "default flush"}))
for tick in range(slots):
    t = time.monotonic_ns()
    w.emit(dataclasses.replace(template, tick=tick, start_ns=t, end_ns=t))
    emitted[tick] = t
    if tick == 50:
        print("emitting", flush=True)
    time.sleep(0.001)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_under_the_default_flush_loses_at_most_100_ms(tmp_path):
    rng = random.Random(7)
    for run in range(3):
        path, emitted_path = tmp_path / f"killed{run}.msgpack", tmp_path / f"emitted{run}.bin"
        emitted_path.write_bytes(bytes(8 * SLOTS))
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(emitted_path), str(SLOTS)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline() == "emitting\n", "the writer process did not start"
            time.sleep(rng.uniform(0.05, 0.4))  # a random moment, relative to the writer's 50 ms wakes
        finally:
            kill_ns = time.monotonic_ns()
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        emitted = np.fromfile(emitted_path, dtype=np.int64)
        emitted = emitted[: np.count_nonzero(emitted)]  # ticks are stamped in order: the rest never came
        with open_trace(path) as r:
            ticks = [e for e in r.events() if type(e) is TickEvent]
            assert len(r.problems) <= 1 and all("torn" in p for p in r.problems)
        on_disk = [e.tick for e in ticks]
        assert on_disk == list(range(len(on_disk)))  # a prefix of what was emitted, in order
        assert [e.end_ns for e in ticks] == emitted[: len(ticks)].tolist()
        # every tick emitted more than 100 ms before the kill is in the file
        old_enough = int(np.count_nonzero(emitted < kill_ns - LOSS_BOUND_NS))
        assert old_enough > 0 and len(ticks) >= old_enough, (
            f"run {run}: {len(ticks)} ticks on disk of {len(emitted)} emitted, "
            f"{old_enough} of them more than 100 ms before the kill"
        )


def frames(path) -> list[tuple[int, int]]:
    """(kind as written, events it holds) of each frame, read from the bytes themselves."""
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    out, off = [], len(MAGIC)
    while off < len(data):
        sync, kind, _, _, length, _ = FRAME_HEADER.unpack_from(data, off)
        assert sync == SYNC
        payload = data[off + FRAME_HEADER.size : off + FRAME_HEADER.size + length]
        if kind == Kind.EVENTS_ZLIB:
            payload = zlib.decompress(payload)
        events = len(msgpack.unpackb(payload, raw=True)) if kind in (Kind.EVENTS, Kind.EVENTS_ZLIB) else 0
        out.append((kind, events))
        off += FRAME_HEADER.size + length
    return out


def test_a_writer_behind_writes_plain_frames_and_compresses_once_caught_up(tmp_path):
    assert COMPRESS_MAX_EVENTS == 4096  # the number FORMAT.md and the README state
    header, events = synthetic_session(2000)
    assert len(events) > 3 * COMPRESS_MAX_EVENTS
    behind, caught_up, trickle = (
        events[: COMPRESS_MAX_EVENTS + 1],
        events[COMPRESS_MAX_EVENTS + 1 : 2 * COMPRESS_MAX_EVENTS + 1],
        events[2 * COMPRESS_MAX_EVENTS + 1 : 2 * COMPRESS_MAX_EVENTS + 11],
    )
    path = tmp_path / "t.msgpack"
    # The writer's own wakes are a minute apart, so each flush below is one drain of what was queued.
    with TraceWriter(path, header, flush_interval_s=120) as w:
        for batch in (behind, caught_up, trickle):
            for ev in batch:
                w.emit(ev)
            assert w.flush(10)
    assert w.dropped == 0
    written = [(kind, n) for kind, n in frames(path) if kind in (Kind.EVENTS, Kind.EVENTS_ZLIB)]
    plain = [n for kind, n in written if kind == Kind.EVENTS]
    compressed = [n for kind, n in written if kind == Kind.EVENTS_ZLIB]
    # 4,097 queued: plain frames, all of them; 4,096 and then 10: compressed, all of them
    assert [kind for kind, _ in written] == [Kind.EVENTS] * len(plain) + [Kind.EVENTS_ZLIB] * len(compressed)
    assert sum(plain) == len(behind) and sum(compressed) == len(caught_up) + len(trickle)
    # and a reader reads both kinds as the same events, in order
    with open_trace(path) as r:
        back = list(r.events())
        assert r.problems == [] and r.closed_cleanly
    assert len(back) == len(events[: 2 * COMPRESS_MAX_EVENTS + 11])
    assert [type(e) for e in back] == [type(e) for e in events[: len(back)]]
    ticks = [e for e in back if type(e) is TickEvent]
    assert ticks == [e for e in events[: len(back)] if type(e) is TickEvent]
