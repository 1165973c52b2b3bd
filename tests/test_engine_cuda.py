"""The engine's CUDA-only paths: decode ticks replayed as CUDA graphs, no host synchronisation inside
a replayed tick, forward times from CUDA events. Skipped without a CUDA device (CI has none); run them
on a GPU machine, e.g. through bench/gpu.sh."""

from __future__ import annotations

import pytest
import torch
from decode_runs import mixed_run

from engine.batch import SeqChunk

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_captures_graphs_on_cuda_and_marks_the_ticks_that_did():
    run = mixed_run("cuda", "auto")
    graphs = run.engine.graphs
    assert run.engine.describe()["decode_graphs"] == "cuda graphs"
    assert len(graphs.captured) > 2 and sorted(graphs.captured) == graphs.buckets_used
    assert [m.text.split(":")[0] for m in run.marks] == [
        f"decode graph captured for batch {b}, context {c}" for b, c in graphs.captured]


def test_graph_replay_is_the_padded_path_exactly():
    """Same device, shapes and kernels: replaying the captured graphs must equal running them."""
    def uncaptured(graphs):
        graphs.capture = False

    replayed, run = mixed_run("cuda", "on"), mixed_run("cuda", "on", setup=uncaptured)
    assert replayed.tokens == run.tokens
    assert all((a == b).all() for a, b in zip(replayed.load, run.load, strict=True))


def test_float32_graphs_give_the_eager_tokens_and_load():
    graphs, eager = mixed_run("cuda", "auto", dtype="float32"), mixed_run("cuda", "off", dtype="float32")
    assert graphs.tokens == eager.tokens
    assert all((a == b).all() for a, b in zip(graphs.load, eager.load, strict=True))


def test_inductor_compiled_graphs_give_the_eager_tokens_in_float32():
    """Fused kernels round differently; in float32 that must not change a greedy token."""
    compiled = mixed_run("cuda", "auto", dtype="float32", decode_compile="inductor")
    assert compiled.engine.graphs.compile_backend == "inductor"
    assert compiled.tokens == mixed_run("cuda", "off", dtype="float32").tokens


def test_a_replayed_tick_does_not_synchronise_before_its_tokens_are_read():
    eng = mixed_run("cuda", "auto").engine
    graphs, alloc = eng.graphs, eng.kv.allocator
    chunks = []
    for i, n in enumerate([5, 70, 100]):
        alloc.grow(1000 + i, n)
        chunks.append(SeqChunk([i], n - 1, alloc.blocks(1000 + i, n), alloc.block_size, True))
    with torch.inference_mode():
        graphs.run(chunks)  # the first run of this bucket captures it
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = graphs.run(chunks)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert out.cpu().shape[0] >= 3


def test_forward_times_come_from_cuda_events():
    ticks = mixed_run("cuda", "auto").ticks
    assert ticks and all(0 < t.forward_ns <= t.end_ns - t.start_ns for t in ticks)
