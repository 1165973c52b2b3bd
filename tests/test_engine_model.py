"""The MoE decoder: shapes, determinism, expert dispatch against a naive reference, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decode_runs import Tokens
from engine.batch import SeqChunk, attention_groups, make_batch
from engine.config import get_preset
from engine.engine import Engine
from engine.kernels import expert_loop, grouped_mm, grouped_mm_padded, linear
from engine.kv_cache import BlockAllocator, KVCache
from engine.model import Transformer, apply_rope
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.events import RequestEvent
from tracer.recorder import ListRecorder

CPU = torch.device("cpu")


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
            gate, up = (moe.w13[e] @ x[t]).chunk(2)
            out[t] += w * (moe.w2[e] @ (F.silu(gate) * up))
        gate, up = (moe.shared_w13 @ x[t]).chunk(2)
        out[t] += moe.shared_w2 @ (F.silu(gate) * up)
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


@pytest.mark.parametrize("matmul", [grouped_mm, grouped_mm_padded, expert_loop])
@pytest.mark.parametrize("out_features", [8, 1024])  # the loop's oneDNN takes weights of a MiB or more
def test_every_expert_product_equals_the_plain_one_including_empty_experts(matmul, out_features):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 256, generator=gen)
    w = torch.randn(4, out_features, 256, generator=gen)  # [experts, out, in]
    offs = torch.tensor([3, 3, 9, 10], dtype=torch.int32)  # expert 1 gets no rows
    expected = torch.cat([x[:3] @ w[0].T, x[3:9] @ w[2].T, x[9:] @ w[3].T])
    torch.testing.assert_close(matmul(x, w, offs), expected, rtol=1e-5, atol=1e-4)  # sums of 256 terms


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
    engine = Engine(
        get_preset("tiny"), SchedulerConfig(**sched), device="cpu", seed=3, recorder=recorder or ListRecorder()
    )
    sinks = {}
    tick = 0
    while len(sinks) < len(submissions) or engine.scheduler.running or engine.scheduler.waiting:
        for i, (at, prompt) in enumerate(submissions):
            if at == tick:
                sinks[i] = Tokens()
                engine.submit(Request(i, prompt, max_new, sinks[i]))
        engine.step()
        tick += 1
    assert all(s.finishes == [("finished", "length")] for s in sinks.values())
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
    tight = _decode([(0, p) for p in prompts], max_new=20, recorder=recorder, kv_capacity_tokens=96, kv_block_size=8)
    assert any(isinstance(e, RequestEvent) and e.phase == "preempt" for e in recorder.events)
    assert tight == roomy


@pytest.mark.parametrize("grouping", ["ragged", "same-length"])
def test_make_batch_matches_a_sequence_at_a_time_reference(grouping):
    """The batch is built a column at a time; here it is rebuilt one sequence at a time, plainly."""
    alloc = BlockAllocator(4096, block_size=4)
    rng = np.random.default_rng(5)
    # (cached tokens, this tick's tokens): decodes, whole prompts, continued prompts, two alike
    spec = [(0, 7), (9, 1), (3, 5), (21, 1), (9, 3), (0, 1), (40, 1), (3, 5)]
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

    first_row = np.cumsum([0] + [len(c.tokens) for c in chunks])
    seq_of_row = np.repeat(np.arange(len(chunks)), [len(c.tokens) for c in chunks])
    kv_len = np.array([c.start + len(c.tokens) for c in chunks])
    group = attention_groups(kv_len, grouping)
    rows_seen, calls_of_group = [], {}
    for call in batch.attention:
        rows = call.rows.tolist() if call.rows is not None else list(range(len(seq_of_row)))
        members = list(dict.fromkeys(seq_of_row[rows].tolist()))
        assert rows == [r for i in members for r in range(first_row[i], first_row[i + 1])]  # whole, in order
        rows_seen += rows
        assert len({int(group[i]) for i in members}) == 1  # a call never spans attention groups
        calls_of_group.setdefault(int(group[members[0]]), []).append(call)
        assert all(len(chunks[i].tokens) == call.q for i in members)
        assert call.kv_len.tolist() == kv_len[members].tolist()
        same = len(set(kv_len[members])) == 1
        assert call.kv == (int(kv_len[members[0]]) if same else None)
        if call.q > 1:
            assert same  # prefill chunks share a call only when their shape is the same
        for b, i in enumerate(members):
            used = -(-kv_len[i] // 4)
            assert call.block_table[b, :used].tolist() == chunks[i].blocks[:used]
            assert (call.block_table[b, used:] == 0).all()
    assert sorted(rows_seen) == list(range(len(seq_of_row)))
    for g, calls in calls_of_group.items():  # one call for a group's decodes, one per prefill shape
        members = np.flatnonzero(group == g)
        shapes = {(len(chunks[i].tokens), kv_len[i] if len(chunks[i].tokens) > 1 else 0) for i in members}
        assert len(calls) == len(shapes)


MIXED = [(0, 7), (9, 1), (3, 5), (21, 1), (9, 3), (0, 1), (40, 1), (3, 5), (21, 1)]


@pytest.mark.parametrize(
    "spec",
    [MIXED, [(0, 9)], [(0, 6)] * 3, [(5, 4)] * 2, [(17, 1), (17, 1)]],
    ids=["mixed", "one-prompt", "prompts-alike", "continued-alike", "decodes-alike"],
)
@pytest.mark.parametrize("grouping", ["ragged", "same-length"])
def test_attention_over_blocks_equals_attention_over_each_sequence_alone(grouping, spec):
    """Every kind of call (decodes of mixed lengths, whole prompts, continued prompts; with and without
    a mask; the whole batch in one call or not) against plain causal attention over each sequence's keys."""
    cfg = get_preset("tiny")
    model = Transformer(cfg, CPU, torch.float32, seed=2)
    kv = KVCache(cfg, 1024, CPU, torch.float32, block_size=4)
    gen = torch.Generator().manual_seed(0)
    chunks = []
    for i, (start, n) in enumerate(spec):
        kv.allocator.grow(i, start + n)
        chunks.append(SeqChunk([0] * n, start, kv.allocator.blocks(i, start + n), 4, True))
    attention = model.layers[0].attention
    layer_k, layer_v = kv.k[0], kv.v[0]
    layer_k.copy_(torch.randn(layer_k.shape, generator=gen))  # whatever the cache held before
    layer_v.copy_(torch.randn(layer_v.shape, generator=gen))
    batch = make_batch(chunks, CPU, grouping)
    T = batch.tokens.shape[0]
    x = torch.randn(T, cfg.hidden, generator=gen)
    cos, sin = model.rope_cos.index_select(0, batch.positions), model.rope_sin.index_select(0, batch.positions)
    with torch.inference_mode():
        got = attention(x, batch, cos, sin, layer_k, layer_v)
        H, KVH, D = cfg.heads, cfg.kv_heads, cfg.head_dim
        q = apply_rope(linear(x, attention.wqkv).view(T, -1, D)[:, :H], cos, sin)
        row = 0
        expected = []
        for c in chunks:
            n, kv_len = len(c.tokens), c.start + len(c.tokens)
            slots = [c.blocks[p // 4] * 4 + p % 4 for p in range(kv_len)]
            keys = layer_k[slots].repeat_interleave(H // KVH, dim=1).transpose(0, 1)  # [H, kv, D]
            values = layer_v[slots].repeat_interleave(H // KVH, dim=1).transpose(0, 1)
            scores = q[row : row + n].transpose(0, 1) @ keys.transpose(1, 2) / D**0.5  # [H, n, kv]
            visible = torch.arange(kv_len)[None, :] <= (c.start + torch.arange(n))[:, None]
            probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
            expected.append((probs @ values).transpose(0, 1).reshape(n, H * D))
            row += n
        torch.testing.assert_close(got, torch.cat(expected) @ attention.wo.T, rtol=1e-5, atol=1e-5)
