"""The load generator against the real engine: the two sides of the request contract agree."""

from __future__ import annotations

import collections

from engine.config import get_preset
from engine.engine import Engine
from engine.scheduler import SchedulerConfig
from tracer.recorder import ListRecorder
from workloads.loadgen import run_load
from workloads.spec import load_workload


async def test_smoke_against_tiny_engine():
    spec = load_workload("smoke")
    model = get_preset("tiny")
    recorder = ListRecorder()
    sched = SchedulerConfig(**spec.scheduler.overrides())
    engine = Engine(model, sched, device="cpu", recorder=recorder)
    engine.start()
    try:
        result = await run_load(engine, spec, recorder, vocab_size=model.vocab_size, duration_s=1.5)
    finally:
        engine.stop()
    assert result.records and all(r.status == "finished" for r in result.records)
    assert all(r.output_tokens == r.max_new_tokens for r in result.records)
    phases = collections.Counter(e.phase for e in recorder.events if hasattr(e, "phase"))
    n = len(result.records)
    # arrive/first_token/finish from the client, admit from the engine: one each per request.
    assert phases["arrive"] == phases["first_token"] == phases["finish"] == phases["admit"] == n
