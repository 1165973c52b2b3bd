"""Our decoder against HuggingFace transformers' implementation of the same architecture.

GLM-4.5's MoE (`Glm4MoeForCausalLM`) is our architecture exactly once its extras are switched off:
grouped-query attention with rotate-half RoPE over the whole head, DeepSeek-V3 routing (sigmoid
scores, a selection-only bias, renormalised top-k weights) over stacked experts plus shared experts.
Our popularity bias is its `e_score_correction_bias`. transformers is a test-only dependency.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Glm4MoeForCausalLM

from engine.config import ModelConfig, get_preset
from engine.engine import Engine
from engine.hf_config import glm4_moe_config
from engine.kv_cache import KVCache
from engine.model import SeqChunk, Transformer, make_batch
from engine.request import Request
from engine.scheduler import SchedulerConfig

CPU = torch.device("cpu")


def hf_twin(ours: Transformer, experts_backend: str = "eager") -> Glm4MoeForCausalLM:
    """A transformers model of the same shape, holding copies of our weights."""
    cfg: ModelConfig = ours.cfg
    config = glm4_moe_config(cfg, attention="eager", experts=experts_backend)
    dtype = ours.embed.dtype
    hf = Glm4MoeForCausalLM(config).to(dtype).eval()
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    shared = cfg.shared_experts * cfg.moe_intermediate
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(ours.embed)
        hf.model.norm.weight.copy_(ours.norm.weight)
        hf.lm_head.weight.copy_(ours.lm_head.T)
        for mine, theirs in zip(ours.layers, hf.model.layers):
            a, m = mine.attention, mine.moe
            theirs.self_attn.q_proj.weight.copy_(a.wqkv[:, :q].T)
            theirs.self_attn.k_proj.weight.copy_(a.wqkv[:, q:q + kv].T)
            theirs.self_attn.v_proj.weight.copy_(a.wqkv[:, q + kv:].T)
            theirs.self_attn.o_proj.weight.copy_(a.wo.T)
            theirs.input_layernorm.weight.copy_(mine.attention_norm.weight)
            theirs.post_attention_layernorm.weight.copy_(mine.moe_norm.weight)
            # routing stays in float32 on both sides, as DeepSeek-V3 and GLM-4.5 checkpoints keep it
            theirs.mlp.gate.weight.data = m.router.T.clone()
            theirs.mlp.gate.e_score_correction_bias.data = m.popularity_bias.clone()
            theirs.mlp.experts.gate_up_proj.copy_(m.w13.transpose(1, 2))
            theirs.mlp.experts.down_proj.copy_(m.w2.transpose(1, 2))
            theirs.mlp.shared_experts.gate_proj.weight.copy_(m.shared_w13[:, :shared].T)
            theirs.mlp.shared_experts.up_proj.weight.copy_(m.shared_w13[:, shared:].T)
            theirs.mlp.shared_experts.down_proj.weight.copy_(m.shared_w2.T)
    return hf


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("backend", ["eager", "grouped_mm"])
def test_moe_layer_matches_transformers(dtype, tol, backend):
    cfg = get_preset("tiny", router_skew=0.3)
    ours = Transformer(cfg, CPU, dtype, seed=4)
    hf = hf_twin(ours, backend)
    gen = torch.Generator().manual_seed(0)
    for tokens in (1, 7, 64):  # several random batches
        x = torch.randn(tokens, cfg.hidden, generator=gen).to(dtype)
        for mine, theirs in zip(ours.layers, hf.model.layers):
            with torch.no_grad():
                expected = theirs.mlp(x[None])[0]
            got, _ = mine.moe(x)
            torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


def test_prefill_logits_of_a_ragged_batch_match_transformers_run_alone():
    cfg = get_preset("tiny")
    ours = Transformer(cfg, CPU, torch.float32, seed=5)
    hf = hf_twin(ours)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (1, 9, 33, 4)]
    kv = KVCache(cfg, 256, CPU, torch.float32)
    chunks = []
    for i, p in enumerate(prompts):
        kv.allocator.grow(i, len(p))
        chunks.append(SeqChunk(p, 0, kv.allocator.blocks(i, len(p)), kv.allocator.block_size, True))
    with torch.inference_mode():
        logits, _ = ours(make_batch(chunks, CPU), kv.k, kv.v)
        for i, p in enumerate(prompts):
            expected = hf(torch.tensor([p])).logits[0, -1]
            torch.testing.assert_close(logits[i], expected, rtol=1e-4, atol=1e-4)


def test_engine_decodes_the_same_tokens_as_transformers_generate():
    cfg = get_preset("tiny")
    engine = Engine(cfg, SchedulerConfig(prefill_chunk=8), device="cpu", seed=6)
    hf = hf_twin(engine.model)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (5, 20, 12)]

    class Collect(list):
        def on_token(self, token: int, t_ns: int) -> None:
            self.append(token)

        def on_finish(self, status: str, reason: str, t_ns: int) -> None: ...

    sinks = [Collect() for _ in prompts]
    for i, (p, s) in enumerate(zip(prompts, sinks)):
        engine.submit(Request(i, p, 10, s))
    while engine.scheduler.running or engine.scheduler.waiting:
        engine.step()
    for p, s in zip(prompts, sinks):
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        assert s == out[0, len(p):].tolist()
