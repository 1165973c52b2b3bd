"""The engine end to end on the CPU: its thread, its sinks, the events it records, its errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine.config import get_preset
from engine.engine import Engine
from engine.errors import ConfigError, EngineFailed
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.events import ExpertsEvent, MarkEvent, RequestEvent, TickEvent
from tracer.recorder import ListRecorder


class Collect:
    """Counts calls so that a second on_finish cannot hide."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.finishes: list[tuple[str, str]] = []
        self.done = threading.Event()

    def on_token(self, token: int, t_ns: int) -> None:
        self.tokens.append(token)

    def on_finish(self, status: str, reason: str, t_ns: int) -> None:
        self.finishes.append((status, reason))
        self.done.set()


def engine(recorder=None, **sched) -> Engine:
    return Engine(get_preset("tiny"), SchedulerConfig(**sched), device="cpu", recorder=recorder or ListRecorder())


def prompt(i: int, n: int) -> list[int]:
    return np.random.default_rng(i).integers(0, 512, n).tolist()


@pytest.mark.parametrize("policy, window_ms", [("continuous", 0.0), ("window", 2.0), ("static", 0.0)])
def test_every_request_finishes_once_and_events_add_up(policy, window_ms):
    rec = ListRecorder()
    eng = engine(rec, policy=policy, window_ms=window_ms, max_seqs=8, max_tokens=64, prefill_chunk=16)
    sinks = [Collect() for _ in range(12)]
    eng.start()
    for i, s in enumerate(sinks):
        eng.submit(Request(i, prompt(i, 1 + 5 * i), 3 + i % 4, s))
    for s in sinks:
        assert s.done.wait(60)
    eng.stop()

    assert all(s.finishes == [("finished", "length")] for s in sinks)
    assert [len(s.tokens) for s in sinks] == [3 + i % 4 for i in range(12)]
    ticks = [e for e in rec.events if isinstance(e, TickEvent)]
    experts = [e for e in rec.events if isinstance(e, ExpertsEvent)]
    admits = [e for e in rec.events if isinstance(e, RequestEvent) and e.phase == "admit"]
    assert [t.tick for t in ticks] == list(range(eng.ticks)) == [e.tick for e in experts]
    assert sorted(a.request for a in admits) == list(range(12))
    assert sum(t.prefill_tokens for t in ticks) == sum(1 + 5 * i for i in range(12))
    assert eng.tokens_generated == sum(len(s.tokens) for s in sinks)
    top_k = eng.model_cfg.top_k
    for t, e in zip(ticks, experts):
        assert e.counts.dtype == np.int32 and e.counts.shape == (4, 16)
        assert (e.counts.sum(axis=1) == (t.prefill_tokens + t.decode_tokens) * top_k).all()
        assert t.seqs <= 8 and t.prefill_tokens + t.decode_tokens <= 64
        assert t.start_ns <= t.end_ns and t.forward_ns > 0 and t.kv_capacity == 65536
    assert ticks[-1].running == 0 and ticks[-1].kv_used == 0
    if policy == "static":  # admissions only into an empty engine
        assert all(a.tick == 0 or ticks[a.tick - 1].running == 0 for a in admits)


def test_window_policy_starts_ticks_a_whole_window_apart():
    rec = ListRecorder()
    eng = engine(rec, policy="window", window_ms=10.0)
    sink = Collect()
    eng.start()
    eng.submit(Request(0, [1, 2, 3], 4, sink))
    assert sink.done.wait(30)
    eng.stop()
    starts = [e.start_ns for e in rec.events if isinstance(e, TickEvent)]
    assert len(starts) == 4
    assert all(b - a >= 10_000_000 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("plan_ahead", ["off", "on"])
def test_stop_cancels_queued_and_running_work(plan_ahead):
    eng = engine(max_seqs=2, max_tokens=64, plan_ahead=plan_ahead)
    sinks = [Collect() for _ in range(5)]
    eng.start()
    for i, s in enumerate(sinks):
        eng.submit(Request(i, prompt(i, 8), 900, s))
    eng.stop()
    assert all(len(s.finishes) == 1 for s in sinks)
    assert all(s.finishes[0] == ("cancelled", "engine stopped") for s in sinks)
    late = Collect()
    eng.submit(Request(99, [1], 1, late))
    assert late.finishes == [("rejected", "engine stopped")]


@pytest.mark.parametrize("plan_ahead", ["off", "on"])
def test_stop_with_drain_finishes_everything_first(plan_ahead):
    eng = engine(plan_ahead=plan_ahead)
    sinks = [Collect() for _ in range(4)]
    eng.start()
    for i, s in enumerate(sinks):
        eng.submit(Request(i, prompt(i, 4), 5, s))
    eng.stop(drain=True)
    assert all(s.finishes == [("finished", "length")] and len(s.tokens) == 5 for s in sinks)


def test_queue_limit_rejects_at_once_without_losing_anyone():
    eng = engine(queue_limit=3)  # not started: nothing leaves the queue
    sinks = [Collect() for _ in range(5)]
    for i, s in enumerate(sinks):
        eng.submit(Request(i, [1, 2], 2, s))
    assert [s.finishes for s in sinks[3:]] == [[("rejected", "queue full")]] * 2
    assert all(s.finishes == [] for s in sinks[:3])
    eng.stop()
    assert all(len(s.finishes) == 1 for s in sinks)


@pytest.mark.parametrize(
    "req, reason",
    [
        (dict(prompt=[], max_new_tokens=1), "empty prompt"),
        (dict(prompt=[1], max_new_tokens=0), "max_new_tokens"),
        (dict(prompt=[1] * 1000, max_new_tokens=100), "exceeds max_seq_len 1024"),
        (dict(prompt=[512], max_new_tokens=1), "token ids"),
    ],
)
def test_impossible_requests_are_rejected_with_a_reason(req, reason):
    eng = engine()
    sink = Collect()
    eng.submit(Request(0, sink=sink, **req))
    assert len(sink.finishes) == 1 and sink.finishes[0][0] == "rejected" and reason in sink.finishes[0][1]


def test_duplicate_live_id_is_rejected():
    eng = engine()
    first, second = Collect(), Collect()
    eng.submit(Request(5, [1], 3, first))
    eng.submit(Request(5, [2], 3, second))
    assert second.finishes[0][0] == "rejected" and first.finishes == []


@pytest.mark.parametrize("plan_ahead", ["off", "on"])
def test_cancel_ends_a_running_request_and_frees_its_kv(plan_ahead):
    """Planning ahead, the cancelled request is already in the next tick's plan: it leaves it."""
    eng = engine(plan_ahead=plan_ahead)
    keep, drop = Collect(), Collect()
    eng.submit(Request(1, prompt(1, 20), 50, keep))
    eng.submit(Request(2, prompt(2, 20), 50, drop))
    eng.step()
    used = eng.kv.allocator.used_tokens
    eng.cancel(2)
    eng.cancel(12345)  # unknown: ignored
    eng.step()
    assert drop.finishes == [("cancelled", "cancelled by client")]
    assert eng.kv.allocator.used_tokens < used and keep.finishes == []
    eng.stop()
    assert keep.finishes == [("cancelled", "engine stopped")] and len(drop.finishes) == 1


def test_idle_engine_stops_promptly_and_describes_itself():
    eng = engine(policy="window", window_ms=50)
    eng.start()
    eng.stop()
    d = eng.describe()
    assert d["model"]["name"] == "tiny" and d["model"]["dtype"] == "float32"
    assert d["device"] == "cpu" and d["scheduler"]["window_ms"] == 50 and d["scheduler"]["has_window"] is True
    assert d["param_bytes"] == eng.model_cfg.param_count() * 4
    assert d["param_bytes"] == sum(p.numel() * 4 for p in eng.model.parameters())


def test_unknown_preset_and_override():
    with pytest.raises(ConfigError, match=r"unknown preset 'huge' \(choose from: tiny, ds2-lite, v3-slice\)"):
        get_preset("huge")
    with pytest.raises(ConfigError, match="unknown model setting 'layer'"):
        get_preset("tiny", layer=3)
    with pytest.raises(ConfigError, match="top_k"):
        get_preset("tiny", top_k=17)
    assert get_preset("ds2-lite", layers=8).layers == 8


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        Engine(get_preset("tiny"), SchedulerConfig(), device="cuda")


def test_a_model_too_big_for_memory_is_refused_before_allocation():
    # v3-slice with 60 layers needs about 1.4 TB
    with pytest.raises(ConfigError, match=r"needs .* GB .* but only .* GB is available"):
        Engine(get_preset("v3-slice", layers=60), SchedulerConfig(), device="cpu")


def test_an_error_in_the_tick_loop_ends_every_request_and_surfaces():
    eng = engine()

    def broken(*args):
        raise RuntimeError("boom")

    eng.executor.launch = broken  # type: ignore[method-assign]
    sinks = [Collect() for _ in range(3)]
    eng.start()
    for i, s in enumerate(sinks):
        eng.submit(Request(i, [1, 2], 2, s))
    for s in sinks:
        assert s.done.wait(30)
    failed_at = r"^the engine failed at tick 0: RuntimeError: boom \(at engine/engine\.py:\d+\)$"
    with pytest.raises(EngineFailed, match=failed_at) as failed:
        eng.stop()
    assert isinstance(failed.value.__cause__, RuntimeError)
    # ended by the fault, each once: failed in the tick, or refused once the engine had failed
    assert all(len(s.finishes) == 1 and s.finishes[0][0] in ("failed", "rejected") for s in sinks)
    assert any(s.finishes[0] == ("failed", str(failed.value)) for s in sinks)
    marks = [e for e in eng.recorder.events if isinstance(e, MarkEvent)]
    assert [(m.tick, m.text) for m in marks] == [(0, str(failed.value))]


def test_an_engine_no_longer_referenced_is_freed_before_memory_is_measured():
    """Its thread and bound methods make reference cycles, so only the cycle collector frees it: a
    sweep's next engine must not be refused memory that the previous one still holds."""
    import gc
    import weakref

    from engine.config import available_bytes

    eng = engine(decode_graphs="on")
    eng.submit(Request(0, prompt(0, 5), 3, Collect()))
    eng.start()
    eng.stop(drain=True)
    weights = weakref.ref(eng.model.layers[0].moe.w13)
    gc.disable()  # as if the collector had not happened to run yet
    try:
        del eng
        assert weights() is not None  # held by the cycles
        available_bytes(torch.device("cpu"))
        assert weights() is None
    finally:
        gc.enable()
