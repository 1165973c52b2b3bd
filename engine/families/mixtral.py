"""Mixtral (Mixtral-8x7B, 8x22B): plain grouped-query attention, 8 experts, top-2, softmax over the
chosen (a softmax over all, renormalised over the two). On the Hub its experts are
`block_sparse_moe.experts.N.w1|w3|w2` (gate, up, down); transformers v5 holds them under `mlp`."""

from __future__ import annotations

from typing import Any

from engine.config import ModelConfig
from engine.families.base import (
    ROTARY_CACHE,
    Family,
    Placement,
    decoder_fields,
    decoder_placements,
    expert_placements,
    read_int,
)

_PROJECTIONS = {"w1": "gate", "w3": "up", "w2": "down"}


def model_config(config: dict[str, Any]) -> ModelConfig:
    return ModelConfig(
        name="mixtral",
        **decoder_fields(config),
        routed_experts=read_int(config, "num_local_experts", "num_experts"),
        moe_intermediate=read_int(config, "intermediate_size"),
        top_k=read_int(config, "num_experts_per_tok"),
        shared_experts=0,
        routing="softmax",
        norm_topk_prob=True,
    )


def placements(name: str, cfg: ModelConfig) -> list[Placement] | None:
    found = decoder_placements(name, cfg)
    if found is None:
        found = expert_placements(name, cfg, "block_sparse_moe", "gate", _PROJECTIONS)
    if found is None:  # transformers v5's own names: the experts stacked, under `mlp`
        found = expert_placements(name, cfg, "mlp", "gate", _PROJECTIONS)
    return found


FAMILY = Family(("MixtralForCausalLM",), model_config, placements, ROTARY_CACHE)
