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

from decode_runs import decode_prompts
from engine.config import get_preset
from engine.engine import Engine
from engine.hf_config import hf_twin
from engine.model import Transformer
from engine.scheduler import SchedulerConfig
from parity import hf_greedy, prefill

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("backend", ["eager", "grouped_mm"])
def test_moe_layer_matches_transformers(dtype, tol, backend):
    cfg = get_preset("tiny", router_skew=0.3)
    ours = Transformer(cfg, CPU, dtype, seed=4)
    hf = hf_twin(ours, experts=backend)
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
    logits, _ = prefill(ours, prompts)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            expected = hf(torch.tensor([p])).logits[0, -1]
            torch.testing.assert_close(logits[i], expected, rtol=1e-4, atol=1e-4)


def test_engine_decodes_the_same_tokens_as_transformers_generate():
    cfg = get_preset("tiny")
    engine = Engine(cfg, SchedulerConfig(prefill_chunk=8), device="cpu", seed=6)
    hf = hf_twin(engine.model)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (5, 20, 12)]

    for p, tokens in zip(prompts, decode_prompts(engine, prompts, 10)):
        assert tokens == hf_greedy(hf, p, 10)
