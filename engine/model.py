"""A DeepSeek-style Mixture-of-Experts decoder, readable top to bottom: architecture only.

One forward pass takes a whole tick's batch, flattened (engine/batch.py): prefill chunks of new
sequences and one decode token of each running sequence, all of different lengths. Every token's K/V
goes into the paged cache (kv_cache.py) first; attention then reads each sequence's keys back by block.
Attention is grouped-query (below) or, with a `kv_lora_rank`, DeepSeek's multi-head latent attention
(engine/mla.py); a DeepSeek model's first `first_k_dense_replace` layers have a dense SwiGLU for a MoE.

Weights are random from a seed, created directly on the target device and dtype: the point is the
memory traffic and the expert dispatch of a real MoE, not what it says. Without a seed they are left
empty, for a checkpoint to fill (engine/checkpoint.py); the families' switches (ModelConfig: routing,
qk_norm, attention_bias, shared_gate) are off for the presets. Weights are stored [out, in], as
nn.Linear keeps them; engine/kernels.py has the products and chooses the expert one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.batch import ForwardBatch
from engine.config import ModelConfig
from engine.kernels import ExpertMatmuls, choose_expert_matmuls, linear
from engine.mla import LatentAttention
from engine.parts import RMSNorm, draw_weight, paged_attention, yarn_mscale

# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------


def rope_tables(cfg: ModelConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin for every position, [max_seq_len, head_dim], in float32; with YaRN, its frequencies
    and its attention factor (transformers' `_compute_yarn_parameters`, as DeepSeek-V2/V3 use it)."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim)
    attention_factor = 1.0
    if cfg.rope_factor > 1:
        inv_freq, attention_factor = _yarn(cfg, inv_freq)
    freqs = torch.outer(torch.arange(cfg.max_seq_len, device=device).float(), inv_freq)
    angles = torch.cat([freqs, freqs], dim=-1)
    if attention_factor == 1.0:
        return angles.cos(), angles.sin()
    return angles.cos() * attention_factor, angles.sin() * attention_factor


def _yarn(cfg: ModelConfig, inv_freq: Tensor) -> tuple[Tensor, float]:
    """Frequencies that rotate more than beta_fast times over the original context are kept, those under
    beta_slow divided by the factor, a linear ramp between; and the factor cos and sin are scaled by."""
    dim, base = cfg.head_dim, cfg.rope_theta

    def dim_of(rotations: float) -> float:
        return dim * math.log(cfg.rope_original_max / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(dim_of(cfg.rope_beta_fast)), 0)
    high = min(math.ceil(dim_of(cfg.rope_beta_slow)), dim - 1)
    ramp = ((torch.arange(dim // 2, device=inv_freq.device).float() - low) / max(high - low, 0.001)).clamp(0, 1)
    kept = 1 - ramp
    scaled = inv_freq / cfg.rope_factor * (1 - kept) + inv_freq * kept
    if cfg.rope_mscale and cfg.rope_mscale_all_dim:
        factor = yarn_mscale(cfg.rope_factor, cfg.rope_mscale) / yarn_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim)
    else:
        factor = yarn_mscale(cfg.rope_factor)
    return scaled, factor


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [T, heads, head_dim]; cos, sin: [T, head_dim]. The rotate-half convention."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention over the paged KV cache.

    Switches of the families (all off for the presets): a bias on the q, k and v projections (Qwen2),
    and RMSNorm of q and k before RoPE, over each head (`qk_norm` "head", Qwen3) or over the whole
    projection (`qk_norm` "whole", OLMoE)."""

    def __init__(self, cfg: ModelConfig, gen: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        qkv_width = (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim
        self.wqkv = draw_weight(gen, device, dtype, cfg.hidden, qkv_width, fan_in=cfg.hidden)
        self.wo = draw_weight(gen, device, dtype, cfg.heads * cfg.head_dim, cfg.hidden, fan_in=cfg.heads * cfg.head_dim)
        self.bqkv = (
            nn.Parameter(torch.zeros(qkv_width, device=device, dtype=dtype), requires_grad=False)
            if cfg.attention_bias
            else None
        )
        self.qk_norm = cfg.qk_norm
        D = cfg.head_dim
        q_width, k_width = {"none": (0, 0), "head": (D, D), "whole": (cfg.heads * D, cfg.kv_heads * D)}[cfg.qk_norm]
        self.q_norm = RMSNorm(q_width, cfg.norm_eps, device, dtype) if q_width else None
        self.k_norm = RMSNorm(k_width, cfg.norm_eps, device, dtype) if k_width else None

    def _project(self, x: Tensor) -> Tensor:
        """q, k and v of every row, [T, heads + 2 * kv_heads, head_dim], normed as the family asks."""
        T, H, KVH, D = x.shape[0], self.heads, self.kv_heads, self.head_dim
        qkv = linear(x, self.wqkv)
        if self.bqkv is not None:
            qkv = qkv + self.bqkv
        if self.q_norm is None or self.k_norm is None:
            return qkv.view(T, H + 2 * KVH, D)
        q, k, v = torch.split(qkv, [H * D, KVH * D, KVH * D], dim=-1)
        if self.qk_norm == "whole":
            q, k = self.q_norm(q), self.k_norm(k)
        else:
            q, k = self.q_norm(q.view(T, H, D)).view(T, -1), self.k_norm(k.view(T, KVH, D)).view(T, -1)
        return torch.cat([q, k, v], dim=-1).view(T, H + 2 * KVH, D)

    def forward(
        self, x: Tensor, batch: ForwardBatch, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor
    ) -> Tensor:
        T, H, D = x.shape[0], self.heads, self.head_dim
        qkv = self._project(x)
        rotated = apply_rope(qkv[:, : H + self.kv_heads], cos, sin)
        q, k = rotated[:, :H], rotated[:, H:]
        k_cache.index_copy_(0, batch.slots, k)
        v_cache.index_copy_(0, batch.slots, qkv[:, H + self.kv_heads :])
        k_blocks = k_cache.view(-1, batch.block_size, self.kv_heads, D)  # the cache as whole blocks
        v_blocks = v_cache.view(-1, batch.block_size, self.kv_heads, D)
        return linear(paged_attention(q, batch.attention, k_blocks, v_blocks).reshape(T, -1), self.wo)


class MoE(nn.Module):
    """Router -> top-k of E routed SwiGLU experts, plus shared experts every token goes through.

    Routing (`routing`) is DeepSeek-V3's by default: sigmoid scores, top-k chosen on score + a
    per-expert bias, the chosen scores renormalised as weights. "softmax" (DeepSeek-V2, Qwen, OLMoE,
    Mixtral) takes a softmax over all experts instead, its chosen probabilities renormalised only with
    `norm_topk_prob` (Mixtral's "softmax over the chosen" is exactly that). The bias is `router_skew`'s
    popularity: expert of popularity rank r gets -skew * log(1 + r), a Zipf-like head of favourites,
    different in every layer; a DeepSeek-V3 checkpoint's is its e_score_correction_bias, other
    checkpoints' zero. With n_group > 1 the choice is limited to the topk_group best groups of experts
    (V3: a group's two best biased scores summed; V2's softmax scores: its best), and the weights may be
    scaled (routed_scaling_factor). With `shared_gate` (Qwen2-MoE) the shared experts' output is scaled
    by a sigmoid of the token.
    """

    popularity_bias: Tensor

    def __init__(
        self,
        cfg: ModelConfig,
        gen: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
        matmuls: ExpertMatmuls,
    ) -> None:
        super().__init__()
        h, i, e = cfg.hidden, cfg.moe_intermediate, cfg.routed_experts
        self.top_k = cfg.top_k
        self.softmax, self.n_group, self.topk_group = cfg.routing == "softmax", cfg.n_group, cfg.topk_group
        self.norm_topk_prob, self.scaling = cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.router = draw_weight(gen, device, torch.float32, h, e, fan_in=h)
        rank = torch.arange(e, device=device) if gen is None else torch.randperm(e, generator=gen, device=device)
        self.register_buffer("popularity_bias", -cfg.router_skew * torch.log1p(rank.float()))
        # stacked so that one grouped GEMM serves all experts: [gate | up] and down
        self.w13 = draw_weight(gen, device, dtype, e, h, 2 * i, fan_in=h)
        self.w2 = draw_weight(gen, device, dtype, e, i, h, fan_in=i)
        shared = i * cfg.shared_experts
        self.shared_w13 = draw_weight(gen, device, dtype, h, 2 * shared, fan_in=h) if shared else None
        self.shared_w2 = draw_weight(gen, device, dtype, shared, h, fan_in=shared) if shared else None
        self.shared_gate = draw_weight(gen, device, dtype, h, 1, fan_in=h) if cfg.shared_gate else None
        self.matmul, self.fixed_matmul = matmuls.eager.fn, matmuls.fixed.fn

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Chosen experts [T, k] and their weights [T, k] (float32)."""
        logits = linear(x.float(), self.router)
        scores = logits.softmax(dim=-1) if self.softmax else torch.sigmoid(logits)
        choice = scores + self.popularity_bias
        if self.n_group > 1:
            choice = self._best_groups(choice)
        chosen = torch.topk(choice, self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return chosen, weights * self.scaling if self.scaling != 1.0 else weights

    def _best_groups(self, choice: Tensor) -> Tensor:
        """`choice` [T, E] with every expert outside each token's topk_group best groups at -inf."""
        grouped = choice.view(choice.shape[0], self.n_group, -1)
        if self.softmax:
            group_score = grouped.amax(dim=-1)
        else:
            group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
        best = group_score.topk(self.topk_group, dim=-1).indices
        keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~keep[:, :, None], float("-inf")).view_as(choice)

    def forward(self, x: Tensor, counted: Tensor | None = None, fixed_shapes: bool = False) -> tuple[Tensor, Tensor]:
        """Output [T, H] and tokens per expert [E] (int32, on the device), of the rows `counted`
        ([T] bool) when given. `fixed_shapes`: the step is being captured or compiled."""
        matmul = self.fixed_matmul if fixed_shapes else self.matmul
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
        gate_up = matmul(x.index_select(0, order // self.top_k), self.w13, offs)
        gate, up = gate_up.chunk(2, dim=-1)
        down = matmul(F.silu(gate) * up, self.w2, offs)
        unsorted = torch.empty_like(down).index_copy_(0, order, down).view(x.shape[0], self.top_k, -1)
        out = (unsorted * weights.to(x.dtype)[:, :, None]).sum(dim=1)  # a sum, not atomics: deterministic

        if self.shared_w13 is not None and self.shared_w2 is not None:
            gate, up = linear(x, self.shared_w13).chunk(2, dim=-1)
            shared_out = linear(F.silu(gate) * up, self.shared_w2)
            if self.shared_gate is not None:
                shared_out = torch.sigmoid(linear(x, self.shared_gate)) * shared_out
            out = out + shared_out
        return out, load


class DenseMLP(nn.Module):
    """The feed-forward of a dense first layer (`first_k_dense_replace`): one SwiGLU, no router."""

    def __init__(self, cfg: ModelConfig, gen: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        h, i = cfg.hidden, cfg.intermediate_size
        self.experts = cfg.routed_experts
        self.w13 = draw_weight(gen, device, dtype, h, 2 * i, fan_in=h)
        self.w2 = draw_weight(gen, device, dtype, i, h, fan_in=i)

    def forward(self, x: Tensor, counted: Tensor | None = None, fixed_shapes: bool = False) -> tuple[Tensor, Tensor]:
        """Output [T, H], and MoE's load: no token for any expert."""
        gate, up = linear(x, self.w13).chunk(2, dim=-1)
        return linear(F.silu(gate) * up, self.w2), torch.zeros(self.experts, device=x.device, dtype=torch.int32)


class Block(nn.Module):
    """Attention (grouped-query, or latent with `kv_lora_rank`), then the feed-forward: `moe`, or `mlp` in
    a dense layer."""

    moe: MoE
    mlp: DenseMLP

    def __init__(
        self,
        cfg: ModelConfig,
        gen: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
        matmuls: ExpertMatmuls,
        dense: bool = False,
    ) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden, cfg.norm_eps, device, dtype)
        self.attention = LatentAttention(cfg, gen, device, dtype) if cfg.mla else Attention(cfg, gen, device, dtype)
        self.moe_norm = RMSNorm(cfg.hidden, cfg.norm_eps, device, dtype)
        self.dense = dense
        if dense:
            self.mlp = DenseMLP(cfg, gen, device, dtype)
        else:
            self.moe = MoE(cfg, gen, device, dtype, matmuls)

    def forward(
        self, x: Tensor, batch: ForwardBatch, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor
    ) -> tuple[Tensor, Tensor]:
        h = x + self.attention(self.attention_norm(x), batch, cos, sin, k_cache, v_cache)
        ffn_out, counts = (self.mlp if self.dense else self.moe)(self.moe_norm(h), batch.counted, batch.fixed_shapes)
        return h + ffn_out, counts


class _Elsewhere(nn.Module):
    """The place of a layer that another pipeline stage (another process) holds."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, *args: object) -> None:
        raise RuntimeError(f"layer {self.index} is held by another pipeline stage")


class Transformer(nn.Module):
    """The whole decoder, or with `owned` only those layers (a pipeline stage in its own process): the
    embedding only on the stage holding layer 0, the LM head only on the one holding the last.

    `expert_matmuls`: the expert products (engine/kernels.py), by default those of eager ticks only.
    `seed` None: weights left empty (no drawing), for a checkpoint to fill."""

    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(
        self,
        cfg: ModelConfig,
        device: torch.device,
        dtype: torch.dtype,
        seed: int | None = 0,
        owned: range | None = None,
        expert_matmuls: ExpertMatmuls | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        owned = range(cfg.layers) if owned is None else owned
        self.expert_matmuls = expert_matmuls or choose_expert_matmuls(cfg, device, dtype, fixed_shapes=False)
        gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        # Every weight is drawn, owned or not, so that the generator reaches each layer in the same
        # state on every stage; one not owned is dropped at once (peak memory: one extra layer).
        embed = (
            torch.empty(cfg.vocab_size, cfg.hidden, device=device, dtype=dtype)
            if gen is None
            else torch.randn(cfg.vocab_size, cfg.hidden, generator=gen, device=device, dtype=dtype)
        )
        self.embed = nn.Parameter(embed, requires_grad=False) if owned.start == 0 else None
        blocks: list[nn.Module] = []
        for i in range(cfg.layers):
            if i not in owned and gen is None:  # nothing to draw: an empty layer need not be made at all
                blocks.append(_Elsewhere(i))
                continue
            block = Block(cfg, gen, device, dtype, self.expert_matmuls, dense=i < cfg.first_k_dense_replace)
            blocks.append(block if i in owned else _Elsewhere(i))
            del block
        self.layers = nn.ModuleList(blocks)
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps, device, dtype)
        lm_head = draw_weight(gen, device, dtype, cfg.hidden, cfg.vocab_size, fan_in=cfg.hidden)
        self.lm_head = lm_head if owned.stop == cfg.layers else None
        cos, sin = rope_tables(cfg, device)
        self.register_buffer("rope_cos", cos)
        self.register_buffer("rope_sin", sin)

    # The forward pass in three parts, so that a stage executor can run the layers in slices.

    def embed_tokens(self, batch: ForwardBatch) -> Tensor:
        assert self.embed is not None, "the embedding is held by the first stage"
        return self.embed.index_select(0, batch.tokens)

    def run_layers(
        self, x: Tensor, batch: ForwardBatch, kv_k: Tensor, kv_v: Tensor, counts: Tensor, layers: range
    ) -> Tensor:
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
        assert self.lm_head is not None, "the LM head is held by the last stage"
        return linear(self.norm(x.index_select(0, batch.sample_index)), self.lm_head)

    def forward(self, batch: ForwardBatch, kv_k: Tensor, kv_v: Tensor) -> tuple[Tensor, Tensor]:
        """Logits [S, vocab] and expert load [layers, experts] (int32) of one tick."""
        counts = torch.zeros(self.cfg.layers, self.cfg.routed_experts, device=kv_k.device, dtype=torch.int32)
        x = self.run_layers(self.embed_tokens(batch), batch, kv_k, kv_v, counts, range(self.cfg.layers))
        return self.logits(x, batch), counts
