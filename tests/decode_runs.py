"""Decoding through the engine for the tests: a request sink, prompts decoded to their end, and one
mixed workload for the decode-graph tests on the CPU and on CUDA."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from engine.config import ModelConfig, get_preset
from engine.decode_graphs import DecodeGraphs
from engine.engine import Engine
from engine.request import GREEDY, Request, SamplingParams
from engine.scheduler import SchedulerConfig
from tracer.events import ExpertsEvent, MarkEvent, TickEvent
from tracer.recorder import ListRecorder


class Tokens:
    """A request's sink: its tokens in order, and how it ended."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.finishes: list[tuple[str, str]] = []

    def on_token(self, token: int, t_ns: int) -> None:
        self.tokens.append(token)

    def on_finish(self, status: str, reason: str, t_ns: int) -> None:
        self.finishes.append((status, reason))


def decode_prompts(engine: Engine, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Submit each prompt (request i) for `new_tokens` greedy tokens, step the engine until every one
    has ended, and return each one's tokens."""
    sinks = [Tokens() for _ in prompts]
    for i, (p, s) in enumerate(zip(prompts, sinks)):
        engine.submit(Request(i, p, new_tokens, s))
    while engine.scheduler.running or engine.scheduler.waiting:
        engine.step()
    return [s.tokens for s in sinks]


@dataclass
class MixedRun:
    tokens: list[list[int]]  # every request's tokens
    load: list[np.ndarray]  # every tick's expert load
    ticks: list[TickEvent]
    marks: list[MarkEvent]
    engine: Engine


def mixed_run(
    device: str,
    decode_graphs: str,
    *,
    decode_compile: str = "off",
    dtype: str = "auto",
    setup: Callable[[DecodeGraphs], None] | None = None,
    sampled: SamplingParams = GREEDY,
    model: ModelConfig | None = None,
    plan_ahead: str = "auto",
) -> MixedRun:
    """Eleven requests of mixed lengths through an engine of 8 slots, run to the end: admissions,
    prefills and finishes interleave with decode-only ticks, and contexts cross several context
    buckets. `setup` may adjust the engine's decode graphs before the first tick. Every other
    request picks its tokens as `sampled` says, with its index added to the seed. `model`: tiny's
    shape (in `dtype`) unless given; its vocabulary must hold tiny's 512 tokens."""
    rec = ListRecorder()
    sched = SchedulerConfig(
        max_seqs=8,
        kv_capacity_tokens=4096,
        decode_graphs=decode_graphs,
        decode_compile=decode_compile,
        plan_ahead=plan_ahead,
    )
    eng = Engine(model or get_preset("tiny", dtype=dtype), sched, device=device, recorder=rec)
    if setup is not None:
        setup(eng.graphs)
    rng = np.random.default_rng(1)
    sinks = [Tokens() for _ in range(11)]
    for i, sink in enumerate(sinks):
        prompt = rng.integers(0, 512, int(rng.integers(1, 90))).tolist()
        params = replace(sampled, seed=sampled.seed + i) if i % 2 else GREEDY
        eng.submit(Request(i, prompt, int(rng.integers(1, 40)), sink, sampling=params))
    while eng.step():
        pass
    ticks = [e for e in rec.events if isinstance(e, TickEvent)]
    load = [e.counts for e in rec.events if isinstance(e, ExpertsEvent)]
    assert len(load) == len(ticks)
    marks = [e for e in rec.events if isinstance(e, MarkEvent)]
    return MixedRun([s.tokens for s in sinks], load, ticks, marks, eng)
