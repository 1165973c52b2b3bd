"""What a token costs (tracer/cost.py) and the device probe stored in the header (engine/probe.py)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

import tracer
from engine.batch import SeqChunk, make_batch
from engine.config import ModelConfig, get_preset
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.probe import probe
from tracer.cost import (
    ACCELERATORS_ENV,
    NO_TICKS,
    AcceleratorError,
    CostUnavailable,
    ModelShape,
    accelerator,
    accelerator_names,
    cost_summary,
    expected_distinct_experts,
    measured_ticks,
    modelled_columns,
    span_summary,
    tick_costs,
)
from tracer.events import SessionHeader
from tracer.synth import synthetic_session

TRACES = Path(__file__).resolve().parent.parent / "traces"
SAMPLES = ("tiny-local-single-user", "tiny-article-5ms", "tiny-article-200ms")  # most to least costly


@pytest.fixture(scope="module")
def samples() -> dict[str, tracer.Trace]:
    return {name: tracer.load(TRACES / f"{name}.msgpack") for name in SAMPLES}


def header_config(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """What Engine.describe() writes about the model."""
    return {
        "model": {**cfg.as_dict(), "dtype": str(dtype).removeprefix("torch.")},
        "kv_bytes_per_token": cfg.kv_bytes_per_token(dtype),
        "param_bytes": cfg.param_bytes(dtype),
    }


def weightless_model(cfg: ModelConfig, dtype: torch.dtype) -> Transformer:
    """The engine's real modules with no storage: fake tensors are meta tensors underneath (a meta
    device proper cannot be asked for, as the model draws its weights from a torch.Generator)."""
    with FakeTensorMode():
        return Transformer(cfg, torch.device("cpu"), dtype)


# --- the byte and FLOP model against the engine's own modules -------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "dtype"),
    [
        (get_preset("tiny"), torch.float32),
        (get_preset("ds2-lite", layers=2), torch.bfloat16),  # latent attention; a dense first layer
        (get_preset("v3-slice", layers=1, vocab_size=512), torch.bfloat16),  # queries through a latent
    ],
)
def test_weight_bytes_equal_the_parameters_a_tick_touches(cfg: ModelConfig, dtype: torch.dtype) -> None:
    model = weightless_model(cfg, dtype)
    shape = ModelShape.from_config(header_config(cfg, dtype))
    rng = np.random.default_rng(1)
    tokens = 37
    active = [  # a dense layer routes nothing
        rng.choice(
            cfg.routed_experts,
            size=0 if i < cfg.first_k_dense_replace else rng.integers(1, cfg.routed_experts + 1),
            replace=False,
        )
        for i in range(cfg.layers)
    ]

    touched = 0
    for name, p in model.named_parameters():
        if name == "embed":  # only the rows of the tick's tokens
            touched += tokens * p[0].numel() * p.element_size()
        elif name.endswith(("moe.w13", "moe.w2")):  # stacked routed experts: the active ones only
            layer = int(name.split(".")[1])
            touched += len(active[layer]) * p[0].numel() * p.element_size()
        else:
            touched += p.numel() * p.element_size()

    distinct = np.array([[len(a) for a in active]])
    assert shape.weight_bytes(np.array([tokens]), distinct)[0] == touched
    assert shape.kv_bytes_per_token == cfg.kv_bytes_per_token(dtype)


@pytest.mark.parametrize(
    "cfg", [get_preset("tiny"), get_preset("ds2-lite", layers=2), get_preset("v3-slice", layers=1, vocab_size=512)]
)
def test_token_flops_are_twice_the_matmul_parameters_a_token_touches(cfg: ModelConfig) -> None:
    model = weightless_model(cfg, torch.float32)
    shape = ModelShape.from_config(header_config(cfg, torch.float32))
    per_token = 0
    for name, p in model.named_parameters():
        if name.endswith(("moe.w13", "moe.w2")):
            per_token += cfg.top_k * p[0].numel()
        elif p.dim() == 2 and name not in ("embed", "lm_head"):  # norms are not matmuls; LM head: sampled rows only
            per_token += p.numel()
    assert shape.token_flops == 2 * per_token
    lm_head = 2 * cfg.hidden * cfg.vocab_size
    assert shape.flops(np.array([10]), np.array([3]), np.array([0]))[0] == 10 * shape.token_flops + 3 * lm_head


@pytest.mark.parametrize(
    "cfg",
    [
        get_preset("ds2-lite", layers=2, hidden=256, heads=4, intermediate_size=64, moe_intermediate=32),
        get_preset("v3-slice", layers=1, hidden=256, heads=4, q_lora_rank=48, moe_intermediate=32),
    ],
)
def test_attention_flops_are_what_torch_counts_for_a_decode_query(cfg: ModelConfig) -> None:
    """One decode token against 100 cached keys through a layer of multi-head latent attention, absorbed:
    its projections, and its scores and value mix, as torch's FLOP counter sees them. (Its SDPA with
    enable_gqa over several K/V heads, grouped-query attention's, is not counted by it.)"""
    cpu = torch.device("cpu")
    model = Transformer(cfg, cpu, torch.float32)
    kv = KVCache(cfg, 128, cpu, torch.float32)
    kv.allocator.grow(0, 100)
    batch = make_batch([SeqChunk([1], 99, kv.allocator.blocks(0, 100), kv.allocator.block_size, True)], cpu)
    attention = model.layers[0].attention
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        attention(torch.randn(1, cfg.hidden), batch, model.rope_cos[99:100], model.rope_sin[99:100], kv.k[0], kv.v[0])
    shape = ModelShape.from_config(header_config(cfg, torch.float32))
    matrices = sum(p.numel() for p in attention.parameters() if p.dim() == 2)
    assert counter.get_total_flops() == 2 * matrices + shape.attention_flops_per_key // cfg.layers * 100


def test_bytes_rise_with_distinct_experts_and_dense_bytes_ignore_the_batch() -> None:
    cfg = get_preset("ds2-lite", layers=4)
    shape = ModelShape.from_config(header_config(cfg, torch.bfloat16))
    per_layer = np.arange(0, cfg.routed_experts + 1)
    distinct = np.repeat(per_layer[:, None], cfg.layers, axis=1)
    weights = shape.weight_bytes(np.full(len(per_layer), 8), distinct)
    assert np.all(np.diff(weights) == cfg.layers * shape.expert_bytes)

    tokens = np.array([1, 8, 64, 512])
    same_experts = np.full((len(tokens), cfg.layers), 6)
    dense = shape.weight_bytes(tokens, same_experts) - tokens * cfg.hidden * shape.itemsize
    assert np.all(dense == dense[0])
    assert dense[0] == shape.dense_bytes + 6 * cfg.layers * shape.expert_bytes


def test_uniform_expectation_of_distinct_experts() -> None:
    e, k = 64, 6
    assert expected_distinct_experts(0, e, k) == 0
    assert expected_distinct_experts(1, e, k) == pytest.approx(k)
    assert expected_distinct_experts(10_000, e, k) == pytest.approx(e)
    assert np.all(np.diff(expected_distinct_experts(np.arange(200), e, k)) > 0)


def test_a_header_without_a_model_cannot_be_costed() -> None:
    with pytest.raises(CostUnavailable, match="no model shape") as err:
        ModelShape.from_config({"target": "http://127.0.0.1:8000"})
    assert err.value.reason and "\n" not in err.value.reason
    with pytest.raises(CostUnavailable, match="hidden"):
        ModelShape.from_config({"model": {"layers": 4, "experts": 16, "top_k": 2}})  # tracer/synth.py's header


# --- the shipped samples ----------------------------------------------------------------------------------


def test_samples_cost_less_per_token_as_the_batch_grows(samples: dict[str, tracer.Trace]) -> None:
    summaries = [cost_summary(samples[name]) for name in SAMPLES]
    for key in ("device_s_per_token", "bytes_per_token", "weight_bytes_per_token"):
        values = [s[key] for s in summaries]
        assert values[0] > values[1] > values[2], (key, values)
    touched = [s["experts_touched_per_layer"] for s in summaries]
    assert touched[0] < touched[1] < touched[2] <= 16
    for s in summaries:
        assert s["unavailable"] is None
        assert 0 < s["utilization"] < 1
        assert s["capacity_output_tok_s"] > s["served_rate_tok_s"]  # the device idled: served below capacity
    # the same requests in both article samples: KV read and FLOPs per token do not depend on the batching
    for key in ("flops_per_token", "kv_read_bytes_per_token"):
        assert summaries[1][key] == pytest.approx(summaries[2][key])


def test_measured_figures_follow_their_definitions(samples: dict[str, tracer.Trace]) -> None:
    trace = samples["tiny-article-200ms"]
    s = cost_summary(trace, price=2.0)
    busy = float(trace.ticks.get_column("forward_s").sum())
    processed = int((trace.ticks.get_column("prefill_tokens") + trace.ticks.get_column("decode_tokens")).sum())
    output = int(trace.ticks.get_column("sampled_tokens").sum())
    assert s["busy_s"] == pytest.approx(busy) and s["device_s"] == pytest.approx(busy)
    assert s["device_s_per_token"] == pytest.approx(busy / processed)
    assert s["device_s_per_output_token"] == pytest.approx(busy / output)
    assert s["capacity_output_tok_s"] == pytest.approx(output / busy)
    assert s["served_rate_tok_s"] == pytest.approx(output / s["span_s"])
    assert s["usd_per_mtok_measured"] == pytest.approx(busy * 2.0 / 3600 / output * 1e6)
    assert cost_summary(trace)["usd_per_mtok_measured"] is None


def test_modelled_cost_on_an_accelerator(samples: dict[str, tracer.Trace]) -> None:
    trace = samples["tiny-article-5ms"]
    h100 = accelerator("H100-SXM")
    costs = tick_costs(trace, h100)
    expected = np.maximum(
        costs["bytes"].to_numpy() / h100.bandwidth_bytes_s, costs["flops"].to_numpy() / h100.peak_flop_s
    )
    assert np.allclose(costs["roofline_s"].to_numpy(), expected)

    s = cost_summary(trace, h100)
    on = s["accelerator"]
    assert on["label"] == "modelled" and on["name"] == "H100-SXM"
    assert on["roofline_s"] == pytest.approx(costs["roofline_s"].sum())
    assert on["usd_per_mtok_modelled"] == pytest.approx(on["roofline_s"] * 3.0 / 3600 / s["output_tokens"] * 1e6)
    assert cost_summary(trace, h100, price=6.0)["accelerator"]["usd_per_mtok_modelled"] == pytest.approx(
        2 * on["usd_per_mtok_modelled"]
    )


def test_span_summary_of_a_window_of_ticks(samples: dict[str, tracer.Trace]) -> None:
    trace = samples["tiny-article-5ms"]
    shape = ModelShape.from_config(trace.header.config)
    costs = tick_costs(trace)
    window = costs.slice(100, 50)
    span = float(window["end_s"].max() - window["start_s"].min())
    s = span_summary(window, span, shape)
    assert s["ticks"] == 50
    assert s["bytes_per_token"] == pytest.approx(window["bytes"].sum() / window["processed_tokens"].sum())
    assert s["experts_touched_per_layer"] == pytest.approx(window["distinct_experts"].sum() / (50 * shape.layers))


# --- traces that lack something ---------------------------------------------------------------------------


def test_expert_counts_from_the_frame_and_ticks_without_them(samples: dict[str, tracer.Trace]) -> None:
    trace = samples["tiny-article-200ms"]
    stacked = tick_costs(trace)
    from_frame = tick_costs(dataclasses.replace(trace, expert_load=None))  # shapes changed midway: no stack
    assert from_frame["distinct_experts"].to_list() == stacked["distinct_experts"].to_list()

    keep = np.arange(len(trace.expert_ticks)) % 2 == 0  # every other expert event lost
    halved = tick_costs(
        dataclasses.replace(trace, expert_ticks=trace.expert_ticks[keep], expert_load=trace.expert_load[keep])
    )
    assert halved["bytes"].null_count() == (~keep).sum()
    assert halved["bytes"].drop_nulls().to_list() == stacked["bytes"].filter(keep).to_list()


def test_a_trace_without_a_model_keeps_its_measured_figures() -> None:
    header, events = synthetic_session(30)
    header.config.pop("model")  # a header written by hand, or by a tool that does not know the model
    trace = tracer.from_events(header, events)
    with pytest.raises(CostUnavailable):
        tick_costs(trace)
    s = cost_summary(trace, accelerator("H200"))
    assert s["unavailable"] and "model" in s["unavailable"]
    assert s["bytes_per_token"] is None and s["accelerator"] is None
    assert s["device_s_per_token"] > 0


def test_a_client_side_trace_has_no_cost_and_says_why() -> None:
    header, events = synthetic_session(30)
    client_header = SessionHeader(header.t0_mono_ns, header.t0_wall_ns, {"target": "http://127.0.0.1:8000"})
    client = tracer.from_events(client_header, [e for e in events if isinstance(e, tracer.RequestEvent)])
    s = cost_summary(client, accelerator("H100-SXM"), price=3.0)
    assert s["unavailable"] == NO_TICKS
    assert s["ticks"] == 0 and s["device_s_per_token"] is None and s["usd_per_mtok_measured"] is None


def test_a_pipelined_tick_is_busy_for_its_makespan_on_one_device_per_stage() -> None:
    header, events = synthetic_session(20, stages=2, micro_batches=2, tick_ns=2_000_000)
    trace = tracer.from_events(header, events)
    ticks = measured_ticks(trace)
    # Worked out from the cells by hand: the modelled timeline's first start to its last end.
    stages = trace.stages
    for tick, busy in zip(ticks["tick"].to_list(), ticks["busy_s"].to_list()):
        cells = stages.filter(pl.col("tick") == tick)
        assert busy == pytest.approx(cells["modelled_end_s"].max() - cells["modelled_start_s"].min())
        assert busy < (cells["modelled_end_s"] - cells["modelled_start_s"]).sum()  # stages overlapped
    assert (ticks["devices"] == 2).all()
    s = cost_summary(trace)
    assert s["device_s"] == pytest.approx(2 * s["busy_s"])


# --- accelerator profiles -------------------------------------------------------------------------------


def test_shipped_profiles() -> None:
    names = accelerator_names()
    for name in ("H100-SXM", "H200", "A100-80GB", "L40S", "MI300X", "this-device"):
        assert name in names
    h200 = accelerator("h200")  # any case
    assert h200.bandwidth_bytes_s == 4.8e12 and h200.usd_per_hour > 0
    assert accelerator("H200", usd_per_hour=9.5).usd_per_hour == 9.5


def test_an_unknown_accelerator_names_the_known_ones() -> None:
    with pytest.raises(AcceleratorError) as err:
        accelerator("TPU-v9")
    message = str(err.value)
    assert "\n" not in message and "TPU-v9" in message
    assert all(name in message for name in accelerator_names())


def test_a_user_file_adds_and_overrides_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text("[H100-SXM]\nusd_per_hour = 1.25\n\n[B200]\nbandwidth_bytes_s = 8e12\npeak_flop_s = 2.25e15\n")
    h100 = accelerator("H100-SXM", path=mine)
    assert h100.usd_per_hour == 1.25 and h100.bandwidth_bytes_s == 3.35e12  # only the price changed
    assert accelerator("b200", path=mine).peak_flop_s == 2.25e15
    assert accelerator("H100-SXM").usd_per_hour == 3.0

    monkeypatch.setenv(ACCELERATORS_ENV, str(mine))
    assert accelerator("B200").bandwidth_bytes_s == 8e12
    later = tmp_path / "later.toml"
    later.write_text("[B200]\nusd_per_hour = 7\n")
    assert accelerator("B200", path=later).usd_per_hour == 7  # the path comes after the environment's file


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[X]\nbandwidth_bytes_s = 1e12\n", "needs peak_flop_s"),
        ("[X]\nbandwidth_bytes_s = 1e12\npeak_flop_s = 1e14\nwatts = 700\n", "unknown field 'watts'"),
        ("[H200]\nusd_per_hour = -1\n", "positive"),
        ("[X\n", "not valid TOML"),
    ],
)
def test_a_bad_profile_file_is_one_line(tmp_path: Path, text: str, match: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(AcceleratorError, match=match) as err:
        accelerator("H200", path=bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_this_device_comes_from_the_header_probe() -> None:
    config = {
        "device_probe": {"copy_bytes_per_s": 2e10, "matmul_flop_per_s": 1e11, "dtype": "float32", "device": "cpu"}
    }
    here = accelerator("this-device", config)
    assert (here.bandwidth_bytes_s, here.peak_flop_s, here.usd_per_hour) == (2e10, 1e11, None)
    assert accelerator("this-device", config, usd_per_hour=0.5).usd_per_hour == 0.5
    with pytest.raises(CostUnavailable, match="no device probe"):
        accelerator("this-device", {"model": {}})


# --- the device probe -------------------------------------------------------------------------------------


def test_the_probe_is_short_and_measures_something() -> None:
    t = time.perf_counter()
    result = probe(torch.device("cpu"), torch.float32)
    assert time.perf_counter() - t < 1.0
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    assert result["copy_bytes_per_s"] > 1e8 and result["matmul_flop_per_s"] > 1e8


def test_a_recording_header_carries_the_probe() -> None:
    from engine.engine import Engine
    from engine.scheduler import SchedulerConfig
    from workloads.run import session_config

    engine = Engine(get_preset("tiny"), SchedulerConfig(), device="cpu")
    config = session_config(engine, "tiny", 0)
    assert config["device_probe"]["dtype"] == "float32"
    here = accelerator("this-device", config)
    assert here.bandwidth_bytes_s == config["device_probe"]["copy_bytes_per_s"]


def test_experts_per_layer_count_the_moe_layers_only() -> None:
    """ds2-lite's first layer is dense: it routes nothing, so experts touched per layer, and uniform
    routing's expectation, are over its MoE layers."""
    cfg = get_preset("ds2-lite", layers=3)
    shape = ModelShape.from_config(header_config(cfg, torch.bfloat16))
    costs = pl.DataFrame({"busy_s": [0.5], "devices": [1], "processed_tokens": [10], "output_tokens": [2]})
    costs = modelled_columns(costs, np.array([100]), np.array([12.0]), shape)
    summary = span_summary(costs, 1.0, shape)
    assert summary["experts_touched_per_layer"] == 6.0  # 12 over 2 MoE layers
    assert summary["experts_expected_uniform"] == pytest.approx(64 * (1 - (1 - 6 / 64) ** 10))
