"""Warmup, drain and bubbles of each tick's pipeline timeline, from the `stages` frame.

The timeline is the `modelled_*` columns: on one device, the cells placed on one device per stage;
across processes (`modelled` False), the cells as they ran on each rank, on rank 0's clock. Per
tick, every stage is available from the tick's first cell start to its last cell end:

- warmup: a stage's idle time before its first cell (later stages wait for the first micro-batch),
- drain: its idle time after its last cell (earlier stages have nothing left to run),
- bubble: its idle time between cells (a stage waiting on a slower one before it),
- bubble share: all idle stage-time over all available stage-time, the pipeline's "bubble fraction":
  (S - 1) / (M + S - 1) for S stages and M equal micro-batches, 3/4 for 4 stages and 1 micro-batch.

The timeline and its split live in tracer/timeline.py (numpy only, so the engine records without
polars); this module applies them to a loaded trace's frames.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from tracer.timeline import split_timeline

STAGE_TICK_SCHEMA = {
    "tick": pl.Int64,
    "stages": pl.Int64,
    "micro_batches": pl.Int64,
    "modelled": pl.Boolean,
    "makespan_s": pl.Float64,
    "compute_s": pl.Float64,
    "warmup_s": pl.Float64,
    "drain_s": pl.Float64,
    "bubble_s": pl.Float64,
    "bubble_share": pl.Float64,
}


def stage_ticks(stages: pl.DataFrame) -> pl.DataFrame:
    """One row per tick with stage cells: its stage-time split into compute, warmup, drain and
    bubbles (summed over stages, in seconds), and its bubble share."""
    if stages.height == 0:
        return pl.DataFrame(schema=STAGE_TICK_SCHEMA)
    tick = stages.get_column("tick").to_numpy()
    if (np.diff(tick) < 0).any():  # a trace writes a tick's cells together, stage by stage: rarely needed
        stages = stages.sort("tick", "stage", "micro_batch", maintain_order=True)
        tick = stages.get_column("tick").to_numpy()
    first = np.flatnonzero(np.r_[True, tick[1:] != tick[:-1]])  # each tick's first cell
    n_stages = np.maximum.reduceat(stages.get_column("stage").to_numpy(), first) + 1
    n_micro = np.maximum.reduceat(stages.get_column("micro_batch").to_numpy(), first) + 1
    start, end = (stages.get_column(c).to_numpy() for c in ("modelled_start_s", "modelled_end_s"))
    split = {k: np.zeros(len(first)) for k in ("makespan", "compute", "warmup", "drain", "bubble")}
    shapes = np.stack([n_stages, n_micro], axis=1)
    for shape in np.unique(shapes, axis=0):  # one grid shape in a whole recording, as a rule
        ticks = np.flatnonzero((shapes == shape).all(axis=1))
        if len(ticks) * shape.prod() == len(tick):  # every tick has this grid: the cells as they are
            part = split_timeline(start.reshape(-1, *shape), end.reshape(-1, *shape))
        else:
            cells = (first[ticks, None] + np.arange(shape.prod())).ravel()
            part = split_timeline(start[cells].reshape(-1, *shape), end[cells].reshape(-1, *shape))
        for k, v in part.items():
            split[k][ticks] = v
    per_tick = pl.DataFrame(
        {
            "tick": tick[first],
            "stages": n_stages,
            "micro_batches": n_micro,
            "modelled": stages.get_column("modelled").to_numpy()[first],
            **{f"{k}_s": v for k, v in split.items()},
        }
    ).with_columns(
        pl.when(pl.col("makespan_s") > 0)
        .then(1 - pl.col("compute_s") / (pl.col("stages") * pl.col("makespan_s")))
        .otherwise(0.0)
        .alias("bubble_share"),
    )
    return per_tick.select([pl.col(k).cast(v) for k, v in STAGE_TICK_SCHEMA.items()])


def bubble_share(stages: pl.DataFrame) -> float | None:
    """The session's bubble share: idle stage-time over available stage-time, summed over ticks (so
    long ticks weigh more). None without stage cells."""
    per_tick = stage_ticks(stages)
    available = float((per_tick.get_column("stages") * per_tick.get_column("makespan_s")).sum())
    if available <= 0:
        return None
    return 1.0 - float(per_tick.get_column("compute_s").sum()) / available


def timeline_kind(stages: pl.DataFrame) -> str | None:
    """ "modelled" (one device, S devices modelled), "measured" (S processes), "mixed", or None."""
    if stages.height == 0:
        return None
    kinds = set(stages.get_column("modelled").unique().to_list())
    return "mixed" if len(kinds) > 1 else ("modelled" if kinds == {True} else "measured")
