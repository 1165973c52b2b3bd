"""Decode ticks padded to buckets (the path CUDA graphs capture), checked on the CPU: it must give the
eager path's tokens, expert load and KV cache, and hold nothing a graph cannot capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)

from decode_runs import Tokens, mixed_run
from engine.batch import SeqChunk
from engine.config import get_preset
from engine.decode_graphs import DecodeGraphs, _bucket_for, buckets
from engine.engine import Engine
from engine.errors import ConfigError
from engine.kernels import grouped_mm, grouped_mm_padded
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.request import Request, SamplingParams
from engine.scheduler import SchedulerConfig


@pytest.mark.parametrize("limit, step, smallest", [(1, 1, 1), (8, 1, 1), (256, 1, 1), (100, 1, 1), (4096, 16, 64)])
def test_buckets_cover_every_size_with_at_most_a_third_of_padding(limit, step, smallest):
    sizes = buckets(limit, step, smallest)
    assert sizes == sorted(set(sizes)) and sizes[-1] == limit
    assert all(s % step == 0 for s in sizes[:-1]) and sizes[0] >= min(smallest, limit)
    for n in range(1, limit + 1):
        b = _bucket_for(sizes, n)
        assert n <= b <= max(smallest, 2, -(-int(1.5 * n) // step) * step, n + step)
    assert _bucket_for(sizes, limit + 1) is None


def test_padded_decode_gives_the_eager_tokens_load_and_cache():
    eager_run, padded_run = mixed_run("cpu", "off"), mixed_run("cpu", "on")
    eager, padded = eager_run.engine, padded_run.engine

    assert eager.graphs is None and padded.describe()["decode_graphs"] == "eager"
    used = padded.graphs.buckets_used
    assert len({b for b, _ in used}) > 2 and len({c for _, c in used}) > 1  # shrinking batches, growing contexts
    assert any(b > n for b, n in zip((b for b, _ in used), [1, 2, 3, 4, 6, 8]))  # some ticks were padded
    assert padded_run.tokens == eager_run.tokens
    # padding rows are not counted
    assert all((p == e).all() for p, e in zip(padded_run.load, eager_run.load, strict=True))
    real = slice(0, padded.kv.scratch_slot)  # padding rows wrote only to the scratch slot
    torch.testing.assert_close(padded.kv.k[:, real], eager.kv.k[:, real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded.kv.v[:, real], eager.kv.v[:, real], rtol=1e-5, atol=1e-5)


def test_the_padded_forward_compiles_as_one_graph_for_every_bucket():
    """fullgraph: a graph break would raise. aot_eager traces without fusing, so it must give exactly what
    the uncompiled padded path gives; inductor, which fuses, is for the GPU (tests/test_engine_cuda.py).
    bfloat16, as on CUDA: compiled grouped_mm takes nothing else."""
    eager = mixed_run("cpu", "on", dtype="bfloat16")
    traced = mixed_run("cpu", "on", decode_compile="aot_eager", dtype="bfloat16")
    assert len(traced.engine.graphs.buckets_used) > 3
    assert traced.tokens == eager.tokens
    assert all((t == e).all() for t, e in zip(traced.load, eager.load, strict=True))


class _Stream:
    def __init__(self, name: str) -> None:
        self.name = name

    def wait_stream(self, other: _Stream) -> None: ...


class _Graph:
    """A CUDA graph that replays by running the captured forward pass again, eagerly."""

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda, self.replay_fn = cuda, None

    def capture_begin(self, pool: object = None, capture_error_mode: str = "global") -> None:
        assert self.cuda.current is not self.cuda.default, "captures run on a side stream"
        self.cuda.capturing = self

    def capture_end(self) -> None:
        self.cuda.capturing = None
        if self.cuda.fail:  # as CUDA does: a region that failed has invalidated its capture
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    def replay(self) -> None:
        self.replay_fn()

    def reset(self) -> None:
        self.replay_fn = None


class FakeCuda:
    """The part of torch.cuda that the decode graphs capture with, on the CPU: streams that are only
    names, graphs that replay eagerly; `fail` makes the captured region itself fail, as a host read
    inside it does on a GPU ("operation not permitted when stream is capturing")."""

    def __init__(self, graphs: DecodeGraphs, fail: bool = False) -> None:
        self.default = self.current = _Stream("default")
        self.capturing: _Graph | None = None
        self.fail = fail
        step = graphs._region

        def captured_step(bucket):
            if self.capturing is not None and self.fail:
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            out = step(bucket)
            if self.capturing is not None:
                self.capturing.replay_fn = lambda: out.copy_(step(bucket))
            return out

        graphs._region, graphs.cuda, graphs.capture = captured_step, self, True
        graphs._make_buffers()  # as on a GPU: two host buffers in turn, copied to the inputs

    def graph_pool_handle(self) -> object:
        return object()

    def current_stream(self, device: object = None) -> _Stream:
        return self.current

    def Stream(self, device: object = None) -> _Stream:  # noqa: N802 - torch.cuda's name
        return _Stream("side")

    def set_stream(self, stream: _Stream) -> None:
        self.current = stream

    def CUDAGraph(self) -> _Graph:  # noqa: N802 - torch.cuda's name
        return _Graph(self)


def test_every_bucket_is_captured_up_front_and_the_replays_give_the_eager_tokens():
    apis = []

    def on_a_gpu(graphs):
        apis.append(FakeCuda(graphs))

    eager, replayed = mixed_run("cpu", "off"), mixed_run("cpu", "on", setup=on_a_gpu)
    graphs = replayed.engine.graphs
    every = [(b, c) for b in graphs.batch_buckets for c in graphs.context_buckets]
    assert graphs.captured == every and graphs.failed is None
    assert set(graphs.buckets_used) < set(every) and len(graphs.buckets_used) > 3
    assert apis[0].current is apis[0].default
    # one mark, on the first decode tick: nothing is captured mid-run
    assert [m.text.split(" (")[0] for m in replayed.marks] == [f"decode graphs: {len(every)} captured up front"]
    first_decode = next(t.tick for t in replayed.ticks if t.prefill_tokens == 0)
    assert replayed.marks[0].tick == first_decode and replayed.marks[0].text.endswith("this tick includes it")
    assert replayed.tokens == eager.tokens
    assert all((a == b).all() for a, b in zip(replayed.load, eager.load, strict=True))
    real = slice(0, replayed.engine.kv.scratch_slot)  # the captures' runs wrote to the scratch block only
    torch.testing.assert_close(replayed.engine.kv.k[:, real], eager.engine.kv.k[:, real], rtol=1e-5, atol=1e-5)


def test_replayed_graphs_planned_ahead_give_the_eager_tokens():
    """Each decode tick is filled into the other host buffer while the one before runs, and its
    tokens are written in at launch: the same tokens and load as eager ticks planned one by one."""
    eager = mixed_run("cpu", "off")
    ahead = mixed_run("cpu", "on", setup=FakeCuda, plan_ahead="on")
    graphs = ahead.engine.graphs
    assert len(graphs._hosts) == 2 and graphs._inputs is not graphs._hosts[0] and len(graphs.buckets_used) > 3
    assert ahead.tokens == eager.tokens
    assert all((a == b).all() for a, b in zip(ahead.load, eager.load, strict=True))


def test_sampled_requests_draw_the_same_tokens_from_replayed_graphs():
    """Draws are made after the graph, from the logits it leaves in the shared buffer: replayed,
    padded or eager, a seeded request gets the same tokens, and greedy ones stay greedy."""
    sampled = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=7)
    eager = mixed_run("cpu", "off", sampled=sampled)
    replayed = mixed_run("cpu", "on", setup=FakeCuda, sampled=sampled)
    assert replayed.engine.graphs.buckets_used and replayed.tokens == eager.tokens
    assert mixed_run("cpu", "on", sampled=sampled).tokens == eager.tokens  # padded, not captured
    greedy = mixed_run("cpu", "off")
    assert replayed.tokens[0::2] == greedy.tokens[0::2] and replayed.tokens[1::2] != greedy.tokens[1::2]


def test_a_capture_whose_region_fails_restores_the_stream_and_auto_goes_on_eagerly():
    """The captured region itself fails (and with it the capture's end): the stream in use before is
    current again. Chosen by `auto`, the graphs are dropped with a mark; asked for, they fail the run."""
    apis = []

    def failing_on_a_gpu(graphs):
        graphs.required = False
        apis.append(FakeCuda(graphs, fail=True))

    eager, fallen_back = mixed_run("cpu", "off"), mixed_run("cpu", "on", setup=failing_on_a_gpu)
    assert apis[0].current is apis[0].default and apis[0].capturing is None
    assert fallen_back.engine.graphs.failed.startswith("RuntimeError: CUDA error: operation failed")
    assert fallen_back.tokens == eager.tokens
    assert all((a == b).all() for a, b in zip(fallen_back.load, eager.load, strict=True))
    assert len(fallen_back.marks) == 1
    assert fallen_back.marks[0].text.startswith("decode graphs off from here on: capturing one failed")

    required = Engine(get_preset("tiny"), SchedulerConfig(decode_graphs="on"), device="cpu")
    cuda = FakeCuda(required.graphs, fail=True)
    required.submit(Request(0, [1, 2, 3], 4, Tokens()))
    required.step()  # the prefill tick runs eagerly
    with pytest.raises(RuntimeError, match="during capture") as failed:
        required.step()
    assert "operation not permitted when stream is capturing" in str(failed.value.__context__)
    assert cuda.current is cuda.default


def _graphs(dtype: torch.dtype, max_seqs: int = 8) -> DecodeGraphs:
    cfg = get_preset("tiny")
    kv = KVCache(cfg, 2048, torch.device("cpu"), dtype)
    return DecodeGraphs(Transformer(cfg, torch.device("cpu"), dtype), kv, max_seqs)


def _decode_chunks(graphs: DecodeGraphs, contexts: list[int]) -> list[SeqChunk]:
    alloc = graphs.kv.allocator
    chunks = []
    for i, n in enumerate(contexts):
        alloc.grow(i, n)
        chunks.append(SeqChunk([i], n - 1, alloc.blocks(i, n), alloc.block_size, True))
    return chunks


def test_takes_decode_only_ticks_that_fit_the_largest_bucket():
    graphs = _graphs(torch.float32, max_seqs=4)
    alloc = graphs.kv.allocator
    assert graphs.takes(_decode_chunks(graphs, [5, 70, 200, 1]))
    alloc.grow(9, 20)
    prefill = SeqChunk(list(range(20)), 0, alloc.blocks(9, 20), alloc.block_size, True)
    assert not graphs.takes([prefill])
    not_sampling = SeqChunk([1], 19, alloc.blocks(9, 20), alloc.block_size, False)
    assert not graphs.takes([not_sampling])
    assert not graphs.takes(_decode_chunks(graphs, [3, 3, 3, 3, 3]))  # more than max_seqs
    graphs.context_buckets = [64]
    assert not graphs.takes(_decode_chunks(graphs, [65]))


@pytest.mark.parametrize("matmul", [grouped_mm, grouped_mm_padded])
def test_the_captured_region_has_no_data_dependent_shapes_or_host_reads(matmul):
    """Under fake tensors, reading a value back (.item(), .tolist()) or an op whose output shape
    depends on values (nonzero, bincount, boolean masks) raises: exactly what a CUDA graph cannot hold."""
    graphs = _graphs(torch.bfloat16)  # the dtype torch._grouped_mm is specified for on CUDA
    for layer in graphs.model.layers:
        layer.moe.fixed_matmul = matmul
    bucket = graphs._bucket(4, 128)
    graphs._fill(bucket, _decode_chunks(graphs, [5, 70, 100]), np.array([5, 70, 100]))
    with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True):
        out, logits = graphs._forward(bucket)
        assert out.shape == (4 + 4 * 16,) and logits.shape == (4, graphs.model.cfg.vocab_size)
        with pytest.raises(DataDependentOutputException):  # the harness does catch a host read
            out.sum().item()
        with pytest.raises(DynamicOutputShapeException):  # ... and a value-dependent shape
            torch.bincount(out)


def test_decode_graphs_on_refuses_a_pipeline_and_unknown_values():
    with pytest.raises(ConfigError, match="needs one pipeline stage"):
        SchedulerConfig(decode_graphs="on", stages=2).validate()
    with pytest.raises(ConfigError, match="needs one pipeline stage"):
        SchedulerConfig(decode_graphs="on", attention="same-length").validate()
    with pytest.raises(ConfigError, match="unknown decode_graphs 'sometimes'"):
        SchedulerConfig(decode_graphs="sometimes").validate()
    with pytest.raises(ConfigError, match="cannot be used with decode_graphs 'off'"):
        SchedulerConfig(decode_graphs="off", decode_compile="inductor").validate()
    with pytest.raises(ConfigError, match="decode_compile needs decode graphs"):
        Engine(get_preset("tiny"), SchedulerConfig(decode_compile="inductor"), device="cpu")  # auto: no graphs here
    # float32 has no compilable grouped_mm: the compiled step's expert product is padded instead (eager
    # ticks keep theirs), and the header says why
    described = Engine(
        get_preset("tiny"), SchedulerConfig(decode_graphs="on", decode_compile="inductor"), device="cpu"
    ).describe()
    assert described["expert_matmul"] == "grouped_mm"
    assert described["decode_graphs_expert_matmul"] == "grouped_mm_padded"
    assert described["decode_graphs_expert_matmul_reason"].startswith("padded: fixed shapes asked for")
    auto = Engine(get_preset("tiny"), SchedulerConfig(stages=2), device="cpu")
    assert auto.graphs is None and auto.describe()["decode_graphs"] == "off"  # auto: graphs on CUDA only
