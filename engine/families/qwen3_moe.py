"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): grouped-query attention with RMSNorm over each head's q
and k, softmax routing over all experts, top-k renormalised when `norm_topk_prob`, no shared expert."""

from __future__ import annotations

from typing import Any

from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.families.base import (
    ROTARY_CACHE,
    Family,
    decoder_fields,
    every_layer_sparse,
    hub_placements,
    read_int,
    softmax_experts,
)


def model_config(config: dict[str, Any]) -> ModelConfig:
    every_layer_sparse(config)
    if config.get("attention_bias"):
        raise ConfigError("config.json: attention_bias (a bias on o_proj too) is not supported for Qwen3-MoE")
    return ModelConfig(
        name="qwen3_moe",
        **decoder_fields(config),
        **softmax_experts(config, read_int(config, "moe_intermediate_size")),
        shared_experts=0,
        qk_norm="head",
    )


FAMILY = Family(("Qwen3MoeForCausalLM",), model_config, hub_placements, ROTARY_CACHE)
