"""A scripted recording for the dashboard tests (no engine, no clock).

Not a second generator of load (that is tracer/synth.py): a script whose every figure can be
worked out by hand — request N arrives at tick N, is admitted and gets its first token the next
tick, finishes six ticks later (every 13th is rejected), one is preempted every 25 ticks — so
the tests can assert exact values. Seeded numpy draws, fixed tick spacing and a fixed t0, so the
same call always gives the same events and the same screen; stage cells are placed by the
engine's own timeline.
"""

from __future__ import annotations

import numpy as np

from tracer.events import (
    ExpertsEvent,
    MarkEvent,
    RequestEvent,
    SessionHeader,
    StageEvent,
    TickEvent,
)
from tracer.timeline import modelled_timeline

T0 = 1_000_000_000_000
TICK_NS = 20_000_000  # 20 ms per tick
LAYERS, EXPERTS, TOP_K = 6, 16, 2
STAGES, MICRO_BATCHES = 2, 3


def header(**config) -> SessionHeader:
    cfg = {
        "model": {"name": "tiny", "layers": LAYERS, "experts": EXPERTS, "top_k": TOP_K},
        "device": {"name": "cpu"},
        "scheduler": {"policy": "window", "window_ms": 5, "max_seqs": 16},
        "workload": {"name": "synthetic"},
    }
    cfg.update(config)
    return SessionHeader(t0_mono_ns=T0, t0_wall_ns=1_700_000_000_000_000_000, config=cfg)


def ticks(start: int, count: int, *, seed: int = 7, stages: bool = True) -> list:
    """Events of ticks start..start+count-1, with requests arriving, decoding and finishing."""
    rng = np.random.default_rng(seed + start)
    popularity = np.linspace(3.0, 0.3, EXPERTS)  # skewed, as the router_skew knob makes it
    events: list = []
    for tick in range(start, start + count):
        t = T0 + tick * TICK_NS
        seqs = int(4 + 3 * np.sin(tick / 9) + rng.integers(0, 3))
        req = tick  # one request arrives per tick, is admitted next tick, finishes 5 later
        events.append(RequestEvent(req, "arrive", t + 1_000, prompt_tokens=32 + tick % 17))
        if tick >= 1:
            events.append(RequestEvent(tick - 1, "admit", t + 2_000, tick=tick))
            events.append(RequestEvent(tick - 1, "first_token", t + 15_000_000, tick=tick))
        if tick >= 6:
            done = tick - 6
            status = "rejected" if done % 13 == 12 else "finished"
            events.append(RequestEvent(
                done, "finish", t + 16_000_000, output_tokens=6 if status == "finished" else 0,
                tick=tick, status=status,
                token_us=np.arange(1, 7, dtype=np.uint32) * 20_000 if status == "finished" else None,
            ))  # fmt: skip
        if tick % 25 == 24:
            events.append(RequestEvent(tick - 2, "preempt", t + 3_000, tick=tick, reason="kv"))
        events.append(TickEvent(
            tick=tick, start_ns=t + 5_000_000, end_ns=t + 18_000_000, wait_ns=5_000_000,
            seqs=seqs, prefill_tokens=32 if tick % 3 == 0 else 0, decode_tokens=seqs,
            queue_depth=int(abs(4 * np.cos(tick / 7))), running=seqs, kv_used=40 * seqs + tick % 50,
            kv_capacity=1024, forward_ns=12_000_000, sampled_tokens=seqs + (tick >= 1),  # + one first token
        ))  # fmt: skip
        counts = rng.poisson(popularity * seqs * TOP_K / popularity.sum(), (LAYERS, EXPERTS))
        events.append(ExpertsEvent(tick, counts.astype(np.int32)))
        if stages:
            cost = 1_000_000 + rng.integers(0, 400_000, (STAGES, MICRO_BATCHES))
            start_ns, end_ns = modelled_timeline(cost)  # the engine's placement of the cells
            flat_end = np.cumsum(cost.ravel()).reshape(cost.shape)
            events.append(StageEvent(tick, flat_end - cost, flat_end, start_ns, end_ns))
        if tick == 40:
            events.append(MarkEvent(t, tick, "burst starts"))
    return events


def recording(n: int = 120, **kwargs) -> tuple[SessionHeader, list]:
    return header(), ticks(0, n, **kwargs)


def write_trace(path, n: int = 120, **kwargs) -> None:
    """The synthetic recording as a finished trace file."""
    from tracer import TraceWriter

    with TraceWriter(path, header()) as writer:
        for event in ticks(0, n, **kwargs):
            writer.emit(event)
