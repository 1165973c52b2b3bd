"""The MoE decoder: shapes, determinism, expert dispatch against a naive reference, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.config import get_preset
from engine.engine import Engine
from engine.kv_cache import KVCache
from engine.model import SeqChunk, Transformer, grouped_mm, grouped_mm_padded, make_batch
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.events import RequestEvent
from tracer.recorder import ListRecorder

CPU = torch.device("cpu")


class Collect:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.finishes: list[tuple[str, str]] = []

    def on_token(self, token: int, t_ns: int) -> None:
        self.tokens.append(token)

    def on_finish(self, status: str, reason: str, t_ns: int) -> None:
        self.finishes.append((status, reason))


def _prefill(model: Transformer, kv: KVCache, prompts: list[list[int]], grouping: str = "ragged"):
    chunks = []
    for i, p in enumerate(prompts):
        kv.allocator.grow(i, len(p))
        chunks.append(SeqChunk(p, 0, kv.allocator.blocks(i, len(p)), kv.allocator.block_size, True))
    with torch.inference_mode():
        return model(make_batch(chunks, CPU, grouping), kv.k, kv.v)


def test_forward_shapes_and_expert_counts():
    cfg = get_preset("tiny")
    model = Transformer(cfg, CPU, torch.float32, seed=0)
    kv = KVCache(cfg, 1024, CPU, torch.float32)
    logits, counts = _prefill(model, kv, [[1, 2, 3], [4] * 10, [5, 6]])
    assert logits.shape == (3, cfg.vocab_size)
    assert counts.shape == (cfg.layers, cfg.routed_experts) and counts.dtype == torch.int32
    assert counts.sum(dim=1).tolist() == [15 * cfg.top_k] * cfg.layers
    assert torch.isfinite(logits).all()


def test_same_seed_same_weights_and_logits_other_seed_differs():
    cfg = get_preset("tiny")
    a, b, c = (Transformer(cfg, CPU, torch.float32, seed=s) for s in (7, 7, 8))
    for (name, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc) or name.endswith("norm.weight"), name
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6]]
    la, _ = _prefill(a, KVCache(cfg, 256, CPU, torch.float32), prompts)
    lb, _ = _prefill(b, KVCache(cfg, 256, CPU, torch.float32), prompts)
    assert torch.equal(la, lb)


def test_weights_created_in_the_config_dtype():
    cfg = get_preset("tiny", dtype="bfloat16", layers=1)
    model = Transformer(cfg, CPU, cfg.torch_dtype(CPU), seed=0)
    assert model.layers[0].moe.w13.dtype == torch.bfloat16
    assert model.layers[0].moe.router.dtype == torch.float32  # routing decisions in full precision
    logits, _ = _prefill(model, KVCache(cfg, 64, CPU, torch.bfloat16), [[1, 2, 3]])
    assert torch.isfinite(logits.float()).all()


def _naive_moe(moe, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: what the grouped GEMM must equal."""
    chosen, weights = moe.route(x)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for e, w in zip(chosen[t].tolist(), weights[t].tolist()):
            gate, up = (x[t] @ moe.w13[e]).chunk(2)
            out[t] += w * ((F.silu(gate) * up) @ moe.w2[e])
        gate, up = (x[t] @ moe.shared_w13).chunk(2)
        out[t] += (F.silu(gate) * up) @ moe.shared_w2
    return out


@pytest.mark.parametrize("tokens", [1, 5, 64])
def test_grouped_gemm_moe_equals_naive_reference(tokens):
    cfg = get_preset("tiny", router_skew=0.5)
    model = Transformer(cfg, CPU, torch.float32, seed=1)
    moe = model.layers[2].moe
    x = torch.randn(tokens, cfg.hidden, generator=torch.Generator().manual_seed(tokens))
    out, counts = moe(x)
    torch.testing.assert_close(out, _naive_moe(moe, x), rtol=1e-4, atol=1e-5)
    chosen, _ = moe.route(x)
    assert torch.equal(counts, torch.bincount(chosen.flatten(), minlength=cfg.routed_experts).int())


def test_padded_fallback_equals_grouped_mm_including_empty_experts():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 16, generator=gen)
    w = torch.randn(4, 16, 8, generator=gen)
    offs = torch.tensor([3, 3, 9, 10], dtype=torch.int32)  # expert 1 gets no rows
    expected = torch.cat([x[:3] @ w[0], x[3:9] @ w[2], x[9:] @ w[3]])
    torch.testing.assert_close(grouped_mm_padded(x, w, offs), expected)
    torch.testing.assert_close(grouped_mm(x, w, offs), expected)


def test_router_skew_concentrates_load():
    x = torch.randn(512, 128, generator=torch.Generator().manual_seed(0))
    loads = []
    for skew in (0.0, 1.0):
        moe = Transformer(get_preset("tiny", router_skew=skew, layers=1), CPU, torch.float32).layers[0].moe
        loads.append(moe(x)[1].sort(descending=True).values)
    # the busiest four experts take a larger share when popularity is skewed
    assert loads[1][:4].sum() > loads[0][:4].sum()


def test_same_length_grouping_equals_ragged():
    cfg = get_preset("tiny")
    model = Transformer(cfg, CPU, torch.float32, seed=0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11], [12]]
    ragged, _ = _prefill(model, KVCache(cfg, 256, CPU, torch.float32), prompts, "ragged")
    grouped, _ = _prefill(model, KVCache(cfg, 256, CPU, torch.float32), prompts, "same-length")
    torch.testing.assert_close(ragged, grouped, rtol=1e-5, atol=1e-5)


def _decode(submissions: list[tuple[int, list[int]]], max_new: int, recorder=None, **sched) -> dict[int, list[int]]:
    """Greedy-decode prompts, each submitted before the given tick, stepping the engine by hand."""
    engine = Engine(get_preset("tiny"), SchedulerConfig(**sched), device="cpu", seed=3,
                    recorder=recorder or ListRecorder())
    sinks = {}
    tick = 0
    while len(sinks) < len(submissions) or engine.scheduler.running or engine.scheduler.waiting:
        for i, (at, prompt) in enumerate(submissions):
            if at == tick:
                sinks[i] = Collect()
                engine.submit(Request(i, prompt, max_new, sinks[i]))
        engine.step()
        tick += 1
    assert all(s.finishes == [("finished", "")] for s in sinks.values())
    return {i: s.tokens for i, s in sinks.items()}


def test_batched_decode_of_mixed_lengths_equals_each_alone():
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 512, n).tolist() for n in (3, 40, 17, 1, 25)]
    arrivals = [0, 0, 2, 5, 6]  # later ones are prefilled while earlier ones decode
    batched = _decode(list(zip(arrivals, prompts)), max_new=12, prefill_chunk=16)
    for i, p in enumerate(prompts):
        alone = _decode([(0, p)], max_new=12)
        assert batched[i] == alone[0], f"sequence {i} (prompt {len(p)}) diverged when batched"
        assert len(alone[0]) == 12


def test_decode_survives_preemption_with_the_same_tokens():
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 512, n).tolist() for n in (30, 30, 30)]
    roomy = _decode([(0, p) for p in prompts], max_new=20)
    # 96 tokens of KV for three sequences growing to 50 each: someone must be preempted and recomputed
    recorder = ListRecorder()
    tight = _decode([(0, p) for p in prompts], max_new=20, recorder=recorder, kv_capacity_tokens=96,
                    kv_block_size=8)
    assert any(isinstance(e, RequestEvent) and e.phase == "preempt" for e in recorder.events)
    assert tight == roomy


@pytest.mark.parametrize("grouping", ["ragged", "same-length"])
def test_make_batch_matches_a_sequence_at_a_time_reference(grouping):
    """The batch is built a column at a time; here it is rebuilt one sequence at a time, plainly."""
    from engine.kv_cache import BlockAllocator

    alloc = BlockAllocator(4096, block_size=4)
    rng = np.random.default_rng(5)
    spec = [(0, 7), (9, 1), (3, 5), (21, 1), (9, 3), (0, 1), (40, 1)]  # (cached tokens, this tick's tokens)
    chunks = []
    for i, (start, n) in enumerate(spec):
        alloc.grow(100 + i, start + n + int(rng.integers(0, 9)))  # tables may run past this chunk
        alloc.grow(999, 4 * (i + 1))  # interleave another sequence's blocks
        blocks = alloc.blocks(100 + i, start + n)
        chunks.append(SeqChunk(rng.integers(0, 512, n).tolist(), start, blocks, 4, bool(i % 3)))
    batch = make_batch(chunks, CPU, grouping)

    def slot(c, p):
        return c.blocks[p // 4] * 4 + p % 4

    assert batch.tokens.tolist() == [t for c in chunks for t in c.tokens]
    assert batch.positions.tolist() == [p for c in chunks for p in range(c.start, c.start + len(c.tokens))]
    assert batch.slots.tolist() == [slot(c, p) for c in chunks for p in range(c.start, c.start + len(c.tokens))]
    ends = np.cumsum([len(c.tokens) for c in chunks]) - 1
    assert batch.sample_index.tolist() == [int(e) for e, c in zip(ends, chunks) if c.sample]
    seen = []
    for g in batch.groups:
        rows = g.token_index.tolist()
        members = sorted({i for i, c in enumerate(chunks) for r in rows
                          if sum(len(x.tokens) for x in chunks[:i]) <= r < sum(len(x.tokens) for x in chunks[:i + 1])})
        seen += members
        for b, i in enumerate(members):
            c = chunks[i]
            kv_len = c.start + len(c.tokens)
            assert g.kv_slots[b, :kv_len].tolist() == [slot(c, p) for p in range(kv_len)]
            for q in range(len(c.tokens)):
                assert g.mask[b, 0, q].tolist() == [k <= c.start + q for k in range(g.kv_slots.shape[1])]
        assert g.identity == (g.q_max == 1 and len(members) == len(chunks))
    assert sorted(seen) == list(range(len(chunks)))
