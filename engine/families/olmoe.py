"""OLMoE (OLMoE-1B-7B): RMSNorm over the whole q and k projections (not per head), softmax routing
over 64 experts, top-8, not renormalised unless `norm_topk_prob`, no shared expert."""

from __future__ import annotations

from typing import Any

from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.families.base import ROTARY_CACHE, Family, decoder_fields, hub_placements, read_int, softmax_experts


def model_config(config: dict[str, Any]) -> ModelConfig:
    if config.get("clip_qkv") is not None:
        raise ConfigError("config.json: clip_qkv is not supported for OLMoE")
    if config.get("attention_bias"):
        raise ConfigError("config.json: attention_bias (a bias on o_proj too) is not supported for OLMoE")
    return ModelConfig(
        name="olmoe",
        **decoder_fields(config),
        **softmax_experts(config, read_int(config, "intermediate_size")),
        shared_experts=0,
        qk_norm="whole",
    )


FAMILY = Family(("OlmoeForCausalLM",), model_config, hub_placements, ROTARY_CACHE)
