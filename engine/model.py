"""A DeepSeek-style Mixture-of-Experts decoder, readable top to bottom: architecture only.

One forward pass takes a whole tick's batch, flattened (engine/batch.py): prefill chunks of new
sequences and one decode token of each running sequence, all of different lengths. Every token's K/V
goes into the paged cache (kv_cache.py) first; attention then reads each sequence's keys back by block.

Weights are random from a seed, created directly on the target device and dtype: the point is the
memory traffic and the expert dispatch of a real MoE, not what it says. Without a seed they are left
empty, for a checkpoint to fill (engine/checkpoint.py); the families' switches (ModelConfig: routing,
qk_norm, attention_bias, shared_gate) are off for the presets. Weights are stored [out, in], as
nn.Linear keeps them; engine/kernels.py has the products and chooses the expert one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.batch import AttnCall, ForwardBatch
from engine.config import ModelConfig
from engine.kernels import ExpertMatmuls, choose_expert_matmuls, linear

# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------


def _weight(
    gen: torch.Generator | None, device: torch.device, dtype: torch.dtype, *shape: int, fan_in: int
) -> nn.Parameter:
    """A weight [..., out, in], drawn as [..., in, out]: the order the model's weights have always been
    drawn in, so that a seed keeps giving the same model. Without a generator: empty, to be filled."""
    if gen is None:
        return nn.Parameter(torch.empty(*shape[:-2], shape[-1], shape[-2], device=device, dtype=dtype), False)
    w = torch.randn(shape, generator=gen, device=device, dtype=dtype).mul_(fan_in**-0.5)
    return nn.Parameter(w.transpose(-2, -1).contiguous(), requires_grad=False)


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
    """Grouped-query attention over the paged KV cache.

    Switches of the families (all off for the presets): a bias on the q, k and v projections (Qwen2),
    and RMSNorm of q and k before RoPE, over each head (`qk_norm` "head", Qwen3) or over the whole
    projection (`qk_norm` "whole", OLMoE)."""

    def __init__(self, cfg: ModelConfig, gen: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        qkv_width = (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim
        self.wqkv = _weight(gen, device, dtype, cfg.hidden, qkv_width, fan_in=cfg.hidden)
        self.wo = _weight(gen, device, dtype, cfg.heads * cfg.head_dim, cfg.hidden, fan_in=cfg.heads * cfg.head_dim)
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

        calls = batch.attention
        if len(calls) == 1 and calls[0].rows is None:  # a decode tick, or prompts all alike: rows in order
            return linear(self._attend(q, calls[0], k_blocks, v_blocks).reshape(T, -1), self.wo)
        # index_select, not tensor[index]: advanced indexing takes a slow path on the CPU (~100x here)
        out = q.new_empty(T, H, D)
        for call in calls:
            assert call.rows is not None  # only a call of the whole batch has none, and it is alone
            out.index_copy_(0, call.rows, self._attend(q.index_select(0, call.rows), call, k_blocks, v_blocks))
        return linear(out.view(T, -1), self.wo)

    def _attend(self, q: Tensor, call: AttnCall, k_blocks: Tensor, v_blocks: Tensor) -> Tensor:
        """One SDPA call: queries [seqs * q, heads, D], sequence by sequence, against each sequence's keys
        gathered by block; the output in the same order and shape."""
        seqs, n_q, H, KVH, D = call.block_table.shape[0], call.q, self.heads, self.kv_heads, self.head_dim
        table = call.block_table.flatten()
        keys = k_blocks.index_select(0, table).view(seqs, -1, KVH, D)
        values = v_blocks.index_select(0, table).view(seqs, -1, KVH, D)
        if call.kv is not None:
            keys, values = keys[:, : call.kv], values[:, : call.kv]
        keys, values = keys.transpose(1, 2), values.transpose(1, 2)
        queries = q.view(seqs, n_q, H, D).transpose(1, 2)
        if call.kv is not None and n_q in (1, call.kv):
            # decodes that see every key, or whole prompts (causal from key 0): no mask, fused kernels
            o = F.scaled_dot_product_attention(queries, keys, values, is_causal=n_q > 1, enable_gqa=True)
        else:
            # query i of a sequence of kv_len keys sees keys 0 .. kv_len - q + i (the rest is padding)
            key = torch.arange(keys.shape[2], device=q.device)
            last = call.kv_len[:, None] - n_q + torch.arange(n_q, device=q.device)
            mask = key <= last[:, :, None]  # [seqs, q, keys], made here: nothing dense leaves the host
            # SDPA has no fused kernel for a mask with enable_gqa on CUDA, so each K/V head's query heads
            # become query rows of that head instead
            g = H // KVH
            o = F.scaled_dot_product_attention(
                queries.reshape(seqs, KVH, g * n_q, D), keys, values, attn_mask=mask.repeat(1, g, 1)[:, None]
            ).view(seqs, H, n_q, D)
        return o.transpose(1, 2).reshape(seqs * n_q, H, D)


class MoE(nn.Module):
    """Router -> top-k of E routed SwiGLU experts, plus shared experts every token goes through.

    Routing (`routing`) is DeepSeek-V3's by default: sigmoid scores, top-k chosen on score + a
    per-expert bias, the chosen scores renormalised as weights. "softmax" (Qwen, OLMoE, Mixtral) takes
    a softmax over all experts instead, its chosen probabilities renormalised only with `norm_topk_prob`
    (Mixtral's "softmax over the chosen" is exactly that). The bias is `router_skew`'s popularity:
    expert of popularity rank r gets -skew * log(1 + r), a Zipf-like head of favourites, different in
    every layer; zero for a checkpoint. With `shared_gate` (Qwen2-MoE) the shared experts' output is
    scaled by a sigmoid of the token.
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
        self.top_k, self.softmax, self.norm_topk_prob = cfg.top_k, cfg.routing == "softmax", cfg.norm_topk_prob
        self.router = _weight(gen, device, torch.float32, h, e, fan_in=h)
        rank = torch.arange(e, device=device) if gen is None else torch.randperm(e, generator=gen, device=device)
        self.register_buffer("popularity_bias", -cfg.router_skew * torch.log1p(rank.float()))
        # stacked so that one grouped GEMM serves all experts: [gate | up] and down
        self.w13 = _weight(gen, device, dtype, e, h, 2 * i, fan_in=h)
        self.w2 = _weight(gen, device, dtype, e, i, h, fan_in=i)
        shared = i * cfg.shared_experts
        self.shared_w13 = _weight(gen, device, dtype, h, 2 * shared, fan_in=h) if shared else None
        self.shared_w2 = _weight(gen, device, dtype, shared, h, fan_in=shared) if shared else None
        self.shared_gate = _weight(gen, device, dtype, h, 1, fan_in=h) if cfg.shared_gate else None
        self.matmul, self.fixed_matmul = matmuls.eager.fn, matmuls.fixed.fn

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Chosen experts [T, k] and their weights [T, k] (float32)."""
        logits = linear(x.float(), self.router)
        scores = logits.softmax(-1) if self.softmax else torch.sigmoid(logits)
        chosen = torch.topk(scores + self.popularity_bias, self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return chosen, weights

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


class Block(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        gen: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
        matmuls: ExpertMatmuls,
    ) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden, cfg.norm_eps, device, dtype)
        self.attention = Attention(cfg, gen, device, dtype)
        self.moe_norm = RMSNorm(cfg.hidden, cfg.norm_eps, device, dtype)
        self.moe = MoE(cfg, gen, device, dtype, matmuls)

    def forward(
        self, x: Tensor, batch: ForwardBatch, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor
    ) -> tuple[Tensor, Tensor]:
        h = x + self.attention(self.attention_norm(x), batch, cos, sin, k_cache, v_cache)
        moe_out, counts = self.moe(self.moe_norm(h), batch.counted, batch.fixed_shapes)
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
            block = Block(cfg, gen, device, dtype, self.expert_matmuls)
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
