"""Attention over the paged KV cache, three ways, on ticks of the shapes that matter (issue 13, item 2).

    .venv/bin/python -m bench.attention [--device cpu] [--reps 5]      # from the repository root

One layer of grouped-query attention of ds2-lite's widths, as the preset attended before it took
DeepSeek's latent attention (16 query heads, 2 K/V heads of 128, float32 on the CPU) over:
  - decode: 64 sequences decoding one token each, contexts spread over 1-4096;
  - mixed: 63 of them at about 4096 keys decoding, and one prompt chunk of 512 tokens (its sequence
    at 1024 keys): the case where padding every query to the longest hurts most;
  - prefill: 4 whole prompts of 512.
The ways:
  - "padded mask" is how the engine attended before: every sequence's queries padded to the tick's
    longest, every key slot gathered, and a [seqs, 1, q, keys] boolean mask built on the host,
    copied, and given to SDPA with enable_gqa (which rules out its fused kernels on CUDA);
  - "block calls" is the engine's (engine/parts.py): a call for the decodes, one per prefill shape, keys gathered
    by cache block, which keys a query sees worked out on the device (engine/batch.py);
  - "flex (eager)" is FlexAttention with a block mask over the same block tables: on the CPU without
    torch.compile it runs its reference implementation (every score materialised, so it is left out
    where they would pass 2 GiB), which shows the cost of that path, not of a compiled kernel.
"host bytes" is what the host builds and copies for the call beyond q/k/v; "ms" the median time of
host preparation plus attention.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from engine.batch import KVSlots, SeqChunk, make_batch
from engine.config import get_preset
from engine.kv_cache import KVCache
from engine.model import Attention
from engine.parts import paged_attention

BLOCK = 16
GQA_OVERRIDES = {"layers": 1, "kv_heads": 2, "head_dim": 128, "kv_lora_rank": 0}  # ds2-lite as it was
_FLEX_MAX_SCORES = 2 << 30  # eager FlexAttention materialises every score: past this, it is left out


def ticks(rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """(cached keys, this tick's tokens) of every sequence of each tick."""
    return {
        "decode": [(int(c), 1) for c in rng.integers(0, 4096, 64)],
        "mixed": [(int(c), 1) for c in rng.integers(4000, 4095, 63)] + [(512, 512)],
        "prefill": [(0, 512)] * 4,
    }


def chunks_of(kv: KVCache, spec: list[tuple[int, int]]) -> list[SeqChunk]:
    alloc = kv.allocator
    out = []
    for i, (start, n) in enumerate(spec):
        alloc.grow(i, start + n)
        out.append(SeqChunk([0] * n, start, alloc.blocks(i, start + n), BLOCK, True))
    return out


def padded_mask(
    q: Tensor, chunks: list[SeqChunk], k_cache: Tensor, v_cache: Tensor, device: torch.device, heads: int
) -> tuple[Tensor, int]:
    """The engine's attention before issue 13, for one ragged group (all sequences), as it was."""
    n_q = np.array([len(c.tokens) for c in chunks])
    start = np.array([c.start for c in chunks])
    kv_len, q_max = start + n_q, int(n_q.max())
    kv_max = int(kv_len.max())
    key = np.arange(kv_max)
    slots = KVSlots(chunks)(np.arange(len(chunks))[:, None], np.minimum(key[None, :], kv_len[:, None] - 1))
    q_pos = start[:, None] + np.arange(q_max)[None, :]
    mask = (key[None, None, :] <= q_pos[:, :, None]) & (key[None, None, :] < kv_len[:, None, None])
    rows = np.concatenate([np.arange(n) + b * q_max for b, n in enumerate(n_q)])
    flat_rows = torch.from_numpy(rows).to(device)
    mask_t, slots_t = torch.from_numpy(mask[:, None]).to(device), torch.from_numpy(slots).to(device)
    seqs, d = len(chunks), q.shape[-1]
    qp = q.new_zeros(seqs * q_max, heads, d).index_copy_(0, flat_rows, q)
    kv_heads = k_cache.shape[1]
    kg = k_cache.index_select(0, slots_t.view(-1)).view(seqs, kv_max, kv_heads, d).transpose(1, 2)
    vg = v_cache.index_select(0, slots_t.view(-1)).view(seqs, kv_max, kv_heads, d).transpose(1, 2)
    o = F.scaled_dot_product_attention(
        qp.view(seqs, q_max, heads, d).transpose(1, 2), kg, vg, attn_mask=mask_t, enable_gqa=True
    )
    return o.transpose(1, 2).reshape(-1, heads, d).index_select(0, flat_rows), mask.nbytes + slots.nbytes + rows.nbytes


def block_calls(
    q: Tensor, chunks: list[SeqChunk], k_cache: Tensor, v_cache: Tensor, device: torch.device
) -> tuple[Tensor, int]:
    batch = make_batch(chunks, device)
    kb, vb = k_cache.view(-1, BLOCK, *k_cache.shape[1:]), v_cache.view(-1, BLOCK, *v_cache.shape[1:])
    out = paged_attention(q, batch.attention, kb, vb)
    sent = (
        sum(
            int(c.block_table.numel() + c.kv_len.numel() + (0 if c.rows is None else c.rows.numel()))
            for c in batch.attention
        )
        * 8
    )
    return out, sent


def flex(
    q: Tensor, chunks: list[SeqChunk], k_cache: Tensor, v_cache: Tensor, device: torch.device, heads: int
) -> tuple[Tensor, int]:
    """Every query against every sequence's keys laid end to end, a block mask keeping each to its own."""
    n_q = np.array([len(c.tokens) for c in chunks])
    kv_len = np.array([c.start for c in chunks]) + n_q
    slots = np.concatenate(
        [[c.blocks[p // BLOCK] * BLOCK + p % BLOCK for p in range(kv)] for c, kv in zip(chunks, kv_len)]
    )
    seq_q = torch.from_numpy(np.repeat(np.arange(len(chunks)), n_q)).to(device)
    last_q = torch.from_numpy(np.concatenate([kv - n + np.arange(n) for kv, n in zip(kv_len, n_q)])).to(device)
    seq_k = torch.from_numpy(np.repeat(np.arange(len(chunks)), kv_len)).to(device)
    pos_k = torch.from_numpy(np.concatenate([np.arange(kv) for kv in kv_len])).to(device)
    slots_t = torch.from_numpy(slots).to(device)

    def visible(b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
        return (seq_q[qi] == seq_k[ki]) & (pos_k[ki] <= last_q[qi])

    mask = create_block_mask(visible, 1, None, q.shape[0], len(slots), device=str(device))
    k = k_cache.index_select(0, slots_t).transpose(0, 1)[None]
    v = v_cache.index_select(0, slots_t).transpose(0, 1)[None]
    o = flex_attention(q.transpose(0, 1)[None], k, v, block_mask=mask, enable_gqa=True)
    assert isinstance(o, Tensor)
    sent = slots.nbytes + 8 * (seq_q.numel() + last_q.numel() + seq_k.numel() + pos_k.numel())
    return o[0].transpose(0, 1), sent


def compare(
    name: str, spec: list[tuple[int, int]], attention: Attention, gen: torch.Generator, reps: int, with_flex: bool
) -> None:
    """One table row per way for this tick, each checked against the padded mask's output."""
    device, dtype, heads, head_dim = attention.wo.device, attention.wo.dtype, attention.heads, attention.head_dim
    kv = KVCache(
        get_preset("ds2-lite", **GQA_OVERRIDES), sum(s + n for s, n in spec) + 64 * BLOCK, device, dtype, BLOCK
    )
    kv.k.normal_(generator=gen)
    kv.v.normal_(generator=gen)
    chunks = chunks_of(kv, spec)
    q = torch.randn(sum(n for _, n in spec), heads, head_dim, generator=gen, device=device, dtype=dtype)
    k, v = kv.k[0], kv.v[0]
    ways: dict[str, Callable[[], tuple[Tensor, int]]] = {
        "padded mask": functools.partial(padded_mask, q, chunks, k, v, device, heads),
        "block calls": functools.partial(block_calls, q, chunks, k, v, device),
    }
    scores = heads * q.shape[0] * sum(s + n for s, n in spec) * 4  # what eager flex materialises
    if with_flex and scores <= _FLEX_MAX_SCORES:
        ways["flex (eager)"] = functools.partial(flex, q, chunks, k, v, device, heads)
    elif with_flex:
        print(f"{name:>8} {'flex (eager)':>14}  left out: its scores would take {scores / 1e9:.1f} GB")
    reference, _ = ways["padded mask"]()
    for way, fn in ways.items():
        out, sent = fn()
        diff = float((out.float() - reference.float()).abs().max())
        print(f"{name:>8} {way:>14} {sent:>12,} {median_ms(fn, reps):>9.2f} {diff:>11.1e}")


def median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-flex", action="store_true", help="leave FlexAttention out (its eager path is slow)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = get_preset("ds2-lite", **GQA_OVERRIDES)
    dtype = cfg.torch_dtype(device)
    gen = torch.Generator(device=device).manual_seed(0)
    attention = Attention(cfg, gen, device, dtype)
    print(
        f"one grouped-query attention layer of ds2-lite's widths, {dtype}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'tick':>8} {'way':>14} {'host bytes':>12} {'ms':>9} {'max |diff|':>11}")
    with torch.inference_mode():
        for name, spec in ticks(np.random.default_rng(0)).items():
            compare(name, spec, attention, gen, args.reps, not args.no_flex)


if __name__ == "__main__":
    main()
