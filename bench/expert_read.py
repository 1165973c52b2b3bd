"""How fast one routed expert's weights are read on the CPU, by how many rows (tokens) it gets.

A decode step of ds2-lite at batch B gives each active expert about B * top_k / experts rows: 1 at
batch 1, about 3 at batch 32. The step's floor (bench/engine.py) assumes its weights are read at the
copy probe's rate whatever the rows; this measures what each way of multiplying them achieves, for
float32 experts of the preset's shape ([2 * moe_intermediate, hidden] gate|up, then down):

- `oneDNN`: the engine's `linear` (engine/kernels.py), one call per product, torch's intra-op threads;
- `F.linear`: MKL's sgemm, as transformers' experts call it;
- `mm(W, x.T)`: the same product with the weight as the left operand (a multi-row gemv);
- `2 threads x 1`: whole experts split between two Python threads, each product on one intra-op thread.

GB/s is the experts' weight bytes over the wall time of running them all, median of --reps rounds;
"of copy" divides it by the copy probe's rate (read + write counted, as the floor does).

    python -m bench.expert_read [--preset ds2-lite] [--rows 1,2,3,4,8,16] [--experts 16] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from engine.config import get_preset
from engine.kernels import linear
from engine.probe import copy_bandwidth

Product = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _expert(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, product: Product) -> torch.Tensor:
    h = product(x, gate_up)
    half = h.shape[1] // 2
    return product(F.silu(h[:, :half]) * h[:, half:], down)


def _rate(run: Callable[[], object], nbytes: int, reps: int) -> float:
    run()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ds2-lite")
    ap.add_argument("--rows", default="1,2,3,4,8,16")
    ap.add_argument("--experts", type=int, default=16, help="experts per round (their weights must not fit a cache)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    cfg = get_preset(args.preset)
    gen = torch.Generator().manual_seed(0)
    experts = [
        (
            torch.randn(2 * cfg.moe_intermediate, cfg.hidden, generator=gen),
            torch.randn(cfg.hidden, cfg.moe_intermediate, generator=gen),
        )
        for _ in range(args.experts)
    ]
    nbytes = sum(g.numel() + d.numel() for g, d in experts) * 4
    copy = copy_bandwidth(torch.device("cpu"))
    pool = ThreadPoolExecutor(2)
    threads = torch.get_num_threads()

    def split(x: torch.Tensor) -> None:
        def half(first: int) -> None:
            torch.set_num_threads(1)  # per thread: each runs its own experts' products alone
            for g, d in experts[first::2]:
                _expert(x, g, d, linear)

        for done in [pool.submit(half, 0), pool.submit(half, 1)]:
            done.result()

    ways: dict[str, Callable[[torch.Tensor], object]] = {
        "oneDNN": lambda x: [_expert(x, g, d, linear) for g, d in experts],
        "F.linear": lambda x: [_expert(x, g, d, F.linear) for g, d in experts],
        "mm(W, x.T)": lambda x: [_expert(x, g, d, lambda a, w: torch.mm(w, a.t()).t()) for g, d in experts],
        "2 threads x 1": split,
    }
    table = Table(
        title=f"one expert's weights read, {args.preset} float32 ({nbytes / args.experts / 2**20:.1f} MiB each) — "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {threads} intra-op threads, torch {torch.__version__}, "
        f"copy {copy / 1e9:.1f} GB/s, load average {os.getloadavg()[0]:.1f}"
    )
    table.add_column("rows", justify="right")
    for name in ways:
        table.add_column(f"{name} GB/s", justify="right")
        table.add_column("of copy", justify="right")
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, cfg.hidden, generator=gen)
            cells = [str(rows)]
            for run in ways.values():
                rate = _rate(lambda run=run, x=x: run(x), nbytes, args.reps)  # type: ignore[misc]
                cells += [f"{rate / 1e9:.1f}", f"{rate / copy:.0%}"]
            table.add_row(*cells)
    Console().print(table)


if __name__ == "__main__":
    main()
