"""Where a decode step's time goes, op by op, in the engine and in HuggingFace transformers' peer.

Run it as a module from the repository root:

    python -m bench.profile_engine --preset ds2-lite --layers 2 --device cpu --batches 1,8,32

For each batch size the engine and transformers (each experts backend of bench/engine.py's peer, on
copies of the engine's weights and the same prompts) decode the same sequences; --steps decode steps of
each are profiled with torch.profiler after the same warm-up as bench/engine.py. Printed per batch and
side: wall ms per step, and the --rows ops of most self time, as ms per step and calls per step. On
CUDA self time is the device's; on the CPU, the host's (every op runs there).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from bench.engine import PEERS, HfPeers, bench_prompts, decoding_engine
from engine.config import get_preset
from engine.engine import Engine


def profile_side(step: Callable[[], object], cuda: bool, steps: int) -> tuple[float, list[tuple[str, float, float]]]:
    """Wall seconds per step, and (op, self ms per step, calls per step) for every op, costliest first."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / steps
    rows = []
    for avg in prof.key_averages():
        self_us = avg.self_device_time_total if cuda else avg.self_cpu_time_total
        rows.append((avg.key, self_us / 1e3 / steps, avg.count / steps))
    rows.sort(key=lambda r: -r[1])
    return wall, rows


def profile_batch(engine: Engine, batch: int, prompt: int, steps: int) -> dict[str, tuple[float, list]]:
    """Each side's profile at this batch: the engine, then each transformers experts backend."""
    hf = HfPeers(engine, bench_prompts(batch, prompt, engine.model_cfg.vocab_size), PEERS)
    cuda = engine.device.type == "cuda"
    sides: list[tuple[str, Callable[[], object]]] = [("tickscope", engine.step)]
    sides += [(f"transformers {p}", functools.partial(hf.step, p)) for p in PEERS]
    out = {}
    for name, step in sides:
        step()  # untimed: what the other side left in the caches must not count
        out[name] = profile_side(step, cuda, steps)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ds2-lite")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="profiled decode steps per side")
    p.add_argument("--rows", type=int, default=8, help="ops shown per side")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset, layers=args.layers)
    print(
        f"{cfg.name}, {cfg.layers} layers, device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {args.steps} steps per side"
    )
    for batch in (int(x) for x in args.batches.split(",")):
        engine = decoding_engine(cfg, args.device, batch, args.prompt, args.steps * 4 + 16, "off", "off")
        profiles = profile_batch(engine, batch, args.prompt, args.steps)
        print(f"\nbatch {batch} (load average {os.getloadavg()[0]:.1f})")
        for name, (wall, rows) in profiles.items():
            total = sum(r[1] for r in rows)
            print(f"  {name}: {wall * 1e3:.1f} ms per step, profiled ops' self time {total:.1f} ms")
            for key, ms, calls in rows[: args.rows]:
                print(f"    {key:<40} {ms:>9.2f} ms {ms / total:>6.1%} {calls:>7.1f} calls")
        del engine, profiles
        gc.collect()


if __name__ == "__main__":
    main()
