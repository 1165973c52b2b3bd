"""Decode-step speed of the engine against the hardware's roofline, one row per batch size.

Run it as a module from the repository root (as a script, this file would shadow the `engine` package).

    python -m bench.engine                                  # tiny on this machine's best device
    python -m bench.engine --preset ds2-lite --layers 8 --batches 1,8,32,128,256 --prompt 256

For each batch size: B requests with a prompt of --prompt tokens are prefilled, then --steps decode
ticks are timed (wall clock of `Engine.step`, which includes scheduling and the tick's one host sync).
The floor is the larger of
  - bytes the step must read (weights actually touched: attention, router, shared experts, LM head,
    B embedding rows, and each layer's *distinct* routed experts that tick; plus the KV cache read)
    over the measured copy bandwidth, and
  - the step's FLOPs over the measured dense matmul rate,
and "of floor" is floor / measured step time (1.0 = at the roofline).

"tracer" is what recording costs a decode step: --overhead-pairs more steps are timed with the engine
emitting into a real TraceWriter (to a temporary file, its writer thread running) and into nothing,
interleaved on-off-off-on so that the growing context weighs on both alike; it is mean(on) / mean(off) - 1.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.config import ModelConfig, get_preset
from engine.engine import Engine
from engine.hf_config import glm4_moe_config
from engine.probe import copy_bandwidth, matmul_rate
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.events import ExpertsEvent, MarkEvent, SessionHeader, TickEvent
from tracer.recorder import ListRecorder, NullRecorder, Recorder
from tracer.writer import TraceWriter


class _Discard:
    def on_token(self, token: int, t_ns: int) -> None: ...

    def on_finish(self, status: str, reason: str, t_ns: int) -> None: ...


def start_decoding(engine: Engine, batch: int, prompt: int, new_tokens: int) -> None:
    """Submit `batch` random prompts of `prompt` tokens and step until every sequence decodes."""
    vocab = engine.model_cfg.vocab_size
    rng = np.random.default_rng(0)
    for r in range(batch):
        engine.submit(Request(r, rng.integers(0, vocab, prompt).tolist(), new_tokens, _Discard()))
    while engine.scheduler.waiting or any(s.pending > 1 for s in engine.scheduler.running):
        engine.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_floor(cfg: ModelConfig, dtype: torch.dtype, batch: int, kv_tokens: int, distinct_experts: int,
               bandwidth: float, flops_rate: float) -> float:
    """Seconds a decode step of `batch` tokens cannot beat on this hardware (see module docstring)."""
    h, i = cfg.hidden, cfg.moe_intermediate
    attention = h * (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim + cfg.heads * cfg.head_dim * h
    per_layer = attention + 3 * h * i * cfg.shared_experts
    dense = cfg.layers * per_layer + h * cfg.vocab_size + batch * h
    weight_bytes = (dense + distinct_experts * 3 * h * i) * dtype.itemsize + cfg.layers * h * cfg.routed_experts * 4
    kv_bytes = kv_tokens * cfg.kv_bytes_per_token(dtype)
    active = cfg.layers * (per_layer + cfg.top_k * 3 * h * i) + h * cfg.vocab_size
    attention_flops = 4 * cfg.heads * cfg.head_dim * kv_tokens * cfg.layers
    flops = 2 * active * batch + attention_flops
    return max((weight_bytes + kv_bytes) / bandwidth, flops / flops_rate)


def bench_batch(cfg: ModelConfig, device: str, batch: int, prompt: int, steps: int, overhead_pairs: int,
                decode_graphs: str, decode_compile: str) -> dict:
    rec = ListRecorder()
    decode = steps + 2 * overhead_pairs + 12
    if prompt + decode > cfg.max_seq_len:
        raise SystemExit(f"prompt {prompt} + {decode} decoded tokens (--steps, --overhead-pairs and 12 to warm "
                         f"up) exceed {cfg.name}'s max_seq_len {cfg.max_seq_len}; ask for fewer")
    sched = SchedulerConfig(max_seqs=batch, max_tokens=max(batch, 2048), prefill_chunk=2048,
                            kv_capacity_tokens=batch * (prompt + decode + 32), queue_limit=batch,
                            decode_graphs=decode_graphs, decode_compile=decode_compile)
    engine = Engine(cfg, sched, device=device, recorder=rec)
    start_decoding(engine, batch, prompt, decode)
    for _ in range(3):  # warm up the decode shapes (and capture their graph)
        engine.step()
    rec.events.clear()
    step_times = timed_steps(engine, steps)
    captured = {e.tick for e in rec.events if isinstance(e, MarkEvent)}
    ticks = [e for e in rec.events if isinstance(e, TickEvent) and e.tick not in captured]
    experts = [e for e in rec.events if isinstance(e, ExpertsEvent)]
    assert all(e.seqs == batch and e.prefill_tokens == 0 for e in ticks), "bench batch was not decode-only"
    distinct = float(np.mean([(e.counts > 0).sum() for e in experts]))
    kv_tokens = batch * (prompt + 3 + steps // 2)  # mean context over the timed steps
    on_s, off_s = tracer_on_off(engine, overhead_pairs)
    return {
        "step_s": float(np.mean(step_times)),
        "forward_s": float(np.mean([e.forward_ns for e in ticks])) / 1e9,
        "distinct": distinct,
        "kv_tokens": kv_tokens,
        "tracer": on_s / off_s - 1,
        # what the table's header needs; not the engine, whose memory the next batch's engine needs
        "device": engine.device,
        "dtype": engine.dtype,
        "describe": engine.describe(),
    }


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


def hf_peer_step_s(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, batch: int, prompt: int,
                   steps: int, backend: str) -> float:
    """Seconds per greedy decode step of the same shape in HuggingFace transformers (GLM-4.5's MoE, which
    is our architecture; see tests/test_engine_parity.py), decoding with its KV cache."""
    from transformers import Glm4MoeForCausalLM  # the peer only: not an engine dependency

    config = glm4_moe_config(cfg, attention="sdpa", experts=backend)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the model's dtype, on the device: no float32 detour
    try:
        with torch.device(device):
            model = Glm4MoeForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt), device=device)
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for i in range(steps + 3):
            if i == 3:
                _sync(device)
                t = time.perf_counter()
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            token.cpu()  # a serving loop reads every step's tokens, as the engine does
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int)
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--overhead-pairs", type=int, default=100, help="traced/untraced step pairs for the tracer column")
    p.add_argument("--decode-graphs", default="auto", choices=["auto", "on", "off"],
                   help="the engine's decode graphs (default: auto, i.e. CUDA graphs on CUDA)")
    p.add_argument("--decode-compile", default="off", choices=["off", "inductor", "aot_eager"],
                   help="torch.compile the decode graphs' forward pass (default: off)")
    p.add_argument("--peer", action="store_true",
                   help="also time HuggingFace transformers (eager and grouped_mm experts) on the same shape")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"layers": args.layers} if args.layers else {}
    cfg = get_preset(args.preset, **overrides)

    # an untimed first run: the process's first ticks are slow (allocator, kernel and library setup)
    bench_batch(cfg, args.device, 1, args.prompt, 20, 2, args.decode_graphs, args.decode_compile)
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        rows.append((b, bench_batch(cfg, args.device, b, args.prompt, args.steps, args.overhead_pairs,
                                    args.decode_graphs, args.decode_compile)))
    dev, dtype, d = rows[-1][1]["device"], rows[-1][1]["dtype"], rows[-1][1]["describe"]
    bandwidth, rate = copy_bandwidth(dev), matmul_rate(dev, dtype)
    print(f"{cfg.name}, {cfg.layers} layers, {d['device_name']}, {d['model']['dtype']}, "
          f"experts via {d['expert_matmul']}, decode graphs: {d['decode_graphs']}, compile: {args.decode_compile}, "
          f"prompt {args.prompt}, {args.steps} decode steps")
    print(f"measured: copy {bandwidth / 1e9:.1f} GB/s, matmul {rate / 1e12:.2f} TFLOP/s, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peers = ("eager", "grouped_mm") if args.peer else ()
    print(f"{'batch':>6} {'step ms':>9} {'fwd ms':>8} {'tok/s':>9} {'ticks/s':>8} {'experts/layer':>14} "
          f"{'floor ms':>9} {'of floor':>9} {'tracer':>7}"
          + "".join(f" {'hf ' + p + ' ms':>18} {'we are':>7}" for p in peers))
    for b, r in rows:
        per_layer = r["distinct"] / cfg.layers
        floor = step_floor(cfg, dtype, b, r["kv_tokens"], round(r["distinct"]), bandwidth, rate)
        line = (f"{b:>6} {r['step_s'] * 1e3:>9.2f} {r['forward_s'] * 1e3:>8.2f} {b / r['step_s']:>9.0f} "
                f"{1 / r['step_s']:>8.0f} {per_layer:>14.1f} {floor * 1e3:>9.3f} {floor / r['step_s']:>9.1%} "
                f"{r['tracer']:>+7.1%}")
        for peer in peers:
            peer_s = hf_peer_step_s(cfg, dev, dtype, b, args.prompt, args.steps, peer)
            line += f" {peer_s * 1e3:>18.2f} {peer_s / r['step_s']:>6.1f}x"
        print(line)


if __name__ == "__main__":
    main()
