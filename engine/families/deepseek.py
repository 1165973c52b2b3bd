"""DeepSeek-V2 and V3 (DeepSeek-V2-Lite, DeepSeek-V3, Moonlight-16B-A3B): multi-head latent attention
(engine/mla.py), YaRN RoPE over interleaved pairs, dense first layers (`first_k_dense_replace`), shared
experts, and routing by softmax top-k (V2: greedy, or within groups) or by sigmoid scores chosen with
the e_score_correction_bias within groups (V3, `noaux_tc`)."""

from __future__ import annotations

from typing import Any

from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.families.base import (
    HUB_PROJECTIONS,
    LAYER,
    NORMS,
    TOP,
    Family,
    Placement,
    check_silu,
    expert_placements,
    read_int,
    swiglu_placements,
)

_V3 = "DeepseekV3ForCausalLM"
# attention tensors, checkpoint name -> ours under layers.{i}.attention
_ATTENTION = {
    "q_proj.weight": "wq",
    "q_a_proj.weight": "wq_a",
    "q_a_layernorm.weight": "q_norm.weight",
    "q_b_proj.weight": "wq_b",
    "kv_a_proj_with_mqa.weight": "wkv_a",
    "kv_a_layernorm.weight": "kv_norm.weight",
    "kv_b_proj.weight": "wkv_b",
    "o_proj.weight": "wo",
}


def model_config(config: dict[str, Any]) -> ModelConfig:
    v3 = _V3 in (config.get("architectures") or ())
    check_silu(config)
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ConfigError("config.json: attention_bias and mlp_bias are not supported for DeepSeek")
    if config.get("quantization_config"):
        raise ConfigError("config.json: quantized checkpoints (quantization_config) are not supported; use a bf16 one")
    experts = read_int(config, "n_routed_experts", "num_local_experts")
    cfg = ModelConfig(
        name=str(config.get("model_type", "deepseek")),
        vocab_size=read_int(config, "vocab_size"),
        hidden=read_int(config, "hidden_size"),
        layers=read_int(config, "num_hidden_layers"),
        heads=read_int(config, "num_attention_heads"),
        kv_heads=1,
        head_dim=read_int(config, "qk_rope_head_dim"),
        kv_lora_rank=read_int(config, "kv_lora_rank"),
        q_lora_rank=read_int(config, "q_lora_rank", default=0),
        qk_nope_head_dim=read_int(config, "qk_nope_head_dim"),
        v_head_dim=read_int(config, "v_head_dim"),
        # V2 rotates interleaved pairs always; V3 unless its config says otherwise
        rope_interleave=bool(config.get("rope_interleave", True)) if v3 else True,
        **_rope(config),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        max_seq_len=read_int(config, "max_position_embeddings", default=4096),
        first_k_dense_replace=read_int(config, "first_k_dense_replace", default=0),
        intermediate_size=read_int(config, "intermediate_size", default=0),  # checked with dense layers
        routed_experts=experts,
        moe_intermediate=read_int(config, "moe_intermediate_size"),
        top_k=read_int(config, "num_experts_per_tok"),
        shared_experts=read_int(config, "n_shared_experts", default=0),
        **_routing(config, v3, experts),
        router_skew=0.0,  # the checkpoint's router decides
    )
    cfg.validate()
    return cfg


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """RoPE's base and, with YaRN, its parameters: from `rope_scaling` and `rope_theta` as DeepSeek's
    checkpoints write them, or from transformers v5's `rope_parameters`."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return {"rope_theta": theta}
    if kind != "yarn":
        raise ConfigError(f"config.json: RoPE scaling '{kind}' is not supported for DeepSeek (default or yarn)")
    factor = params.get("factor")
    if not isinstance(factor, (int, float)) or factor < 1:
        raise ConfigError(f"config.json: yarn rope factor must be a number of 1 or more, got {factor!r}")
    return {
        "rope_theta": theta,
        "rope_factor": float(factor),
        "rope_original_max": read_int(params, "original_max_position_embeddings"),
        "rope_beta_fast": float(params.get("beta_fast") or 32),
        "rope_beta_slow": float(params.get("beta_slow") or 1),
        "rope_mscale": float(params.get("mscale") or 0),
        "rope_mscale_all_dim": float(params.get("mscale_all_dim") or 0),
    }


def _routing(config: dict[str, Any], v3: bool, experts: int) -> dict[str, Any]:
    """V3 and Moonlight: sigmoid scores, groups (noaux_tc). V2: softmax, greedy or within groups."""
    routing = config.get("scoring_func", "sigmoid" if v3 else "softmax")
    if routing not in ("sigmoid", "softmax"):
        raise ConfigError(f"config.json: scoring_func '{routing}' is not supported (sigmoid or softmax)")
    method = config.get("topk_method", "noaux_tc" if v3 else "greedy")
    if method not in ("greedy", "group_limited_greedy", "noaux_tc"):
        raise ConfigError(f"config.json: topk_method '{method}' is not supported")
    grouped = method != "greedy"
    scaling = config.get("routed_scaling_factor", 1.0)
    return {
        "routing": routing,
        "n_group": read_int(config, "n_group", default=1) if grouped else 1,
        "topk_group": read_int(config, "topk_group", default=1) if grouped else 1,
        "norm_topk_prob": bool(config.get("norm_topk_prob", v3)),
        "routed_scaling_factor": float(scaling) if isinstance(scaling, (int, float)) else 1.0,
    }


def placements(name: str, cfg: ModelConfig) -> list[Placement] | None:
    if name in TOP:
        return [Placement(TOP[name])]
    if name.endswith("_scale_inv"):
        raise ConfigError(f"{name}: FP8 checkpoints are not supported; use a bf16 one")
    layer = LAYER.fullmatch(name)
    if layer is None:
        return None
    i, rest = int(layer.group(1)), layer.group(2)
    if i >= cfg.layers:  # V3's multi-token-prediction layer, or past a --layers cut: known, and skipped
        return []
    here = f"layers.{i}"
    if rest in NORMS:
        return [Placement(f"{here}.{NORMS[rest]}")]
    if rest.startswith("self_attn."):
        ours = _ATTENTION.get(rest.removeprefix("self_attn."))
        return None if ours is None else [Placement(f"{here}.attention.{ours}")]
    if i < cfg.first_k_dense_replace:
        return swiglu_placements(rest.removeprefix("mlp."), f"{here}.mlp", cfg.intermediate_size, "w13", "w2")
    if rest == "mlp.gate.e_score_correction_bias":  # V3's selection bias: in place of our popularity bias
        return [Placement(f"{here}.moe.popularity_bias")]
    if rest.startswith("mlp.shared_experts."):
        shared = cfg.shared_experts * cfg.moe_intermediate
        rest = rest.removeprefix("mlp.shared_experts.")
        return swiglu_placements(rest, f"{here}.moe", shared, "shared_w13", "shared_w2")
    return expert_placements(name, cfg, "mlp", "gate", HUB_PROJECTIONS)


FAMILY = Family(
    architectures=("DeepseekV2ForCausalLM", _V3),
    model_config=model_config,
    placements=placements,
)
