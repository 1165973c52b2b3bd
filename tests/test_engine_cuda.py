"""The engine's CUDA-only paths: decode ticks replayed as CUDA graphs, no host synchronisation inside
a tick, forward times from CUDA events, the memory check against what a tick really takes. Skipped
without a CUDA device (CI has none); run them on a GPU machine through bench/gpu.sh, which fails
when one of them does.

Every test that compares graphs with something else first checks that the graphs were captured and
replayed: a run whose capture failed falls back to eager ticks, and would compare eager with eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.stages as stages
from decode_runs import MixedRun, Tokens, mixed_run
from engine.config import activation_bytes, get_preset
from engine.engine import Engine
from engine.request import Request, SamplingParams
from engine.scheduler import SchedulerConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)


def assert_replayed(run: MixedRun) -> None:
    """Every bucket was captured up front, none failed, and the decode ticks ran in them."""
    graphs = run.engine.graphs
    assert graphs is not None and graphs.capture and graphs.failed is None, graphs and graphs.failed
    assert graphs.captured == [(b, c) for b in graphs.batch_buckets for c in graphs.context_buckets]
    assert len(graphs.buckets_used) > 2 and set(graphs.buckets_used) <= set(graphs.captured)


def test_auto_captures_every_bucket_up_front_and_marks_the_tick_that_did():
    run = mixed_run("cuda", "auto")
    assert_replayed(run)
    assert run.engine.describe()["decode_graphs"] == "cuda graphs"
    captured = len(run.engine.graphs.captured)
    assert [m.text.split(" (")[0] for m in run.marks] == [f"decode graphs: {captured} captured up front"]


def test_graph_replay_is_the_padded_path_exactly():
    """Same device, shapes and kernels: replaying the captured graphs must equal running them."""

    def uncaptured(graphs):
        graphs.capture = False

    replayed, run = mixed_run("cuda", "on"), mixed_run("cuda", "on", setup=uncaptured)
    assert_replayed(replayed)
    assert run.engine.graphs.captured == [] and len(run.engine.graphs.buckets_used) > 2
    assert replayed.tokens == run.tokens
    assert all((a == b).all() for a, b in zip(replayed.load, run.load, strict=True))


def test_seeded_draws_after_replayed_graphs_are_the_padded_paths():
    """The draws read the logits a replayed graph left in the shared buffer: the same tokens as the
    padded path run uncaptured, and unlike the greedy ones."""

    def uncaptured(graphs):
        graphs.capture = False

    sampled = SamplingParams(temperature=0.8, top_p=0.95, seed=11)
    replayed, run = mixed_run("cuda", "on", sampled=sampled), mixed_run("cuda", "on", setup=uncaptured, sampled=sampled)
    assert_replayed(replayed)
    assert replayed.tokens == run.tokens and replayed.tokens[1::2] != mixed_run("cuda", "on").tokens[1::2]


def test_float32_graphs_capture_the_padded_product_and_give_the_eager_tokens_and_load():
    graphs, eager = mixed_run("cuda", "auto", dtype="float32"), mixed_run("cuda", "off", dtype="float32")
    assert_replayed(graphs)
    assert graphs.engine.describe()["decode_graphs_expert_matmul"] == "grouped_mm_padded"
    assert graphs.tokens == eager.tokens
    assert all((a == b).all() for a, b in zip(graphs.load, eager.load, strict=True))


def test_float32_on_cuda_gives_the_cpu_tokens():
    """The CPU's tokens are transformers' (tests/test_engine_parity.py): the CUDA path's attention calls,
    expert products and graphs must give them too, in float32."""
    cuda, cpu = mixed_run("cuda", "auto", dtype="float32"), mixed_run("cpu", "off", dtype="float32")
    assert_replayed(cuda)
    assert cuda.tokens == cpu.tokens


def test_inductor_compiled_graphs_give_the_eager_tokens_in_float32():
    """Fused kernels round differently; in float32 that must not change a greedy token."""
    compiled = mixed_run("cuda", "auto", dtype="float32", decode_compile="inductor")
    assert_replayed(compiled)
    assert compiled.engine.graphs.compile_backend == "inductor"
    assert compiled.tokens == mixed_run("cuda", "off", dtype="float32").tokens


@pytest.mark.skipif(not _sm90(), reason="eager ticks are free of host reads where grouped_mm is fused: SM90+")
def test_whole_ticks_synchronise_only_to_read_their_results(monkeypatch):
    """A prefill tick, eager decode ticks, and decode ticks that capture every bucket and then replay,
    all under torch.cuda.set_sync_debug_mode("error"): the tick's one read-back is the only sync."""
    reads = []
    read_back = stages.read_back

    def the_one_read(values):
        reads.append(values.numel())
        torch.cuda.set_sync_debug_mode("default")
        try:
            return read_back(values)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(stages, "read_back", the_one_read)
    cfg = get_preset("tiny", dtype="bfloat16")
    eager = Engine(cfg, SchedulerConfig(decode_graphs="off"), device="cuda")
    graphs = Engine(cfg, SchedulerConfig(decode_graphs="on", max_seqs=4), device="cuda")
    with torch.inference_mode():
        for engine in (eager, graphs):
            for r in range(3):
                engine.submit(Request(r, list(range(5 + 20 * r)), 4, Tokens()))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for engine in (eager, graphs):
                for _ in range(4):  # a prefill tick, then decode ticks (the graphs' first captures them all)
                    before = len(reads)
                    assert engine.step()
                    assert len(reads) == before + 1
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert graphs.graphs.captured and graphs.graphs.failed is None and graphs.graphs.buckets_used


def test_the_largest_prefill_tick_takes_less_than_the_memory_check_counts():
    cfg = get_preset("tiny", dtype="bfloat16", hidden=512, moe_intermediate=1024, max_seq_len=2048)
    sched = SchedulerConfig(max_seqs=8, max_tokens=2048, prefill_chunk=512, kv_capacity_tokens=8 * 2048)
    engine = Engine(cfg, sched, device="cuda")
    rng = np.random.default_rng(0)
    for r in range(4):  # four prompts of a whole chunk: one tick of max_tokens rows
        engine.submit(Request(r, rng.integers(0, cfg.vocab_size, 512).tolist(), 2, Tokens()))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    engine.step()
    assert torch.cuda.max_memory_allocated() - before <= activation_bytes(cfg, torch.bfloat16, sched)


def test_forward_times_come_from_cuda_events():
    ticks = mixed_run("cuda", "auto").ticks
    assert ticks and all(0 < t.forward_ns <= t.end_ns - t.start_ns for t in ticks)


def test_planning_ahead_on_cuda_records_the_same_run_with_graphs_replayed():
    """`auto` plans ahead on CUDA: tick n+1 is filled into the other pinned buffer while tick n runs,
    its tokens written in at launch. The run must be the one recorded without planning ahead."""
    from test_engine_plan_ahead import MIXED, comparable, run_stepped

    off, off_sinks, _ = run_stepped("off", MIXED, device="cuda", max_seqs=8)
    on, on_sinks, eng = run_stepped("auto", MIXED, device="cuda", max_seqs=8)
    assert eng.describe()["plans_ahead"]
    assert eng.graphs is not None and eng.graphs.captured and eng.graphs.failed is None
    assert [s.tokens for s in on_sinks] == [s.tokens for s in off_sinks]
    assert [comparable(e) for e in on] == [comparable(e) for e in off]
