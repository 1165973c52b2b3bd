"""Decode-step speed of the engine against the hardware's roofline and HuggingFace transformers, one
row per batch size.

Run it as a module from the repository root (as a script, this file would shadow the `engine` package).

    python -m bench.engine                                  # tiny on this machine's best device
    python -m bench.engine --preset ds2-lite --layers 8 --batches 1,8,32,128,256 --prompt 256
    python -m bench.engine --preset ds2-lite --layers 2 --device cpu --batches 1,8,32 --steps 10 --peer
    python -m bench.engine --model ~/models/OLMoE-1B-7B-0924 --batches 1,8,32,128    # a real checkpoint

For each batch size: B requests with a prompt of --prompt tokens are prefilled, then --steps decode
ticks are timed (wall clock of `Engine.step`, which includes scheduling and the tick's one host sync).
The floor is the larger of
  - bytes the step must read (weights actually touched: attention, router, shared experts, LM head,
    B embedding rows, and each layer's *distinct* routed experts that tick; plus the KV cache read)
    over the measured copy bandwidth, and
  - the step's FLOPs over the measured dense matmul rate,
and "of floor" is floor / measured step time (1.0 = at the roofline).

Measured in rounds, so that a machine whose load changes (other jobs) weighs on every figure alike:
each round times one engine step, one step of each transformers peer (--peer: its eager and grouped_mm
experts, a model holding copies of the engine's weights and decoding the same prompts, so that both
route alike and read the same bytes), each after an untimed step of its own, and the copy and matmul
probes. Every figure is the median of its rounds; "we are" is the peer's median step over ours; `load`
is the 1-minute load average.

"tracer" is what recording costs a decode step: --overhead-pairs more steps are timed with the engine
emitting into a real TraceWriter (to a temporary file, its writer thread running) and into nothing,
interleaved on-off-off-on so that the growing context weighs on both alike; it is mean(on) / mean(off) - 1.

Where the time goes, op by op, on both sides: bench/profile_engine.py.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from engine.checkpoint import Checkpoint, open_checkpoint
from engine.choices import DecodeCompile, DecodeGraphs
from engine.config import ModelConfig, get_preset
from engine.engine import Engine
from engine.hf_config import hf_twin
from engine.probe import copy_bandwidth, matmul_rate
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.cost import ModelShape
from tracer.events import ExpertsEvent, MarkEvent, SessionHeader, TickEvent
from tracer.recorder import ListRecorder, NullRecorder, Recorder
from tracer.writer import TraceWriter

PEERS = ("eager", "grouped_mm")  # transformers' experts backends


class _Discard:
    def on_token(self, token: int, t_ns: int) -> None: ...

    def on_finish(self, status: str, reason: str, t_ns: int) -> None: ...


def bench_prompts(batch: int, prompt: int, vocab: int) -> list[list[int]]:
    """The benchmark's prompts: the same for the engine and its peers."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, prompt).tolist() for _ in range(batch)]


def start_decoding(engine: Engine, batch: int, prompt: int, new_tokens: int) -> None:
    """Submit `batch` random prompts of `prompt` tokens and step until every sequence decodes."""
    for r, tokens in enumerate(bench_prompts(batch, prompt, engine.model_cfg.vocab_size)):
        engine.submit(Request(r, tokens, new_tokens, _Discard()))
    while engine.scheduler.waiting or any(s.pending > 1 for s in engine.scheduler.running):
        engine.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_floor(
    cfg: ModelConfig,
    dtype: torch.dtype,
    batch: int,
    kv_tokens: int,
    distinct_experts: int,
    bandwidth: float,
    flops_rate: float,
) -> float:
    """Seconds a decode step of `batch` tokens cannot beat on this hardware (see module docstring): the
    bytes and FLOPs of the cost model (tracer/cost.py), which the trace's own figures use."""
    header = {"model": {**cfg.as_dict(), "dtype": str(dtype).removeprefix("torch.")}}
    shape = ModelShape.from_config({**header, "kv_bytes_per_token": cfg.kv_bytes_per_token(dtype)})
    tokens, kv = np.array([batch]), np.array([kv_tokens])
    nbytes = shape.weight_bytes(tokens, np.array([distinct_experts])) + shape.kv_bytes(kv)
    flops = shape.flops(tokens, tokens, kv)
    return float(max(nbytes[0] / bandwidth, flops[0] / flops_rate))


class HfPeers:
    """transformers decoding the bench's prompts with copies of the engine's weights, once per experts
    backend (one model: the backend is read from its config at every forward), each with its own cache."""

    def __init__(self, engine: Engine, prompts: list[list[int]], backends: tuple[str, ...]) -> None:
        self.backends = backends
        self.model = hf_twin(engine.model, attention="sdpa")
        self.device = engine.device
        ids = torch.tensor(prompts, device=engine.device)
        self.state: dict[str, tuple[object, torch.Tensor]] = {}
        with torch.inference_mode():
            for backend in backends:
                self.model.config._experts_implementation = backend
                out = self.model(ids, use_cache=True)
                self.state[backend] = (out.cache, out.logits[:, -1].argmax(-1, keepdim=True))
                for _ in range(3):  # as the engine: its first decode steps are not timed
                    self.step(backend)

    def step(self, backend: str) -> None:
        self.model.config._experts_implementation = backend
        cache, token = self.state[backend]
        with torch.inference_mode():
            out = self.model(token, cache=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        token.cpu()  # a serving loop reads every step's tokens, as the engine does
        self.state[backend] = (out.cache, token)

    def timed_step(self, backend: str) -> float:
        _sync(self.device)
        t = time.perf_counter()
        self.step(backend)
        return time.perf_counter() - t


def decoding_engine(
    cfg: ModelConfig,
    device: str,
    batch: int,
    prompt: int,
    decode: int,
    decode_graphs: DecodeGraphs,
    decode_compile: DecodeCompile,
    recorder: Recorder | None = None,
    checkpoint: Checkpoint | None = None,
) -> Engine:
    """An engine whose `batch` sequences have prefilled `prompt` tokens each and decoded a few steps,
    each with room for `decode` tokens more."""
    if prompt + decode > cfg.max_seq_len:
        raise SystemExit(
            f"prompt {prompt} + {decode} decoded tokens (--steps, --overhead-pairs and 12 to warm "
            f"up) exceed {cfg.name}'s max_seq_len {cfg.max_seq_len}; ask for fewer"
        )
    sched = SchedulerConfig(
        max_seqs=batch,
        max_tokens=max(batch, 2048),
        prefill_chunk=2048,
        kv_capacity_tokens=batch * (prompt + decode + 32),
        queue_limit=batch,
        decode_graphs=decode_graphs,
        decode_compile=decode_compile,
    )
    engine = Engine(cfg, sched, device=device, recorder=recorder or NullRecorder(), checkpoint=checkpoint)
    start_decoding(engine, batch, prompt, decode)
    for _ in range(3):  # warm up the decode shapes (and capture their graph)
        engine.step()
    return engine


def bench_batch(
    cfg: ModelConfig,
    device: str,
    batch: int,
    prompt: int,
    steps: int,
    overhead_pairs: int,
    decode_graphs: DecodeGraphs,
    decode_compile: DecodeCompile,
    peers: tuple[str, ...] = (),
    checkpoint: Checkpoint | None = None,
) -> dict[str, Any]:
    rec = ListRecorder()
    decode = 2 * steps + 2 * overhead_pairs + 12
    engine = decoding_engine(cfg, device, batch, prompt, decode, decode_graphs, decode_compile, rec, checkpoint)
    hf = HfPeers(engine, bench_prompts(batch, prompt, cfg.vocab_size), peers) if peers else None
    rec.events.clear()
    rounds = measure_rounds(engine, hf, steps)
    captured = {e.tick for e in rec.events if isinstance(e, MarkEvent)}
    timed = set(rounds["ours_ticks"]) - captured
    ticks = [e for e in rec.events if isinstance(e, TickEvent) and e.tick in timed]
    experts = [e for e in rec.events if isinstance(e, ExpertsEvent)]
    assert all(e.seqs == batch and e.prefill_tokens == 0 for e in ticks), "bench batch was not decode-only"
    distinct = float(np.mean([(e.counts > 0).sum() for e in experts]))
    kv_tokens = batch * (prompt + 3 + steps)  # mean context over the timed steps
    on_s, off_s = tracer_on_off(engine, overhead_pairs)
    result = {
        "step_s": float(np.median(rounds["ours"])),
        "forward_s": float(np.median([e.forward_ns for e in ticks])) / 1e9,
        "peers_s": {p: float(np.median(rounds[p])) for p in peers},
        "bandwidth": float(np.median(rounds["copy"])),
        "matmul_rate": float(np.median(rounds["matmul"])),
        "load": os.getloadavg()[0],
        "distinct": distinct,
        "kv_tokens": kv_tokens,
        "tracer": on_s / off_s - 1,
        # what the table's header needs; not the engine, whose memory the next batch's engine needs
        "device": engine.device,
        "dtype": engine.dtype,
        "describe": engine.describe(),
    }
    del engine, hf
    gc.collect()
    return result


def measure_rounds(engine: Engine, hf: HfPeers | None, steps: int) -> dict[str, list[float]]:
    """Seconds of each engine step and each peer's, the probes' figures, and the ticks timed, round by
    round (see docstring)."""
    dev, dtype, peers = engine.device, engine.dtype, () if hf is None else hf.backends
    rounds: dict[str, list[float]] = {"ours": [], "ours_ticks": [], "copy": [], "matmul": [], **{p: [] for p in peers}}
    for _ in range(steps):
        # each timed step follows an untimed one of its own: what the others (and the probes) left in
        # the caches must not count, as a model small enough to stay cached stays cached when it serves
        engine.step()
        rounds["ours_ticks"].append(engine.ticks)
        rounds["ours"] += timed_steps(engine, 1)
        for peer in peers:
            assert hf is not None
            hf.step(peer)
            rounds[peer].append(hf.timed_step(peer))
        rounds["copy"].append(copy_bandwidth(dev, reps=3))
        rounds["matmul"].append(matmul_rate(dev, dtype, reps=3))
    return rounds


def _captures(engine: Engine) -> int:
    return 0 if engine.graphs is None else len(engine.graphs.captured)


def timed_steps(engine: Engine, n: int) -> list[float]:
    """Seconds of each of n decode steps, but those that captured (and compiled) a decode graph, as the
    context grows into a new bucket: that is a one-off cost, not the step's."""
    times = []
    for _ in range(n):
        before = _captures(engine)
        t = time.perf_counter()
        engine.step()
        elapsed = time.perf_counter() - t
        if _captures(engine) == before:
            times.append(elapsed)
    return times


def tracer_on_off(engine: Engine, pairs: int) -> tuple[float, float]:
    """Mean seconds of a decode step recorded into a TraceWriter, and into nothing (see docstring)."""
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        header = SessionHeader(time.monotonic_ns(), time.time_ns(), {"engine": engine.describe()})
        writer = TraceWriter(Path(tmp) / "overhead.msgpack", header)
        recorders: dict[bool, Recorder] = {True: writer, False: NullRecorder()}
        try:
            for i in range(-4, 2 * pairs):  # 4 untimed first: the writer's first frame is its slowest
                traced = i % 4 in (0, 3)
                engine.recorder = recorders[traced]
                step = timed_steps(engine, 1)
                if i >= 0:
                    times[traced] += step
        finally:
            writer.close()
    return float(np.mean(times[True])), float(np.mean(times[False]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", default="tiny")
    model.add_argument("--model", metavar="DIR", help="a local Hugging Face checkpoint directory instead of a preset")
    p.add_argument("--layers", type=int)
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--overhead-pairs", type=int, default=100, help="traced/untraced step pairs for the tracer column")
    p.add_argument(
        "--decode-graphs",
        default="auto",
        choices=["auto", "on", "off"],
        help="the engine's decode graphs (default: auto, i.e. CUDA graphs on CUDA)",
    )
    p.add_argument(
        "--decode-compile",
        default="off",
        choices=["off", "inductor", "aot_eager"],
        help="torch.compile the decode graphs' forward pass (default: off)",
    )
    p.add_argument(
        "--peer",
        action="store_true",
        help="also time HuggingFace transformers (eager and grouped_mm experts) on the same weights",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"layers": args.layers} if args.layers else {}
    if args.model and args.peer:
        raise SystemExit(
            "--peer copies a preset's random weights into transformers; it cannot be combined with --model"
        )
    checkpoint = open_checkpoint(args.model) if args.model else None
    cfg = get_preset(args.preset, **overrides) if checkpoint is None else checkpoint.model_config(**overrides)
    peers = PEERS if args.peer else ()

    # an untimed first run: the process's first ticks are slow (allocator, kernel and library setup)
    graphs, compile_backend = cast(DecodeGraphs, args.decode_graphs), cast(DecodeCompile, args.decode_compile)
    bench_batch(cfg, args.device, 1, args.prompt, 20, 2, graphs, compile_backend, checkpoint=checkpoint)
    for i, b in enumerate(int(x) for x in args.batches.split(",")):
        r = bench_batch(
            cfg,
            args.device,
            b,
            args.prompt,
            args.steps,
            args.overhead_pairs,
            graphs,
            compile_backend,
            peers,
            checkpoint,
        )
        if i == 0:
            d = r["describe"]
            print(
                f"{cfg.name}, {cfg.layers} layers, {d['device_name']}, {d['model']['dtype']}, "
                f"experts via {d['expert_matmul']} ({d['expert_matmul_reason']}), "
                f"decode graphs: {d['decode_graphs']}, compile: {args.decode_compile}, "
                f"plans ahead: {'yes' if d['plans_ahead'] else 'no'}, prompt {args.prompt}, "
                f"{args.steps} rounds (medians)"
            )
            print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
            print(
                f"{'batch':>6} {'step ms':>9} {'fwd ms':>8} {'tok/s':>9} {'experts/layer':>14} {'copy GB/s':>10} "
                f"{'TFLOP/s':>8} {'floor ms':>9} {'of floor':>9} {'tracer':>7} {'load':>5}"
                + "".join(f" {'hf ' + p + ' ms':>18} {'we are':>7}" for p in peers)
            )
        floor = step_floor(cfg, r["dtype"], b, r["kv_tokens"], round(r["distinct"]), r["bandwidth"], r["matmul_rate"])
        line = (
            f"{b:>6} {r['step_s'] * 1e3:>9.2f} {r['forward_s'] * 1e3:>8.2f} {b / r['step_s']:>9.0f} "
            f"{r['distinct'] / max(cfg.moe_layers, 1):>14.1f} "
            f"{r['bandwidth'] / 1e9:>10.1f} {r['matmul_rate'] / 1e12:>8.3f} "
            f"{floor * 1e3:>9.3f} {floor / r['step_s']:>9.1%} {r['tracer']:>+7.1%} {r['load']:>5.1f}"
        )
        for peer in peers:
            peer_s = r["peers_s"][peer]
            line += f" {peer_s * 1e3:>18.2f} {peer_s / r['step_s']:>6.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
