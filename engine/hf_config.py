"""The same architecture as a HuggingFace transformers config: the parity tests' reference and the
engine benchmark's peer. transformers is a test/bench dependency only, imported when asked for.

GLM-4.5's MoE (`Glm4Moe`) with partial RoPE, QK-norm, attention bias and dense first layers switched
off is exactly our decoder; our router's popularity bias maps onto its `e_score_correction_bias`.
"""

from __future__ import annotations

from typing import Any

from engine.config import ModelConfig


def glm4_moe_config(cfg: ModelConfig, *, attention: str, experts: str) -> Any:
    """A `transformers.Glm4MoeConfig` of `cfg`'s shape, with the given attention and experts backends."""
    from transformers import Glm4MoeConfig

    config = Glm4MoeConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": 1.0},
        attention_bias=False, use_qk_norm=False, first_k_dense_replace=0,
        moe_intermediate_size=cfg.moe_intermediate, num_experts_per_tok=cfg.top_k,
        n_routed_experts=cfg.routed_experts, n_shared_experts=cfg.shared_experts,
        n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.0, tie_word_embeddings=False,
    )
    config._attn_implementation = attention
    config._experts_implementation = experts
    return config
