"""The figures a session is judged by, computed from a loaded Trace, and a table of them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
from rich.table import Table

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


def _span(trace: Trace) -> tuple[float, float] | None:
    """First and last moments anything happened (ticks, arrivals, finishes), in seconds."""
    times = [c for c in (
        _col(trace.ticks, "start_s"), _col(trace.ticks, "end_s"),
        _col(trace.requests, "arrival_s"), _col(trace.requests, "finish_s"),
    ) if len(c)]
    if not times:
        return None
    allt = np.concatenate(times)
    return float(allt.min()), float(allt.max())


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


def summarize(trace: Trace) -> dict[str, Any]:
    """The session's headline figures as one JSON-safe dict (None where a figure has no data)."""
    req = trace.requests
    finished = req.filter(pl.col("status") == "finished")
    span = _span(trace)
    duration = span[1] - span[0] if span else 0.0
    tokens = int(req.get_column("output_tokens").sum() or 0)
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

    seqs = trace.ticks.get_column("seqs")
    summary = {
        "ticks": trace.ticks.height,
        "requests_submitted": req.height,
        "requests_finished": finished.height,
        "requests_rejected": status("rejected"),
        "requests_cancelled": status("cancelled"),
        "requests_unfinished": int(req.get_column("status").is_null().sum()),
        "preemptions": int(req.get_column("preemptions").sum() or 0),
        "tokens_generated": tokens,
        "duration_s": duration,
        "throughput_tok_s": tokens / duration if duration > 0 else None,
        "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
        "tpot_p50_s": _pct(tpot, 50), "tpot_p99_s": _pct(tpot, 99),
        "itl_p50_s": _pct(trace.itl_s, 50), "itl_p99_s": _pct(trace.itl_s, 99),
        "e2e_p50_s": _pct(e2e, 50), "e2e_p99_s": _pct(e2e, 99),
        "queue_wait_p50_s": _pct(queue_wait, 50), "queue_wait_p99_s": _pct(queue_wait, 99),
        "mean_batch_seqs": float(seqs.mean()) if len(seqs) else None,
        "experts_active_frac": experts.active_share,
        "expert_imbalance": experts.imbalance,
        "expert_imbalance_per_layer": experts.imbalance_per_layer,
        "slo": {k: slo[k] for k in ("ttft_s", "tpot_s", "e2e_s") if isinstance(slo, dict) and k in slo},
        "goodput_req_s": good.height / duration if duration > 0 else None,
        # idle stage-time (warmup + drain + bubbles) over stage-time; see tracer/pipeline.py
        "bubble_share": bubble_share(trace.stages),
        "stage_timeline": timeline_kind(trace.stages),  # "modelled" on one device, "measured" across ranks
        "events_dropped": sum(trace.dropped.values()),
        "problems": len(trace.problems),
    }
    return _safe(summary)


_UNITS = (("_tok_s", "tok/s"), ("_req_s", "req/s"), ("_s", "s"))


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return " ".join(_fmt("", v) for v in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "—"
    if isinstance(value, float):
        if key.endswith("_s") and not key.endswith(("_tok_s", "_req_s")) and abs(value) < 1:
            return f"{value * 1000:.2f} ms"
        unit = next((u for suffix, u in _UNITS if key.endswith(suffix)), "")
        return f"{value:,.3g} {unit}".strip() if abs(value) < 1000 else f"{value:,.0f} {unit}".strip()
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_table(summary: dict[str, Any], title: str | None = "session summary") -> Table:
    """The summary as a two-column rich table, units spelled out."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, _fmt(key, value))
    return table
