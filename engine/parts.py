"""What both attentions (engine/model.py's grouped-query, engine/mla.py's latent) are built of: weights
drawn from the seed, RMSNorm, and attention over the paged KV cache by block (engine/batch.py's calls)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.batch import AttnCall


def draw_weight(
    gen: torch.Generator | None, device: torch.device, dtype: torch.dtype, *shape: int, fan_in: int
) -> nn.Parameter:
    """A weight [..., out, in], drawn as [..., in, out]: the order the model's weights have always been
    drawn in, so that a seed keeps giving the same model. Without a generator: empty, to be filled."""
    if gen is None:
        return nn.Parameter(torch.empty(*shape[:-2], shape[-1], shape[-2], device=device, dtype=dtype), False)
    w = torch.randn(shape, generator=gen, device=device, dtype=dtype).mul_(fan_in**-0.5)
    return nn.Parameter(w.transpose(-2, -1).contiguous(), requires_grad=False)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction for a context `factor` times the original (1 without extension)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def paged_attention(
    q: Tensor,
    calls: list[AttnCall],
    k_blocks: Tensor,
    v_blocks: Tensor,
    scale: float | None = None,
    values_in_keys: bool = False,
) -> Tensor:
    """Queries [T, heads, Dk] (every row of the batch) against the cache viewed as whole blocks, keys
    [blocks, block_size, kv_heads, Dk] and values [blocks, block_size, kv_heads, Dv]: [T, heads, Dv].
    `values_in_keys`: v_blocks is a view of the keys' first Dv channels (MLA's latent), so the values
    are not gathered again but taken from the gathered keys."""
    if len(calls) == 1 and calls[0].rows is None:  # a decode tick, or prompts all alike: rows in order
        return attend(q, calls[0], k_blocks, v_blocks, scale, values_in_keys)
    # index_select, not tensor[index]: advanced indexing takes a slow path on the CPU (~100x here)
    out = q.new_empty(q.shape[0], q.shape[1], v_blocks.shape[-1])
    for call in calls:
        assert call.rows is not None  # only a call of the whole batch has none, and it is alone
        rows = q.index_select(0, call.rows)
        out.index_copy_(0, call.rows, attend(rows, call, k_blocks, v_blocks, scale, values_in_keys))
    return out


def attend(
    q: Tensor,
    call: AttnCall,
    k_blocks: Tensor,
    v_blocks: Tensor,
    scale: float | None = None,
    values_in_keys: bool = False,
) -> Tensor:
    """One SDPA call: queries [seqs * q, heads, Dk], sequence by sequence, against each sequence's keys
    gathered by block; the output [seqs * q, heads, Dv] in the same order."""
    seqs, n_q, H, KVH, D = call.block_table.shape[0], call.q, q.shape[1], k_blocks.shape[2], q.shape[2]
    table = call.block_table.flatten()
    keys = k_blocks.index_select(0, table).view(seqs, -1, KVH, D)
    if values_in_keys:
        values = keys[..., : v_blocks.shape[-1]]
    else:
        values = v_blocks.index_select(0, table).view(seqs, -1, KVH, v_blocks.shape[-1])
    if call.kv is not None:
        keys, values = keys[:, : call.kv], values[:, : call.kv]
    keys, values = keys.transpose(1, 2), values.transpose(1, 2)
    queries = q.view(seqs, n_q, H, D).transpose(1, 2)
    if call.kv is not None and n_q == 1 and KVH == 1:
        # decodes that see every key of one K/V head (MLA's latent): every head a query row of it, so
        # that no kernel expands the keys to the heads (SDPA's math path would, for enable_gqa)
        o = F.scaled_dot_product_attention(queries.reshape(seqs, 1, H, D), keys, values, scale=scale).view(
            seqs, H, 1, -1
        )
    elif call.kv is not None and n_q in (1, call.kv):
        # decodes that see every key, or whole prompts (causal from key 0): no mask, fused kernels
        o = F.scaled_dot_product_attention(queries, keys, values, is_causal=n_q > 1, scale=scale, enable_gqa=True)
    else:
        # query i of a sequence of kv_len keys sees keys 0 .. kv_len - q + i (the rest is padding)
        key = torch.arange(keys.shape[2], device=q.device)
        last = call.kv_len[:, None] - n_q + torch.arange(n_q, device=q.device)
        mask = key <= last[:, :, None]  # [seqs, q, keys], made here: nothing dense leaves the host
        # SDPA has no fused kernel for a mask with enable_gqa on CUDA, so each K/V head's query heads
        # become query rows of that head instead
        g = H // KVH
        o = F.scaled_dot_product_attention(
            queries.reshape(seqs, KVH, g * n_q, D), keys, values, attn_mask=mask.repeat(1, g, 1)[:, None], scale=scale
        ).view(seqs, H, n_q, -1)
    return o.transpose(1, 2).reshape(seqs * n_q, H, -1)
