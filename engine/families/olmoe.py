"""OLMoE (OLMoE-1B-7B): RMSNorm over the whole q and k projections (not per head), softmax routing
over 64 experts, top-8, not renormalised unless `norm_topk_prob`, no shared expert."""

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
    expert_placements,
    read_int,
)


def model_config(config: dict[str, Any]) -> ModelConfig:
    if config.get("clip_qkv") is not None:
        raise ConfigError("config.json: clip_qkv is not supported for OLMoE")
    if config.get("attention_bias"):
        raise ConfigError("config.json: attention_bias (a bias on o_proj too) is not supported for OLMoE")
    return ModelConfig(
        name="olmoe",
        **decoder_fields(config),
        routed_experts=read_int(config, "num_experts", "num_local_experts"),
        moe_intermediate=read_int(config, "intermediate_size"),
        top_k=read_int(config, "num_experts_per_tok"),
        shared_experts=0,
        routing="softmax",
        norm_topk_prob=bool(config.get("norm_topk_prob", False)),
        qk_norm="whole",
    )


def placements(name: str, cfg: ModelConfig) -> list[Placement] | None:
    found = decoder_placements(name, cfg)
    return found if found is not None else expert_placements(name, cfg, "mlp", "gate", HUB_PROJECTIONS)


FAMILY = Family(("OlmoeForCausalLM",), model_config, placements, ROTARY_CACHE)
