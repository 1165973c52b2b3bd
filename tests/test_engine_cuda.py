"""The engine's CUDA-only paths: decode ticks replayed as CUDA graphs, no host synchronisation inside
a replayed tick, forward times from CUDA events. Skipped without a CUDA device (CI has none); run them
on a GPU machine, e.g. through bench/gpu.sh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import get_preset
from engine.engine import Engine
from engine.model import SeqChunk
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.events import ExpertsEvent, MarkEvent, TickEvent
from tracer.recorder import ListRecorder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Tokens:
    def __init__(self) -> None:
        self.tokens: list[int] = []

    def on_token(self, token: int, t_ns: int) -> None:
        self.tokens.append(token)

    def on_finish(self, status: str, reason: str, t_ns: int) -> None: ...


def _run(decode_graphs: str, *, dtype: str = "auto", capture: bool = True,
         decode_compile: str = "off") -> tuple[list, list, list, Engine]:
    """Mixed lengths through 8 slots, so decode-only ticks of several buckets alternate with prefill."""
    rec = ListRecorder()
    sched = SchedulerConfig(max_seqs=8, kv_capacity_tokens=4096, decode_graphs=decode_graphs,
                            decode_compile=decode_compile)
    eng = Engine(get_preset("tiny", dtype=dtype), sched, device="cuda", recorder=rec)
    if eng.graphs is not None:
        eng.graphs.capture = capture
    rng = np.random.default_rng(1)
    sinks = [Tokens() for _ in range(11)]
    for i, sink in enumerate(sinks):
        eng.submit(Request(i, rng.integers(0, 512, int(rng.integers(1, 90))).tolist(), int(rng.integers(1, 40)), sink))
    while eng.step():
        pass
    load = [e.counts for e in rec.events if isinstance(e, ExpertsEvent)]
    ticks = [e for e in rec.events if isinstance(e, TickEvent)]
    return [s.tokens for s in sinks], load, ticks, eng


def test_auto_captures_graphs_on_cuda_and_marks_the_ticks_that_did():
    _, _, _, eng = _run("auto")
    assert eng.describe()["decode_graphs"] == "cuda graphs"
    assert len(eng.graphs.captured) > 2 and sorted(eng.graphs.captured) == eng.graphs.buckets_used
    marks = [e for e in eng.recorder.events if isinstance(e, MarkEvent)]
    assert [m.text.split(":")[0] for m in marks] == [
        f"decode graph captured for batch {b}, context {c}" for b, c in eng.graphs.captured]


def test_graph_replay_is_the_padded_path_exactly():
    """Same device, shapes and kernels: replaying the captured graphs must equal running them."""
    replayed_tokens, replayed_load, _, _ = _run("on")
    run_tokens, run_load, _, _ = _run("on", capture=False)
    assert replayed_tokens == run_tokens
    assert all((a == b).all() for a, b in zip(replayed_load, run_load, strict=True))


def test_float32_graphs_give_the_eager_tokens_and_load():
    graph_tokens, graph_load, _, _ = _run("auto", dtype="float32")
    eager_tokens, eager_load, _, _ = _run("off", dtype="float32")
    assert graph_tokens == eager_tokens
    assert all((a == b).all() for a, b in zip(graph_load, eager_load, strict=True))


def test_inductor_compiled_graphs_give_the_eager_tokens_in_float32():
    """Fused kernels round differently; in float32 that must not change a greedy token."""
    compiled_tokens, _, _, eng = _run("auto", dtype="float32", decode_compile="inductor")
    eager_tokens, _, _, _ = _run("off", dtype="float32")
    assert eng.graphs.compile_backend == "inductor"
    assert compiled_tokens == eager_tokens


def test_a_replayed_tick_does_not_synchronise_before_its_tokens_are_read():
    _, _, _, eng = _run("auto")
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
    _, _, ticks, _ = _run("auto")
    assert ticks and all(0 < t.forward_ns <= t.end_ns - t.start_ns for t in ticks)
