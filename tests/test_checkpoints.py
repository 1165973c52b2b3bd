"""Real checkpoints: for each family, transformers builds a tiny random model from its own config class,
saves it sharded with `save_pretrained`, and tickscope loads the directory; its logits and greedy tokens
must be transformers'. Then what a broken checkpoint directory says.

Tolerance: prefill logits agree within 1e-4 (absolute and relative) in float32; greedy tokens exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from decode_runs import decode_prompts
from engine.checkpoint import open_checkpoint
from engine.engine import Engine
from engine.errors import ConfigError
from engine.model import Transformer
from engine.scheduler import SchedulerConfig
from parity import hf_greedy, prefill

transformers = pytest.importorskip("transformers")

CPU = torch.device("cpu")
TOL = 1e-4
VOCAB = 256
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    # larger than the default 0.02, so that logits and router scores are far apart enough for argmax
    # and top-k to decide the same on both sides
    "initializer_range": 0.2,
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}
# family -> (config class, model class, its MoE settings)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "head_dim": 16,
            "norm_topk_prob": True,
        },
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
        },
    ),
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        {"num_experts": 16, "num_experts_per_tok": 4, "intermediate_size": 32},
    ),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {"num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 32},
    ),
}
PROMPT_LENGTHS = (5, 20, 12, 1)
NEW_TOKENS = 16


def _build(family: str, seed: int = 0) -> Any:
    config_class, model_class, moe = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**COMMON, **moe)
    config._attn_implementation = "eager"
    return getattr(transformers, model_class)(config).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Every family's tiny model, and the directory it was saved to in shards of at most 100 kB."""
    out = {}
    for family in FAMILIES:
        hf = _build(family)
        path = tmp_path_factory.mktemp(family)
        hf.save_pretrained(path, max_shard_size="100KB")
        out[family] = (path, hf)
    return out


def _prompts() -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, VOCAB, n).tolist() for n in PROMPT_LENGTHS]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_checkpoint_is_saved_in_shards(saved, family):
    path, _ = saved[family]
    assert len(open_checkpoint(path).shards) >= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_logits_of_a_ragged_batch_match_transformers(saved, family):
    path, hf = saved[family]
    checkpoint = open_checkpoint(path)
    cfg = checkpoint.model_config(dtype="float32")
    ours = Transformer(cfg, CPU, torch.float32, seed=None)
    from engine.checkpoint import load_weights

    load_weights(ours, checkpoint, progress=False)
    prompts = _prompts()
    logits, _ = prefill(ours, prompts)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            expected = hf(torch.tensor([p])).logits[0, -1]
            torch.testing.assert_close(logits[i], expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize(
    "family, decode_graphs",
    [*((family, "off") for family in FAMILIES), *((family, "on") for family in ("qwen3_moe", "qwen2_moe", "olmoe"))],
)
def test_engine_decodes_the_same_tokens_as_transformers_generate(saved, family, decode_graphs):
    """A mixed batch: prompts of different lengths, prefilled in chunks of 8 while others decode. With
    decode graphs "on", decode-only ticks take the padded fixed-shape path (eagerly, on the CPU): the
    families' switches (QK-norm, biases, the shared gate) must hold on padding rows too."""
    path, hf = saved[family]
    checkpoint = open_checkpoint(path)
    sched = SchedulerConfig(prefill_chunk=8, decode_graphs=decode_graphs, kv_capacity_tokens=1024)
    engine = Engine(checkpoint.model_config(), sched, device="cpu", checkpoint=checkpoint)
    prompts = _prompts()
    decoded = decode_prompts(engine, prompts, NEW_TOKENS)
    assert bool(engine.graphs is not None and engine.graphs.buckets_used) == (decode_graphs == "on")
    for p, tokens in zip(prompts, decoded):
        assert tokens == hf_greedy(hf, p, NEW_TOKENS)


def test_the_trace_header_names_the_checkpoint_not_its_weights(saved):
    import hashlib

    path, _ = saved["olmoe"]
    checkpoint = open_checkpoint(path)
    engine = Engine(checkpoint.model_config(), SchedulerConfig(), device="cpu", checkpoint=checkpoint)
    described = engine.describe()
    assert described["checkpoint"] == {
        "name": path.name,
        "architecture": "OlmoeForCausalLM",
        "config_sha256": hashlib.sha256((path / "config.json").read_bytes()).hexdigest(),
        "dtype": "float32",
    }
    assert described["model"]["name"] == path.name
    assert described["model"]["qk_norm"] == "whole" and described["model"]["routing"] == "softmax"


def test_stacked_experts_as_transformers_holds_them_load_alike(saved, tmp_path):
    """transformers v5 keeps a layer's experts stacked (`mlp.experts.gate_up_proj`); a checkpoint saved
    that way loads to the same model as the Hub's per-expert names."""
    from safetensors.torch import save_file

    path, hf = saved["qwen3_moe"]
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in state)
    save_file(state, str(tmp_path / "model.safetensors"))
    shutil.copy(path / "config.json", tmp_path / "config.json")

    def load(where: Path) -> Transformer:
        checkpoint = open_checkpoint(where)
        model = Transformer(checkpoint.model_config(), CPU, torch.float32, seed=None)
        from engine.checkpoint import load_weights

        load_weights(model, checkpoint, progress=False)
        return model

    stacked, per_expert = load(tmp_path), load(path)
    for (name, a), (_, b) in zip(stacked.named_parameters(), per_expert.named_parameters()):
        assert torch.equal(a, b), name


# --- a broken checkpoint: one line naming what and where -----------------------------------------------


def _copy(saved: dict[str, tuple[Path, Any]], family: str, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(saved[family][0], target)
    return target


def _edit_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _engine(path: Path) -> Engine:
    checkpoint = open_checkpoint(path)
    return Engine(checkpoint.model_config(), SchedulerConfig(), device="cpu", checkpoint=checkpoint)


def test_an_unsupported_architecture_names_the_supported_ones(saved, tmp_path):
    path = _copy(saved, "mixtral", tmp_path)
    _edit_config(path, architectures=["LlamaForCausalLM"])
    with pytest.raises(ConfigError) as error:
        open_checkpoint(path)
    assert str(error.value) == (
        "unsupported architecture LlamaForCausalLM (supported: Qwen3MoeForCausalLM, Qwen2MoeForCausalLM, "
        "OlmoeForCausalLM, MixtralForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM)"
    )


def test_a_missing_shard_is_named(saved, tmp_path):
    path = _copy(saved, "qwen2_moe", tmp_path)
    shard = sorted(path.glob("*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ConfigError, match=rf"shard {shard.name} is missing \(model.safetensors.index.json lists "):
        open_checkpoint(path)


def test_a_tensor_whose_shape_does_not_match_the_config_names_file_and_tensor(saved, tmp_path, monkeypatch):
    """Found from the shards' headers before any weight is allocated or read."""
    import engine.engine

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were loaded before the checkpoint was checked")

    monkeypatch.setattr(engine.engine, "load_weights", never)
    path = _copy(saved, "qwen3_moe", tmp_path)
    _edit_config(path, moe_intermediate_size=48)
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    with pytest.raises(ConfigError) as error:
        _engine(path)
    message = str(error.value)
    assert "\n" not in message
    shard, tensor = message.split(": tensor ")[0], message.split(": tensor ")[1].split(" ")[0]
    assert index[tensor] == shard
    assert "has shape" in message and "config.json makes it" in message and "48" in message


def test_a_parameter_never_filled_is_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _copy(saved, "olmoe", tmp_path)
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    shard = path / index["model.layers.1.self_attn.q_norm.weight"]
    tensors = load_file(str(shard))
    del tensors["model.layers.1.self_attn.q_norm.weight"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"no tensor filled layers\.1\.attention\.q_norm\.weight \(0 of 64 values\)"):
        _engine(path)


def test_a_tensor_of_no_known_place_is_named_and_rope_caches_are_skipped(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _copy(saved, "mixtral", tmp_path)
    shard = sorted(path.glob("*.safetensors"))[0]
    tensors = load_file(str(shard))
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)  # older checkpoints hold these
    save_file(tensors, str(shard), metadata={"format": "pt"})
    _engine(path)
    tensors["model.layers.0.mystery.weight"] = torch.zeros(3)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(
        ConfigError, match=rf"^{shard.name}: tensor model.layers.0.mystery.weight is not a weight of MixtralForCausalLM"
    ):
        _engine(path)


def test_a_checkpoint_too_big_says_the_bytes_needed_and_available(saved, tmp_path, monkeypatch):
    import engine.config

    monkeypatch.setattr(engine.config, "available_bytes", lambda device: 1_000_000)
    path, _ = saved["qwen3_moe"]
    with pytest.raises(
        ConfigError, match=rf"model '{path.name}' needs \d+\.\d\d GB on cpu .* but only 0\.00 GB is available"
    ):
        _engine(path)


def test_first_layers_only_load_with_fewer_layers(saved):
    """`--layers 1` with a checkpoint keeps its first layer: the second's tensors are skipped."""
    path, hf = saved["qwen2_moe"]
    checkpoint = open_checkpoint(path)
    engine = Engine(checkpoint.model_config(layers=1), SchedulerConfig(), device="cpu", checkpoint=checkpoint)
    ours = engine.model.layers[0].attention.wqkv  # type: ignore[union-attr]
    theirs = hf.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(ours[: theirs.shape[0]], theirs)
    with pytest.raises(ConfigError, match="has 2 layers; cannot keep 3"):
        checkpoint.model_config(layers=3)


# --- the command line -----------------------------------------------------------------------------------


def test_record_with_a_checkpoint_names_it_in_the_trace_header(saved, tmp_path, capsys):
    import hashlib

    import tracer
    from tui.cli import main

    path, _ = saved["mixtral"]
    out = tmp_path / "mixtral.msgpack"
    args = ["record", "--model", str(path), "--workload", "smoke", "--duration", "1", "--device", "cpu"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    trace = tracer.load(out)
    config = trace.header.config
    assert config["checkpoint"] == {
        "name": path.name,
        "architecture": "MixtralForCausalLM",
        "config_sha256": hashlib.sha256((path / "config.json").read_bytes()).hexdigest(),
        "dtype": "float32",
    }
    assert config["preset"] is None and config["model"]["name"] == path.name
    assert trace.ticks.height > 0 and trace.experts["expert"].max() < 8


def test_record_refuses_a_checkpoint_with_a_preset_or_distributed(saved, tmp_path, capsys):
    from tui.cli import main

    path, _ = saved["olmoe"]
    out = tmp_path / "x.msgpack"
    args = ["record", "--model", str(path), "--workload", "smoke", "--device", "cpu", "--out", str(out)]
    with pytest.raises(SystemExit) as exited:  # argparse's own error: exit code 2
        main([*args, "--preset", "tiny"])
    assert exited.value.code == 2
    assert "argument --preset: not allowed with argument --model" in capsys.readouterr().err
    assert main([*args, "--distributed", "--stages", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be combined with --distributed" in err
    assert not out.exists()


def test_record_says_a_broken_checkpoint_in_one_line(saved, tmp_path, capsys):
    from tui.cli import main

    path = _copy(saved, "qwen3_moe", tmp_path)
    _edit_config(path, architectures=["GPT2LMHeadModel"])
    out = tmp_path / "x.msgpack"
    assert main(["record", "--model", str(path), "--workload", "smoke", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tickscope record: error: unsupported architecture GPT2LMHeadModel (supported: ")
    assert len(err.splitlines()) == 1 and not out.exists()
    assert main(["record", "--model", str(tmp_path / "nowhere"), "--workload", "smoke", "--out", str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_serve_and_sweep_take_a_checkpoint(saved, tmp_path):
    from workloads.serve import ServePlan, Server
    from workloads.sweep import SweepPlan

    path, _ = saved["qwen2_moe"]
    server = Server(ServePlan(trace=tmp_path / "served.msgpack", port=0, device="cpu", model=str(path)))
    config = server._session_config(0)
    assert config["checkpoint"]["architecture"] == "Qwen2MoeForCausalLM" and config["preset"] is None
    assert server.engine.model_cfg.shared_gate and server.engine.model_cfg.attention_bias
    sweep = SweepPlan("tiny", "smoke", [0, 5], tmp_path, model=str(path))
    assert {sweep.recording_plan(point).model for point in sweep.grid()} == {str(path)}


def test_a_shard_that_is_no_safetensors_file_is_named(saved, tmp_path):
    path = _copy(saved, "mixtral", tmp_path)
    shard = sorted(path.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])  # cut short, as an interrupted download leaves it
    with pytest.raises(ConfigError, match=rf"^{shard.name}: not a readable safetensors file \("):
        _engine(path)
