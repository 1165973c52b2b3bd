"""What a family adapter is, and the pieces the families share.

A family maps a Hugging Face checkpoint onto the one model of engine/model.py:

- `model_config`: its config.json (a dict) -> a ModelConfig with the family's switches set (routing,
  qk_norm, attention_bias, shared_gate), or a ConfigError naming the setting it cannot run;
- `placements`: a checkpoint tensor's name -> where it goes in our Transformer, as a list of
  Placements (one tensor may fill several places; an empty list: a tensor deliberately skipped, such
  as a layer past a `--layers` cut); None: not a weight of this family, which the loader refuses
  unless the name matches one of `ignorable`.

A Placement names one of our parameters (or buffers) as `Transformer.named_parameters()` does, the
slice of it the tensor fills (`model.get_parameter(param)[index].copy_(tensor)`), and whether the
checkpoint stores it transposed. The loader (engine/checkpoint.py) checks each tensor's shape against
its place, counts what it fills, and refuses a parameter left unfilled.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config import ModelConfig
from engine.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    param: str  # our parameter's name in Transformer.named_parameters() (or named_buffers())
    index: tuple[int | slice, ...] = ()  # where in it: model.get_parameter(param)[index].copy_(tensor)
    transpose: bool = False  # the checkpoint stores the tensor the other way round


@dataclass(frozen=True)
class Family:
    architectures: tuple[str, ...]  # config.json `architectures` names this adapter reads
    model_config: Callable[[dict[str, Any]], ModelConfig]  # config.json -> ModelConfig
    placements: Callable[[str, ModelConfig], list[Placement] | None]  # tensor name -> where it goes
    ignorable: tuple[str, ...] = ()  # regular expressions of tensors that are no weights of ours


# --- config.json --------------------------------------------------------------------------------------


def read_int(config: dict[str, Any], *keys: str, default: int | None = None) -> int:
    """The first of `keys` config.json has, as a positive whole number (or 0 where a count may be)."""
    for key in keys:
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"config.json: {key} must be a whole number, got {value!r}")
        return value
    if default is None:
        raise ConfigError(f"config.json has no {' or '.join(keys)}")
    return default


def rope_theta(config: dict[str, Any]) -> float:
    """The RoPE base of plain (unscaled) RoPE over the whole head; anything else is refused."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ConfigError(f"config.json: RoPE scaling '{kind}' is not supported (plain RoPE only)")
    if params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError("config.json: partial_rotary_factor is not supported (RoPE over the whole head only)")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def check_silu(config: dict[str, Any]) -> None:
    """Refuse an activation other than silu: every feed-forward of ours is a SwiGLU."""
    if config.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"config.json: hidden_act '{config['hidden_act']}' is not supported (SwiGLU with silu only)")


def decoder_fields(config: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig's fields every family reads alike: widths, attention heads, RoPE, norms, context.

    A sliding window caps the context: within it, windowed attention is full attention."""
    check_silu(config)
    hidden, heads = read_int(config, "hidden_size"), read_int(config, "num_attention_heads")
    context = read_int(config, "max_position_embeddings", default=4096)
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    if isinstance(window, int) and window > 0:
        context = min(context, window)
    return {
        "vocab_size": read_int(config, "vocab_size"),
        "hidden": hidden,
        "layers": read_int(config, "num_hidden_layers"),
        "heads": heads,
        "kv_heads": read_int(config, "num_key_value_heads", default=heads),
        "head_dim": read_int(config, "head_dim", default=hidden // max(heads, 1)),
        "rope_theta": rope_theta(config),
        "norm_eps": float(config.get("rms_norm_eps", 1e-6)),
        "max_seq_len": context,
        "router_skew": 0.0,  # the checkpoint's router decides
    }


def every_layer_sparse(config: dict[str, Any]) -> None:
    """Refuse Qwen's dense-MLP layers (`mlp_only_layers`, `decoder_sparse_step`): every layer of ours is MoE."""
    if config.get("mlp_only_layers") or read_int(config, "decoder_sparse_step", default=1) != 1:
        raise ConfigError(
            "config.json: layers with a dense MLP (mlp_only_layers, decoder_sparse_step) are not supported"
        )


# --- tensor names -------------------------------------------------------------------------------------

LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")  # a layer's tensor: its index, and the rest of its name
# The tensors every family names alike (Llama's names): the whole model's, and each layer's norms
TOP = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm.weight", "lm_head.weight": "lm_head"}
NORMS = {"input_layernorm.weight": "attention_norm.weight", "post_attention_layernorm.weight": "moe_norm.weight"}
_EXPERT = re.compile(r"experts\.(\d+)\.(\w+)\.weight")


def _rows(cfg: ModelConfig) -> dict[str, slice]:
    """Where q, k and v sit in the fused q|k|v projection."""
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv)}


def decoder_placements(name: str, cfg: ModelConfig) -> list[Placement] | None:
    """The places of the tensors every family names alike (Llama's names): the embedding, the final
    norm, the LM head, and each layer's norms and attention. None: a name that is not one of them."""
    if name in TOP:
        return [Placement(TOP[name])]
    layer = LAYER.fullmatch(name)
    if layer is None:
        return None
    i, rest = int(layer.group(1)), layer.group(2)
    if i >= cfg.layers:  # past a --layers cut: known, and skipped
        return []
    if rest in NORMS:
        return [Placement(f"layers.{i}.{NORMS[rest]}")]
    attention = re.fullmatch(r"self_attn\.([qkvo])_proj\.(weight|bias)", rest)
    if attention is not None:
        which, kind = attention.groups()
        if which == "o":
            return [Placement(f"layers.{i}.attention.wo")] if kind == "weight" else None
        param = "wqkv" if kind == "weight" else "bqkv"
        return [Placement(f"layers.{i}.attention.{param}", (_rows(cfg)[which],))]
    qk_norm = re.fullmatch(r"self_attn\.([qk])_norm\.weight", rest)
    if qk_norm is not None:
        return [Placement(f"layers.{i}.attention.{qk_norm.group(1)}_norm.weight")]
    return None


def expert_placements(
    name: str, cfg: ModelConfig, block: str, router: str, projections: dict[str, str]
) -> list[Placement] | None:
    """The places of a layer's router and routed experts, under `block` (`mlp`, Mixtral's
    `block_sparse_moe`): per expert as checkpoints on the Hub name them (`experts.3.gate_proj.weight`;
    `projections` maps the family's names onto gate, up and down), or stacked as transformers v5
    holds them (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj` [E, H, I])."""
    layer = LAYER.fullmatch(name)
    if layer is None or not layer.group(2).startswith(f"{block}."):
        return None
    i, rest = int(layer.group(1)), layer.group(2).removeprefix(f"{block}.")
    if i >= cfg.layers:
        return []
    here, inter = f"layers.{i}.moe", cfg.moe_intermediate
    if rest == f"{router}.weight":
        return [Placement(f"{here}.router")]
    stacked = {"experts.gate_up_proj": "w13", "experts.down_proj": "w2"}
    if rest in stacked:
        return [Placement(f"{here}.{stacked[rest]}")]
    expert = _EXPERT.fullmatch(rest)
    if expert is None or expert.group(2) not in projections:
        return None
    e, which = int(expert.group(1)), projections[expert.group(2)]
    if which == "down":
        return [Placement(f"{here}.w2", (e,))]
    return [Placement(f"{here}.w13", (e, slice(0, inter) if which == "gate" else slice(inter, 2 * inter)))]


def swiglu_placements(rest: str, module: str, width: int, w13: str, w2: str) -> list[Placement] | None:
    """A dense SwiGLU's `gate_proj`, `up_proj` (into our fused gate|up `w13`, `width` rows each) and
    `down_proj` (`w2`) under `module`; None for another name."""
    rows = {"gate_proj.weight": slice(0, width), "up_proj.weight": slice(width, 2 * width)}
    if rest in rows:
        return [Placement(f"{module}.{w13}", (rows[rest],))]
    return [Placement(f"{module}.{w2}")] if rest == "down_proj.weight" else None


HUB_PROJECTIONS = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


def softmax_experts(config: dict[str, Any], moe_intermediate: int) -> dict[str, Any]:
    """ModelConfig's routed-expert fields of the families that route by softmax over every expert and
    take the top-k, renormalised only when `norm_topk_prob` says so (Qwen2/3-MoE, OLMoE)."""
    return {
        "routed_experts": read_int(config, "num_experts", "num_local_experts"),
        "moe_intermediate": moe_intermediate,
        "top_k": read_int(config, "num_experts_per_tok"),
        "routing": "softmax",
        "norm_topk_prob": bool(config.get("norm_topk_prob", False)),
    }


def hub_placements(name: str, cfg: ModelConfig) -> list[Placement] | None:
    """A decoder tensor, or a router or routed expert under `mlp` named as on the Hub (`mlp.gate`,
    `mlp.experts.N.gate_proj|up_proj|down_proj`); None for another name."""
    found = decoder_placements(name, cfg)
    return found if found is not None else expert_placements(name, cfg, "mlp", "gate", HUB_PROJECTIONS)


# RoPE's inverse frequencies, which older checkpoints saved with the weights: we compute our own
ROTARY_CACHE = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)
