"""Pipeline stages on one device: the split, the modelled timeline, and the cells the engine records.
(The timeline's bubbles, warmup and drain are tested in test_stages_timeline.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from decode_runs import decode_prompts
from engine.config import get_preset
from engine.engine import Engine
from engine.errors import ConfigError
from engine.pipeline import split_micro_batches
from engine.scheduler import SchedulerConfig
from tracer.events import StageEvent, TickEvent
from tracer.recorder import ListRecorder
from tracer.timeline import modelled_timeline


def test_split_micro_batches_never_makes_an_empty_one():
    assert [len(p) for p in split_micro_batches(list("abcde"), 2)] == [3, 2]
    assert split_micro_batches(list("ab"), 4) == [["a"], ["b"]]


def test_modelled_timeline_by_hand():
    # 2 stages x 3 micro-batches; stage 1 is slower, so micro-batches queue in front of it
    cost = np.array([[1, 2, 1], [3, 1, 2]])
    start, end = modelled_timeline(cost)
    # stage 0: back to back              0-1, 1-3, 3-4
    # stage 1: after stage 0 and itself  1-4, 4-5, 5-7
    assert start.tolist() == [[0, 1, 3], [1, 4, 5]]
    assert end.tolist() == [[1, 3, 4], [4, 5, 7]]


def _decode(stages: int, micro_batches: int, recorder: ListRecorder) -> list[list[int]]:
    engine = Engine(
        get_preset("tiny"),
        SchedulerConfig(stages=stages, micro_batches=micro_batches, prefill_chunk=8),
        device="cpu",
        seed=2,
        recorder=recorder,
    )
    rng = np.random.default_rng(0)
    return decode_prompts(engine, [rng.integers(0, 512, 3 + 4 * i).tolist() for i in range(5)], 6)


def test_stages_and_micro_batches_change_timing_not_tokens():
    plain_rec, staged_rec = ListRecorder(), ListRecorder()
    plain = _decode(1, 1, plain_rec)
    staged = _decode(2, 3, staged_rec)
    assert staged == plain
    assert not any(isinstance(e, StageEvent) for e in plain_rec.events)

    ticks = {e.tick: e for e in staged_rec.events if isinstance(e, TickEvent)}
    stages = [e for e in staged_rec.events if isinstance(e, StageEvent)]
    assert [s.tick for s in stages] == sorted(ticks)
    for ev in stages:
        tick = ticks[ev.tick]
        micro = min(3, tick.seqs)
        assert ev.measured_start_ns.shape == (2, micro) and ev.modelled
        # measured cells ran one after another, stage-major, inside the tick
        order = np.stack([ev.measured_start_ns, ev.measured_end_ns], axis=-1).reshape(-1, 2)
        assert (order[:, 0] <= order[:, 1]).all() and (order[1:, 0] >= order[:-1, 1]).all()
        assert order[-1, 1] <= tick.end_ns - tick.start_ns
        # the modelled S-device timeline keeps each cell's cost and is never longer than running in order
        costs = ev.measured_end_ns - ev.measured_start_ns
        assert (ev.modelled_end_ns - ev.modelled_start_ns == costs).all()
        assert ev.modelled_end_ns.max() <= ev.measured_end_ns.max()


def test_more_stages_than_layers_is_a_config_error():
    with pytest.raises(ConfigError, match="stages"):
        Engine(get_preset("tiny"), SchedulerConfig(stages=5), device="cpu")
    with pytest.raises(ConfigError, match="micro_batches"):
        SchedulerConfig(micro_batches=0).validate()
