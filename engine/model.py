"""A DeepSeek-style Mixture-of-Experts decoder, readable top to bottom.

One forward pass takes a whole tick's batch, flattened: prefill chunks of new sequences and one decode
token of each running sequence, all of different lengths. Every token's K/V goes into the paged cache
(kv_cache.py) first; attention then reads each sequence's keys back through its slots.

Weights are random from a seed, created directly on the target device and dtype: the point is the
memory traffic and the expert dispatch of a real MoE, not what it says.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import ModelConfig


# ---------------------------------------------------------------------------------------------------
# The batch as the model sees it
# ---------------------------------------------------------------------------------------------------

@dataclass
class AttnGroup:
    """Sequences whose attention is one SDPA call, padded to the group's longest query and key run."""

    token_index: Tensor  # [n] rows of the flat batch that are this group's queries
    query_pad_index: Tensor  # [n] where each query goes in the padded [seqs * q_max] block
    seqs: int
    q_max: int
    kv_slots: Tensor  # [seqs, kv_max] cache slots of each sequence's keys, 0 where padding
    mask: Tensor  # [seqs, 1, q_max, kv_max] True where a query may attend to a key
    # the whole batch, one query per sequence, rows in order: the indices above are the identity
    identity: bool = False


@dataclass
class ForwardBatch:
    tokens: Tensor  # [T] token ids
    positions: Tensor  # [T] position of each token in its sequence
    slots: Tensor  # [T] cache slot each token's K/V is written to
    groups: list[AttnGroup]
    sample_index: Tensor  # [S] rows whose next-token logits are wanted
    # [T] bool: rows whose expert choices count in the tick's load (False for padding); None = all
    counted: Tensor | None = None


@dataclass
class SeqChunk:
    """One sequence's part of a tick: tokens [start, start + len(tokens)) of it."""

    tokens: list[int]
    start: int
    # the sequence's KV blocks, through this chunk: position p's K/V lives in slot
    # blocks[p // block_size] * block_size + p % block_size (kv_cache.py)
    blocks: list[int]
    block_size: int
    sample: bool  # the chunk ends the known tokens, so its last row predicts the next token


def make_batch(chunks: list[SeqChunk], device: torch.device, grouping: str = "ragged") -> ForwardBatch:
    """Flatten a tick's sequence chunks into model inputs (built on the host, copied once).

    `ragged` puts every sequence into one attention call, padded to the longest; `same-length` makes
    one call per distinct length, so no keys are padded (the article's grouping of sequences).
    Built a column at a time, not a sequence at a time: a tick may hold hundreds of sequences.
    """
    n = len(chunks)
    lengths = np.fromiter((len(c.tokens) for c in chunks), np.int64, n)
    starts = np.fromiter((c.start for c in chunks), np.int64, n)
    row_start = np.cumsum(lengths) - lengths
    tokens = np.fromiter(chain.from_iterable(c.tokens for c in chunks), np.int64, int(lengths.sum()))
    positions = concat_ranges(starts, lengths)
    slot_of = KVSlots(chunks)
    slots = slot_of(np.repeat(np.arange(n), lengths), positions)
    sample = (row_start + lengths - 1)[np.fromiter((c.sample for c in chunks), bool, n)]

    group = attention_groups(starts + lengths, grouping)
    members = [np.flatnonzero(group == g) for g in range(group.max() + 1)]
    groups = [_attn_group(m, starts, lengths, row_start, slot_of, device) for m in members]
    return ForwardBatch(_put(tokens, device), _put(positions, device), _put(slots, device), groups,
                        _put(sample, device))


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """starts[i], starts[i] + 1, ..., starts[i] + lengths[i] - 1, for every i, concatenated."""
    return np.arange(int(lengths.sum())) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)


class KVSlots:
    """The cache slot of any position of any of a tick's sequences, from their block tables."""

    def __init__(self, chunks: list[SeqChunk]) -> None:
        self.block_size = chunks[0].block_size
        self.n_blocks = np.fromiter((len(c.blocks) for c in chunks), np.int64, len(chunks))
        self.blocks = np.fromiter(chain.from_iterable(c.blocks for c in chunks), np.int64, int(self.n_blocks.sum()))
        self.first = np.cumsum(self.n_blocks) - self.n_blocks  # each sequence's first block in `blocks`

    def __call__(self, seq: np.ndarray, position: np.ndarray) -> np.ndarray:
        bs = self.block_size
        return self.blocks[self.first[seq] + position // bs] * bs + position % bs


def attention_groups(kv_len: np.ndarray, grouping: str) -> np.ndarray:
    """The attention call (0, 1, ...) of each sequence, given their key lengths (cached prefix + this
    tick's chunk): all in one with `ragged`, one per distinct length, shortest first, with `same-length`.
    The trace records these groups, so this is the one place that decides them."""
    if grouping == "ragged":
        return np.zeros(len(kv_len), dtype=np.int64)
    return np.unique(kv_len, return_inverse=True)[1].reshape(-1)


def _put(a: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(a).to(device, non_blocking=True)


def _attn_group(members: np.ndarray, starts: np.ndarray, lengths: np.ndarray, row_start: np.ndarray,
                slot_of: KVSlots, device: torch.device) -> AttnGroup:
    q_len, start = lengths[members], starts[members]
    kv_len = start + q_len
    q_max, kv_max = int(q_len.max()), int(kv_len.max())

    token_index = concat_ranges(row_start[members], q_len)
    query_pad_index = concat_ranges(np.arange(len(members)) * q_max, q_len)
    key = np.arange(kv_max)
    # slot 0 where a sequence has no key: those are masked out below
    in_range = key[None, :] < kv_len[:, None]
    kv_slots = np.where(in_range, slot_of(members[:, None], np.minimum(key[None, :], kv_len[:, None] - 1)), 0)
    # causal within the sequence, nothing past its end; padded query rows see the real keys, so no
    # row is all-masked (that would make SDPA return NaN) and their output is simply dropped
    q_pos = start[:, None] + np.arange(q_max)[None, :]
    mask = (key[None, None, :] <= q_pos[:, :, None]) & in_range[:, None, :]
    identity = q_max == 1 and len(members) == len(starts) and bool((members == np.arange(len(starts))).all())
    return AttnGroup(_put(token_index, device), _put(query_pad_index, device), len(members), q_max,
                     _put(kv_slots, device), _put(mask[:, None], device), identity)


# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------

def _weight(gen: torch.Generator, device: torch.device, dtype: torch.dtype, *shape: int, fan_in: int) -> nn.Parameter:
    w = torch.randn(shape, generator=gen, device=device, dtype=dtype) * fan_in**-0.5
    return nn.Parameter(w, requires_grad=False)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(cfg: ModelConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin for every position, [max_seq_len, head_dim], in float32."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim)
    freqs = torch.outer(torch.arange(cfg.max_seq_len, device=device).float(), inv_freq)
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [T, heads, head_dim]; cos, sin: [T, head_dim]. The rotate-half convention."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention over the paged KV cache."""

    def __init__(self, cfg: ModelConfig, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        qkv_width = (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim
        self.wqkv = _weight(gen, device, dtype, cfg.hidden, qkv_width, fan_in=cfg.hidden)
        self.wo = _weight(gen, device, dtype, cfg.heads * cfg.head_dim, cfg.hidden, fan_in=cfg.heads * cfg.head_dim)

    def forward(self, x: Tensor, batch: ForwardBatch, cos: Tensor, sin: Tensor, k_cache: Tensor,
                v_cache: Tensor) -> Tensor:
        T, H, D = x.shape[0], self.heads, self.head_dim
        qkv = (x @ self.wqkv).view(T, H + 2 * self.kv_heads, D)
        q, k = apply_rope(qkv[:, :H + self.kv_heads], cos, sin).split([H, self.kv_heads], dim=1)
        k_cache.index_copy_(0, batch.slots, k)
        v_cache.index_copy_(0, batch.slots, qkv[:, H + self.kv_heads:])

        if len(batch.groups) == 1 and batch.groups[0].identity:  # a decode tick: no padding to undo
            return self._attend(q.view(T, 1, H, D), batch.groups[0], k_cache, v_cache).view(T, -1) @ self.wo
        # index_select, not tensor[index]: advanced indexing takes a slow path on the CPU (~100x here)
        out = x.new_empty(T, H, D)
        for g in batch.groups:
            qp = q.new_zeros(g.seqs * g.q_max, H, D)
            qp.index_copy_(0, g.query_pad_index, q.index_select(0, g.token_index))
            o = self._attend(qp.view(g.seqs, g.q_max, H, D), g, k_cache, v_cache)
            out.index_copy_(0, g.token_index, o.index_select(0, g.query_pad_index))
        return out.view(T, -1) @ self.wo

    def _attend(self, qp: Tensor, g: AttnGroup, k_cache: Tensor, v_cache: Tensor) -> Tensor:
        """One SDPA call: queries [seqs, q_max, heads, D] against each sequence's keys; the output
        flattened to [seqs * q_max, heads, D] in the same padded order."""
        kv_shape = (g.seqs, -1, self.kv_heads, self.head_dim)
        kg = k_cache.index_select(0, g.kv_slots.view(-1)).view(kv_shape).transpose(1, 2)
        vg = v_cache.index_select(0, g.kv_slots.view(-1)).view(kv_shape).transpose(1, 2)
        o = F.scaled_dot_product_attention(qp.transpose(1, 2), kg, vg, attn_mask=g.mask, enable_gqa=True)
        return o.transpose(1, 2).reshape(-1, self.heads, self.head_dim)


def grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """Rows offs[e-1]:offs[e] of x times w[e], for every expert e, in one kernel.

    x: [N, K] sorted by expert; w: [E, K, M]; offs: int32 [E] cumulative row counts (offs[-1] == N).
    """
    return torch._grouped_mm(x, w, offs=offs)


def grouped_mm_padded(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """The same product as `grouped_mm`, for builds and devices without it: every expert's rows are
    scattered into an [E, N, K] block (N rows is the most any expert can get, and needs no host sync to
    know) and multiplied with one batched matmul. Correct, but E times the FLOPs."""
    n, experts = x.shape[0], w.shape[0]
    expert_of_row = torch.searchsorted(offs, torch.arange(n, device=x.device, dtype=offs.dtype), right=True)
    first_row = offs - torch.diff(offs, prepend=offs.new_zeros(1))
    row_in_expert = torch.arange(n, device=x.device) - first_row[expert_of_row]
    padded = x.new_zeros(experts, n, x.shape[1])
    padded[expert_of_row, row_in_expert] = x
    return torch.bmm(padded, w)[expert_of_row, row_in_expert]


def _grouped_mm_works(device: torch.device, dtype: torch.dtype, k: int, m: int) -> bool:
    """Whether this build and device run `torch._grouped_mm` for these shapes (support varies by
    build, GPU generation, dtype and alignment)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x = torch.zeros(2, k, device=device, dtype=dtype)
        w = torch.zeros(2, k, m, device=device, dtype=dtype)
        grouped_mm(x, w, torch.tensor([1, 2], device=device, dtype=torch.int32))
        return True
    except (RuntimeError, NotImplementedError):
        return False


class MoE(nn.Module):
    """Router -> top-k of E routed SwiGLU experts, plus shared experts every token goes through.

    Routing is DeepSeek-V3's: sigmoid scores, top-k chosen on score + a per-expert bias, the chosen
    scores renormalised as weights. Our bias is `router_skew`'s popularity: expert of popularity rank r
    gets -skew * log(1 + r), a Zipf-like head of favourites, different in every layer.
    """

    def __init__(self, cfg: ModelConfig, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        h, i, e = cfg.hidden, cfg.moe_intermediate, cfg.routed_experts
        self.top_k = cfg.top_k
        self.router = _weight(gen, device, torch.float32, h, e, fan_in=h)
        rank = torch.randperm(e, generator=gen, device=device)
        self.register_buffer("popularity_bias", -cfg.router_skew * torch.log1p(rank.float()))
        # stacked so that one grouped GEMM serves all experts: [gate | up] and down
        self.w13 = _weight(gen, device, dtype, e, h, 2 * i, fan_in=h)
        self.w2 = _weight(gen, device, dtype, e, i, h, fan_in=i)
        shared = i * cfg.shared_experts
        self.shared_w13 = _weight(gen, device, dtype, h, 2 * shared, fan_in=h) if shared else None
        self.shared_w2 = _weight(gen, device, dtype, shared, h, fan_in=shared) if shared else None
        works = _grouped_mm_works(device, dtype, h, 2 * i) and _grouped_mm_works(device, dtype, i, h)
        self.matmul = grouped_mm if works else grouped_mm_padded

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Chosen experts [T, k] and their weights [T, k] (float32)."""
        scores = torch.sigmoid(x.float() @ self.router)
        chosen = torch.topk(scores + self.popularity_bias, self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        return chosen, weights / weights.sum(-1, keepdim=True)

    def forward(self, x: Tensor, counted: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Output [T, H] and tokens per expert [E] (int32, on the device), of the rows `counted`
        ([T] bool) when given."""
        chosen, weights = self.route(x)
        flat = chosen.flatten()
        # scatter_add, not bincount: bincount reads the max back to the host on CUDA
        counts = torch.zeros(self.w13.shape[0], device=x.device, dtype=torch.int32)
        counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        load = counts
        if counted is not None:  # every row is dispatched; only the counted ones are reported
            per_choice = counted[:, None].expand(-1, self.top_k).flatten().int()
            load = torch.zeros_like(counts).scatter_add_(0, flat, per_choice)

        order = flat.argsort(stable=True)  # (token, slot) pairs sorted by expert
        offs = counts.cumsum(0, dtype=torch.int32)
        gate_up = self.matmul(x.index_select(0, order // self.top_k), self.w13, offs)
        gate, up = gate_up.chunk(2, dim=-1)
        down = self.matmul(F.silu(gate) * up, self.w2, offs)
        down = down * weights.flatten()[order, None].to(down.dtype)
        unsorted = torch.empty_like(down).index_copy_(0, order, down)
        out = unsorted.view(x.shape[0], self.top_k, -1).sum(dim=1)  # a sum, not atomics: deterministic

        if self.shared_w13 is not None:
            gate, up = (x @ self.shared_w13).chunk(2, dim=-1)
            out = out + (F.silu(gate) * up) @ self.shared_w2
        return out, load


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden, cfg.norm_eps, device, dtype)
        self.attention = Attention(cfg, gen, device, dtype)
        self.moe_norm = RMSNorm(cfg.hidden, cfg.norm_eps, device, dtype)
        self.moe = MoE(cfg, gen, device, dtype)

    def forward(self, x: Tensor, batch: ForwardBatch, cos: Tensor, sin: Tensor, k_cache: Tensor,
                v_cache: Tensor) -> tuple[Tensor, Tensor]:
        h = x + self.attention(self.attention_norm(x), batch, cos, sin, k_cache, v_cache)
        moe_out, counts = self.moe(self.moe_norm(h), batch.counted)
        return h + moe_out, counts


class _Elsewhere(nn.Module):
    """The place of a layer that another pipeline stage (another process) holds."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, *args: object) -> None:
        raise RuntimeError(f"layer {self.index} is held by another pipeline stage")


class Transformer(nn.Module):
    """The whole decoder, or with `owned` only those layers (a pipeline stage in its own process): the
    embedding only on the stage holding layer 0, the LM head only on the one holding the last."""

    def __init__(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 owned: range | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        owned = range(cfg.layers) if owned is None else owned
        gen = torch.Generator(device=device).manual_seed(seed)
        # Every weight is drawn, owned or not, so that the generator reaches each layer in the same
        # state on every stage; one not owned is dropped at once (peak memory: one extra layer).
        embed = torch.randn(cfg.vocab_size, cfg.hidden, generator=gen, device=device, dtype=dtype)
        self.embed = nn.Parameter(embed, requires_grad=False) if owned.start == 0 else None
        blocks: list[nn.Module] = []
        for i in range(cfg.layers):
            block = Block(cfg, gen, device, dtype)
            blocks.append(block if i in owned else _Elsewhere(i))
            del block
        self.layers = nn.ModuleList(blocks)
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps, device, dtype)
        lm_head = _weight(gen, device, dtype, cfg.hidden, cfg.vocab_size, fan_in=cfg.hidden)
        self.lm_head = lm_head if owned.stop == cfg.layers else None
        cos, sin = rope_tables(cfg, device)
        self.register_buffer("rope_cos", cos)
        self.register_buffer("rope_sin", sin)

    # The forward pass in three parts, so that a stage executor can run the layers in slices.

    def embed_tokens(self, batch: ForwardBatch) -> Tensor:
        return self.embed.index_select(0, batch.tokens)

    def run_layers(self, x: Tensor, batch: ForwardBatch, kv_k: Tensor, kv_v: Tensor, counts: Tensor,
                   layers: range) -> Tensor:
        """Layers `layers` over x; kv_k and kv_v hold the caches of exactly those layers, in order (a
        stage's slice of the whole cache, or a stage's own cache). Each layer's expert load is added
        to counts[layer]."""
        cos, sin = self.rope_cos.index_select(0, batch.positions), self.rope_sin.index_select(0, batch.positions)
        for j, i in enumerate(layers):
            x, layer_counts = self.layers[i](x, batch, cos, sin, kv_k[j], kv_v[j])
            counts[i] += layer_counts
        return x

    def logits(self, x: Tensor, batch: ForwardBatch) -> Tensor:
        """Next-token logits [S, vocab] of the sampled rows only: the rest never reach the LM head."""
        return self.norm(x.index_select(0, batch.sample_index)) @ self.lm_head

    def forward(self, batch: ForwardBatch, kv_k: Tensor, kv_v: Tensor) -> tuple[Tensor, Tensor]:
        """Logits [S, vocab] and expert load [layers, experts] (int32) of one tick."""
        counts = torch.zeros(self.cfg.layers, self.cfg.routed_experts, device=kv_k.device, dtype=torch.int32)
        x = self.run_layers(self.embed_tokens(batch), batch, kv_k, kv_v, counts, range(self.cfg.layers))
        return self.logits(x, batch), counts
