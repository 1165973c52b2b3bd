"""A recording killed with SIGKILL at random moments leaves a file with everything flushed."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tracer import TickEvent, open_trace

WRITER = r"""
import sys
import numpy as np
from tracer import ExpertsEvent, RequestEvent, SessionHeader, TickEvent, TraceWriter

w = TraceWriter(sys.argv[1], SessionHeader(0, 0, {"test": "sigkill"}), flush_interval_s=0.005)
counts = np.arange(64, dtype=np.int32).reshape(4, 16)
tick = 0
while True:
    w.emit(RequestEvent(tick, "arrive", tick))
    w.emit(TickEvent(tick, tick, tick + 1, 0, 1, 0, 1, 0, 1, 1, 10, 1, 1))
    w.emit(ExpertsEvent(tick, counts))
    if tick % 50 == 49:
        w.flush()
        print(tick, flush=True)  # everything up to this tick is in the file
    tick += 1
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_at_random_moments(tmp_path):
    rng = random.Random(1234)
    for run in range(5):
        path = tmp_path / f"killed{run}.msgpack"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline(), "the writer process printed nothing"
            time.sleep(rng.uniform(0, 0.15))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        flushed = int(out.split()[-1]) if out.split() else 49
        with open_trace(path) as r:
            ticks = [e.tick for e in r.events() if type(e) is TickEvent]
            assert ticks[: flushed + 1] == list(range(flushed + 1))
            assert ticks == list(range(len(ticks)))  # nothing out of order or duplicated
            assert len(r.problems) <= 1 and all("torn" in p for p in r.problems)
            assert r.index.rebuilt and r.tick_count == len(ticks)
