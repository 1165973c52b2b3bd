"""Sampling and stop tokens: draws against their distribution, greedy as the default and the limit,
seeded draws that do not depend on the batch, and a stop token ending a real run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from decode_runs import Tokens
from engine.config import get_preset
from engine.engine import Engine
from engine.errors import ConfigError
from engine.request import GREEDY, Request, SamplingParams
from engine.sampling import SAMPLING_BYTES_PER_LOGIT, SamplingBatch, pick_tokens
from engine.scheduler import SchedulerConfig
from tracer.recorder import ListRecorder
from workloads.loadgen import run_load
from workloads.spec import parse_workload

CPU = torch.device("cpu")
LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])


def draws(params: SamplingParams, n: int = 40_000) -> np.ndarray:
    """`n` draws from LOGITS, one per position, as one batch."""
    batch = SamplingBatch.of([params] * n, list(range(n)), CPU)
    assert batch is not None
    return pick_tokens(LOGITS.expand(n, -1), batch).numpy()


def frequencies(tokens: np.ndarray) -> np.ndarray:
    return np.bincount(tokens, minlength=len(LOGITS)) / len(tokens)


def test_draws_follow_the_softmax_at_the_temperature() -> None:
    # 40k draws: a frequency's standard deviation is at most 0.0025, so 0.012 is ~5 of them
    for t in (0.5, 1.0, 2.0):
        expected = torch.softmax(LOGITS / t, dim=0).numpy()
        np.testing.assert_allclose(frequencies(draws(SamplingParams(temperature=t, seed=3))), expected, atol=0.012)


def test_top_k_and_top_p_keep_the_likeliest_renormalised() -> None:
    probs = torch.softmax(LOGITS, dim=0).numpy()
    order = np.argsort(-probs)  # 5, 0, 1, 2, 3, 4
    top2 = np.zeros_like(probs)
    top2[order[:2]] = probs[order[:2]] / probs[order[:2]].sum()
    np.testing.assert_allclose(frequencies(draws(SamplingParams(temperature=1.0, top_k=2))), top2, atol=0.012)
    # the smallest set of likeliest tokens whose mass reaches top_p: here the first three
    mass = np.cumsum(probs[order])
    assert mass[1] < 0.9 <= mass[2]
    top_p = np.zeros_like(probs)
    top_p[order[:3]] = probs[order[:3]] / mass[2]
    np.testing.assert_allclose(frequencies(draws(SamplingParams(temperature=1.0, top_p=0.9))), top_p, atol=0.012)
    # top-p measured over what top-k kept: of the top 4 (renormalised), 0.9 still needs three
    both = frequencies(draws(SamplingParams(temperature=1.0, top_k=4, top_p=0.9)))
    np.testing.assert_allclose(both, top_p, atol=0.012)


def test_greedy_limits_and_mixed_rows() -> None:
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))
    best = logits.argmax(dim=-1)
    assert SamplingParams(temperature=0.0, top_p=0.5, seed=9).greedy and SamplingParams(2.0, top_k=1).greedy
    assert SamplingParams(temperature=1e-7).greedy and not SamplingParams(temperature=1e-4).greedy
    assert SamplingBatch.of([GREEDY, SamplingParams(top_k=1, temperature=1.5)], [0, 1], CPU) is None
    # a nearly-zero top_p keeps the likeliest token alone, through the filtering path
    rows = [GREEDY, SamplingParams(temperature=1.0, top_p=1e-6, seed=1), GREEDY, SamplingParams(1.0, top_k=1)]
    rows.append(SamplingParams(temperature=5.0, seed=2))
    batch = SamplingBatch.of(rows, [10, 11, 12, 13, 14], CPU)
    assert batch is not None and batch.filtered
    picked = pick_tokens(logits, batch)
    assert (picked[:4] == best[:4]).all()
    assert picked[4] != best[4]  # temperature 5 over 300 near-equal logits: the argmax is ~1% likely


def test_a_row_draws_the_same_token_in_any_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 1000, generator=gen)
    params = [SamplingParams(temperature=1.0, top_p=0.95, top_k=100, seed=s) for s in range(6)]
    positions = [7, 7, 8, 100, 3, 5]
    batch = SamplingBatch.of(params, positions, CPU)
    whole = pick_tokens(logits, batch).tolist()
    for perm in ([5, 4, 3, 2, 1, 0], [2], [0, 3]):
        part = SamplingBatch.of([params[i] for i in perm], [positions[i] for i in perm], CPU)
        assert pick_tokens(logits[perm], part).tolist() == [whole[i] for i in perm]
    # the noise moves with the seed and with the position
    by_seed = [replace(params[0], seed=s) for s in range(64)]
    assert len(set(pick_tokens(logits[:1].expand(64, -1), SamplingBatch.of(by_seed, [7] * 64, CPU)).tolist())) > 20
    by_position = SamplingBatch.of([params[0]] * 64, list(range(64)), CPU)
    assert len(set(pick_tokens(logits[:1].expand(64, -1), by_position).tolist())) > 20


Spec = tuple[int, list[int], int, SamplingParams, frozenset[int]]


def run(requests: list[Spec], **sched: int) -> dict[int, Tokens]:
    """Requests (id, prompt, max new tokens, sampling, stop tokens) through a tiny engine on the CPU,
    stepped to the end; each request's sink by id."""
    eng = Engine(get_preset("tiny"), SchedulerConfig(**sched), device="cpu", seed=0)
    sinks = {}
    for rid, prompt, max_new, params, stop in requests:
        sinks[rid] = Tokens()
        eng.submit(Request(rid, prompt, max_new, sinks[rid], sampling=params, stop_tokens=stop))
    while eng.step():
        pass
    return sinks


def prompt(i: int, n: int) -> list[int]:
    return np.random.default_rng(i).integers(0, 512, n).tolist()


def test_a_seeded_request_gets_the_same_tokens_whoever_shares_its_ticks() -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=42)
    mine: Spec = (0, prompt(0, 20), 16, params, frozenset())
    alone = run([mine])[0].tokens
    others: list[Spec] = [
        (i, prompt(i, 5 + 9 * i), 4 + i, SamplingParams(0.8, seed=i), frozenset()) for i in range(1, 6)
    ]
    # joined by prefills, in another batch position, with chunked prefill and a tight token budget
    crowded = run(others[:3] + [mine] + others[3:], max_seqs=8, max_tokens=24, prefill_chunk=8)
    assert crowded[0].tokens == alone
    assert alone != run([(0, prompt(0, 20), 16, GREEDY, frozenset())])[0].tokens
    assert alone != run([(0, prompt(0, 20), 16, replace(params, seed=43), frozenset())])[0].tokens


def test_a_stop_token_ends_the_sequence_with_reason_stop() -> None:
    neighbour: Spec = (1, prompt(4, 30), 24, GREEDY, frozenset())
    first = run([(0, prompt(3, 12), 24, GREEDY, frozenset()), neighbour])
    tokens = first[0].tokens
    assert first[0].finishes == [("finished", "length")] and len(tokens) == 24
    # a token the greedy run produces at step 3 or later, for the first time there
    k = next(i for i in range(3, len(tokens)) if tokens[i] not in tokens[:i])
    second = run([(0, prompt(3, 12), 24, GREEDY, frozenset({tokens[k], 99999})), neighbour])
    assert second[0].tokens == tokens[: k + 1]  # the stop token is the output's last
    assert second[0].finishes == [("finished", "stop")]
    assert second[1].tokens == first[1].tokens and second[1].finishes == [("finished", "length")]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (SamplingParams(temperature=-1.0), "temperature must be 0 or more"),
        (SamplingParams(temperature=float("nan")), "temperature must be 0 or more"),
        (SamplingParams(temperature=1.0, top_p=0.0), r"top_p must be in \(0, 1\]"),
        (SamplingParams(temperature=1.0, top_k=-2), "top_k must be 0"),
        (SamplingParams(temperature=1.0, seed=-1), "seed must be in"),
    ],
)
def test_bad_sampling_is_rejected_with_its_reason(params: SamplingParams, message: str) -> None:
    sink = run([(0, [1, 2, 3], 4, params, frozenset())])[0]
    assert len(sink.finishes) == 1 and sink.finishes[0][0] == "rejected"
    assert re.match(message, sink.finishes[0][1])


_PEAK = """
import torch
from engine.request import SamplingParams
from engine.sampling import SamplingBatch, pick_tokens

torch.set_num_threads(1)
rows, vocab = 64, 100_000
logits = torch.randn(rows, vocab)
cpu = torch.device("cpu")

def status_kb(field):
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1])

for params in (SamplingParams(1.0, seed=1), SamplingParams(1.0, top_p=0.9, top_k=50, seed=1)):
    pick_tokens(logits[:2], SamplingBatch.of([params] * 2, [0, 1], cpu))  # lazy allocations made
    batch = SamplingBatch.of([params] * rows, list(range(rows)), cpu)
    with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) starts again from the resident size
        f.write("5")
    before = status_kb("VmRSS:")
    pick_tokens(logits, batch)
    print((status_kb("VmHWM:") - before) * 1024 / (rows * vocab))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures the peak through Linux's /proc")
def test_the_memory_check_counts_what_a_draw_takes() -> None:
    # glibc returns freed blocks of 128 KiB or more to the system: the resident size follows the tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _PEAK], cwd=root, capture_output=True, text=True, check=True, env=env)
    plain, filtered = (float(x) for x in out.stdout.split())
    assert plain < filtered <= SAMPLING_BYTES_PER_LOGIT * 1.05 and filtered > SAMPLING_BYTES_PER_LOGIT * 0.8


class Recorded:
    """An engine stand-in that ends every request at once, keeping what it was sent."""

    def __init__(self) -> None:
        self.submitted: list[Request] = []

    def submit(self, req: Request) -> None:
        self.submitted.append(req)
        req.sink.on_finish("finished", "length", 0)


_WORKLOAD = "requests = 3\n[arrivals]\nkind = 'constant'\nrate = 1000\n[prompt]\nkind = 'fixed'\nvalue = 4\n"
_WORKLOAD += "[output]\nkind = 'fixed'\nvalue = 2\n"


async def test_a_workload_samples_each_request_with_its_own_seed() -> None:
    spec = parse_workload(_WORKLOAD + "[sampling]\ntemperature = 0.7\ntop_p = 0.9\nseed = 100\n", "w.toml")
    engine = Recorded()
    await run_load(engine, spec, ListRecorder(), vocab_size=512)
    assert [r.sampling for r in engine.submitted] == [SamplingParams(0.7, 0.9, 0, 100 + n) for n in range(3)]
    assert spec.to_dict()["sampling"] == {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 100}
    engine = Recorded()
    await run_load(engine, parse_workload(_WORKLOAD, "w.toml"), ListRecorder(), vocab_size=512)
    assert all(r.sampling.greedy for r in engine.submitted)
    with pytest.raises(ConfigError, match=r"top_p must be in \(0, 1\], got 1.5 in \[sampling\] of w.toml"):
        parse_workload(_WORKLOAD + "[sampling]\ntemperature = 1\ntop_p = 1.5\n", "w.toml")
    with pytest.raises(ConfigError, match=r"unknown key 'sampling.temp' in w.toml"):
        parse_workload(_WORKLOAD + "[sampling]\ntemp = 1\n", "w.toml")
