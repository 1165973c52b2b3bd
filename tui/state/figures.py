"""Figures of one tick's detail (or a span's): expert load and the pipeline timeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.events import StageEvent
from tracer.experts import load_figures
from tracer.timeline import split_timeline


@dataclass(slots=True)
class ExpertStats:
    active_share: float  # experts that got at least one token, averaged over (tick, layer) cells
    imbalance: float  # max / mean tokens per expert, averaged over (tick, layer) cells with a token
    balancedness: float  # mean / max, averaged likewise (as vLLM logs it)
    idle_experts: int  # cells with no token: in a span's mean, dead across the whole span
    hottest: list[tuple[int, int, float]]  # (layer, expert, tokens), hottest first
    hottest_per_layer: list[tuple[int, float]] = field(default_factory=list)  # (expert, tokens) by layer


@dataclass(slots=True)
class StageStats:
    makespan_ns: int
    compute_ns: int
    warmup_ns: int
    drain_ns: int
    bubble_ns: int  # idle between cells, inside a stage's busy span

    @property
    def idle_share(self) -> float:
        """Share of stage-time not computing (warmup + drain + bubbles)."""
        total = self.compute_ns + self.warmup_ns + self.drain_ns + self.bubble_ns
        return 1.0 - self.compute_ns / total if total else 0.0


def expert_stats(counts: np.ndarray, top: int = 3) -> ExpertStats:
    """Load figures for one [layers, experts] count matrix, or a span's [ticks, layers, experts]
    stack: active, max/mean and balance as tracer/experts.py defines them (means over (tick,
    layer) cells, as summary and compare give them); idle cells and the hottest experts from the
    span's mean matrix (idle there: dead in every tick of the span)."""
    stack = np.asarray(counts, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.size == 0:
        return ExpertStats(0.0, 0.0, 0.0, 0, [])
    figures = load_figures(stack)
    mean = stack.mean(axis=0)
    flat = np.argsort(-mean, axis=None, kind="stable")[:top]  # ties: lowest layer/expert first
    hottest = [(int(i // mean.shape[1]), int(i % mean.shape[1]), float(mean.flat[i])) for i in flat if mean.flat[i] > 0]
    per_layer = mean.argmax(axis=1)
    return ExpertStats(
        active_share=figures.active_share or 0.0,
        imbalance=figures.imbalance or 0.0,
        balancedness=figures.balancedness or 0.0,
        idle_experts=int((mean == 0).sum()),
        hottest=hottest,
        hottest_per_layer=[(int(e), float(mean[layer, e])) for layer, e in enumerate(per_layer)],
    )


def stage_stats(stages: StageEvent) -> StageStats:
    """Compute, warmup, drain and bubbles of the modelled per-stage timeline of one tick, as
    tracer/pipeline.py splits every tick's."""
    start = np.asarray(stages.modelled_start_ns, dtype=np.int64)
    if start.size == 0:
        return StageStats(0, 0, 0, 0, 0)
    split = split_timeline(start[None], np.asarray(stages.modelled_end_ns, dtype=np.int64)[None])
    return StageStats(*(int(split[k][0]) for k in ("makespan", "compute", "warmup", "drain", "bubble")))
