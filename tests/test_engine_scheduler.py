"""KV block accounting and the scheduler's batch forming, without a model."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.kv_cache import BlockAllocator
from engine.policies.window import Window
from engine.request import Request
from engine.scheduler import Scheduler, SchedulerConfig, Sequence


class NoSink:
    def on_token(self, token: int, t_ns: int) -> None: ...

    def on_finish(self, status: str, reason: str, t_ns: int) -> None: ...


def seq(i: int, prompt_len: int, max_new: int = 4, arrival_ns: int = 0) -> Sequence:
    return Sequence(Request(i, [1] * prompt_len, max_new, NoSink()), arrival_ns, [1] * prompt_len)


def make(capacity: int = 1024, block: int = 4, **cfg) -> Scheduler:
    config = SchedulerConfig(kv_capacity_tokens=capacity, kv_block_size=block, **cfg)
    config.validate()
    return Scheduler(config, BlockAllocator(capacity, block))


def run_tick(s: Scheduler):
    plan = s.schedule()
    finished = s.commit(plan, [7] * sum(e.samples for e in plan.entries))
    return plan, finished


def test_allocator_accounting_and_blocks():
    a = BlockAllocator(64, 16)
    assert (a.capacity_tokens, a.free_blocks, a.used_tokens) == (64, 4, 0)
    a.grow(1, 17)  # two blocks
    a.grow(2, 16)
    assert a.free_blocks == 1 and a.used_tokens == 48
    assert not a.can_grow(2, 33) and a.can_grow(2, 32) and a.can_grow(1, 32)
    assert len(a.blocks(1, 17)) == 2 and len(a.blocks(1, 16)) == 1 and len(a.blocks(2, 16)) == 1
    assert not set(a.blocks(1, 17)) & set(a.blocks(2, 16))
    a.free(1)
    assert a.free_blocks == 3 and a.used_tokens == 16
    a.free(1)  # freeing twice is harmless
    assert a.free_blocks == 3
    with pytest.raises(RuntimeError):
        a.grow(3, 64)


def test_admission_respects_max_seqs():
    s = make(max_seqs=3, max_tokens=100)
    for i in range(5):
        s.add(seq(i, 2))
    plan, _ = run_tick(s)
    assert [e.seq.id for e in plan.entries] == [0, 1, 2]
    assert len(s.waiting) == 2


def test_admission_respects_max_tokens_and_chunks_prefill():
    s = make(max_seqs=8, max_tokens=10, prefill_chunk=6)
    s.add(seq(0, 15))
    s.add(seq(1, 3))
    plan, _ = run_tick(s)
    assert [(e.seq.id, e.count) for e in plan.entries] == [(0, 6), (1, 3)]
    assert plan.prefill_tokens == 9 and plan.decode_tokens == 0
    assert [e.samples for e in plan.entries] == [False, True]
    plan, _ = run_tick(s)  # seq 1 decodes first, seq 0 continues its prompt with what is left
    assert [(e.seq.id, e.count) for e in plan.entries] == [(1, 1), (0, 6)]
    assert plan.decode_tokens == 1 and plan.prefill_tokens == 6


def test_admission_respects_kv_capacity_in_fifo_order():
    s = make(capacity=16, block=4, max_seqs=8, max_tokens=64)
    s.add(seq(0, 10))  # 3 blocks
    s.add(seq(1, 8))  # 2 blocks: does not fit after seq 0
    s.add(seq(2, 2))  # would fit, but must not overtake seq 1
    plan, _ = run_tick(s)
    assert [e.seq.id for e in plan.entries] == [0]
    assert [q.id for q in s.waiting] == [1, 2]
    assert s.kv.used_tokens == 12


def test_preemption_frees_newest_and_requeues_it_first():
    s = make(capacity=16, block=4, max_seqs=8, max_tokens=64)
    s.add(seq(0, 8, max_new=20))
    s.add(seq(1, 8, max_new=20))
    run_tick(s)  # both prefilled: 9 known tokens, 8 cached each; the cache is full
    plan, _ = run_tick(s)  # each needs a third block for its 9th token: the newest yields
    assert [p.id for p in plan.preempted] == [1]
    assert [e.seq.id for e in plan.entries] == [0]
    assert [q.id for q in s.waiting] == [1]
    preempted = s.waiting[0]
    assert preempted.computed == 0 and preempted.prefill_end == len(preempted.tokens) == 9


def test_static_policy_admits_only_when_nothing_runs():
    s = make(policy="static", max_seqs=8, max_tokens=64)
    s.add(seq(0, 2, max_new=2))
    run_tick(s)
    s.add(seq(1, 2, max_new=2))
    plan, finished = run_tick(s)
    assert [e.seq.id for e in plan.entries] == [0] and [f.id for f in finished] == [0]
    plan, _ = run_tick(s)
    assert [e.seq.id for e in plan.entries] == [1]


def test_commit_finishes_at_max_new_tokens_and_frees_kv():
    s = make()
    s.add(seq(0, 3, max_new=2))
    _, finished = run_tick(s)
    assert finished == []
    _, finished = run_tick(s)
    assert [f.id for f in finished] == [0]
    assert finished[0].tokens == [1, 1, 1, 7, 7]
    assert s.kv.used_tokens == 0 and not s.running


def test_window_deadline():
    ms = 1_000_000
    # busy: the window runs from the previous tick's start
    assert Window(5.0).deadline_ns(100 * ms, 103 * ms, running=1) == 105 * ms
    # idle: it opens when the first request arrives, if that is later
    assert Window(5.0).deadline_ns(100 * ms, 300 * ms, running=0) == 305 * ms
    assert Window(5.0).deadline_ns(100 * ms, 90 * ms, running=0) == 105 * ms
    assert Window(0.0).deadline_ns(100 * ms, None, running=1) == 100 * ms
    # what the engine asks: the time left until then, from now
    assert Window(5.0).wait_ns(102 * ms, 100 * ms, None, running=1) == 3 * ms


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(policy="eager"), "unknown scheduler policy 'eager'"),
        (dict(window_ms=-1), "window_ms"),
        (dict(max_seqs=0), "max_seqs"),
        (dict(max_seqs=8, max_tokens=4), "max_tokens (4) must be at least max_seqs (8)"),
        (dict(kv_capacity_tokens=8), "less than one KV block"),
        (dict(queue_limit=-1), "queue_limit"),
        (dict(attention="paged"), "unknown attention grouping"),
    ],
)
def test_impossible_scheduler_configs_are_one_line_errors(bad, message):
    with pytest.raises(ConfigError) as err:
        SchedulerConfig(**bad).validate()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_random_workloads_never_exceed_limits():
    rng = np.random.default_rng(0)
    s = make(capacity=256, block=8, max_seqs=6, max_tokens=40, prefill_chunk=16)
    next_id, done = 0, 0
    for _ in range(300):
        for _ in range(rng.integers(0, 3)):
            s.add(seq(next_id, int(rng.integers(1, 60)), max_new=int(rng.integers(1, 30))))
            next_id += 1
        plan, finished = run_tick(s)
        done += len(finished)
        assert len(plan.entries) <= 6 and sum(e.count for e in plan.entries) <= 40
        assert s.kv.used_tokens <= 256
        assert len({e.seq.id for e in plan.entries}) == len(plan.entries)
        held = sum(s.kv.blocks_for(q.computed) for q in s.running)
        assert held <= s.kv.num_blocks - s.kv.free_blocks
    while s.running or s.waiting:
        done += len(run_tick(s)[1])
    assert done == next_id and s.kv.used_tokens == 0
