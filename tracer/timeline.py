"""A tick's pipeline timeline: where its (stage, micro-batch) cells run with one device per stage,
and how that stage-time splits into compute, warmup, drain and bubbles.

Numpy only: the engine places its measured cells with `modelled_timeline` while it records (without
polars), the synthetic traces place theirs the same way, and the dashboard and tracer/pipeline.py
split timelines with `split_timeline`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Schedule(Protocol):
    """Which micro-batch each stage runs next. A stage's list must respect that micro-batch m reaches
    stage s only after stage s-1 ran it; the timeline then follows from the order alone."""

    name: str

    def stage_order(self, stage: int, stages: int, micro_batches: int) -> list[int]: ...


class GPipe:
    """Every stage runs the micro-batches in order 0..M-1, as soon as it can: decode is forward-only,
    so GPipe's fill-drain pattern is the whole schedule. (A 1F1B or interleaved schedule would differ
    in `stage_order`, and with virtual stages in how layers map to stages.)"""

    name = "gpipe"

    def stage_order(self, stage: int, stages: int, micro_batches: int) -> list[int]:
        return list(range(micro_batches))


# The default schedule: GPipe holds no state, so one instance serves every call.
DEFAULT_SCHEDULE = GPipe()


def run_order(schedule: Schedule, stages: int, micro_batches: int) -> list[tuple[int, int]]:
    """All (stage, micro-batch) cells in an order one device can run them: each cell after its
    micro-batch's previous stage and its stage's previous cell."""
    orders = [schedule.stage_order(s, stages, micro_batches) for s in range(stages)]
    done = [0] * stages  # cells each stage has run
    ran: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    while len(out) < stages * micro_batches:
        progressed = False
        for s in range(stages):
            while done[s] < micro_batches:
                m = orders[s][done[s]]
                if s and (s - 1, m) not in ran:
                    break
                out.append((s, m))
                ran.add((s, m))
                done[s] += 1
                progressed = True
        if not progressed:
            raise ValueError(f"schedule {schedule.name} deadlocks for {stages} stages x {micro_batches} micro-batches")
    return out


def modelled_timeline(cost_ns: np.ndarray, schedule: Schedule = DEFAULT_SCHEDULE) -> tuple[np.ndarray, np.ndarray]:
    """Start and end [stages, micro_batches] of cells with these costs, one device per stage: a cell
    starts when its micro-batch has left the previous stage and its stage has finished its previous
    cell in the schedule's order."""
    stages, micro = cost_ns.shape
    start = np.zeros_like(cost_ns)
    end = np.zeros_like(cost_ns)
    free = [0] * stages  # when each stage's device is next free
    for s, m in run_order(schedule, stages, micro):
        ready = end[s - 1, m] if s else 0  # its activations arrive from the previous stage
        start[s, m] = max(ready, free[s])
        end[s, m] = free[s] = start[s, m] + cost_ns[s, m]
    return start, end


def split_timeline(start: np.ndarray, end: np.ndarray) -> dict[str, np.ndarray]:
    """Makespan, compute, warmup, drain and bubbles of ticks' stage timelines, each per tick and
    summed over its stages. `start` and `end` are [ticks, stages, micro_batches] cell times in any
    one unit. Cells of one stage never overlap, so a stage's busy span less its compute is the
    gaps between its cells."""
    t0, t1 = start.min(axis=(1, 2)), end.max(axis=(1, 2))
    first, last = start.min(axis=2), end.max(axis=2)
    compute = (end - start).sum(axis=2)
    return {
        "makespan": t1 - t0,
        "compute": compute.sum(axis=1),
        "warmup": (first - t0[:, None]).sum(axis=1),
        "drain": (t1[:, None] - last).sum(axis=1),
        "bubble": np.clip(last - first - compute, 0, None).sum(axis=1),
    }
