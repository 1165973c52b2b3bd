"""What a token costs: measured device time, modelled bytes and FLOPs, and dollars per million tokens.

Measured figures come from the recording's own device: each tick's busy time is its forward time or,
for a pipelined tick (one with stage cells), the makespan of its stage timeline with one device per
stage, which keeps those `devices` busy at once. Device time is busy time x devices: what is paid for.

Modelled figures come from the trace alone (the header's model shape; each tick's tokens, KV use and
distinct active experts), so they do not depend on the machine that recorded. A tick reads:

- every dense weight once: per layer both RMSNorms and attention (wqkv, wo; or, with multi-head latent
  attention, its projections and latent norms); per MoE layer the router (float32 whatever the model's
  dtype, as engine/model.py keeps it) and the shared experts; per dense first layer
  (`first_k_dense_replace`) its SwiGLU of `intermediate_size`; then the final norm and the LM head;
- the embedding rows of its processed tokens (prefill + decode);
- per MoE layer, its distinct active routed experts x one expert's bytes (3 x hidden x moe_intermediate);
- the KV cache: `kv_used` tokens x KV bytes per token (MLA: its latent and RoPE key). `kv_used` is what
  the cache holds *after* the tick, an upper bound on what attention read (it includes the K/V the tick
  wrote, and sequences that hold KV without being in the batch).

Left out: buffers (the router's popularity bias, E floats a layer; RoPE table rows) and activations. A
pipeline of M micro-batches reads each stage's weights M times; the model counts them once per tick.

A tick's FLOPs: 2 x the matmul parameters each token touches (attention, router, shared experts and
top_k routed experts, or a dense layer's SwiGLU) x processed tokens; 2 x the LM head x sampled tokens
(the engine computes logits for sampled rows only); attention 4 x layers x heads x head_dim x `kv_used`
(MLA, absorbed: layers x heads x (2 x (latent + RoPE) + 2 x latent) x `kv_used`: scores against the
cached rows, values mixed in latent space), as if each sequence holding KV ran one query over its
context. That approximation is exact for a decode tick over every running sequence and falls short of
a prefill chunk's causal triangle of queries.

Roofline time of a tick on an accelerator: max(bytes / bandwidth, FLOPs / peak), on one accelerator
that holds the whole model.

`cost_summary` (and `span_summary`, for any slice of `tick_costs`) returns these keys; every key is
always present and a figure without data is None:

    ticks                        ticks in the span
    span_s                       s; first..last of tick starts/ends and request arrivals/finishes
    busy_s                       s; sum of the ticks' busy time
    device_s                     device-s; sum of busy time x devices
    utilization                  busy_s / span_s
    processed_tokens             prefill + decode tokens
    output_tokens                sampled tokens (decode tokens in traces before format 1.3)
    device_s_per_token           device-s per processed token
    device_s_per_output_token    device-s per output token
    capacity_tok_s               processed tokens per busy second
    capacity_output_tok_s        output tokens per busy second
    served_rate_tok_s            output tokens per second of span: the offered load when open-loop
                                 (a trace without ticks: the requests' output tokens)
    price_usd_per_hour           $ per device-hour the measured cost uses (the caller's `price`)
    usd_per_mtok_measured        $ per million output tokens: device_s x price / 3600 / output x 1e6
    bytes_per_token              bytes read per processed token (weights + KV)
    weight_bytes_per_token       weight bytes read per processed token
    kv_read_bytes_per_token      KV bytes read per processed token
    flops_per_token              FLOPs per processed token
    arithmetic_intensity         FLOP/byte, over the span
    experts_touched_per_layer    mean distinct active routed experts per (tick, MoE layer)
    experts_expected_uniform     the same under uniform routing: E(1 - (1 - k/E)^T), T = tick's tokens
    accelerator                  None, or (modelled on the chosen accelerator):
        name                         profile name
        label                        "modelled"
        bandwidth_bytes_s            bytes/s
        peak_flop_s                  FLOP/s, dense bf16
        usd_per_hour                 $ per device-hour (None for this-device without a price)
        roofline_s                   s; sum of the ticks' roofline time
        roofline_s_per_token         s per processed token
        roofline_s_per_output_token  s per output token
        capacity_tok_s               processed tokens per roofline second
        capacity_output_tok_s        output tokens per roofline second
        memory_bound_share           share of roofline time in ticks bound by bandwidth
        usd_per_mtok_modelled        $ per million output tokens at the roofline
    unavailable                  None, or why figures are None (one line)

Modelled ratios are over the ticks with an expert-load event (all of them in an engine recording).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import polars as pl

from tracer.events import absent_mask
from tracer.frames import Trace, scalar_float, scalar_int
from tracer.pipeline import stage_ticks

THIS_DEVICE = "this-device"
ACCELERATORS_ENV = "TICKSCOPE_ACCELERATORS"

_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
_ROUTER_ITEMSIZE = 4  # engine/model.py keeps the router in float32 whatever the model's dtype
_SHAPE_FIELDS = (
    "vocab_size",
    "hidden",
    "layers",
    "heads",
    "kv_heads",
    "head_dim",
    "routed_experts",
    "moe_intermediate",
    "top_k",
    "shared_experts",
)
# multi-head latent attention and dense first layers (engine/config.py); 0 when absent: grouped-query
# attention, every layer MoE (and headers written before they existed)
_OPTIONAL_SHAPE_FIELDS = (
    "kv_lora_rank",
    "q_lora_rank",
    "qk_nope_head_dim",
    "v_head_dim",
    "first_k_dense_replace",
    "intermediate_size",
)
_PROFILE_FIELDS = ("bandwidth_bytes_s", "peak_flop_s", "usd_per_hour")
NO_TICKS = "no ticks in the trace (a client-side recording, `record --target`, has none)"


class CostUnavailable(ValueError):
    """The trace lacks what a cost figure needs; `reason` says what, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AcceleratorError(ValueError):
    """An unknown accelerator name, or a profile file that cannot be used; the message is one line."""


# ---------------------------------------------------------------------------------------------------
# The model's shape, and what a tick reads and computes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """The widths that decide a tick's bytes and FLOPs, read from a trace header."""

    name: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    routed_experts: int
    moe_intermediate: int
    top_k: int
    shared_experts: int
    itemsize: int  # bytes of one weight in the model's dtype
    kv_bytes_per_token: int  # K and V of one token, all layers
    kv_lora_rank: int = 0  # > 0: multi-head latent attention, head_dim its RoPE part
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    first_k_dense_replace: int = 0
    intermediate_size: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """The shape in a header's `config` (engine/engine.py `Engine.describe`)."""
        model = config.get("model") if isinstance(config, Mapping) else None
        if not isinstance(model, Mapping):
            raise CostUnavailable("the trace header has no model shape (a client-side recording?)")
        missing = [f for f in _SHAPE_FIELDS if not _is_count(model.get(f))]
        if missing:
            raise CostUnavailable(f"the trace header's model has no {', '.join(missing)}")
        dtype = model.get("dtype")
        if dtype not in _ITEMSIZE:
            raise CostUnavailable(f"the trace header's model dtype {dtype!r} is not one of {', '.join(_ITEMSIZE)}")
        itemsize = _ITEMSIZE[dtype]
        optional = {f: int(model[f]) if _is_count(model.get(f)) else 0 for f in _OPTIONAL_SHAPE_FIELDS}
        kv = config.get("kv_bytes_per_token")
        if not _is_count(kv):  # a header written by hand: the engine's own formula (engine/config.py)
            per_layer = 2 * model["kv_heads"] * model["head_dim"]
            if optional["kv_lora_rank"]:
                per_layer = optional["kv_lora_rank"] + model["head_dim"]
            kv = model["layers"] * per_layer * itemsize
        return cls(
            name=str(model.get("name", "")),
            **{f: int(model[f]) for f in _SHAPE_FIELDS},
            itemsize=itemsize,
            kv_bytes_per_token=int(kv),
            **optional,
        )

    @property
    def moe_layers(self) -> int:
        return self.layers - self.first_k_dense_replace

    @property
    def expert_bytes(self) -> int:
        """One routed expert: gate, up and down projections."""
        return 3 * self.hidden * self.moe_intermediate * self.itemsize

    @property
    def _attention_params(self) -> int:
        """One layer's attention matrices (MLA's: queries direct or through their latent, the latent and
        RoPE key, the latent's expansion to keys and values, the output)."""
        h, heads = self.hidden, self.heads
        if not self.kv_lora_rank:
            return h * (heads + 2 * self.kv_heads) * self.head_dim + heads * self.head_dim * h
        q_width = heads * (self.qk_nope_head_dim + self.head_dim)
        q = self.q_lora_rank * (h + q_width) if self.q_lora_rank else h * q_width
        r = self.kv_lora_rank
        kv = h * (r + self.head_dim) + r * heads * (self.qk_nope_head_dim + self.v_head_dim)
        return q + kv + heads * self.v_head_dim * h

    @property
    def _attention_norms(self) -> int:
        """One layer's RMSNorm weights: before attention and the feed-forward, and MLA's latent norms."""
        return 2 * self.hidden + (self.q_lora_rank + self.kv_lora_rank if self.kv_lora_rank else 0)

    @property
    def _shared_params(self) -> int:
        return 3 * self.hidden * self.moe_intermediate * self.shared_experts

    @property
    def _dense_layer_mlp(self) -> int:
        return 3 * self.hidden * self.intermediate_size

    @property
    def dense_bytes(self) -> int:
        """Weights every tick reads whatever its batch: all but the embedding and the routed experts."""
        h, dense_layers = self.hidden, self.first_k_dense_replace
        dtype_params = (
            self.layers * (self._attention_norms + self._attention_params)
            + self.moe_layers * self._shared_params
            + dense_layers * self._dense_layer_mlp
            + h
            + h * self.vocab_size
        )  # + final norm, LM head
        return dtype_params * self.itemsize + self.moe_layers * h * self.routed_experts * _ROUTER_ITEMSIZE

    @property
    def token_flops(self) -> int:
        """FLOPs of one processed token through the layers, attention scores aside."""
        h = self.hidden
        routed = self.top_k * 3 * h * self.moe_intermediate
        moe = self.moe_layers * (h * self.routed_experts + self._shared_params + routed)
        return 2 * (self.layers * self._attention_params + moe + self.first_k_dense_replace * self._dense_layer_mlp)

    @property
    def attention_flops_per_key(self) -> int:
        """FLOPs of one query (every head, every layer) against one cached key: scores and the value mix."""
        if self.kv_lora_rank:  # absorbed: scores over latent + RoPE, the mix over the latent
            return self.layers * self.heads * (2 * (self.kv_lora_rank + self.head_dim) + 2 * self.kv_lora_rank)
        return 4 * self.layers * self.heads * self.head_dim

    def weight_bytes(self, processed: np.ndarray, distinct: np.ndarray) -> np.ndarray:
        """Weight bytes each tick reads: dense weights, its tokens' embedding rows, its distinct experts.

        processed: [ticks] tokens; distinct: [ticks, layers] distinct active experts (or their sum over
        layers, [ticks]); NaN where unknown.
        """
        processed = np.asarray(processed, dtype=np.float64)
        experts = np.asarray(distinct, dtype=np.float64)
        if experts.ndim == 2:
            experts = experts.sum(axis=1)
        return self.dense_bytes + processed * (self.hidden * self.itemsize) + experts * self.expert_bytes

    def kv_bytes(self, kv_used: np.ndarray) -> np.ndarray:
        """KV bytes each tick reads, at most (see the module docstring)."""
        return np.asarray(kv_used, dtype=np.float64) * self.kv_bytes_per_token

    def flops(self, processed: np.ndarray, output: np.ndarray, kv_used: np.ndarray) -> np.ndarray:
        """FLOPs of each tick (attention approximated from `kv_used`, see the module docstring)."""
        attention = self.attention_flops_per_key
        return (
            np.asarray(processed, dtype=np.float64) * self.token_flops
            + np.asarray(output, dtype=np.float64) * (2 * self.hidden * self.vocab_size)
            + np.asarray(kv_used, dtype=np.float64) * attention
        )


def _is_count(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def expected_distinct_experts(tokens: np.ndarray | float, experts: int, top_k: int) -> np.ndarray:
    """Distinct experts T tokens reach in one layer if each picks k of E uniformly: E(1 - (1 - k/E)^T)."""
    return experts * (1.0 - (1.0 - top_k / experts) ** np.asarray(tokens, dtype=np.float64))


def distinct_experts(load: np.ndarray) -> np.ndarray:
    """Experts that got at least one token, [ticks, layers], of a [ticks, layers, experts] load."""
    touched: np.ndarray = (np.asarray(load) > 0).sum(axis=-1)  # numpy types a sum as Any
    return touched


# ---------------------------------------------------------------------------------------------------
# Accelerator profiles
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accelerator:
    name: str
    bandwidth_bytes_s: float
    peak_flop_s: float
    usd_per_hour: float | None = None  # None: no price known (this-device, unless the user gives one)


def roofline_seconds(nbytes: np.ndarray, flops: np.ndarray, accelerator: Accelerator) -> np.ndarray:
    """Seconds a tick cannot beat on `accelerator`: max(bytes / bandwidth, FLOPs / peak)."""
    return np.maximum(np.asarray(nbytes) / accelerator.bandwidth_bytes_s, np.asarray(flops) / accelerator.peak_flop_s)


def load_accelerators(path: str | os.PathLike[str] | None = None) -> dict[str, Accelerator]:
    """The shipped profiles, then `$TICKSCOPE_ACCELERATORS`'s file, then `path`'s: a later file adds
    profiles, or overrides fields of one of the same name (names match case-insensitively)."""
    shipped = resources.files("tracer").joinpath("accelerators.toml").read_text(encoding="utf-8")
    sources = [("tracer/accelerators.toml", shipped)]
    sources += [(str(p), _read_profile_file(p)) for p in (os.environ.get(ACCELERATORS_ENV), path) if p]
    tables: dict[str, tuple[str, str, dict[str, float]]] = {}  # key -> (name, origin, fields)
    for origin, text in sources:
        for name, fields in _parse_profiles(origin, text).items():
            first_name, _, before = tables.get(name.lower(), (name, origin, {}))
            tables[name.lower()] = (first_name, origin, {**before, **fields})
    return {key: _profile(name, origin, fields) for key, (name, origin, fields) in tables.items()}


def accelerator_names(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Every name `accelerator` accepts."""
    return [a.name for a in load_accelerators(path).values()] + [THIS_DEVICE]


def accelerator(
    name: str,
    config: Mapping[str, Any] | None = None,
    path: str | os.PathLike[str] | None = None,
    usd_per_hour: float | None = None,
) -> Accelerator:
    """A profile by name; `this-device` is built from the header `config`'s `device_probe`.
    `usd_per_hour` replaces the profile's price."""
    if name.lower() == THIS_DEVICE:
        found = _this_device(config)
    else:
        profiles = load_accelerators(path)
        if name.lower() not in profiles:
            known = ", ".join(a.name for a in profiles.values())
            raise AcceleratorError(f"unknown accelerator '{name}' (known: {known}, {THIS_DEVICE})")
        found = profiles[name.lower()]
    return found if usd_per_hour is None else replace(found, usd_per_hour=float(usd_per_hour))


def _read_profile_file(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AcceleratorError(f"{path}: cannot read accelerator profiles ({exc.strerror or exc})") from None


def _parse_profiles(origin: str, text: str) -> dict[str, dict[str, float]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AcceleratorError(f"{origin}: not valid TOML ({exc})") from None
    profiles = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise AcceleratorError(f"{origin}: '{name}' must be a table ([{name}]) of {', '.join(_PROFILE_FIELDS)}")
        for key, value in table.items():
            if key not in _PROFILE_FIELDS:
                raise AcceleratorError(
                    f"{origin}: [{name}] has unknown field '{key}' (fields: {', '.join(_PROFILE_FIELDS)})"
                )
            if not _is_positive(value):
                raise AcceleratorError(f"{origin}: [{name}] {key} must be a positive number, got {value!r}")
        profiles[name] = {k: float(v) for k, v in table.items()}
    return profiles


def _is_positive(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _profile(name: str, origin: str, fields: dict[str, float]) -> Accelerator:
    for required in _PROFILE_FIELDS[:2]:
        if required not in fields:
            raise AcceleratorError(f"{origin}: [{name}] needs {required}")
    return Accelerator(name, fields["bandwidth_bytes_s"], fields["peak_flop_s"], fields.get("usd_per_hour"))


def _this_device(config: Mapping[str, Any] | None) -> Accelerator:
    probe = config.get("device_probe") if isinstance(config, Mapping) else None
    if not isinstance(probe, Mapping):
        raise CostUnavailable(
            f"{THIS_DEVICE}: the trace header has no device probe (recorded before "
            "tickscope measured its device, or client-side)"
        )
    if probe.get("error"):
        raise CostUnavailable(f"{THIS_DEVICE}: the device probe failed when recording: {probe['error']}")
    bandwidth, peak = probe.get("copy_bytes_per_s"), probe.get("matmul_flop_per_s")
    if not (_is_positive(bandwidth) and _is_positive(peak)):
        raise CostUnavailable(f"{THIS_DEVICE}: the header's device probe has no copy bandwidth or matmul rate")
    return Accelerator(THIS_DEVICE, float(bandwidth), float(peak))


# ---------------------------------------------------------------------------------------------------
# Per tick
# ---------------------------------------------------------------------------------------------------


def busy_seconds(ticks: pl.DataFrame, stages: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Busy seconds and devices of each row of `ticks`: its forward time on one device or, with stage
    cells, the makespan of its stage timeline (the `modelled_*` columns) on one device per stage."""
    busy = ticks.get_column("forward_s").to_numpy().astype(np.float64)
    if "absent" in ticks.columns:  # a watched server's ticks have no forward time: NaN, not 0
        busy[(ticks.get_column("absent").to_numpy().astype(np.int64) & _NO_FORWARD) != 0] = np.nan
    devices = np.ones(ticks.height, dtype=np.int64)
    if stages.height == 0:
        return busy, devices
    cells = stage_ticks(stages).select(
        "tick", pl.col("makespan_s").alias("makespan"), pl.col("stages").alias("devices")
    )
    tick = ticks.get_column("tick").to_numpy()
    at, hit = _lookup(cells.get_column("tick").to_numpy(), tick)
    busy[hit] = cells.get_column("makespan").to_numpy()[at[hit]]
    devices[hit] = cells.get_column("devices").to_numpy()[at[hit]]
    return busy, devices


_NO_FORWARD = absent_mask(["forward_ns"])


def _lookup(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `wanted`, its position in `keys` and whether it is there at all."""
    if len(keys) == 0:
        return np.zeros(len(wanted), dtype=np.int64), np.zeros(len(wanted), dtype=bool)
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys, wanted, sorter=order).clip(max=len(keys) - 1)
    at = order[pos]
    return at, keys[at] == wanted


def output_tokens(ticks: pl.DataFrame) -> np.ndarray:
    """Tokens each tick sampled; traces without `sampled_tokens` fall back to its decode tokens."""
    name = "sampled_tokens" if "sampled_tokens" in ticks.columns else "decode_tokens"
    return ticks.get_column(name).to_numpy()


def measured_ticks(trace: Trace) -> pl.DataFrame:
    """Per tick: tick, start_s, end_s, busy_s, devices, processed_tokens, output_tokens."""
    ticks = trace.ticks
    busy, devices = busy_seconds(ticks, trace.stages)
    return pl.DataFrame(
        {
            "tick": ticks.get_column("tick"),
            "start_s": ticks.get_column("start_s"),
            "end_s": ticks.get_column("end_s"),
            "busy_s": busy,
            "devices": devices,
            "processed_tokens": (ticks.get_column("prefill_tokens") + ticks.get_column("decode_tokens")),
            "output_tokens": output_tokens(ticks),
        }
    )


def _distinct_per_tick(trace: Trace) -> np.ndarray:
    """Distinct active experts of each tick summed over layers, NaN for a tick with no expert event."""
    if trace.expert_load is not None:
        keys, per_tick = trace.expert_ticks, distinct_experts(trace.expert_load).sum(axis=1)
    else:  # expert shapes changed midway: no [ticks, layers, experts] stack, count from the frame
        per = trace.experts.group_by("tick").agg((pl.col("tokens") > 0).sum().alias("distinct"))
        keys, per_tick = per.get_column("tick").to_numpy(), per.get_column("distinct").to_numpy()
    at, hit = _lookup(np.asarray(keys), trace.ticks.get_column("tick").to_numpy())
    return np.where(hit, np.asarray(per_tick, dtype=np.float64)[at], np.nan)


def tick_costs(trace: Trace, accelerator: Accelerator | None = None) -> pl.DataFrame:
    """Per tick: `measured_ticks`' columns and distinct_experts and expected_experts (summed over
    layers), weight_bytes, kv_bytes, bytes, flops, and roofline_s on `accelerator` when given.
    Expert and byte columns are null for a tick without an expert-load event.
    Raises CostUnavailable when the header has no model shape."""
    shape = ModelShape.from_config(trace.header.config)
    return modelled_columns(
        measured_ticks(trace),
        trace.ticks.get_column("kv_used").to_numpy(),
        _distinct_per_tick(trace),
        shape,
        accelerator,
    )


def modelled_columns(
    costs: pl.DataFrame,
    kv_used: np.ndarray,
    distinct: np.ndarray,
    shape: ModelShape,
    accelerator: Accelerator | None = None,
) -> pl.DataFrame:
    """`measured_ticks`' columns (or the same built from a dashboard's own), with the modelled ones
    of `tick_costs` added from each tick's KV use and distinct experts summed over layers (NaN: not
    known)."""
    processed = costs.get_column("processed_tokens").to_numpy()
    weights, kv = shape.weight_bytes(processed, distinct), shape.kv_bytes(kv_used)
    nbytes = weights + kv
    flops = shape.flops(processed, costs.get_column("output_tokens").to_numpy(), kv_used)
    columns = {
        "distinct_experts": distinct,
        "expected_experts": shape.moe_layers * expected_distinct_experts(processed, shape.routed_experts, shape.top_k),
        "weight_bytes": weights,
        "kv_bytes": kv,
        "bytes": nbytes,
        "flops": flops,
    }
    if accelerator is not None:
        columns["roofline_s"] = roofline_seconds(nbytes, flops, accelerator)
    return costs.with_columns(pl.Series(name, values, nan_to_null=True) for name, values in columns.items())


# ---------------------------------------------------------------------------------------------------
# Over a span of ticks
# ---------------------------------------------------------------------------------------------------


def recording_span(trace: Trace) -> tuple[float, float] | None:
    """First and last moments anything happened (tick starts and ends, arrivals, finishes), in s."""
    columns = [trace.ticks.get_column(c) for c in ("start_s", "end_s")]
    columns += [trace.requests.get_column(c) for c in ("arrival_s", "finish_s")]
    present = [c for c in columns if c.drop_nulls().len()]
    if not present:
        return None
    return min(scalar_float(c.min()) for c in present), max(scalar_float(c.max()) for c in present)


def span_summary(
    costs: pl.DataFrame,
    span_s: float | None,
    shape: ModelShape | None = None,
    accelerator: Accelerator | None = None,
    price: float | None = None,
    unavailable: str | None = None,
) -> dict[str, Any]:
    """The module docstring's keys over the rows of `costs` (`tick_costs` or `measured_ticks`, or a
    slice of them: a dashboard's window), `span_s` long. `price` ($ per device-hour) costs the measured
    device time and replaces the accelerator's price. Modelled keys need `tick_costs`' columns and
    `shape`; `unavailable` is the caller's reason when they are missing."""
    m = costs.select(
        pl.len().alias("ticks"),
        pl.col("busy_s").fill_nan(None).sum(),
        (pl.col("busy_s") * pl.col("devices")).fill_nan(None).sum().alias("device_s"),
        pl.col("busy_s").is_nan().all().alias("no_busy"),
        pl.col("processed_tokens").sum(),
        pl.col("output_tokens").sum(),
    ).row(0, named=True)
    busy, device_s, processed, output = m["busy_s"], m["device_s"], m["processed_tokens"], m["output_tokens"]
    if m["ticks"] and m["no_busy"]:  # no tick says how long it kept the device busy (`tickscope watch`)
        busy = device_s = None
    summary: dict[str, Any] = {
        "ticks": m["ticks"],
        "span_s": span_s,
        "busy_s": busy,
        "device_s": device_s,
        "utilization": _ratio(busy, span_s),
        "processed_tokens": processed,
        "output_tokens": output,
        "device_s_per_token": _ratio(device_s, processed),
        "device_s_per_output_token": _ratio(device_s, output),
        "capacity_tok_s": _ratio(processed, busy),
        "capacity_output_tok_s": _ratio(output, busy),
        "served_rate_tok_s": _ratio(output, span_s),
        "price_usd_per_hour": price,
        "usd_per_mtok_measured": None if price is None or device_s is None else _usd_per_mtok(device_s, price, output),
    }
    modelled = shape is not None and "bytes" in costs.columns
    summary.update(_modelled(costs, shape) if modelled and shape is not None else dict.fromkeys(_MODELLED_KEYS))
    if accelerator is not None and price is not None:
        accelerator = replace(accelerator, usd_per_hour=price)
    summary["accelerator"] = _on_accelerator(costs, accelerator) if modelled and accelerator else None
    summary["unavailable"] = unavailable
    return summary


_MODELLED_KEYS = (
    "bytes_per_token",
    "weight_bytes_per_token",
    "kv_read_bytes_per_token",
    "flops_per_token",
    "arithmetic_intensity",
    "experts_touched_per_layer",
    "experts_expected_uniform",
)


def _modelled(costs: pl.DataFrame, shape: ModelShape) -> dict[str, Any]:
    known = costs.filter(pl.col("bytes").is_not_null())
    sums = pl.col(
        "processed_tokens", "weight_bytes", "kv_bytes", "bytes", "flops", "distinct_experts", "expected_experts"
    ).sum()
    s = known.select(pl.len().alias("ticks"), sums).row(0, named=True)
    cells = s["ticks"] * shape.moe_layers  # a dense layer routes nothing: no cell of the experts
    return {
        "bytes_per_token": _ratio(s["bytes"], s["processed_tokens"]),
        "weight_bytes_per_token": _ratio(s["weight_bytes"], s["processed_tokens"]),
        "kv_read_bytes_per_token": _ratio(s["kv_bytes"], s["processed_tokens"]),
        "flops_per_token": _ratio(s["flops"], s["processed_tokens"]),
        "arithmetic_intensity": _ratio(s["flops"], s["bytes"]),
        "experts_touched_per_layer": _ratio(s["distinct_experts"], cells),
        "experts_expected_uniform": _ratio(s["expected_experts"], cells),
    }


def _on_accelerator(costs: pl.DataFrame, accelerator: Accelerator) -> dict[str, Any]:
    known = costs.filter(pl.col("bytes").is_not_null())
    nbytes, flops = known.get_column("bytes").to_numpy(), known.get_column("flops").to_numpy()
    roofline = roofline_seconds(nbytes, flops, accelerator)
    memory_bound = nbytes / accelerator.bandwidth_bytes_s >= flops / accelerator.peak_flop_s
    total = float(roofline.sum())
    processed = int(known.get_column("processed_tokens").sum())
    output = int(known.get_column("output_tokens").sum())
    price = accelerator.usd_per_hour
    return {
        "name": accelerator.name,
        "label": "modelled",
        "bandwidth_bytes_s": accelerator.bandwidth_bytes_s,
        "peak_flop_s": accelerator.peak_flop_s,
        "usd_per_hour": price,
        "roofline_s": total,
        "roofline_s_per_token": _ratio(total, processed),
        "roofline_s_per_output_token": _ratio(total, output),
        "capacity_tok_s": _ratio(processed, total),
        "capacity_output_tok_s": _ratio(output, total),
        "memory_bound_share": _ratio(float(roofline[memory_bound].sum()), total),
        "usd_per_mtok_modelled": None if price is None else _usd_per_mtok(total, price, output),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else float(a) / float(b)


def _usd_per_mtok(device_s: float, usd_per_hour: float, output_tokens: int) -> float | None:
    return _ratio(device_s * usd_per_hour / 3600 * 1e6, output_tokens)


def cost_summary(trace: Trace, accelerator: Accelerator | None = None, price: float | None = None) -> dict[str, Any]:
    """What a token costs over the whole recording: the module docstring's keys. Never raises for a
    trace that lacks data: figures it cannot have are None and `unavailable` says why.
    `price` ($ per device-hour) costs the measured device time and replaces the accelerator's price."""
    span = recording_span(trace)
    span_s = None if span is None else span[1] - span[0]
    try:
        shape: ModelShape | None = ModelShape.from_config(trace.header.config)
        costs = tick_costs(trace)
        reason = None
    except CostUnavailable as exc:
        shape, costs, reason = None, measured_ticks(trace), exc.reason
    if trace.ticks.height == 0:  # a client-side trace: the requests still tell what was served
        summary = span_summary(costs, span_s, shape, accelerator, price, NO_TICKS)
        summary["served_rate_tok_s"] = _ratio(scalar_int(trace.requests.get_column("output_tokens").sum()), span_s)
        return summary
    return span_summary(costs, span_s, shape, accelerator, price, reason)
