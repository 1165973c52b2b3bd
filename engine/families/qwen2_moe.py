"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): a bias on the q, k and v projections, softmax routing
(top-k renormalised when `norm_topk_prob`), and one shared expert behind a sigmoid gate. The shared
expert's width is a whole number of routed experts' (4 x 1408 in Qwen1.5-MoE-A2.7B): ours is
`shared_experts` routed widths fused into one SwiGLU."""

from __future__ import annotations

import re
from typing import Any

from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.families.base import (
    ROTARY_CACHE,
    Family,
    Placement,
    decoder_fields,
    every_layer_sparse,
    hub_placements,
    read_int,
    softmax_experts,
    swiglu_placements,
)

_SHARED = re.compile(r"model\.layers\.(\d+)\.mlp\.shared_expert(?:_gate|\.(\w+)_proj)\.weight")


def model_config(config: dict[str, Any]) -> ModelConfig:
    every_layer_sparse(config)
    inter = read_int(config, "moe_intermediate_size")
    shared = read_int(config, "shared_expert_intermediate_size", default=0)
    if shared % inter:
        raise ConfigError(
            f"config.json: shared_expert_intermediate_size {shared} is not a multiple of moe_intermediate_size {inter}"
        )
    return ModelConfig(
        name="qwen2_moe",
        **decoder_fields(config),
        **softmax_experts(config, inter),
        shared_experts=shared // inter,
        attention_bias=bool(config.get("qkv_bias", True)),
        shared_gate=shared > 0,
    )


def placements(name: str, cfg: ModelConfig) -> list[Placement] | None:
    shared = _SHARED.fullmatch(name)
    if shared is None:
        return hub_placements(name, cfg)
    i, which = int(shared.group(1)), shared.group(2)
    if i >= cfg.layers:
        return []
    here, width = f"layers.{i}.moe", cfg.shared_experts * cfg.moe_intermediate
    if which is None:
        return [Placement(f"{here}.shared_gate")]
    return swiglu_placements(f"{which}_proj.weight", here, width, "shared_w13", "shared_w2")


FAMILY = Family(("Qwen2MoeForCausalLM",), model_config, placements, ROTARY_CACHE)
