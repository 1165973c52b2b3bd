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


@dataclass(frozen=True)
class ModelConfig:
    """A DeepSeek-style MoE decoder. Every layer is attention + MoE feed-forward."""

    name: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int  # grouped-query attention: `heads // kv_heads` query heads share one K/V head
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

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return _DTYPES[self.dtype]

    def param_count(self) -> int:
        h, i = self.hidden, self.moe_intermediate
        attention = h * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * h
        routed = self.routed_experts * 3 * h * i
        shared = 3 * h * i * self.shared_experts
        per_layer = attention + h * self.routed_experts + routed + shared + 2 * h  # + router, 2 norms
        return 2 * self.vocab_size * h + h + self.layers * per_layer  # embed, lm_head, final norm

    def param_bytes(self, dtype: torch.dtype) -> int:
        return self.param_count() * dtype.itemsize

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype.itemsize

    def largest_weight_bytes(self, dtype: torch.dtype) -> int:
        """The largest single weight: a layer's stacked gate|up experts, or the embedding."""
        return (
            max(self.routed_experts * self.hidden * 2 * self.moe_intermediate, self.vocab_size * self.hidden)
            * dtype.itemsize
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# kv_heads for the large presets: DeepSeek caches a compressed 576-wide latent per token and layer (MLA);
# 2 K/V heads of 128 (512 values) keep our grouped-query cache at about the same bytes per token.
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
    "ds2-lite": ModelConfig(  # DeepSeek-V2-Lite widths
        name="ds2-lite",
        vocab_size=32000,
        hidden=2048,
        layers=27,
        heads=16,
        kv_heads=2,
        head_dim=128,
        routed_experts=64,
        moe_intermediate=1408,
        top_k=6,
        shared_experts=2,
        max_seq_len=4096,
        router_skew=0.05,
    ),
    "v3-slice": ModelConfig(  # DeepSeek-V3 widths, a few layers (one layer holds 22.5 GB of bf16 experts)
        name="v3-slice",
        vocab_size=129280,
        hidden=7168,
        layers=2,
        heads=128,
        kv_heads=2,
        head_dim=128,
        routed_experts=256,
        moe_intermediate=2048,
        top_k=8,
        shared_experts=1,
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
    qkv = (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim
    residual = 4 * t * h * item  # the layer's input, its attention output, a normed copy, their sum
    projections = t * (qkv + cfg.heads * cfg.head_dim) * item + 2 * t * qkv * 4  # + RoPE in float32
    kv_row = 2 * cfg.kv_heads * cfg.head_dim * item  # one key's K and V, gathered from the cache
    decodes = tick.max_seqs * keys * kv_row
    chunk = min(tick.prefill_chunk, t, keys)
    prompts = max(1, min(tick.max_seqs, t // chunk))  # alike prefill chunks share one attention call
    # gathered keys, float32 scores and the mask, for kernels that make them (SDPA's math path)
    prefill = prompts * keys * (kv_row + cfg.heads * chunk * 4 + chunk * cfg.heads // cfg.kv_heads)
    rows = t * k  # (token, expert) pairs: sorted copies of the rows, gate|up, the activation, down
    experts = rows * (2 * h + 4 * i) * item + t * cfg.routed_experts * 4 + t * 3 * i * cfg.shared_experts * item
    if padded_experts:
        experts += cfg.routed_experts * tick.max_seqs * k * (h + 2 * i) * item
    # float32 logits, and the temporaries of drawing from them when every row samples
    logits = tick.max_seqs * cfg.vocab_size * (4 + SAMPLING_BYTES_PER_LOGIT)
    return residual + projections + max(decodes, prefill) + experts + logits


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
            f"preset '{cfg.name}' needs {_gb(params + kv + activations)} on {device} (weights {_gb(params)} + "
            f"KV cache {_gb(kv)} + the largest tick's activations {_gb(activations)}) but only {_gb(have)} is "
            f"available; use fewer layers, a smaller KV capacity or smaller ticks (max_tokens, max_seqs)"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
