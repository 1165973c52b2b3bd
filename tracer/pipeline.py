"""Warmup, drain and bubbles of each tick's pipeline timeline, from the `stages` frame.

The timeline is the `modelled_*` columns: on one device, the cells placed on one device per stage;
across processes (`modelled` False), the cells as they ran on each rank, on rank 0's clock. Per
tick, every stage is available from the tick's first cell start to its last cell end:

- warmup: a stage's idle time before its first cell (later stages wait for the first micro-batch),
- drain: its idle time after its last cell (earlier stages have nothing left to run),
- bubble: its idle time between cells (a stage waiting on a slower one before it),
- bubble share: all idle stage-time over all available stage-time, the pipeline's "bubble fraction":
  (S - 1) / (M + S - 1) for S stages and M equal micro-batches, 3/4 for 4 stages and 1 micro-batch.
"""

from __future__ import annotations

import polars as pl

STAGE_TICK_SCHEMA = {
    "tick": pl.Int64, "stages": pl.Int64, "micro_batches": pl.Int64, "modelled": pl.Boolean,
    "makespan_s": pl.Float64, "compute_s": pl.Float64, "warmup_s": pl.Float64, "drain_s": pl.Float64,
    "bubble_s": pl.Float64, "bubble_share": pl.Float64,
}


def stage_ticks(stages: pl.DataFrame) -> pl.DataFrame:
    """One row per tick with stage cells: its stage-time split into compute, warmup, drain and
    bubbles (summed over stages, in seconds), and its bubble share."""
    if stages.height == 0:
        return pl.DataFrame(schema=STAGE_TICK_SCHEMA)
    start, end = pl.col("modelled_start_s"), pl.col("modelled_end_s")
    per_stage = stages.group_by("tick", "stage").agg(
        start.min().alias("first"), end.max().alias("last"), (end - start).sum().alias("compute"),
        pl.len().alias("micro_batches"), pl.col("modelled").first(),
    ).with_columns(
        pl.col("first").min().over("tick").alias("t0"), pl.col("last").max().over("tick").alias("t1"),
    )
    per_tick = per_stage.group_by("tick").agg(
        pl.len().alias("stages"),
        pl.col("micro_batches").max(),
        pl.col("modelled").first(),
        (pl.col("t1") - pl.col("t0")).first().alias("makespan_s"),
        pl.col("compute").sum().alias("compute_s"),
        (pl.col("first") - pl.col("t0")).sum().alias("warmup_s"),
        (pl.col("t1") - pl.col("last")).sum().alias("drain_s"),
        # cells of one stage never overlap, so its busy span less its compute is the gaps between them
        (pl.col("last") - pl.col("first") - pl.col("compute")).clip(lower_bound=0).sum().alias("bubble_s"),
    ).with_columns(
        pl.when(pl.col("makespan_s") > 0)
        .then(1 - pl.col("compute_s") / (pl.col("stages") * pl.col("makespan_s")))
        .otherwise(0.0)
        .alias("bubble_share"),
    )
    return per_tick.sort("tick").select([pl.col(k).cast(v) for k, v in STAGE_TICK_SCHEMA.items()])


def bubble_share(stages: pl.DataFrame) -> float | None:
    """The session's bubble share: idle stage-time over available stage-time, summed over ticks (so
    long ticks weigh more). None without stage cells."""
    per_tick = stage_ticks(stages)
    available = float((per_tick.get_column("stages") * per_tick.get_column("makespan_s")).sum())
    if available <= 0:
        return None
    return 1.0 - float(per_tick.get_column("compute_s").sum()) / available


def timeline_kind(stages: pl.DataFrame) -> str | None:
    """"modelled" (one device, S devices modelled), "measured" (S processes), "mixed", or None."""
    if stages.height == 0:
        return None
    kinds = set(stages.get_column("modelled").unique().to_list())
    return "mixed" if len(kinds) > 1 else ("modelled" if kinds == {True} else "measured")
