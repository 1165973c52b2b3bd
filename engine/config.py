"""Model shapes: the presets, and what a shape costs in memory before anything is allocated."""

from __future__ import annotations

import gc
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import torch

from engine.errors import ConfigError
from engine.sampling import SAMPLING_BYTES_PER_LOGIT

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROUTINGS = ("sigmoid", "softmax")  # engine/model.py MoE
QK_NORMS = ("none", "head", "whole")  # engine/model.py Attention


@dataclass(frozen=True)
class ModelConfig:
    """A DeepSeek-style MoE decoder. Every layer is attention + MoE feed-forward, but the first
    `first_k_dense_replace`, whose feed-forward is one dense SwiGLU."""

    name: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    # grouped-query attention: `heads // kv_heads` query heads share one K/V head. With multi-head
    # latent attention kv_heads is 1 (every head reads the one latent) and head_dim the RoPE part of a
    # query/key head (qk_rope_head_dim), as transformers' DeepSeek configs set it.
    kv_heads: int
    head_dim: int
    routed_experts: int
    moe_intermediate: int  # width of one routed expert's SwiGLU
    top_k: int
    shared_experts: int  # always-on experts, fused into one SwiGLU of width shared * moe_intermediate
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    max_seq_len: int = 4096
    # 0 = every expert equally likely; larger = a Zipf-like head of popular experts (see model.py).
    # 0.05 gives the busiest of 16 experts about twice its fair share, as trained routers have.
    router_skew: float = 0.0
    # "auto": bfloat16 on CUDA, float32 on the CPU (where bf16 matmuls are slow)
    dtype: str = "auto"
    # The families' switches (engine/families/); the defaults are the presets' DeepSeek-style decoder.
    # Routing: "sigmoid" (DeepSeek-V3) or "softmax" (V2, Qwen, OLMoE, Mixtral) expert scores; the top-k
    # choice is made on score + bias within the topk_group best of n_group expert groups; the chosen
    # scores, renormalised when norm_topk_prob, times routed_scaling_factor, weigh the experts' outputs.
    routing: str = "sigmoid"
    norm_topk_prob: bool = True
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    qk_norm: str = "none"  # RMSNorm of q and k: "head" (each head, Qwen3), "whole" (the projection, OLMoE)
    attention_bias: bool = False  # a bias on the q, k and v projections (Qwen2)
    shared_gate: bool = False  # the shared experts' output times sigmoid(x . w) (Qwen2-MoE)
    # Multi-head latent attention (DeepSeek-V2/V3, engine/mla.py) when kv_lora_rank > 0: the cache holds a
    # kv_lora_rank latent and a head_dim RoPE key per token and layer; a head's query/key is
    # qk_nope_head_dim + head_dim wide, its value v_head_dim. q_lora_rank 0: queries straight from x.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = False  # MLA: RoPE rotates interleaved pairs (x0, x1), (x2, x3), ... as DeepSeek's
    # YaRN context extension when rope_factor > 1 (DeepSeek-V2/V3 configs): frequencies and the mscales
    rope_factor: float = 1.0
    rope_original_max: int = 0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_mscale: float = 0.0
    rope_mscale_all_dim: float = 0.0
    # Dense first layers: a SwiGLU of intermediate_size in place of the MoE, no router
    first_k_dense_replace: int = 0
    intermediate_size: int = 0

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.first_k_dense_replace

    def validate(self) -> None:
        positive = (
            "vocab_size",
            "hidden",
            "layers",
            "heads",
            "kv_heads",
            "head_dim",
            "routed_experts",
            "moe_intermediate",
            "top_k",
            "max_seq_len",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"model {name} must be at least 1, got {getattr(self, name)}")
        if self.shared_experts < 0:
            raise ConfigError(f"model shared_experts must be 0 or more, got {self.shared_experts}")
        if self.heads % self.kv_heads:
            raise ConfigError(f"model heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"model head_dim must be even for RoPE, got {self.head_dim}")
        if self.top_k > self.routed_experts:
            raise ConfigError(f"model top_k ({self.top_k}) exceeds routed_experts ({self.routed_experts})")
        if self.router_skew < 0:
            raise ConfigError(f"model router_skew must be 0 or more, got {self.router_skew}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ConfigError(f"unknown dtype '{self.dtype}' (choose from: auto, {', '.join(_DTYPES)})")
        self._validate_mla()
        self._validate_routing()
        if self.qk_norm not in QK_NORMS:
            raise ConfigError(f"unknown qk_norm '{self.qk_norm}' (choose from: {', '.join(QK_NORMS)})")
        if self.shared_gate and not self.shared_experts:
            raise ConfigError("model shared_gate needs shared experts (shared_experts 0)")
        if not 0 <= self.first_k_dense_replace <= self.layers:
            raise ConfigError(
                f"model first_k_dense_replace must be 0 to layers ({self.layers}), got {self.first_k_dense_replace}"
            )
        if self.first_k_dense_replace and self.intermediate_size < 1:
            raise ConfigError("model intermediate_size must be at least 1 with dense first layers")
        if self.rope_factor > 1 and self.rope_original_max < 1:
            raise ConfigError("model rope_original_max must be at least 1 with YaRN (rope_factor > 1)")

    def _validate_mla(self) -> None:
        fields = ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "v_head_dim")
        for name in fields:
            if getattr(self, name) < 0:
                raise ConfigError(f"model {name} must be 0 or more, got {getattr(self, name)}")
        if not self.mla:
            return
        for name in ("qk_nope_head_dim", "v_head_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model {name} must be at least 1 with multi-head latent attention")
        if self.kv_heads != 1:
            raise ConfigError(f"model kv_heads must be 1 with multi-head latent attention, got {self.kv_heads}")

    def _validate_routing(self) -> None:
        if self.routing not in ROUTINGS:
            raise ConfigError(f"unknown routing '{self.routing}' (choose from: {', '.join(ROUTINGS)})")
        if self.n_group < 1 or self.routed_experts % self.n_group:
            raise ConfigError(f"model n_group ({self.n_group}) must divide routed_experts ({self.routed_experts})")
        if not 1 <= self.topk_group <= self.n_group:
            raise ConfigError(f"model topk_group must be 1 to n_group ({self.n_group}), got {self.topk_group}")
        if self.top_k > self.topk_group * (self.routed_experts // self.n_group):
            raise ConfigError(
                f"model top_k ({self.top_k}) exceeds the experts of topk_group ({self.topk_group}) groups"
            )

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return _DTYPES[self.dtype]

    def attention_param_count(self) -> int:
        """One layer's attention weights, its MLA norms included."""
        h, heads = self.hidden, self.heads
        if not self.mla:
            qkv = (heads + 2 * self.kv_heads) * self.head_dim
            return h * qkv + heads * self.head_dim * h + qkv * self.attention_bias + self.qk_norm_width()
        q_width = heads * (self.qk_nope_head_dim + self.head_dim)
        q = h * q_width if not self.q_lora_rank else self.q_lora_rank * (h + 1 + q_width)  # a, its norm, b
        r = self.kv_lora_rank
        kv = h * (r + self.head_dim) + r + r * heads * (self.qk_nope_head_dim + self.v_head_dim)  # a, norm, b
        return q + kv + heads * self.v_head_dim * h

    def layer_param_count(self, layer: int) -> int:
        """Layer `layer`'s weights: attention, its feed-forward (dense, or router + experts), 2 norms."""
        h, i = self.hidden, self.moe_intermediate
        if layer < self.first_k_dense_replace:
            ffn = 3 * h * self.intermediate_size
        else:
            ffn = h * self.routed_experts + self.routed_experts * 3 * h * i
            ffn += 3 * h * i * self.shared_experts + h * self.shared_gate
        return self.attention_param_count() + ffn + 2 * h

    def param_count(self) -> int:
        h = self.hidden
        layers = sum(self.layer_param_count(i) for i in range(self.layers))
        return 2 * self.vocab_size * h + h + layers  # embed, lm_head, final norm

    def qk_norm_width(self) -> int:
        """The weights of one layer's q and k norms."""
        if self.qk_norm == "head":
            return 2 * self.head_dim
        return (self.heads + self.kv_heads) * self.head_dim if self.qk_norm == "whole" else 0

    def param_bytes(self, dtype: torch.dtype) -> int:
        return self.param_count() * dtype.itemsize

    def kv_values_per_token_layer(self) -> int:
        """Values one token holds in one layer's cache: MLA's latent and RoPE key, or K and V."""
        if self.mla:
            return self.kv_lora_rank + self.head_dim
        return 2 * self.kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        return self.layers * self.kv_values_per_token_layer() * dtype.itemsize

    def largest_weight_bytes(self, dtype: torch.dtype) -> int:
        """The largest single weight: a layer's stacked gate|up experts, a dense layer's gate|up, or the embedding."""
        h = self.hidden
        return (
            max(
                self.routed_experts * h * 2 * self.moe_intermediate, h * 2 * self.intermediate_size, self.vocab_size * h
            )
            * dtype.itemsize
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The large presets attend as DeepSeek does, with multi-head latent attention: a 512-wide latent and a
# 64-wide RoPE key cached per token and layer (576 values), YaRN RoPE as their configs set it. Routing
# stays ours (sigmoid scores, the router_skew popularity as the selection bias), V3's within groups.
_DEEPSEEK_MLA: dict[str, Any] = {"kv_heads": 1, "head_dim": 64, "kv_lora_rank": 512, "qk_nope_head_dim": 128}
_DEEPSEEK_YARN: dict[str, Any] = {"rope_factor": 40.0, "rope_original_max": 4096, "rope_interleave": True}

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny",
        vocab_size=512,
        hidden=128,
        layers=4,
        heads=4,
        kv_heads=2,
        head_dim=32,
        routed_experts=16,
        moe_intermediate=64,
        top_k=2,
        shared_experts=1,
        max_seq_len=1024,
        router_skew=0.05,
        dtype="float32",
    ),
    "ds2-lite": ModelConfig(  # DeepSeek-V2-Lite widths; its first layer is dense, as the real model's
        name="ds2-lite",
        vocab_size=32000,
        hidden=2048,
        layers=27,
        heads=16,
        **_DEEPSEEK_MLA,
        v_head_dim=128,
        **_DEEPSEEK_YARN,
        rope_mscale=0.707,
        rope_mscale_all_dim=0.707,
        first_k_dense_replace=1,
        intermediate_size=10944,
        routed_experts=64,
        moe_intermediate=1408,
        top_k=6,
        shared_experts=2,
        max_seq_len=4096,
        router_skew=0.05,
    ),
    # DeepSeek-V3 widths, a few of its MoE layers (one holds 22.5 GB of bf16 experts; its first 3 dense
    # layers are left out): queries through a 1536-wide latent, top-8 within 4 of 8 expert groups
    "v3-slice": ModelConfig(
        name="v3-slice",
        vocab_size=129280,
        hidden=7168,
        layers=2,
        heads=128,
        **_DEEPSEEK_MLA,
        v_head_dim=128,
        q_lora_rank=1536,
        **_DEEPSEEK_YARN,
        rope_mscale=1.0,
        rope_mscale_all_dim=1.0,
        routed_experts=256,
        moe_intermediate=2048,
        top_k=8,
        shared_experts=1,
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        max_seq_len=4096,
        router_skew=0.05,
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name, with fields replaced (e.g. `layers=8`), validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}' (choose from: {', '.join(PRESETS)})")
    unknown = sorted(set(overrides) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown model setting '{unknown[0]}'")
    cfg = replace(PRESETS[name], **overrides)
    cfg.validate()
    return cfg


def available_bytes(device: torch.device) -> int:
    """Memory that an allocation on `device` could use now. An engine no longer referenced still
    holds its weights until the cycle collector runs (its thread and bound methods refer back to
    it), and PyTorch keeps freed CUDA blocks cached: both are released first, so that a process
    making one engine after another (a sweep, a benchmark) is not refused memory it has."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, _total = torch.cuda.mem_get_info(device)
        return free
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: do not refuse what we cannot measure
        return 1 << 62


class TickLimits(Protocol):
    """What bounds the largest tick: the scheduler's knobs (SchedulerConfig has them)."""

    max_tokens: int
    max_seqs: int
    prefill_chunk: int
    kv_capacity_tokens: int


def activation_bytes(cfg: ModelConfig, dtype: torch.dtype, tick: TickLimits, padded_experts: bool = False) -> int:
    """A generous peak of what one forward pass of the largest tick the scheduler can build holds
    besides weights and KV cache: max_tokens rows, as prefill chunks of up to prefill_chunk tokens
    against up to max_seq_len keys, or max_seqs decodes at the longest context. One layer's worth:
    a layer's activations are freed before the next layer's are made. `padded_experts`: the decode
    graphs multiply every expert by all of a decode tick's rows (engine/kernels.py)."""
    t, item, h, i, k = tick.max_tokens, dtype.itemsize, cfg.hidden, cfg.moe_intermediate, cfg.top_k
    keys = min(cfg.max_seq_len, tick.kv_capacity_tokens)
    residual = 4 * t * h * item  # the layer's input, its attention output, a normed copy, their sum
    if cfg.mla:  # q, the latent + RoPE key, q absorbed into latent space, the latent output, its heads' values
        r, rope = cfg.kv_lora_rank, cfg.head_dim
        q_head, score_width = cfg.qk_nope_head_dim + rope, r + rope
        widths = cfg.q_lora_rank + cfg.heads * (q_head + score_width + r + cfg.v_head_dim) + score_width
        projections = t * widths * item + 2 * t * (cfg.heads + 1) * rope * 4  # + RoPE in float32
    else:
        qkv = (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim
        projections = t * (qkv + cfg.heads * cfg.head_dim) * item + 2 * t * qkv * 4  # + RoPE in float32
    kv_row = cfg.kv_values_per_token_layer() * item  # one key's cache row, gathered from the cache
    decodes = tick.max_seqs * keys * kv_row
    chunk = min(tick.prefill_chunk, t, keys)
    prompts = max(1, min(tick.max_seqs, t // chunk))  # alike prefill chunks share one attention call
    # gathered keys, float32 scores and the mask, for kernels that make them (SDPA's math path)
    prefill = prompts * keys * (kv_row + cfg.heads * chunk * 4 + chunk * cfg.heads // cfg.kv_heads)
    rows = t * k  # (token, expert) pairs: sorted copies of the rows, gate|up, the activation, down
    experts = rows * (2 * h + 4 * i) * item + t * cfg.routed_experts * 4 + t * 3 * i * cfg.shared_experts * item
    if padded_experts:
        experts += cfg.routed_experts * tick.max_seqs * k * (h + 2 * i) * item
    dense = t * 3 * cfg.intermediate_size * item if cfg.first_k_dense_replace else 0  # gate|up, the activation
    # float32 logits, and the temporaries of drawing from them when every row samples
    logits = tick.max_seqs * cfg.vocab_size * (4 + SAMPLING_BYTES_PER_LOGIT)
    return residual + projections + max(decodes, prefill) + max(experts, dense) + logits


def check_fits(cfg: ModelConfig, device: torch.device, tick: TickLimits, padded_experts: bool = False) -> None:
    """Refuse, before allocating, a model + KV cache + the largest tick's activations that the device
    cannot hold. Weights are drawn in one layout and stored in another: the largest, twice, for a moment."""
    dtype = cfg.torch_dtype(device)
    params = cfg.param_bytes(dtype) + cfg.largest_weight_bytes(dtype)
    kv = cfg.kv_bytes_per_token(dtype) * tick.kv_capacity_tokens
    activations = activation_bytes(cfg, dtype, tick, padded_experts)
    have = available_bytes(device)
    if params + kv + activations > have:
        raise ConfigError(
            f"model '{cfg.name}' needs {_gb(params + kv + activations)} on {device} (weights {_gb(params)} + "
            f"KV cache {_gb(kv)} + the largest tick's activations {_gb(activations)}) but only {_gb(have)} is "
            f"available; use fewer layers, a smaller KV capacity or smaller ticks (max_tokens, max_seqs)"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
