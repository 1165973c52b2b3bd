"""The load generator, against a fake engine that answers from its own thread and against the real one.

The fake (a tick every `tick_s`, a token per running request) isolates timing: send schedules, lag,
the concurrency cap, closed-loop think time, replay times, metrics windows. What the generator
claims about the engine it drives (every request it sends ends exactly once, with the tokens it
asked for; the engine's rejections and cancellations reach the trace as such; a stopped or
cancelled run leaves nothing in the engine) is checked on the real `tiny` engine on the CPU too.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import queue
import threading
import time

import numpy as np
import pytest

from engine.config import get_preset
from engine.engine import Engine
from engine.errors import ConfigError
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.events import RequestEvent
from tracer.recorder import ListRecorder
from workloads.loadgen import Progress, run_load
from workloads.spec import load_workload, parse_workload


class FakeEngine:
    """Ticks every `tick_s`: one token to each running request; rejects past `queue_limit`."""

    def __init__(self, *, tick_s: float = 0.001, queue_limit: int = 1000, max_seqs: int = 64):
        self.tick_s = tick_s
        self.queue_limit = queue_limit
        self.max_seqs = max_seqs
        self.inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.finishes: collections.Counter[int] = collections.Counter()
        self.submitted: list[Request] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> FakeEngine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def submit(self, req: Request) -> None:
        self.submitted.append(req)
        self.inbox.put(("submit", req))

    def cancel(self, request_id: int) -> None:
        self.inbox.put(("cancel", request_id))

    def _finish(self, req: Request, status: str, reason: str) -> None:
        self.finishes[req.id] += 1
        req.sink.on_finish(status, reason, time.monotonic_ns())

    def _loop(self) -> None:
        waiting: collections.deque[Request] = collections.deque()
        running: dict[int, list] = {}  # id -> [request, tokens left]
        while not self._stop.is_set():
            while True:
                try:
                    op, arg = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if op == "submit":
                    if len(waiting) >= self.queue_limit:
                        self._finish(arg, "rejected", "queue full")
                    else:
                        waiting.append(arg)
                else:
                    for req in [r for r in waiting if r.id == arg]:
                        waiting.remove(req)
                        self._finish(req, "cancelled", "cancelled")
                    if arg in running:
                        self._finish(running.pop(arg)[0], "cancelled", "cancelled")
            while waiting and len(running) < self.max_seqs:
                req = waiting.popleft()
                running[req.id] = [req, req.max_new_tokens]
            for rid, entry in list(running.items()):
                req = entry[0]
                req.sink.on_token(rid % 97, time.monotonic_ns())
                entry[1] -= 1
                if entry[1] == 0:
                    del running[rid]
                    self._finish(req, "finished", "")
            time.sleep(self.tick_s)
        for req in [*waiting, *(e[0] for e in running.values())]:
            self._finish(req, "cancelled", "engine stopped")


class _CountedSink:
    """Passes a request's answers on, counting the engine's finishes."""

    def __init__(self, engine: RealEngine, req: Request) -> None:
        self.engine, self.req = engine, req

    def on_token(self, token: int, t_ns: int) -> None:
        self.req.sink.on_token(token, t_ns)

    def on_finish(self, status: str, reason: str, t_ns: int) -> None:
        self.engine.finishes[self.req.id] += 1
        self.engine.ends[self.req.id] = (status, reason)
        self.req.sink.on_finish(status, reason, t_ns)


class RealEngine:
    """The `tiny` engine on the CPU (its own thread), keeping what was submitted and how each ended."""

    def __init__(self, **sched) -> None:
        self.engine = Engine(get_preset("tiny"), SchedulerConfig(**sched), device="cpu", seed=0)
        self.submitted: list[Request] = []
        self.finishes: collections.Counter[int] = collections.Counter()
        self.ends: dict[int, tuple[str, str]] = {}

    def start(self) -> RealEngine:
        self.engine.start()
        return self

    def stop(self) -> None:
        self.engine.stop()

    def submit(self, req: Request) -> None:
        self.submitted.append(req)
        self.engine.submit(Request(req.id, req.prompt, req.max_new_tokens, _CountedSink(self, req)))

    def cancel(self, request_id: int) -> None:
        self.engine.cancel(request_id)

    def check_empty(self) -> None:
        """Every request ended in the engine exactly once, and it holds nothing of them."""
        assert sorted(self.finishes) == [r.id for r in self.submitted]
        assert set(self.finishes.values()) == {1}
        scheduler = self.engine.scheduler
        assert not scheduler.running and not scheduler.waiting
        assert self.engine.kv.allocator.used_tokens == 0


@pytest.fixture
def real_engine():
    eng = None

    def make(**sched) -> RealEngine:
        nonlocal eng
        eng = RealEngine(**sched).start()
        return eng

    yield make
    if eng is not None:
        eng.stop()
        assert eng.engine.error is None


def workload(extra: str = "", arrivals: str = 'kind = "poisson"\nrate = 200.0') -> object:
    return parse_workload(
        f"""
        seed = 3
        duration_s = 0.5
        {extra}
        [arrivals]
        {arrivals}
        [prompt]
        kind = "uniform"
        min = 2
        max = 9
        [output]
        kind = "uniform"
        min = 1
        max = 6
        """,
        "test workload",
    )


@pytest.fixture
def engine():
    eng = FakeEngine().start()
    yield eng
    eng.stop()


def by_request(events) -> dict[int, list[RequestEvent]]:
    out: dict[int, list[RequestEvent]] = collections.defaultdict(list)
    for ev in events:
        out[ev.request].append(ev)
    return out


def check_lives(result, recorder, engine) -> None:
    """Every request sent ended exactly once, and its events tell its life in order."""
    ids = [r.id for r in result.records]
    assert sorted(ids) == list(range(len(engine.submitted)))
    lives = by_request(recorder.events)
    assert set(lives) == set(ids)
    for record in result.records:
        phases = [ev.phase for ev in lives[record.id]]
        assert phases[0] == "arrive" and phases[-1] == "finish"
        assert phases.count("finish") == 1
        expected = ["arrive", "first_token", "finish"] if record.token_ns else ["arrive", "finish"]
        assert phases == expected
        times = [ev.t_ns for ev in lives[record.id]]
        assert times == sorted(times)
        finish = lives[record.id][-1]
        assert finish.status == record.status
        assert finish.output_tokens == len(finish.token_us) == record.output_tokens
        assert np.all(np.diff(finish.token_us.astype(np.int64)) >= 0)


async def test_open_loop_every_request_ends_once(engine):
    recorder = ListRecorder()
    result = await run_load(engine, workload(), recorder, vocab_size=50)
    assert 50 < len(result.records) < 200  # 200/s for 0.5 s
    check_lives(result, recorder, engine)
    assert all(r.status == "finished" for r in result.records)
    assert all(1 <= r.output_tokens == r.max_new_tokens <= 6 for r in result.records)
    assert all(c == 1 for c in engine.finishes.values())
    for req in engine.submitted:
        assert 2 <= len(req.prompt) <= 9 and all(0 <= t < 50 for t in req.prompt)
    # Sends keep to the absolute schedule: lag stays small and never negative.
    lags = np.array([r.send_lag_s for r in result.records])
    assert lags.min() >= 0 and np.median(lags) < 0.05


async def test_same_seed_same_requests():
    async def once():
        eng = FakeEngine().start()
        try:
            result = await run_load(eng, workload(), ListRecorder(), vocab_size=1000)
        finally:
            eng.stop()
        planned = sorted((r.id, r.planned_ns - result.start_ns) for r in result.records)
        return [(r.prompt, r.max_new_tokens) for r in eng.submitted], [p for _, p in planned]

    (reqs_a, plan_a), (reqs_b, plan_b) = await once(), await once()
    assert reqs_a == reqs_b and plan_a == plan_b


async def test_request_count_limit(engine):
    spec = dataclasses.replace(workload(), requests=7, duration_s=0.0)
    result = await run_load(engine, spec, ListRecorder(), vocab_size=50)
    assert len(result.records) == 7 and not result.stopped


async def test_concurrency_cap_holds(engine):
    engine.tick_s = 0.005
    spec = workload("concurrency = 3")
    in_flight_max = 0

    class Watch(ListRecorder):
        def emit(self, event):
            nonlocal in_flight_max
            super().emit(event)
            live = sum({"arrive": 1, "finish": -1}.get(e.phase, 0) for e in self.events)
            in_flight_max = max(in_flight_max, live)

    result = await run_load(engine, spec, Watch(), vocab_size=50, duration_s=0.3)
    assert in_flight_max == 3
    # Held back by the cap, later sends are behind their plan, and the lag records it.
    assert max(r.send_lag_s for r in result.records) > 0.01


async def test_rejections_end_requests():
    eng = FakeEngine(queue_limit=2, max_seqs=1, tick_s=0.01).start()
    try:
        recorder = ListRecorder()
        result = await run_load(eng, workload(), recorder, vocab_size=50)
    finally:
        eng.stop()
    statuses = collections.Counter(r.status for r in result.records)
    assert statuses["rejected"] > 0 and statuses["finished"] > 0
    check_lives(result, recorder, eng)
    rejected = [e for e in recorder.events if e.phase == "finish" and e.status == "rejected"]
    assert all(e.reason == "queue full" and e.output_tokens == 0 for e in rejected)


async def test_closed_loop_users_wait_and_think(engine):
    spec = workload(arrivals='kind = "closed"\nusers = 2\nthink_s = 0.05')
    recorder = ListRecorder()
    result = await run_load(engine, spec, recorder, vocab_size=50, duration_s=0.4)
    check_lives(result, recorder, engine)
    # Never more than two requests in flight, and a user's next send waits for its think time.
    live = 0
    for ev in recorder.events:
        live += {"arrive": 1, "finish": -1}.get(ev.phase, 0)
        assert live <= 2
    assert 4 <= len(result.records) <= 20


async def test_cancel_mid_run_ends_everything(engine):
    engine.tick_s = 0.02  # slow, so requests are in flight when the run is cancelled
    recorder = ListRecorder()
    spec = dataclasses.replace(workload(), duration_s=0.0)  # until stopped
    seen: list[Progress] = []
    task = asyncio.create_task(
        run_load(engine, spec, recorder, vocab_size=50, on_progress=seen.append, progress_interval_s=0.05)
    )
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    lives = by_request(recorder.events)
    assert len(lives) == len(engine.submitted) > 10
    for events in lives.values():
        assert [e.phase for e in events].count("finish") == 1
    statuses = collections.Counter(e.status for e in recorder.events if e.phase == "finish")
    assert statuses["cancelled"] > 0
    assert seen and seen[-1].submitted > 0


async def test_stop_event_returns_result(engine):
    engine.tick_s = 0.02
    stop = asyncio.Event()
    recorder = ListRecorder()
    spec = dataclasses.replace(workload(), duration_s=0.0)
    asyncio.get_running_loop().call_later(0.2, stop.set)
    result = await run_load(engine, spec, recorder, vocab_size=50, stop=stop)
    assert result.stopped
    check_lives(result, recorder, engine)
    assert any(r.status == "cancelled" for r in result.records)


async def test_engine_without_cancel_is_ended_by_the_client():
    class Silent:
        """Accepts requests and never answers: only the client can end them."""

        def __init__(self):
            self.submitted = []

        def submit(self, req):
            self.submitted.append(req)

    eng = Silent()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    recorder = ListRecorder()
    result = await run_load(eng, workload(), recorder, vocab_size=50, stop=stop)
    assert len(result.records) == len(eng.submitted) > 0
    assert {r.status for r in result.records} == {"cancelled"}
    assert {r.reason for r in result.records} == {"stopped by the client"}


async def test_replay_sends_on_the_file_times(engine, tmp_path):
    (tmp_path / "times.jsonl").write_text("".join(f'{{"t": {t}}}\n' for t in (0.3, 0.0, 0.1, 0.25)))
    (tmp_path / "w.toml").write_text(
        """
        [arrivals]
        kind = "replay"
        file = "times.jsonl"
        column = "t"
        [prompt]
        kind = "fixed"
        value = 4
        [output]
        kind = "fixed"
        value = 2
        """
    )
    spec = load_workload(tmp_path / "w.toml")
    result = await run_load(engine, spec, ListRecorder(), vocab_size=50)
    planned = sorted((r.id, (r.planned_ns - result.start_ns) / 1e9) for r in result.records)
    assert [round(p, 6) for _, p in planned] == [0.0, 0.1, 0.25, 0.3]
    assert all(r.status == "finished" and r.output_tokens == 2 for r in result.records)


async def test_result_metrics_use_the_workload_window_and_slo(engine):
    spec = workload("warmup_s = 0.2\n[slo]\nttft_s = 10.0\n")
    result = await run_load(engine, spec, ListRecorder(), vocab_size=50)
    m = result.metrics()
    assert m.window_s[0] == pytest.approx(0.2)
    assert 0 < m.counted < m.requests == len(result.records)
    assert m.finished == m.counted and m.goodput == pytest.approx(m.request_throughput)
    assert m.ttft.count == m.finished and m.ttft.p50 > 0


async def test_negative_duration_is_a_config_error(engine):
    with pytest.raises(ConfigError, match="negative duration"):
        await run_load(engine, workload(), ListRecorder(), vocab_size=50, duration_s=-1)


async def test_stop_during_the_drain_still_stops(engine):
    engine.tick_s = 0.02
    spec = dataclasses.replace(workload(), duration_s=0.1)
    spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, min=500, max=500))
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)  # sending ended at 0.1 s; 500 ticks left
    recorder = ListRecorder()
    started = time.monotonic()
    result = await run_load(engine, spec, recorder, vocab_size=50, stop=stop)
    assert time.monotonic() - started < 3
    assert result.stopped and {r.status for r in result.records} == {"cancelled"}
    check_lives(result, recorder, engine)


# --- the same claims on the real engine ---------------------------------------------------------------


async def test_open_loop_on_the_real_engine_every_request_gets_what_it_asked(real_engine):
    eng = real_engine()
    recorder = ListRecorder()
    result = await run_load(eng, workload(), recorder, vocab_size=50)
    assert 50 < len(result.records) < 200
    check_lives(result, recorder, eng)
    assert all(r.status == "finished" for r in result.records)
    # each request got exactly the tokens it asked for, streamed back as the engine made them
    asked = {r.id: r.max_new_tokens for r in eng.submitted}
    assert all(r.output_tokens == asked[r.id] == len(r.token_ns) for r in result.records)
    for req in eng.submitted:
        assert 2 <= len(req.prompt) <= 9 and all(0 <= t < 50 for t in req.prompt)
    eng.check_empty()


async def test_real_engine_rejections_end_requests(real_engine):
    eng = real_engine(queue_limit=2, max_seqs=1)
    spec = workload()
    spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, min=20, max=20))
    recorder = ListRecorder()
    result = await run_load(eng, spec, recorder, vocab_size=50)
    statuses = collections.Counter(r.status for r in result.records)
    assert statuses["rejected"] > 0 and statuses["finished"] > 0 and statuses["cancelled"] == 0
    check_lives(result, recorder, eng)
    rejected = [e for e in recorder.events if e.phase == "finish" and e.status == "rejected"]
    assert len(rejected) == statuses["rejected"]
    assert all(e.reason == "queue full" and e.output_tokens == 0 for e in rejected)
    assert all(r.output_tokens == 20 for r in result.records if r.status == "finished")
    eng.check_empty()


@pytest.mark.parametrize("how", ["stop event", "task cancelled", "stop while draining"])
async def test_real_engine_confirms_every_cancellation(real_engine, how):
    eng = real_engine()
    recorder = ListRecorder()
    spec = workload()
    spec = dataclasses.replace(
        spec,
        duration_s=0.1 if how == "stop while draining" else 0.0,  # 0: until stopped
        output=dataclasses.replace(spec.output, min=500, max=500),
    )
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(run_load(eng, spec, recorder, vocab_size=50, stop=stop))
    await asyncio.sleep(0.3)
    if how == "task cancelled":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        stop.set()
        result = await task
        assert result.stopped
        check_lives(result, recorder, eng)
    assert time.monotonic() - started < 3
    finishes = [e for e in recorder.events if e.phase == "finish"]
    assert len(finishes) == len(eng.submitted) > 5
    assert {e.status for e in finishes} == {"cancelled"}
    # the engine ended each one itself, in time: none was left for the client to end on its own
    assert {e.reason for e in finishes} == {"cancelled by client"}
    assert set(eng.ends.values()) == {("cancelled", "cancelled by client")}
    assert all(e.output_tokens < 500 for e in finishes)
    eng.check_empty()
