"""Planning ahead: tick n+1 is scheduled and its inputs made while tick n runs (engine/engine.py).

On the CPU the forward pass is the host's own work, so nothing is hidden here; what these tests hold
is that planning ahead changes nothing a user can see: the same ticks, batches, expert loads and
counts, the same tokens and endings, with preemptions, chunked prefill, pipelines, decode graphs,
stop tokens and cancellations. On CUDA the same code runs while the device computes (`auto`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.config import get_preset
from engine.engine import Engine
from engine.errors import ConfigError
from engine.request import Request
from engine.scheduler import SchedulerConfig
from test_engine_engine import Collect, prompt
from tracer.events import MarkEvent, RequestEvent, TickEvent
from tracer.recorder import ListRecorder

# host times differ from run to run; everything else in the trace must not
_TIMES = {"start_ns", "end_ns", "wait_ns", "forward_ns", "t_ns", "token_us"}
_STAGE_TIMES = {"measured_start_ns", "measured_end_ns", "modelled_start_ns", "modelled_end_ns"}


def comparable(event: object) -> tuple[object, ...]:
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}  # type: ignore[arg-type]
    kept = [
        (k, v.tolist() if isinstance(v, np.ndarray) else v)
        for k, v in fields.items()
        if k not in _TIMES and k not in _STAGE_TIMES
    ]
    return (type(event).__name__, *kept)


Requests = list[tuple[int, int, frozenset[int]]]  # prompt length, max_new_tokens, stop tokens


def run_stepped(
    plan_ahead: str, requests: Requests, device: str = "cpu", **sched
) -> tuple[list, list[Collect], Engine]:
    """Submit every request, then step until all have ended and no tick is left; the trace's events
    and the sinks. Not planning ahead, each tick's counts are checked against the scheduler's own."""
    rec = ListRecorder()
    eng = Engine(get_preset("tiny"), SchedulerConfig(plan_ahead=plan_ahead, **sched), device=device, recorder=rec)
    sinks = [Collect() for _ in requests]
    for i, ((length, new, stops), sink) in enumerate(zip(requests, sinks)):
        eng.submit(Request(i, prompt(i, length), new, sink, stop_tokens=stops))
    while (ran := eng.step()) or not all(s.finishes for s in sinks):
        if ran and plan_ahead == "off":
            tick = next(e for e in reversed(rec.events) if isinstance(e, TickEvent))
            assert (tick.running, tick.kv_used) == (len(eng.scheduler.running), eng.kv.allocator.used_tokens)
    return rec.events, sinks, eng


MIXED = [(1 + 7 * i, 4 + i % 5, frozenset[int]()) for i in range(10)]


@pytest.mark.parametrize(
    "sched",
    [
        # chunked prefill beside decodes, and a cache small enough to preempt
        dict(max_seqs=6, max_tokens=40, prefill_chunk=16, kv_capacity_tokens=160, kv_block_size=8),
        dict(max_seqs=8, decode_graphs="on"),  # decode ticks through the decode graphs' buffers
        dict(max_seqs=8, stages=2, micro_batches=2),  # pipeline cells on one device
        dict(max_seqs=8, attention="same-length"),
    ],
    ids=["preempting", "decode-graphs", "pipeline", "same-length"],
)
def test_planning_ahead_records_the_same_run(sched):
    off, off_sinks, _ = run_stepped("off", MIXED, **sched)
    on, on_sinks, eng = run_stepped("on", MIXED, **sched)
    assert eng.describe()["plans_ahead"]
    assert [s.tokens for s in on_sinks] == [s.tokens for s in off_sinks]
    assert [s.finishes for s in on_sinks] == [s.finishes for s in off_sinks]
    assert [comparable(e) for e in on] == [comparable(e) for e in off]
    if "kv_capacity_tokens" in sched:
        assert any(isinstance(e, RequestEvent) and e.phase == "preempt" for e in on)


def test_stop_tokens_end_sequences_the_same_when_planned_ahead():
    """A stop token is known only at the read-back, after the next tick was planned with its sequence:
    the sequence leaves that tick before it launches, and the counts the trace gives are after it."""
    plain = [(3 + 5 * i, 12, frozenset[int]()) for i in range(6)]
    _, first, _ = run_stepped("off", plain, max_seqs=8)
    # request i stops at its token 2 + i % 4 (or earlier, where that token comes up before)
    stopping = [(n, new, frozenset({s.tokens[2 + i % 4]})) for i, ((n, new, _), s) in enumerate(zip(plain, first))]
    off, off_sinks, _ = run_stepped("off", stopping, max_seqs=8)
    on, on_sinks, _ = run_stepped("on", stopping, max_seqs=8)
    assert any(s.finishes == [("finished", "stop")] for s in on_sinks)
    assert [s.tokens for s in on_sinks] == [s.tokens for s in off_sinks]
    assert [s.finishes for s in on_sinks] == [s.finishes for s in off_sinks]
    assert [comparable(e) for e in on] == [comparable(e) for e in off]


def test_the_next_tick_is_planned_between_launch_and_read_back():
    """The order the overlap needs: tick n launched, tick n+1 prepared, then tick n read back."""
    rec = ListRecorder()
    eng = Engine(get_preset("tiny"), SchedulerConfig(plan_ahead="on"), device="cpu", recorder=rec)
    calls: list[str] = []
    prepare, launch = eng.executor.prepare, eng.executor.launch

    def prepared(chunks):
        calls.append("prepare")
        return prepare(chunks)

    def launched(*args):
        flight = launch(*args)
        calls.append("launch")
        result = flight.result

        def read_back():
            calls.append("read back")
            return result()

        flight.result = read_back
        return flight

    eng.executor.prepare, eng.executor.launch = prepared, launched  # type: ignore[method-assign]
    for i in range(3):
        eng.submit(Request(i, prompt(i, 5), 4, Collect()))
    for _ in range(4):
        eng.step()
    assert calls[:7] == ["prepare", "launch", "prepare", "read back", "launch", "prepare", "read back"]
    ticks = [e for e in rec.events if isinstance(e, TickEvent)]
    assert all(a.end_ns <= b.start_ns for a, b in zip(ticks, ticks[1:]))  # ticks never overlap in the trace


@pytest.mark.parametrize("policy, window_ms", [("continuous", 0.0), ("window", 2.0), ("static", 0.0)])
def test_a_running_engine_planning_ahead_ends_every_request_once(policy, window_ms):
    """On its thread, with arrivals while it ticks and cancellations of running requests."""
    rec = ListRecorder()
    eng = Engine(
        get_preset("tiny"),
        SchedulerConfig(plan_ahead="on", policy=policy, window_ms=window_ms, max_seqs=4, prefill_chunk=8),
        device="cpu",
        recorder=rec,
    )
    sinks = [Collect() for _ in range(12)]
    eng.start()
    for i, s in enumerate(sinks):
        eng.submit(Request(i, prompt(i, 2 + 3 * i), 40 if i % 3 == 0 else 5, s))
        if i % 3 == 2:
            eng.cancel(i - 2)
    for s in sinks:
        assert s.done.wait(60)
    eng.stop()
    assert all(len(s.finishes) == 1 for s in sinks)
    for i, s in enumerate(sinks):
        if i % 3:
            assert s.finishes == [("finished", "length")] and len(s.tokens) == 5
    cancelled = [s for s in sinks if s.finishes == [("cancelled", "cancelled by client")]]
    assert cancelled and all(len(s.tokens) < 40 for s in cancelled)
    # the trace's batches hold each request's every token: none after it ended
    fed: dict[int, int] = {}
    for e in rec.events:
        if type(e).__name__ == "BatchEvent":
            for r, p, d in zip(e.requests, e.prefill_tokens, e.decode_tokens):
                fed[int(r)] = fed.get(int(r), 0) + int(p) + int(d)
    for i, s in enumerate(sinks):
        # the prompt is fed once (no preemption here), then every token sampled but the last
        most = 2 + 3 * i + max(0, len(s.tokens) - 1)
        assert fed.get(i, 0) == most if s.finishes[0][0] == "finished" else fed.get(i, 0) <= most
    assert not [e for e in rec.events if isinstance(e, MarkEvent)]


def test_plan_ahead_values_are_checked():
    with pytest.raises(ConfigError, match="unknown plan_ahead 'always'"):
        SchedulerConfig(plan_ahead="always").validate()  # type: ignore[arg-type]
    assert not Engine(get_preset("tiny"), SchedulerConfig(), device="cpu").describe()["plans_ahead"]  # auto, CPU
