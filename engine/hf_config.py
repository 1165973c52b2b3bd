"""The same architecture in HuggingFace transformers: the parity tests' reference and the engine
benchmark's peer. transformers is a test/bench dependency only, imported when asked for.

GLM-4.5's MoE (`Glm4Moe`) with partial RoPE, QK-norm, attention bias and dense first layers switched
off is exactly our decoder; our router's popularity bias maps onto its `e_score_correction_bias`.
"""

from __future__ import annotations

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

    cfg, like = ours.cfg, ours.norm.weight
    deepseek_only = cfg.routing != "sigmoid" or cfg.n_group > 1 or cfg.routed_scaling_factor != 1.0
    if cfg.mla or cfg.first_k_dense_replace or deepseek_only or not cfg.norm_topk_prob:
        raise ConfigError(
            f"'{cfg.name}' has no GLM-4.5 twin: it attends by latent, or has dense layers or DeepSeek-V2/V3's "
            "routing (tests/test_engine_mla.py compares those with transformers' DeepSeek models)"
        )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(like.dtype)  # built in our dtype, on our device: no float32 detour
    try:
        with torch.device(like.device):
            hf: Any = Glm4MoeForCausalLM(glm4_moe_config(cfg, attention=attention, experts=experts))
            hf.eval()
    finally:
        torch.set_default_dtype(default_dtype)
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
