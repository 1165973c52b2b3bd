"""The same architecture in HuggingFace transformers: the parity tests' reference and the engine
benchmark's peer. transformers is a test/bench dependency only, imported when asked for.

GLM-4.5's MoE (`Glm4Moe`) with partial RoPE, QK-norm, attention bias and dense first layers switched
off is exactly our decoder; our router's popularity bias maps onto its `e_score_correction_bias`.
A shape with DeepSeek's multi-head latent attention (ds2-lite, v3-slice) has DeepSeek-V3 for a twin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch

from engine.config import ModelConfig
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.model import Attention, Block, Transformer


def glm4_moe_config(cfg: ModelConfig, *, attention: str, experts: str) -> Any:
    """A `transformers.Glm4MoeConfig` of `cfg`'s shape, with the given attention and experts backends."""
    from transformers import Glm4MoeConfig

    config: Any = Glm4MoeConfig(  # type: ignore[call-arg]  # head_dim is one of its **kwargs
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": 1.0},
        attention_bias=False,
        use_qk_norm=False,
        first_k_dense_replace=0,
        moe_intermediate_size=cfg.moe_intermediate,
        num_experts_per_tok=cfg.top_k,
        n_routed_experts=cfg.routed_experts,
        n_shared_experts=cfg.shared_experts,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=1.0,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attention
    config._experts_implementation = experts
    return config


def hf_twin(ours: Transformer, *, attention: str = "eager", experts: str = "eager") -> Any:
    """A `Glm4MoeForCausalLM` holding copies of our model's weights, on its device and in its dtype."""
    from transformers import Glm4MoeForCausalLM

    cfg = ours.cfg
    if cfg.mla:
        return _deepseek_twin(ours, attention=attention, experts=experts)
    deepseek_only = cfg.routing != "sigmoid" or cfg.n_group > 1 or cfg.routed_scaling_factor != 1.0
    if cfg.first_k_dense_replace or deepseek_only or not cfg.norm_topk_prob:
        raise ConfigError(
            f"'{cfg.name}' has no GLM-4.5 twin: it has dense layers or DeepSeek-V2/V3's routing "
            "(tests/test_engine_mla.py compares those with transformers' DeepSeek models)"
        )
    hf: Any = _built_like(ours, lambda: Glm4MoeForCausalLM(glm4_moe_config(cfg, attention=attention, experts=experts)))
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    shared = cfg.shared_experts * cfg.moe_intermediate
    with torch.no_grad():
        assert ours.embed is not None and ours.lm_head is not None, "a twin of the whole model, not of a stage"
        hf.model.embed_tokens.weight.copy_(ours.embed)
        hf.model.norm.weight.copy_(ours.norm.weight)
        hf.lm_head.weight.copy_(ours.lm_head)
        for layer, theirs in zip(ours.layers, hf.model.layers):
            mine = cast("Block", layer)  # the whole model: every layer is here
            a, m = cast("Attention", mine.attention), mine.moe  # GLM-4.5 attends by grouped queries
            assert m.shared_w13 is not None and m.shared_w2 is not None, "GLM-4.5's MoE has shared experts"
            theirs.self_attn.q_proj.weight.copy_(a.wqkv[:q])
            theirs.self_attn.k_proj.weight.copy_(a.wqkv[q : q + kv])
            theirs.self_attn.v_proj.weight.copy_(a.wqkv[q + kv :])
            theirs.self_attn.o_proj.weight.copy_(a.wo)
            theirs.input_layernorm.weight.copy_(mine.attention_norm.weight)
            theirs.post_attention_layernorm.weight.copy_(mine.moe_norm.weight)
            # routing stays in float32 on both sides, as DeepSeek-V3 and GLM-4.5 checkpoints keep it
            theirs.mlp.gate.weight.data = m.router.clone()
            theirs.mlp.gate.e_score_correction_bias.data = m.popularity_bias.clone()
            theirs.mlp.experts.gate_up_proj.copy_(m.w13)
            theirs.mlp.experts.down_proj.copy_(m.w2)
            theirs.mlp.shared_experts.gate_proj.weight.copy_(m.shared_w13[:shared])
            theirs.mlp.shared_experts.up_proj.weight.copy_(m.shared_w13[shared:])
            theirs.mlp.shared_experts.down_proj.weight.copy_(m.shared_w2)
    return hf


def _built_like(ours: Transformer, build: Callable[[], Any]) -> Any:
    """A transformers model built in our dtype, on our device (no float32 detour), for inference."""
    like = ours.norm.weight
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(like.dtype)
    try:
        with torch.device(like.device):
            hf = build()
            hf.eval()
    finally:
        torch.set_default_dtype(default_dtype)
    return hf


def deepseek_v3_config(cfg: ModelConfig, *, attention: str, experts: str) -> Any:
    """A `transformers.DeepseekV3Config` of a latent-attention shape: DeepSeek-V3's routing (sigmoid
    scores, a selection bias, expert groups) is ours."""
    from transformers import DeepseekV3Config

    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_factor > 1:
        rope = {
            "rope_type": "yarn",
            "rope_theta": cfg.rope_theta,
            "factor": cfg.rope_factor,
            "original_max_position_embeddings": cfg.rope_original_max,
            "beta_fast": cfg.rope_beta_fast,
            "beta_slow": cfg.rope_beta_slow,
            "mscale": cfg.rope_mscale,
            "mscale_all_dim": cfg.rope_mscale_all_dim,
        }
    config: Any = DeepseekV3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate_size or cfg.moe_intermediate,
        moe_intermediate_size=cfg.moe_intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        n_shared_experts=cfg.shared_experts,
        n_routed_experts=cfg.routed_experts,
        num_experts_per_tok=cfg.top_k,
        routed_scaling_factor=cfg.routed_scaling_factor,
        kv_lora_rank=cfg.kv_lora_rank,
        q_lora_rank=cfg.q_lora_rank or None,
        qk_rope_head_dim=cfg.head_dim,
        qk_nope_head_dim=cfg.qk_nope_head_dim,
        v_head_dim=cfg.v_head_dim,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        first_k_dense_replace=cfg.first_k_dense_replace,
        norm_topk_prob=cfg.norm_topk_prob,
        # YaRN's extended context, as DeepSeek's configs give it (transformers warns of any other)
        max_position_embeddings=max(cfg.max_seq_len, int(cfg.rope_original_max * cfg.rope_factor)),
        rms_norm_eps=cfg.norm_eps,
        rope_parameters=rope,
        rope_interleave=cfg.rope_interleave,
        attention_bias=False,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attention
    config._experts_implementation = experts
    return config


def _deepseek_twin(ours: Transformer, *, attention: str, experts: str) -> Any:
    """A `DeepseekV3ForCausalLM` holding copies of our latent-attention model's weights, each found
    through the DeepSeek family's placements (engine/families/deepseek.py), the loader's map read back."""
    from transformers import DeepseekV3ForCausalLM

    from engine.families.deepseek import placements

    cfg = ours.cfg
    if cfg.routing != "sigmoid":
        raise ConfigError(f"'{cfg.name}' routes by softmax: transformers' DeepSeek-V3 twin routes by sigmoid")
    hf: Any = _built_like(
        ours, lambda: DeepseekV3ForCausalLM(deepseek_v3_config(cfg, attention=attention, experts=experts))
    )
    assert ours.embed is not None and ours.lm_head is not None, "a twin of the whole model, not of a stage"
    mine = {**dict(ours.named_parameters()), **dict(ours.named_buffers())}
    with torch.no_grad():
        for name, theirs in hf.named_parameters():
            places = placements(name, cfg)
            assert places, f"{name} has no place in our model"
            for p in places:
                source = mine[p.param][p.index]
                if name.endswith("mlp.gate.weight"):  # routing in float32 on both sides, as V3 keeps it
                    theirs.data = source.clone()
                else:
                    theirs.copy_(source.T if p.transpose else source)
        for name, buffer in hf.named_buffers():  # the correction biases; RoPE's are computed
            for p in placements(name, cfg) or ():
                buffer.copy_(mine[p.param][p.index])
    return hf
