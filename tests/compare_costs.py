"""What a token costs, recomputed for the compare and sweep tests straight from a loaded trace's frames,
not through tracer/cost.py or summarize().

Measured figures come from the ticks (and, for a pipelined tick, its stage cells); modelled ones from
the header's model written out as the engine's parameter list (tests/test_cost.py checks that byte
model against the engine's own modules).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import polars as pl

import tracer

ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
ROUTER_ITEMSIZE = 4  # engine/model.py keeps the router in float32
PROFILES = Path(__file__).resolve().parent.parent / "tracer" / "accelerators.toml"


def profile(name: str) -> dict[str, float]:
    """A shipped accelerator profile, read from the TOML file itself."""
    return tomllib.loads(PROFILES.read_text())[name]


def probe_profile(trace: tracer.Trace) -> dict[str, float]:
    """`this-device`: the header's device probe, as a profile without a price."""
    probe = trace.header.config["device_probe"]
    return {"bandwidth_bytes_s": probe["copy_bytes_per_s"], "peak_flop_s": probe["matmul_flop_per_s"]}


def busy_and_devices(trace: tracer.Trace) -> tuple[np.ndarray, np.ndarray]:
    """Per tick: its forward time on one device, or with stage cells the makespan of its timeline on
    one device per stage."""
    ticks = trace.ticks
    busy = ticks["forward_s"].to_numpy().astype(float)
    devices = np.ones(ticks.height)
    for tick, cells in trace.stages.group_by("tick"):
        at = int(np.flatnonzero(ticks["tick"].to_numpy() == tick[0])[0])
        busy[at] = cells["modelled_end_s"].max() - cells["modelled_start_s"].min()
        devices[at] = cells["stage"].n_unique()
    return busy, devices


def span(trace: tracer.Trace) -> float:
    times = np.concatenate(
        [
            trace.ticks["start_s"].to_numpy(),
            trace.ticks["end_s"].to_numpy(),
            trace.requests["arrival_s"].drop_nulls().to_numpy(),
            trace.requests["finish_s"].drop_nulls().to_numpy(),
        ]
    )
    return float(times.max() - times.min())


def tick_bytes_and_flops(trace: tracer.Trace) -> tuple[np.ndarray, np.ndarray]:
    """Per tick: the bytes it reads and the FLOPs it does, by the engine's parameter list."""
    m, cfg = trace.header.config["model"], trace.header.config
    isz, h, layers = ITEMSIZE[m["dtype"]], m["hidden"], m["layers"]
    wqkv = h * (m["heads"] + 2 * m["kv_heads"]) * m["head_dim"]
    wo = m["heads"] * m["head_dim"] * h
    expert = 3 * h * m["moe_intermediate"]  # w13 (gate and up) and w2 of one expert
    per_layer = {"attention_norm": h, "wqkv": wqkv, "wo": wo, "moe_norm": h, "shared": m["shared_experts"] * expert}
    dense = (layers * sum(per_layer.values()) + h + h * m["vocab_size"]) * isz  # + final norm, LM head
    dense += layers * h * m["routed_experts"] * ROUTER_ITEMSIZE
    t = trace.ticks
    assert np.array_equal(trace.expert_ticks, t["tick"].to_numpy())  # every tick has its expert load
    distinct = (trace.expert_load > 0).sum(axis=(1, 2))
    processed = (t["prefill_tokens"] + t["decode_tokens"]).to_numpy()
    kv_used = t["kv_used"].to_numpy()
    nbytes = dense + processed * h * isz + distinct * expert * isz + kv_used * cfg["kv_bytes_per_token"]
    matmul = layers * (wqkv + wo + h * m["routed_experts"] + m["shared_experts"] * expert + m["top_k"] * expert)
    flops = (
        2 * matmul * processed
        + 2 * h * m["vocab_size"] * t["sampled_tokens"].to_numpy()
        + 4 * layers * m["heads"] * m["head_dim"] * kv_used
    )
    return nbytes.astype(float), flops.astype(float)


def independent_costs(
    trace: tracer.Trace, accelerator: dict[str, float] | None = None, price: float | None = None
) -> dict[str, float | None]:
    """The cost figures compare shows, keyed as `summarize` keys them ("accelerator.KEY" for the
    modelled accelerator's, on the `accelerator` profile given as its TOML fields)."""
    t = trace.ticks
    busy, devices = busy_and_devices(trace)
    device_s = float((busy * devices).sum())
    processed = float((t["prefill_tokens"] + t["decode_tokens"]).sum())
    output = float(t["sampled_tokens"].sum())
    nbytes, flops = tick_bytes_and_flops(trace)
    load = trace.expert_load
    experts, top_k = load.shape[2], trace.header.config["model"]["top_k"]
    uniform = experts * (1 - (1 - top_k / experts) ** (t["prefill_tokens"] + t["decode_tokens"]).to_numpy())
    figures: dict[str, float | None] = {
        "device_s_per_token": device_s / processed,
        "device_s_per_output_token": device_s / output,
        "capacity_output_tok_s": output / float(busy.sum()),
        "served_rate_tok_s": output / span(trace),
        "usd_per_mtok_measured": None if price is None else device_s * price / 3600 / output * 1e6,
        "bytes_per_token": float(nbytes.sum()) / processed,
        "experts_touched_per_layer": float((load > 0).sum(axis=2).mean()),
        "experts_expected_uniform": float(uniform.mean()),
    }
    if accelerator is not None:
        p = accelerator
        roofline = float(np.maximum(nbytes / p["bandwidth_bytes_s"], flops / p["peak_flop_s"]).sum())
        usd_per_hour = price if price is not None else p.get("usd_per_hour")
        figures["accelerator.capacity_output_tok_s"] = output / roofline
        figures["accelerator.usd_per_mtok_modelled"] = (
            None if usd_per_hour is None else roofline * usd_per_hour / 3600 / output * 1e6
        )
    return figures


def other_figures(trace: tracer.Trace) -> dict[str, float | None]:
    """The latency, request, batch and expert figures compare shows, from the frames."""
    req, ticks = trace.requests, trace.ticks
    done = req.filter(pl.col("status") == "finished")
    ttft, tpot = done["ttft_s"].drop_nulls().to_numpy(), done["tpot_s"].drop_nulls().to_numpy()
    slo = trace.header.config["workload"]["slo"]
    good = done.filter(
        (pl.col("ttft_s") <= slo["ttft_s"]) & (pl.col("tpot_s").is_null() | (pl.col("tpot_s") <= slo["tpot_s"]))
    )
    load = trace.expert_load.astype(float)  # [ticks, layers, experts]
    means = load.mean(axis=2)
    used = means > 0
    return {
        "ttft_p50_s": np.percentile(ttft, 50),
        "ttft_p99_s": np.percentile(ttft, 99),
        "tpot_p50_s": np.percentile(tpot, 50),
        "tpot_p99_s": np.percentile(tpot, 99),
        "goodput_req_s": good.height / span(trace),
        "mean_batch_seqs": ticks["seqs"].mean(),
        "expert_imbalance": (load.max(axis=2)[used] / means[used]).mean(),
        "requests_rejected": float((req["status"] == "rejected").sum()),
    }
