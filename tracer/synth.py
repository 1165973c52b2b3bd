"""Deterministic synthetic sessions: for tests, benchmarks and dashboards without an engine.

One generator, streamed: `synthetic_events` yields the events of a toy continuous-batching
scheduler in the real emitters' shapes and order (a tick's request events, then its tick, experts
and stage events): requests arrive (or are turned away when the queue is full), wait, are admitted
into a batch, decode one token per tick and finish. Stage cells are placed by the engine's own
modelled timeline (tracer/pipeline.py). Randomness is drawn a block of ticks at a time, so a
million-tick trace streams in seconds; `synthetic_session` collects a short one into a list.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from tracer.events import Event, ExpertsEvent, MarkEvent, RequestEvent, SessionHeader, StageEvent, TickEvent
from tracer.timeline import modelled_timeline

T0_NS = 1_000_000_000_000
_BLOCK = 512  # ticks whose random draws are made together
_SHAPES = 16  # distinct stage timelines, reused in turn: their bytes still go to the writer every tick


def synthetic_header(
    *,
    layers: int = 4,
    experts: int = 16,
    top_k: int = 2,
    max_batch: int = 8,
    seed: int = 0,
    slo: dict[str, float] | None = None,
    name: str = "synthetic",
) -> SessionHeader:
    """A header with the `tiny` preset's widths at this depth and width, so cost figures have a model."""
    model: dict[str, Any] = {
        "name": "tiny", "vocab_size": 512, "hidden": 128, "layers": layers, "heads": 4, "kv_heads": 2,
        "head_dim": 32, "routed_experts": experts, "experts": experts, "moe_intermediate": 64, "top_k": top_k,
        "shared_experts": 1, "dtype": "float32",
    }  # fmt: skip
    config = {
        "model": model,
        "device": {"name": "cpu"},
        "scheduler": {"policy": "continuous", "window_ms": 0, "max_seqs": max_batch, "has_window": False},
        "workload": {"name": name, "slo": slo or {}},
        "seed": seed,
    }
    return SessionHeader(t0_mono_ns=T0_NS, t0_wall_ns=1_700_000_000_000_000_000, config=config)


def synthetic_events(
    ticks: int,
    *,
    layers: int = 4,
    experts: int = 16,
    top_k: int = 2,
    stages: int = 2,
    micro_batches: int = 2,
    max_batch: int = 8,
    queue_limit: int = 64,
    rate: float = 0.8,
    prompt_tokens: tuple[int, int] = (4, 32),
    output_tokens: tuple[int, int] = (1, 12),
    tick_ns: int = 2_000_000,
    seed: int = 0,
) -> Iterator[Event]:
    """The events of `ticks` ticks; `rate` requests arrive per tick on average, with prompt and
    output lengths uniform in the given [low, high) ranges. The session ends with every request
    still queued or running cancelled, so none is left without a finish."""
    rng = np.random.default_rng(seed)
    popularity = rng.dirichlet(np.full(experts, 0.7), size=layers)  # skewed, as trained routers are
    cell = tick_ns // max(stages * micro_batches, 1)
    timelines = []
    for _ in range(_SHAPES if stages * micro_batches > 1 else 0):
        cost = cell // 2 + rng.integers(0, cell // 2, (stages, micro_batches))
        measured_end = np.cumsum(cost.ravel()).reshape(cost.shape)  # one device: the cells one after another
        timelines.append((measured_end - cost, measured_end, *modelled_timeline(cost)))
    waiting: list[tuple[int, int, int]] = []  # (request, arrive_ns, tokens to generate)
    running: dict[int, list[Any]] = {}  # request -> [tokens left, arrive_ns, token µs so far]
    next_id = 0
    t = T0_NS
    for base in range(0, ticks, _BLOCK):
        n = min(_BLOCK, ticks - base)
        arrivals = rng.poisson(rate, n)
        lengths = rng.integers(*output_tokens, arrivals.sum() + 1)
        prompts = rng.integers(*prompt_tokens, arrivals.sum() + 1)
        drawn = 0
        block: list[list[Event]] = []  # each tick's events, its expert load drawn for the block at once
        tokens = np.zeros(n, dtype=np.int64)
        ends: list[int] = []
        for i in range(n):
            tick = base + i
            events: list[Event] = []
            for _ in range(arrivals[i]):
                events.append(RequestEvent(next_id, "arrive", t, prompt_tokens=int(prompts[drawn])))
                if len(waiting) >= queue_limit:  # the queue is full: turned away at once
                    events.append(
                        RequestEvent(next_id, "finish", t + 1_000, tick=tick, status="rejected", reason="queue full")
                    )
                else:
                    waiting.append((next_id, t, int(lengths[drawn])))
                next_id += 1
                drawn += 1
            start = t + 200_000
            admitted = 0
            while waiting and len(running) < max_batch:
                rid, arrived, length = waiting.pop(0)
                running[rid] = [length, arrived, []]
                admitted += 1
                events.append(RequestEvent(rid, "admit", start, tick=tick))
            end = start + tick_ns
            seqs = len(running)
            for rid in list(running):  # every sequence samples: admitted prompts are prefilled whole
                r = running[rid]
                r[2].append((end - r[1]) // 1000)
                r[0] -= 1
                if len(r[2]) == 1:
                    events.append(RequestEvent(rid, "first_token", end, tick=tick))
                if r[0] == 0:
                    del running[rid]
                    events.append(
                        RequestEvent(
                            rid,
                            "finish",
                            end,
                            output_tokens=len(r[2]),
                            tick=tick,
                            status="finished",
                            token_us=np.array(r[2], dtype=np.uint32),
                        )
                    )
            events.append(
                TickEvent(
                    tick,
                    start,
                    end,
                    200_000,
                    seqs,
                    admitted * 16,
                    seqs - admitted,
                    len(waiting),
                    len(running),
                    100 * len(running),
                    4096,
                    tick_ns - 100_000,
                    seqs,
                )
            )
            tokens[i] = max(seqs + admitted * 15, 1) * top_k
            block.append(events)
            ends.append(end)
            t = end
        loads = rng.multinomial(tokens[:, None], popularity).astype(np.int32)  # [n, layers, experts]
        for i, events in enumerate(block):
            tick = base + i
            yield from events
            yield ExpertsEvent(tick, loads[i])
            if timelines:
                yield StageEvent(tick, *timelines[tick % len(timelines)])
            if tick == ticks // 2:
                yield MarkEvent(ends[i], tick, "halfway")
    for rid, _arrived, _length in waiting:
        yield RequestEvent(rid, "finish", t, tick=ticks - 1, status="cancelled", reason="session ended")
    for rid, r in running.items():
        yield RequestEvent(
            rid, "finish", t, tick=ticks - 1, status="cancelled", reason="session ended", output_tokens=len(r[2])
        )


def synthetic_session(
    ticks: int = 50,
    *,
    layers: int = 4,
    experts: int = 16,
    top_k: int = 2,
    stages: int = 2,
    micro_batches: int = 2,
    max_batch: int = 8,
    tick_ns: int = 2_000_000,
    seed: int = 0,
    slo: dict[str, float] | None = None,
) -> tuple[SessionHeader, list[Event]]:
    """A short synthetic session, whole: its header and every event."""
    header = synthetic_header(layers=layers, experts=experts, top_k=top_k, max_batch=max_batch, seed=seed, slo=slo)
    events = list(
        synthetic_events(
            ticks,
            layers=layers,
            experts=experts,
            top_k=top_k,
            stages=stages,
            micro_batches=micro_batches,
            max_batch=max_batch,
            tick_ns=tick_ns,
            seed=seed,
        )
    )
    return header, events
