"""Multi-head latent attention, as DeepSeek-V2 and V3 define it, over the paged KV cache.

A token's keys and values, every head's, come from one `kv_lora_rank` latent (after its RMSNorm) and
one `head_dim` RoPE key that all heads share: those two, 512 + 64 = 576 values per token and layer in
DeepSeek's models, are all the cache holds (kv_cache.py: K is [latent | RoPE key], V a view of its
latent). Head h's key is [W_UK[h] latent | RoPE key] and its value W_UV[h] latent, both slices of
`wkv_b`. Rather than expanding them for every cached token, the projections are absorbed: a query's
non-RoPE part goes through W_UK[h] into latent space (q . W_UK latent = (W_UK^T q) . latent), so scores
are taken against the cache rows themselves, and the output, a mix of latents, goes through W_UV[h]
once per query. One path for every tick, prefill and decode alike.

RoPE rotates interleaved pairs (x0, x1), (x2, x3), ... when `rope_interleave`, as DeepSeek's weights
expect; the rotated halves come out de-interleaved, the same for queries and keys, which scores ignore.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.batch import ForwardBatch
from engine.config import ModelConfig
from engine.kernels import linear
from engine.parts import RMSNorm, draw_weight, paged_attention, yarn_mscale

# DeepSeek's latent norms keep transformers' default epsilon whatever the model's rms_norm_eps
_LATENT_NORM_EPS = 1e-6


class LatentAttention(nn.Module):
    """Weights as DeepSeek's checkpoints name them: wq (or wq_a, q_norm, wq_b with a query latent),
    wkv_a (the latent and the RoPE key), kv_norm, wkv_b ([heads * (nope + v), latent]) and wo."""

    def __init__(self, cfg: ModelConfig, gen: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        h, H = cfg.hidden, cfg.heads
        self.heads, self.nope, self.rope, self.latent = H, cfg.qk_nope_head_dim, cfg.head_dim, cfg.kv_lora_rank
        self.v_dim, self.interleave = cfg.v_head_dim, cfg.rope_interleave
        q_width = H * (self.nope + self.rope)
        self.wq: nn.Parameter | None = None
        self.wq_a: nn.Parameter | None = None
        self.q_norm: RMSNorm | None = None
        self.wq_b: nn.Parameter | None = None
        if cfg.q_lora_rank:
            self.wq_a = draw_weight(gen, device, dtype, h, cfg.q_lora_rank, fan_in=h)
            self.q_norm = RMSNorm(cfg.q_lora_rank, _LATENT_NORM_EPS, device, dtype)
            self.wq_b = draw_weight(gen, device, dtype, cfg.q_lora_rank, q_width, fan_in=cfg.q_lora_rank)
        else:
            self.wq = draw_weight(gen, device, dtype, h, q_width, fan_in=h)
        self.wkv_a = draw_weight(gen, device, dtype, h, self.latent + self.rope, fan_in=h)
        self.kv_norm = RMSNorm(self.latent, _LATENT_NORM_EPS, device, dtype)
        self.wkv_b = draw_weight(gen, device, dtype, self.latent, H * (self.nope + self.v_dim), fan_in=self.latent)
        self.wo = draw_weight(gen, device, dtype, H * self.v_dim, h, fan_in=H * self.v_dim)
        # the softmax scale of a (nope + rope)-wide head, with YaRN's correction squared (transformers'
        # yarn_apply_mscale): the factor cos and sin carry scales each side of the product once
        self.scale = (self.nope + self.rope) ** -0.5
        if cfg.rope_factor > 1 and cfg.rope_mscale_all_dim:
            self.scale *= yarn_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim) ** 2

    def forward(
        self, x: Tensor, batch: ForwardBatch, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor
    ) -> Tensor:
        """k_cache [slots, 1, latent + rope] and v_cache, a view of its latent, of this layer."""
        T, H, r = x.shape[0], self.heads, self.latent
        if self.wq is not None:
            q = linear(x, self.wq)
        else:
            assert self.wq_a is not None and self.q_norm is not None and self.wq_b is not None
            q = linear(self.q_norm(linear(x, self.wq_a)), self.wq_b)
        q = q.view(T, H, self.nope + self.rope)
        kv = linear(x, self.wkv_a)
        latent = self.kv_norm(kv[:, :r])
        k_rope = self._rotate(kv[:, None, r:], cos, sin)
        k_cache.index_copy_(0, batch.slots, torch.cat([latent, k_rope[:, 0]], dim=-1)[:, None])

        w_kv_b = self.wkv_b.view(H, self.nope + self.v_dim, r)
        w_uk, w_uv = w_kv_b[:, : self.nope], w_kv_b[:, self.nope :]  # [H, nope, r], [H, v, r]
        q_latent = torch.bmm(q[:, :, : self.nope].transpose(0, 1), w_uk).transpose(0, 1)  # [T, H, r]
        query = torch.cat([q_latent, self._rotate(q[:, :, self.nope :], cos, sin)], dim=-1)
        k_blocks = k_cache.view(-1, batch.block_size, 1, r + self.rope)  # the cache as whole blocks
        v_blocks = v_cache.view(-1, batch.block_size, 1, r)
        mixed = paged_attention(query, batch.attention, k_blocks, v_blocks, self.scale, values_in_keys=True)
        out = torch.bmm(mixed.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)  # [T, H, v]
        return linear(out.reshape(T, H * self.v_dim), self.wo)

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """RoPE of x [T, heads, rope]; cos, sin [T, rope], each angle twice (model.py's tables)."""
        half = x.shape[-1] // 2
        x32 = x.float()
        x1, x2 = (x32[..., 0::2], x32[..., 1::2]) if self.interleave else (x32[..., :half], x32[..., half:])
        c, s = cos[:, None, :half], sin[:, None, :half]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)
