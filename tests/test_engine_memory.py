"""The memory check counts the largest tick's activations, not only weights and KV cache, and its
estimate holds what a real prefill tick takes (measured on the CPU, as the process's peak resident size)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import engine.config as config
from engine.config import activation_bytes, check_fits, get_preset
from engine.errors import ConfigError
from engine.scheduler import SchedulerConfig

ROOT = Path(__file__).resolve().parents[1]

# A shape whose activations dwarf the interpreter's own noise: experts 16 x 1024 wide, hidden 512.
_SHAPE = (
    "hidden=512, moe_intermediate=1024, vocab_size=4096, layers=2, max_seq_len=2048, heads=8, kv_heads=2, head_dim=64"
)
# The same with DeepSeek's latent attention (a 256-wide latent, a 32-wide RoPE key) and a dense first layer
_MLA_SHAPE = (
    "hidden=512, moe_intermediate=1024, vocab_size=4096, layers=2, max_seq_len=2048, heads=8, kv_heads=1, "
    "head_dim=32, kv_lora_rank=256, qk_nope_head_dim=64, v_head_dim=64, first_k_dense_replace=1, intermediate_size=4096"
)

_PEAK = """
import numpy as np, torch
from engine.config import activation_bytes, get_preset
from engine.engine import Engine
from engine.request import Request
from engine.scheduler import SchedulerConfig

class Sink:
    def on_token(self, *args): ...
    def on_finish(self, *args): ...

torch.set_num_threads(1)
cfg = get_preset("tiny", SHAPE)
sched = SchedulerConfig(max_seqs=8, max_tokens=2048, prefill_chunk=512, kv_capacity_tokens=8 * 2048)
engine = Engine(cfg, sched, device="cpu")
engine.submit(Request(99, [1] * 4, 2, Sink()))  # every lazy allocation made, by a small tick
while engine.step():
    pass
rng = np.random.default_rng(0)
for r in range(4):  # four prompts of a whole chunk: one tick of max_tokens rows
    engine.submit(Request(r, rng.integers(0, 4096, 512).tolist(), 2, Sink()))

def status_kb(field):
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1])

with open("/proc/self/clear_refs", "w") as f:  # "5": the peak (VmHWM) starts again from the resident size
    f.write("5")
before = status_kb("VmRSS:")
engine.step()
print((status_kb("VmHWM:") - before) * 1024, activation_bytes(cfg, torch.float32, sched))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures the peak through Linux's /proc")
@pytest.mark.parametrize("shape", [_SHAPE, _MLA_SHAPE], ids=["grouped-query", "latent"])
def test_a_full_prefill_tick_takes_less_than_the_estimate_and_not_much_less(shape):
    # glibc returns every freed block of 128 KiB or more to the system: the resident size follows the
    # tensors alive, not what the allocator kept from earlier
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK.replace("SHAPE", shape)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env=env,
    )
    grown, estimate = (int(x) for x in out.stdout.split())
    assert grown <= estimate <= 3 * grown, (grown, estimate)


def test_the_estimate_grows_with_the_tick_and_with_padded_experts():
    cfg, dtype = get_preset("ds2-lite"), torch.bfloat16
    small = activation_bytes(cfg, dtype, SchedulerConfig(max_tokens=256, max_seqs=16))
    large = activation_bytes(cfg, dtype, SchedulerConfig(max_tokens=4096, max_seqs=16))
    many = activation_bytes(cfg, dtype, SchedulerConfig(max_tokens=4096, max_seqs=256, kv_capacity_tokens=1 << 20))
    assert small < large < many
    padded = activation_bytes(cfg, dtype, SchedulerConfig(max_tokens=256, max_seqs=16), padded_experts=True)
    assert padded - small == 64 * 16 * 6 * (2048 + 2 * 1408) * 2  # every expert times every decode row


def test_a_model_whose_weights_and_cache_fit_but_not_its_largest_tick_is_refused(monkeypatch):
    cfg, cpu = get_preset("ds2-lite", layers=2), torch.device("cpu")
    sched = SchedulerConfig(max_tokens=8192, prefill_chunk=8192, kv_capacity_tokens=8192)
    dtype = cfg.torch_dtype(cpu)
    weights_and_cache = (
        cfg.param_bytes(dtype)
        + cfg.largest_weight_bytes(dtype)
        + cfg.kv_bytes_per_token(dtype) * sched.kv_capacity_tokens
    )
    monkeypatch.setattr(config, "available_bytes", lambda device: weights_and_cache + (1 << 20))
    with pytest.raises(ConfigError, match=r"\+ the largest tick's activations .* smaller ticks"):
        check_fits(cfg, cpu, sched)
    small_ticks = SchedulerConfig(max_tokens=1, max_seqs=1, prefill_chunk=1, kv_capacity_tokens=8192)
    monkeypatch.setattr(
        config, "available_bytes", lambda device: weights_and_cache + activation_bytes(cfg, dtype, small_ticks)
    )
    check_fits(cfg, cpu, small_ticks)
