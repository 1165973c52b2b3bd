"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): grouped-query attention with RMSNorm over each head's q
and k, softmax routing over all experts, top-k renormalised when `norm_topk_prob`, no shared expert."""

from __future__ import annotations

from typing import Any

from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.families.base import (
    HUB_PROJECTIONS,
    ROTARY_CACHE,
    Family,
    Placement,
    decoder_fields,
    decoder_placements,
    every_layer_sparse,
    expert_placements,
    read_int,
)


def model_config(config: dict[str, Any]) -> ModelConfig:
    every_layer_sparse(config)
    if config.get("attention_bias"):
        raise ConfigError("config.json: attention_bias (a bias on o_proj too) is not supported for Qwen3-MoE")
    return ModelConfig(
        name="qwen3_moe",
        **decoder_fields(config),
        routed_experts=read_int(config, "num_experts", "num_local_experts"),
        moe_intermediate=read_int(config, "moe_intermediate_size"),
        top_k=read_int(config, "num_experts_per_tok"),
        shared_experts=0,
        routing="softmax",
        norm_topk_prob=bool(config.get("norm_topk_prob", False)),
        qk_norm="head",
    )


def placements(name: str, cfg: ModelConfig) -> list[Placement] | None:
    found = decoder_placements(name, cfg)
    return found if found is not None else expert_placements(name, cfg, "mlp", "gate", HUB_PROJECTIONS)


FAMILY = Family(("Qwen3MoeForCausalLM",), model_config, placements, ROTARY_CACHE)
