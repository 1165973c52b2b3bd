"""The pipeline timeline by hand: schedules, the modelled S-device timeline, and the warmup, drain,
bubble and bubble share that tracer/pipeline.py derives from it."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import get_preset
from engine.engine import Engine
from engine.pipeline import micro_batch_count
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer import SessionHeader, StageEvent, from_events, summarize
from tracer.compare import compare, delta_rows
from tracer.pipeline import bubble_share, stage_ticks, timeline_kind
from tracer.recorder import ListRecorder
from tracer.timeline import GPipe, modelled_timeline, run_order

MS = 1_000_000


def _stage_event(tick: int, cost: np.ndarray, modelled: bool = True) -> StageEvent:
    start, end = modelled_timeline(cost * MS)
    return StageEvent(tick, start, end, start, end, modelled=modelled)


def _stages(*events: StageEvent):
    return from_events(SessionHeader(0, 0, {}), list(events)).stages


def test_gpipe_runs_every_cell_once_in_dependency_order():
    order = run_order(GPipe(), 3, 2)
    assert sorted(order) == [(s, m) for s in range(3) for m in range(2)]
    for k, (s, m) in enumerate(order):
        assert s == 0 or order.index((s - 1, m)) < k  # its micro-batch left the previous stage first
        assert m == 0 or order.index((s, m - 1)) < k  # its stage ran the previous micro-batch first


def test_timeline_with_a_slow_cell_leaves_a_bubble_in_the_next_stage():
    # stage 0: 0-1, 1-6 (micro-batch 1 is slow); stage 1: 1-2, then it waits until 6: 6-7
    cost = np.array([[1, 5], [1, 1]])
    start, end = modelled_timeline(cost)
    assert start.tolist() == [[0, 1], [1, 6]] and end.tolist() == [[1, 6], [2, 7]]
    row = stage_ticks(_stages(_stage_event(0, cost))).row(0, named=True)
    # stage 0: no warmup, drain 6-7; stage 1: warmup 0-1, bubble 2-6, no drain
    assert row["makespan_s"] == pytest.approx(0.007) and row["compute_s"] == pytest.approx(0.008)
    assert row["warmup_s"] == pytest.approx(0.001) and row["drain_s"] == pytest.approx(0.001)
    assert row["bubble_s"] == pytest.approx(0.004)
    assert row["bubble_share"] == pytest.approx(6 / 14)  # idle 6 of 2 stages x 7 ms


@pytest.mark.parametrize("stages, micro", [(4, 1), (2, 4), (4, 4), (4, 8), (1, 3)])
def test_equal_cells_give_the_gpipe_bubble_fraction(stages, micro):
    row = stage_ticks(_stages(_stage_event(0, np.full((stages, micro), 2)))).row(0, named=True)
    assert row["bubble_share"] == pytest.approx((stages - 1) / (micro + stages - 1))
    # with equal cells nothing waits mid-pipeline: all idle time is warmup and drain, split evenly
    assert row["bubble_s"] == pytest.approx(0)
    assert row["warmup_s"] == pytest.approx(row["drain_s"])
    assert row["warmup_s"] == pytest.approx(0.002 * stages * (stages - 1) / 2)


def test_fewer_micro_batches_than_stages_is_mostly_idle():
    start, end = modelled_timeline(np.full((4, 1), 10))
    assert start[:, 0].tolist() == [0, 10, 20, 30] and end[-1, 0] == 40  # each stage idle 30 of 40
    assert bubble_share(_stages(_stage_event(0, np.full((4, 1), 10)))) == pytest.approx(0.75)


def test_session_bubble_share_weighs_ticks_by_their_length():
    short = _stage_event(0, np.full((2, 1), 1))  # 2 stages x 2 ms available, 2 ms computing
    long = _stage_event(1, np.full((2, 4), 3))  # 2 x 15 ms available, 24 ms computing
    stages = _stages(short, long)
    assert stage_ticks(stages).get_column("tick").to_list() == [0, 1]
    assert bubble_share(stages) == pytest.approx(1 - (2 + 24) / (4 + 30))


def test_summary_and_compare_say_modelled_or_measured():
    modelled = from_events(SessionHeader(0, 0, {}), [_stage_event(0, np.full((2, 2), 1))])
    measured = from_events(SessionHeader(0, 0, {}), [_stage_event(0, np.full((2, 1), 1), modelled=False)])
    assert timeline_kind(modelled.stages) == "modelled" and timeline_kind(measured.stages) == "measured"
    s = summarize(measured)
    assert s["bubble_share"] == pytest.approx(0.5) and s["stage_timeline"] == "measured"
    assert summarize(from_events(SessionHeader(0, 0, {}), []))["bubble_share"] is None
    labels = [row[0] for row in delta_rows(compare(modelled, measured))]
    assert "bubble share (A modelled, B measured)" in labels
    assert "bubble share (modelled)" in [row[0] for row in delta_rows(compare(modelled, modelled))]


def test_micro_batch_count_from_a_target_size():
    assert micro_batch_count(seqs=10, micro_batches=1, micro_batch_size=4) == 3
    assert micro_batch_count(seqs=3, micro_batches=8, micro_batch_size=0) == 3  # never an empty one
    assert micro_batch_count(seqs=1, micro_batches=1, micro_batch_size=4) == 1


def test_engine_derives_micro_batches_from_their_size():
    recorder = ListRecorder()
    engine = Engine(get_preset("tiny"), SchedulerConfig(stages=2, micro_batch_size=2), device="cpu", recorder=recorder)

    class Sink:
        def on_token(self, token: int, t_ns: int) -> None: ...

        def on_finish(self, status: str, reason: str, t_ns: int) -> None: ...

    for i in range(5):
        engine.submit(Request(i, [1, 2, 3], 2, Sink()))
    engine.step()
    (stage,) = [e for e in recorder.events if isinstance(e, StageEvent)]
    assert stage.measured_start_ns.shape == (2, 3) and stage.modelled  # 5 sequences, 2 per micro-batch
