"""DeepSeek-V2/V3 (engine/families/deepseek.py, engine/mla.py) against transformers' own implementations.

transformers builds a tiny random model of each from its config class (2 layers, the first dense, a few
experts, YaRN RoPE; V2 without a query latent and with softmax routing within groups, V3 with a query
latent and sigmoid routing within groups and a correction bias) and saves it as a checkpoint. Its tensors
go into our model through the family's placements, and our engine, with its paged latent cache, must give
the same logits in float32: within 1e-4 (absolute and relative), the sums of different orders apart (in
bfloat16, within 5% of the largest logit).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch._subclasses.fake_tensor import FakeTensorMode

from decode_runs import decode_prompts, mixed_run
from engine.batch import SeqChunk
from engine.checkpoint import open_checkpoint
from engine.config import ModelConfig, get_preset
from engine.decode_graphs import DecodeGraphs
from engine.engine import Engine
from engine.errors import ConfigError
from engine.families.deepseek import FAMILY, model_config
from engine.hf_config import hf_twin
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.pipeline import stage_param_bytes, stage_weights
from engine.scheduler import SchedulerConfig
from parity import hf_greedy, prefill
from tracer.cost import ModelShape

CPU = torch.device("cpu")
TOL = 1e-4
PROMPTS = (3, 17, 9, 1)  # tokens: a mixed batch


def _common() -> dict[str, Any]:
    return dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=80,
        moe_intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=12,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )


def hf_v2() -> Any:
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    config = DeepseekV2Config(
        **_common(),
        q_lora_rank=None,
        topk_method="group_limited_greedy",
        n_group=4,
        topk_group=1,  # top-2 from one group of 2: the groups decide
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "beta_fast": 32,
            "beta_slow": 1,
        },
    )
    return DeepseekV2ForCausalLM(config)


def hf_v3() -> Any:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(
        **_common(),
        q_lora_rank=24,
        n_group=4,
        topk_group=1,  # top-2 from one group of 2: the groups decide
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "original_max_position_embeddings": 32,
            "mscale": 1.0,
            "mscale_all_dim": 0.8,  # unequal: cos and sin carry a factor too
            "beta_fast": 32,
            "beta_slow": 1,
        },
    )
    return DeepseekV3ForCausalLM(config)


def randomised(hf: Any, seed: int) -> Any:
    """Weights large enough that every layer matters: norms around 1, the rest N(0, 0.15^2); routers
    and V3's correction bias spread so that no two experts tie."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in hf.state_dict().items():
            if name.endswith("norm.weight"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            else:
                t.copy_(0.15 * torch.randn(t.shape, generator=gen))
    return hf.eval()


def save(hf: Any, directory: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The checkpoint as the loader sees it: config.json through the family, the tensors by their
    names on disk (routed experts one by one, as on the Hub)."""
    hf.save_pretrained(directory)
    cfg = model_config(json.loads((directory / "config.json").read_text()))
    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            tensors.update({k: s.get_tensor(k) for k in s.keys()})  # noqa: SIM118  # safe_open has no iterator
    return cfg, tensors


def place(model: Transformer, cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor into its places, and every parameter of ours filled exactly once; a buffer either
    filled or, V2's routers having no correction bias, left as it is: zero, with no router skew."""
    buffers = dict(model.named_buffers())
    ours = {**dict(model.named_parameters()), **buffers}
    filled = {name: torch.zeros(t.shape, dtype=torch.int32) for name, t in ours.items()}
    with torch.no_grad():
        for name, tensor in tensors.items():
            places = FAMILY.placements(name, cfg)
            assert places, f"{name} has no place"
            for p in places:
                ours[p.param][p.index].copy_(tensor.T if p.transpose else tensor)
                filled[p.param][p.index] += 1
    for name, count in filled.items():
        if name.startswith("rope_"):  # our RoPE tables are computed, not loaded
            continue
        if name in buffers and not count.any():
            assert not buffers[name].any(), name
        else:
            assert bool((count == 1).all()), f"{name} filled {count.min()}..{count.max()} times"


@pytest.fixture(scope="module", params=["v2", "v3"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ModelConfig, dict]:
    hf = randomised(hf_v2() if request.param == "v2" else hf_v3(), seed=7)
    cfg, tensors = save(hf, tmp_path_factory.mktemp(request.param))
    return hf, cfg, tensors


def test_the_family_reads_the_checkpoint_config(pair):
    hf, cfg, _ = pair
    assert cfg.mla and cfg.kv_lora_rank == 32 and cfg.head_dim == 8 and cfg.kv_heads == 1
    assert cfg.first_k_dense_replace == 1 and cfg.intermediate_size == 80
    assert (cfg.n_group, cfg.topk_group) == (4, 1) and cfg.rope_interleave
    v3 = "V3" in type(hf).__name__
    assert cfg.q_lora_rank == (24 if v3 else 0)
    assert cfg.routing == ("sigmoid" if v3 else "softmax") and cfg.norm_topk_prob == v3
    assert cfg.routed_scaling_factor == (2.5 if v3 else 1.0)
    assert cfg.rope_factor == (8.0 if v3 else 4.0)
    assert cfg.kv_bytes_per_token(torch.float32) == 2 * (32 + 8) * 4  # the latent and the RoPE key, per layer


def test_stacked_experts_as_transformers_holds_them_place_alike(pair):
    hf, cfg, tensors = pair
    from_files = Transformer(cfg, CPU, torch.float32, seed=1)
    place(from_files, cfg, tensors)
    in_memory = Transformer(cfg, CPU, torch.float32, seed=2)
    place(in_memory, cfg, hf.state_dict())
    for (name, a), b in zip(from_files.state_dict().items(), in_memory.state_dict().values()):
        assert torch.equal(a, b), name


def test_prefill_logits_of_a_mixed_batch_match_transformers(pair):
    hf, cfg, tensors = pair
    model = Transformer(cfg, CPU, torch.float32, seed=3)
    place(model, cfg, tensors)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in PROMPTS]
    logits, counts = prefill(model, prompts)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            expected = hf(torch.tensor([p])).logits[0, -1]
            torch.testing.assert_close(logits[i], expected, rtol=TOL, atol=TOL)
    assert counts[0].sum() == 0  # the dense layer routes nothing
    assert counts[1].sum() == sum(PROMPTS) * cfg.top_k


def test_sixteen_greedy_ticks_through_the_engine_match_transformers(pair):
    """Prompts of different lengths, prefilled in chunks of 8 beside the others' decodes: every tick a
    mixed batch over the paged latent cache. Each step's logits, and so its token, equal transformers'."""
    hf, cfg, tensors = pair
    engine = Engine(cfg, SchedulerConfig(prefill_chunk=8), device="cpu", seed=4)
    place(engine.model, cfg, tensors)
    seen: list[torch.Tensor] = []
    logits = engine.model.logits

    def keep_logits(*args: Any) -> torch.Tensor:
        out = logits(*args)
        seen.append(out.clone())
        return out

    engine.model.logits = keep_logits  # type: ignore[method-assign]
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in PROMPTS]

    decoded = decode_prompts(engine, prompts, 16)
    assert seen, "the engine ran no forward pass"
    for p, tokens in zip(prompts, decoded):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([p]),
                max_new_tokens=16,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                output_logits=True,
                return_dict_in_generate=True,
            )
        expected_tokens = out.sequences[0, len(p) :].tolist()
        assert tokens == expected_tokens
        # every step's logits are among what the engine computed that tick
        ours = torch.cat(seen)
        for step_logits in out.logits:
            distance = (ours - step_logits).abs().amax(dim=-1).min()
            assert distance <= TOL * (1 + step_logits.abs().max()), distance


def test_a_sharded_checkpoint_loads_through_the_engine_and_decodes_as_transformers(pair, tmp_path):
    """The loader's own path: save_pretrained in shards, engine/checkpoint.py streams them into a model
    built empty, and a mixed batch decodes transformers' greedy tokens."""
    hf = pair[0]
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    checkpoint = open_checkpoint(tmp_path)
    assert len(checkpoint.shards) >= 2
    engine = Engine(checkpoint.model_config(), SchedulerConfig(prefill_chunk=8), device="cpu", checkpoint=checkpoint)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 96, n).tolist() for n in PROMPTS]
    for p, tokens in zip(prompts, decode_prompts(engine, prompts, 16)):
        assert tokens == hf_greedy(hf, p, 16)


def test_a_v2_lite_config_json_reads_as_the_real_model():
    """DeepSeek-V2-Lite's config.json (its published fields that matter here), as its checkpoint has it."""
    config = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": 102400,
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 1408,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "n_shared_experts": 2,
        "n_routed_experts": 64,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 512,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": False,
        "scoring_func": "softmax",
        "routed_scaling_factor": 1.0,
        "max_position_embeddings": 163840,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
    }
    cfg = model_config(config)
    assert cfg.kv_values_per_token_layer() == 576
    assert (cfg.rope_factor, cfg.rope_original_max, cfg.rope_mscale_all_dim) == (40.0, 4096, 0.707)
    assert cfg.routing == "softmax" and cfg.n_group == 1 and not cfg.norm_topk_prob
    assert cfg.param_count() == pytest.approx(15.7e9, rel=0.01)  # DeepSeek-V2-Lite: 15.7B parameters
    with pytest.raises(ConfigError, match="RoPE scaling 'dynamic'"):
        model_config({**config, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    with pytest.raises(ConfigError, match="scale_inv: FP8"):
        FAMILY.placements("model.layers.3.self_attn.kv_b_proj.weight_scale_inv", cfg)
    assert FAMILY.placements("model.layers.27.self_attn.kv_b_proj.weight", cfg) == []  # past the layers
    assert FAMILY.placements("model.layers.1.mlp.experts.3.up_proj.weight", cfg) is not None


def test_the_ds2_lite_header_counts_576_cached_values_per_token_and_layer():
    """What Engine.describe writes (kv_bytes_per_token), what the cost model reads, and what it works out
    for a header without it, against the cache the engine allocates."""
    cfg = get_preset("ds2-lite")
    model = {**cfg.as_dict(), "dtype": "bfloat16"}
    header = {"model": model, "kv_bytes_per_token": cfg.kv_bytes_per_token(torch.bfloat16)}
    assert header["kv_bytes_per_token"] == 576 * cfg.layers * 2
    assert ModelShape.from_config(header).kv_bytes_per_token == 576 * 27 * 2
    assert ModelShape.from_config({"model": model}).kv_bytes_per_token == 576 * 27 * 2
    assert get_preset("v3-slice").kv_bytes_per_token(torch.bfloat16) == 576 * 2 * 2
    kv = KVCache(get_preset("ds2-lite", layers=2), 64, CPU, torch.bfloat16)
    assert kv.k.shape[1:] == (64 + 16, 1, 576) and kv.v.data_ptr() == kv.k.data_ptr()
    assert kv.k.numel() * kv.k.element_size() == cfg.kv_bytes_per_token(torch.bfloat16) // cfg.layers * 2 * 80


def test_a_stage_holding_the_dense_layer_weighs_what_the_split_says():
    """Pipeline stages balance and check memory by each layer's own weights: a dense first layer's
    SwiGLU weighs differently from a MoE layer's experts."""
    small = {"hidden": 64, "heads": 2, "vocab_size": 128, "intermediate_size": 96, "moe_intermediate": 16}
    cfg = get_preset("ds2-lite", layers=3, routed_experts=8, top_k=2, **small)
    assert stage_weights(cfg).sum() == cfg.param_count()
    for owned in (range(0, 1), range(1, 3)):
        stage = Transformer(cfg, CPU, torch.float32, seed=0, owned=owned)
        # every stage builds the final norm (hidden weights); the split counts it on the last one
        held = sum(p.numel() for name, p in stage.named_parameters() if name != "norm.weight" or owned.stop == 3)
        assert held == stage_param_bytes(cfg, owned, 1)


# A latent-attention model small enough for the CPU: ds2-lite's structure (a dense first layer, the
# latent cache, YaRN over interleaved pairs) at toy widths
SMALL_MLA = {
    "hidden": 64,
    "heads": 2,
    "vocab_size": 512,
    "intermediate_size": 96,
    "moe_intermediate": 16,
    "routed_experts": 8,
    "top_k": 2,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "head_dim": 8,
    "v_head_dim": 16,
    "layers": 3,
    "max_seq_len": 1024,
}


def test_padded_decode_of_latent_attention_gives_the_eager_tokens_load_and_cache():
    """The decode-graph path (decode ticks padded to buckets, as CUDA graphs capture them), on the CPU."""
    cfg = get_preset("ds2-lite", dtype="float32", **SMALL_MLA)
    eager, padded = mixed_run("cpu", "off", model=cfg), mixed_run("cpu", "on", model=cfg)
    assert padded.engine.graphs is not None and padded.engine.graphs.buckets_used
    assert padded.tokens == eager.tokens
    assert all((p == e).all() for p, e in zip(padded.load, eager.load, strict=True))
    assert all(not counts[0].any() for counts in eager.load)  # the dense first layer routes nothing
    real = slice(0, padded.engine.kv.scratch_slot)
    torch.testing.assert_close(padded.engine.kv.k[:, real], eager.engine.kv.k[:, real], rtol=1e-5, atol=1e-5)


def test_the_captured_latent_attention_reads_nothing_back_to_the_host():
    """Under fake tensors a host read or a value-dependent shape raises: what a CUDA graph cannot hold."""
    cfg = get_preset("ds2-lite", dtype="bfloat16", **{**SMALL_MLA, "n_group": 4, "topk_group": 2})
    kv = KVCache(cfg, 2048, CPU, torch.bfloat16)
    graphs = DecodeGraphs(Transformer(cfg, CPU, torch.bfloat16), kv, 8)
    bucket = graphs._bucket(4, 128)
    alloc = kv.allocator
    chunks = []
    for i, n in enumerate([5, 70, 100]):
        alloc.grow(i, n)
        chunks.append(SeqChunk([i], n - 1, alloc.blocks(i, n), alloc.block_size, True))
    graphs._fill(bucket, chunks, np.array([5, 70, 100]))
    with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True):
        out, logits = graphs._forward(bucket)
    assert out.shape == (4 + cfg.layers * cfg.routed_experts,)  # a token per row, the expert load
    assert logits.shape == (4, cfg.vocab_size)


def test_moonlight_and_deepseek_v3_config_json():
    """Moonlight-16B-A3B is DeepSeek-V3's architecture without a query latent, YaRN or expert groups;
    DeepSeek-V3's own checkpoint is FP8, which is refused with the reason."""
    moonlight = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": 163840,
        "hidden_size": 2048,
        "intermediate_size": 11264,
        "moe_intermediate_size": 1408,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "n_shared_experts": 2,
        "n_routed_experts": 64,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 512,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.446,
        "max_position_embeddings": 8192,
        "rope_theta": 50000.0,
        "rope_scaling": None,
    }
    cfg = model_config(moonlight)
    assert cfg.routing == "sigmoid" and cfg.n_group == 1 and cfg.routed_scaling_factor == 2.446
    assert (cfg.q_lora_rank, cfg.rope_factor, cfg.rope_theta, cfg.rope_interleave) == (0, 1.0, 50000.0, True)
    assert cfg.kv_values_per_token_layer() == 576
    with pytest.raises(ConfigError, match="quantized checkpoints"):
        model_config({**moonlight, "quantization_config": {"quant_method": "fp8"}})


def test_the_benchmark_peer_of_a_latent_preset_is_transformers_deepseek_v3():
    """bench/engine.py's peer (engine/hf_config.py) for ds2-lite's structure: our router (sigmoid scores,
    the popularity bias as V3's correction bias) and MLA, copied into transformers' DeepseekV3."""
    cfg = get_preset("ds2-lite", dtype="float32", router_skew=0.3, **SMALL_MLA)
    model = Transformer(cfg, CPU, torch.float32, seed=8)
    hf = hf_twin(model)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in PROMPTS]
    logits, _ = prefill(model, prompts)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            torch.testing.assert_close(logits[i], hf(torch.tensor([p])).logits[0, -1], rtol=TOL, atol=TOL)


def test_pipeline_stages_and_micro_batches_give_the_same_tokens():
    """The stage executor runs each stage's slice of the latent cache (K and its latent view) in turn."""
    cfg = get_preset("ds2-lite", dtype="float32", **SMALL_MLA)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in PROMPTS]
    runs = []
    for stages, micro_batches in ((1, 1), (3, 2)):
        engine = Engine(cfg, SchedulerConfig(stages=stages, micro_batches=micro_batches), device="cpu", seed=5)
        runs.append(decode_prompts(engine, prompts, 8))
    assert runs[0] == runs[1] and all(len(s) == 8 for s in runs[0])


def test_prefill_logits_in_bfloat16_stay_within_its_rounding(pair):
    """In bfloat16 (routers in float32 on both sides, as the checkpoints keep them) the absorbed and the
    expanded projections round differently: within 5% of the logits' largest magnitude."""
    hf, cfg, tensors = pair
    hf = copy.deepcopy(hf).to(torch.bfloat16)
    for name, module in hf.named_modules():
        if name.endswith("mlp.gate"):
            module.float()
    model = Transformer(cfg, CPU, torch.bfloat16, seed=3)
    place(model, cfg, tensors)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in PROMPTS]
    logits, _ = prefill(model, prompts)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            expected = hf(torch.tensor([p])).logits[0, -1].float()
            assert (logits[i].float() - expected).abs().max() <= 0.05 * expected.abs().max()


def test_a_config_json_that_cannot_run_names_the_setting():
    base = {**json.loads(json.dumps(hf_v3().config.to_dict())), "architectures": ["DeepseekV3ForCausalLM"]}
    with pytest.raises(ConfigError, match=r"n_group \(3\) must divide routed_experts \(8\)"):
        model_config({**base, "n_group": 3})
    with pytest.raises(ConfigError, match="intermediate_size must be at least 1 with dense first layers"):
        model_config({**base, "intermediate_size": None})
    with pytest.raises(ConfigError, match="hidden_act 'gelu'"):
        model_config({**base, "hidden_act": "gelu"})
