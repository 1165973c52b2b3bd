"""Two pipeline stages in two processes on gloo: a real recording, merged onto rank 0's clock,
loaded, shown in the dashboard, and giving the same greedy tokens as one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

import tracer
from decode_runs import decode_prompts
from engine.config import get_preset
from engine.engine import Engine
from engine.launch import launch_stages
from engine.scheduler import SchedulerConfig
from tracer.events import ExpertsEvent, StageEvent, TickEvent
from tui.app import TickscopeApp
from tui.source import ReplaySource
from tui.widgets.stages import StageGantt
from workloads.run import Recording, RecordingPlan

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not in this torch build",
)

MICRO = 3


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "two-ranks.msgpack"
    plan = RecordingPlan(
        "tiny",
        "smoke",
        out,
        duration_s=1.5,
        device="cpu",
        scheduler_overrides={"stages": 2, "micro_batches": MICRO},
        distributed=True,
    )
    result = Recording(plan).run()
    assert result.ticks > 0 and result.requests_finished == result.requests_submitted > 0
    return out


def _events(path):
    with tracer.open_trace(path) as reader:
        return reader.header, list(reader.events())


def test_the_header_states_the_ranks_and_their_clock_offsets(recorded):
    header, _ = _events(recorded)
    d = header.config["distributed"]
    assert d["ranks"] == 2 and d["backend"] == "gloo" and d["launcher"] == "torch.multiprocessing"
    assert len(d["clock_offsets_ns"]) == len(d["clock_rtt_ns"]) == 2 and d["clock_offsets_ns"][0] == 0
    assert header.config["stage_layers"] == [[0, 2], [2, 4]]


def test_every_micro_batch_ran_once_on_every_rank(recorded):
    header, events = _events(recorded)
    top_k = header.config["model"]["top_k"]
    rtt = header.config["distributed"]["clock_rtt_ns"][1]
    ticks = {e.tick: e for e in events if isinstance(e, TickEvent)}
    stages = [e for e in events if isinstance(e, StageEvent)]
    experts = {e.tick: e.counts for e in events if isinstance(e, ExpertsEvent)}
    assert sorted(s.tick for s in stages) == sorted(ticks)  # one StageEvent per tick, none twice
    for ev in stages:
        tick = ticks[ev.tick]
        # one cell per (rank, micro-batch), measured, with the modelled columns holding the same timeline
        assert ev.measured_start_ns.shape == (2, min(MICRO, tick.seqs)) and not ev.modelled
        assert np.array_equal(ev.modelled_start_ns, ev.measured_start_ns)
        start, end = ev.measured_start_ns, ev.measured_end_ns
        assert (start <= end).all()
        assert (start[:, 1:] >= end[:, :-1]).all()  # each rank ran its micro-batches one after another
        # rank 1 started a micro-batch only after rank 0 sent it: on the merged timeline within the
        # clock offset's error, at most half the ping-pong's round trip
        assert (start[1] >= end[0] - rtt // 2 - 1).all()
        assert start.min() >= 0 and end.max() <= tick.end_ns - tick.start_ns + rtt // 2 + 1
        # every layer, on either rank, routed every token of the tick to top_k experts exactly once
        tokens = tick.prefill_tokens + tick.decode_tokens
        assert experts[ev.tick].sum(axis=1).tolist() == [tokens * top_k] * 4


def test_the_merged_trace_loads_and_summarises_as_measured(recorded):
    trace = tracer.load(recorded)
    assert trace.stages.height == 2 * trace.stages.select("tick", "micro_batch").unique().height
    assert not trace.stages.get_column("modelled").any()
    summary = tracer.summarize(trace)
    assert summary["stage_timeline"] == "measured" and 0 < summary["bubble_share"] < 1


async def test_the_dashboard_shows_the_measured_timeline(recorded):
    app = TickscopeApp(ReplaySource(str(recorded)), "replay", autoplay=False)
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(300):
            if app.status == "loaded" and app.state.n_ticks:
                break
            await pilot.pause(0.02)
        await pilot.press("right")
        await pilot.pause()
        assert app.query_one(StageGantt).border_subtitle.startswith("measured")
        await pilot.press("q")


def _greedy(engine: Engine) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return decode_prompts(engine, [rng.integers(0, 512, 3 + 4 * i).tolist() for i in range(5)], 6)


def test_two_ranks_give_the_tokens_of_one_process():
    model = get_preset("tiny")
    sched = SchedulerConfig(stages=2, micro_batches=2, prefill_chunk=8)
    stages = launch_stages(model, sched, "cpu", seed=2)
    try:
        engine = Engine(model, sched, seed=2, stage_group=stages.group)
        # rank 0 holds stage 0 only: its layers' KV cache, the embedding, no LM head
        assert engine.kv.k.shape[0] == 2 and engine.model.lm_head is None
        distributed = _greedy(engine)
    finally:
        stages.close()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran: the same kernels, the same rounding
    try:
        single = _greedy(Engine(model, SchedulerConfig(prefill_chunk=8), device="cpu", seed=2))
    finally:
        torch.set_num_threads(threads)
    assert distributed == single
