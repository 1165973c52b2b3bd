"""The figures a session is judged by, computed from a loaded Trace, and a table of them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
from rich.table import Table

from tracer.cost import Accelerator, cost_summary
from tracer.experts import LoadFigures, load_figures
from tracer.frames import Trace
from tracer.pipeline import bubble_share, timeline_kind


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _col(df: pl.DataFrame, name: str) -> np.ndarray:
    return df.get_column(name).drop_nulls().to_numpy().astype(np.float64)


def _safe(v: Any) -> Any:
    """None for NaN and infinities, so the summary is valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _safe(x) for k, x in v.items()}
    return v


def expert_stats(trace: Trace) -> LoadFigures:
    """Expert load figures over every (tick, layer) cell of the recording (see tracer/experts.py)."""
    if trace.expert_load is not None:
        return load_figures(trace.expert_load)
    stacks = []  # the shape changed midway: one [1, layers, experts] stack per tick
    for _, cells in trace.experts.group_by("tick", maintain_order=True):
        layer, expert = cells.get_column("layer").to_numpy(), cells.get_column("expert").to_numpy()
        load = np.zeros((1, layer.max() + 1, expert.max() + 1))
        load[0, layer, expert] = cells.get_column("tokens").to_numpy()
        stacks.append(load)
    return load_figures(stacks)


def summarize(trace: Trace, accelerator: Accelerator | None = None, price: float | None = None) -> dict[str, Any]:
    """The session's headline figures as one JSON-safe dict (None where a figure has no data).

    What a token costs comes first (tracer/cost.py's keys: measured on the recording's device, and
    modelled on `accelerator` when one is given; `price` in $ per device-hour), then latency,
    requests, expert load and the pipeline. Rates are over the recording's span (`span_s`).
    """
    cost = cost_summary(trace, accelerator, price)
    span = cost["span_s"] or 0.0
    req = trace.requests
    finished = req.filter(pl.col("status") == "finished")
    ttft, tpot, e2e = (_col(finished, c) for c in ("ttft_s", "tpot_s", "e2e_s"))
    queue_wait = _col(req, "queue_wait_s")
    experts = expert_stats(trace)

    slo = trace.header.config.get("workload", {}).get("slo", {}) if isinstance(trace.header.config, dict) else {}
    good = finished
    for col, key in (("ttft_s", "ttft_s"), ("tpot_s", "tpot_s"), ("e2e_s", "e2e_s")):
        limit = slo.get(key) if isinstance(slo, dict) else None
        if isinstance(limit, (int, float)) and not isinstance(limit, bool):
            # A request with no such figure (TPOT of a one-token reply) does not break the SLO.
            good = good.filter(pl.col(col).is_null() | (pl.col(col) <= limit))

    def status(s: str) -> int:
        return int((req.get_column("status") == s).sum())

    mean_seqs = trace.ticks.get_column("seqs").mean()  # None when there are no ticks
    summary = {
        **cost,
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p99_s": _pct(ttft, 99),
        "tpot_p50_s": _pct(tpot, 50),
        "tpot_p99_s": _pct(tpot, 99),
        "itl_p50_s": _pct(trace.itl_s, 50),
        "itl_p99_s": _pct(trace.itl_s, 99),
        "e2e_p50_s": _pct(e2e, 50),
        "e2e_p99_s": _pct(e2e, 99),
        "queue_wait_p50_s": _pct(queue_wait, 50),
        "queue_wait_p99_s": _pct(queue_wait, 99),
        "slo": {k: slo[k] for k in ("ttft_s", "tpot_s", "e2e_s") if isinstance(slo, dict) and k in slo},
        "goodput_req_s": good.height / span if span > 0 else None,
        "requests_submitted": req.height,
        "requests_finished": finished.height,
        "requests_rejected": status("rejected"),
        "requests_cancelled": status("cancelled"),
        "requests_failed": status("failed"),
        "requests_unfinished": int(req.get_column("status").is_null().sum()),
        "preemptions": int(req.get_column("preemptions").sum() or 0),
        "tokens_generated": int(req.get_column("output_tokens").sum() or 0),  # as the requests tell it
        "mean_batch_seqs": float(mean_seqs) if isinstance(mean_seqs, (int, float)) else None,
        "experts_active_frac": experts.active_share,
        "expert_imbalance": experts.imbalance,
        "expert_imbalance_per_layer": experts.imbalance_per_layer,
        # idle stage-time (warmup + drain + bubbles) over stage-time; see tracer/pipeline.py
        "bubble_share": bubble_share(trace.stages),
        "stage_timeline": timeline_kind(trace.stages),  # "modelled" on one device, "measured" across ranks
        "events_dropped": sum(trace.dropped.values()),
        "problems": len(trace.problems),
    }
    config = trace.header.config
    if isinstance(config, dict) and "watch" in config and "target" not in config:
        # A watched server's trace (`tickscope watch`) holds its metrics, not its requests: how many
        # it had is unknown here, not 0 (its rates are in the trace's scrapes).
        summary.update(dict.fromkeys(_REQUEST_COUNTS))
    safe: dict[str, Any] = _safe(summary)
    return safe


_REQUEST_COUNTS = (
    "goodput_req_s",
    "requests_submitted",
    "requests_finished",
    "requests_rejected",
    "requests_cancelled",
    "requests_failed",
    "requests_unfinished",
    "preemptions",
    "tokens_generated",
)

# The table's sections, each opened by the first of its keys (the JSON stays flat).
_SECTIONS = {
    "ticks": "what a token costs (measured on the recording's device)",
    "bytes_per_token": "what a token costs (modelled from the trace: machine-independent)",
    "accelerator": "what a token costs on another accelerator (modelled)",
    "ttft_p50_s": "latency each user pays",
    "requests_submitted": "requests",
    "experts_active_frac": "expert load",
    "bubble_share": "pipeline",
    "events_dropped": "trace",
}
_UNITS = (
    ("_bytes_s", "B/s"),
    ("_flop_s", "FLOP/s"),
    ("bytes_per_token", "B/tok"),
    ("flops_per_token", "FLOP/tok"),
    ("arithmetic_intensity", "FLOP/B"),
    ("_tok_s", "tok/s"),
    ("_req_s", "req/s"),
)
_SHARES = ("utilization", "_frac", "_share")
_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def _si(value: float, unit: str) -> str:
    """`value` with an SI prefix and 3 significant digits: 1.72e5 B/tok -> "172 kB/tok"."""
    scale, prefix = next(((s, p) for s, p in _PREFIXES if abs(value) >= s), _PREFIXES[-1])
    if unit in ("tok/s", "req/s", "") and scale < 1:  # rates and counts read better as plain decimals
        scale, prefix = 1.0, ""
    return f"{value / scale:.3g} {prefix}{unit}".strip()


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return " ".join(_fmt("", v) for v in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "—"
    if isinstance(value, float):
        if key.endswith(_SHARES):
            return f"{value:.1%}"
        if "usd_" in key:
            return f"${value:,.2f}" + ("/Mtok" if "mtok" in key else "/h") if value >= 0.01 else f"${value:.2g}/Mtok"
        unit = next((u for suffix, u in _UNITS if suffix in key), "")
        if not unit and ("_s_per_" in key or key.endswith("_s")):  # seconds, or seconds per token
            unit = "s/tok" if "_per_" in key else "s"
        return _si(value, unit) if abs(value) < 1000 or unit != "tok/s" else f"{value:,.0f} tok/s"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_table(summary: dict[str, Any], title: str | None = "session summary") -> Table:
    """The summary as a two-column rich table in sections, units spelled out. A modelled
    accelerator's figures get rows of their own, labelled with its name."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if key in _SECTIONS:
            table.add_section()
            table.add_row(f"[bold]{_SECTIONS[key]}[/]", "")
        if key == "accelerator":
            if value is None:
                table.add_row("accelerator", "— (--accelerator NAME)")
                continue
            for sub, v in value.items():
                if sub not in ("name", "label"):
                    table.add_row(f"{value['name']} {sub}", _fmt(sub, v))
            continue
        if key == "unavailable" and value is None:
            continue
        table.add_row(key, _fmt(key, value))
    return table
