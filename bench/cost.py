"""What-a-token-costs benchmark: the cost columns of a long recording (issue 12: < 2 s for 1,000,000 ticks).

    .venv/bin/python -m bench.cost [--ticks 10000,100000,1000000] [--repeat 3]      # from the repo root

The input is a Trace built straight from numpy columns, as `tracer.load` would hand it over for a
recording of the `tiny` preset ([4 layers x 16 experts] per tick, about 0.3 requests per tick): writing
and reading a million-tick file is bench/tracer.py's business, not this one's. Each size runs twice:
one device, and a 2-stage x 2-micro-batch pipeline (4 stage cells per tick, whose makespan is the
tick's busy time). Timed: `tick_costs` with an accelerator (the per-tick columns) and `cost_summary`
(those columns again, then the whole recording's figures). Best of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import polars as pl
import torch
from rich.console import Console
from rich.table import Table

from engine.config import get_preset
from tracer.cost import accelerator, cost_summary, tick_costs
from tracer.events import SessionHeader
from tracer.frames import STAGE_SCHEMA, Trace

_TICK_S = 0.002


def synthetic_trace(ticks: int, pipelined: bool, seed: int = 0) -> Trace:
    """A `tiny` recording's frames, `ticks` long: the columns the cost module reads, plausibly filled."""
    rng = np.random.default_rng(seed)
    cfg = get_preset("tiny")
    config = {
        "model": {**cfg.as_dict(), "dtype": "float32"},
        "kv_bytes_per_token": cfg.kv_bytes_per_token(torch.float32),
    }
    header = SessionHeader(t0_mono_ns=0, t0_wall_ns=0, config=config)
    start = np.arange(ticks) * _TICK_S
    decode = rng.integers(1, 32, ticks)
    prefill = np.where(rng.random(ticks) < 0.2, rng.integers(8, 64, ticks), 0)
    tick_df = pl.DataFrame(
        {
            "tick": np.arange(ticks),
            "start_s": start,
            "end_s": start + 0.9 * _TICK_S,
            "forward_s": np.full(ticks, 0.8 * _TICK_S),
            "prefill_tokens": prefill,
            "decode_tokens": decode,
            "sampled_tokens": decode + (prefill > 0),
            "kv_used": rng.integers(100, 4000, ticks),
        }
    )
    arrivals = np.sort(rng.uniform(0, ticks * _TICK_S, ticks // 3))
    requests = pl.DataFrame({"arrival_s": arrivals, "finish_s": arrivals + 0.5})
    load = rng.integers(0, 3, size=(ticks, cfg.layers, cfg.routed_experts), dtype=np.int64)
    # the experts frame stays empty: with the [ticks, layers, experts] stack the cost module never reads it
    return Trace(
        header=header,
        ticks=tick_df,
        requests=requests,
        experts=pl.DataFrame(),
        stages=_stages(ticks, pipelined),
        marks=pl.DataFrame(),
        itl_s=np.zeros(0),
        expert_ticks=np.arange(ticks),
        expert_load=load,
    )


def _stages(ticks: int, pipelined: bool) -> pl.DataFrame:
    """2 stages x 2 micro-batches per tick on the modelled one-device-per-stage timeline, or none."""
    if not pipelined:
        return pl.DataFrame(schema=STAGE_SCHEMA)
    cell = 0.8 * _TICK_S / 4
    stage, micro = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    start, end = np.tile((stage + micro) * cell, ticks), np.tile((stage + micro + 1) * cell, ticks)
    return pl.DataFrame(
        {
            "tick": np.repeat(np.arange(ticks), 4),
            "stage": np.tile(stage, ticks),
            "micro_batch": np.tile(micro, ticks),
            "tick_start_s": np.repeat(np.arange(ticks) * _TICK_S, 4),
            "measured_start_s": start,
            "measured_end_s": end,
            "modelled_start_s": start,
            "modelled_end_s": end,
            "modelled": np.ones(4 * ticks, dtype=bool),
        },
        schema=STAGE_SCHEMA,
    )


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
        f"polars {pl.__version__}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ticks", default="10000,100000,1000000")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    h100 = accelerator("H100-SXM")
    table = Table(title=f"cost columns — {machine()}")
    for column in ("ticks", "stage cells", "tick_costs s", "cost_summary s", "target", "ok"):
        table.add_column(column, justify="right")
    for ticks in (int(x) for x in args.ticks.split(",")):
        for pipelined in (False, True):
            trace = synthetic_trace(ticks, pipelined)
            per_tick = best_of(args.repeat, partial(tick_costs, trace, h100))
            summary = best_of(args.repeat, partial(cost_summary, trace, h100, price=2.0))
            target = ticks >= 1_000_000
            table.add_row(
                f"{ticks:,}",
                f"{trace.stages.height:,}",
                f"{per_tick:.3f}",
                f"{summary:.3f}",
                "< 2 s" if target else "",
                ("yes" if summary < 2 else "NO") if target else "",
            )
            del trace
    Console().print(table)


if __name__ == "__main__":
    main()
