"""Deterministic synthetic sessions: for tests, benchmarks and dashboards without an engine.

The events follow the real emitters' shapes and order (a tick's request events, then its tick,
experts and stage events) with a toy scheduler: requests arrive, wait, are admitted into a batch,
decode one token per tick and finish.
"""

from __future__ import annotations

import numpy as np

from tracer.events import Event, ExpertsEvent, MarkEvent, RequestEvent, SessionHeader, StageEvent, TickEvent

T0_NS = 1_000_000_000_000


def synthetic_session(ticks: int = 50, *, layers: int = 4, experts: int = 16, top_k: int = 2,
                      stages: int = 2, micro_batches: int = 2, max_batch: int = 8,
                      tick_ns: int = 2_000_000, seed: int = 0,
                      slo: dict[str, float] | None = None) -> tuple[SessionHeader, list[Event]]:
    rng = np.random.default_rng(seed)
    config = {"model": {"preset": "synthetic", "layers": layers, "experts": experts, "top_k": top_k},
              "scheduler": {"max_batch": max_batch}, "workload": {"name": "synthetic", "slo": slo or {}},
              "seed": seed}
    header = SessionHeader(t0_mono_ns=T0_NS, t0_wall_ns=1_700_000_000_000_000_000, config=config)
    events: list[Event] = []
    waiting: list[int] = []
    running: dict[int, dict[str, int]] = {}
    arrived: dict[int, int] = {}
    next_id = 0
    t = T0_NS
    popularity = rng.dirichlet(np.full(experts, 0.7), size=layers)
    for tick in range(ticks):
        for _ in range(rng.poisson(0.8)):
            arrived[next_id] = t
            events.append(RequestEvent(next_id, "arrive", t, prompt_tokens=int(rng.integers(4, 32))))
            waiting.append(next_id)
            next_id += 1
        start = t + 200_000
        admitted = []
        while waiting and len(running) < max_batch:
            rid = waiting.pop(0)
            running[rid] = {"left": int(rng.integers(1, 12)), "tokens": []}
            admitted.append(rid)
            events.append(RequestEvent(rid, "admit", start, tick=tick))
        end = start + tick_ns
        prefill = len(admitted) * 16
        decode = len(running) - len(admitted)
        sampled = len(running)  # every sequence samples: admitted prompts are prefilled whole
        for rid in list(running):
            r = running[rid]
            r["tokens"].append((end - arrived[rid]) // 1000)
            r["left"] -= 1
            if len(r["tokens"]) == 1:
                events.append(RequestEvent(rid, "first_token", end, tick=tick))
            if r["left"] == 0:
                del running[rid]
                events.append(RequestEvent(rid, "finish", end, output_tokens=len(r["tokens"]), tick=tick,
                                           status="finished", token_us=np.array(r["tokens"], dtype=np.uint32)))
        seqs = len(running) + len(admitted)
        events.append(TickEvent(tick, start, end, 200_000, seqs, prefill, decode, len(waiting),
                                len(running), 100 * len(running), 4096, tick_ns - 100_000, sampled))
        tokens = max(prefill + decode, 1) * top_k
        counts = np.stack([rng.multinomial(tokens, popularity[layer]) for layer in range(layers)]).astype(np.int32)
        events.append(ExpertsEvent(tick, counts))
        cell = tick_ns // (stages * micro_batches)
        ms = np.array([[(s * micro_batches + m) * cell for m in range(micro_batches)] for s in range(stages)], dtype=np.int64)
        mo = np.array([[(s + m) * cell for m in range(micro_batches)] for s in range(stages)], dtype=np.int64)
        events.append(StageEvent(tick, ms, ms + cell, mo, mo + cell))
        if tick == ticks // 2:
            events.append(MarkEvent(end, tick, "halfway"))
        t = end
    for rid in waiting + list(running):  # the session ends: nobody is left without a finish
        events.append(RequestEvent(rid, "finish", t, tick=ticks - 1, status="cancelled", reason="session ended",
                                   output_tokens=len(running.get(rid, {}).get("tokens", []))))
    return header, events
