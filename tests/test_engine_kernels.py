"""Which expert product runs where (engine/kernels.py), checked on the CPU with the GPU's capability
stood in for: the decision is by device capability, dtype and whether the step is captured or compiled."""

from __future__ import annotations

import pytest
import torch

import engine.kernels as kernels
from engine.config import get_preset
from engine.kernels import choose_expert_matmul, choose_expert_matmuls, expert_loop, grouped_mm, grouped_mm_padded

CUDA = torch.device("cuda")


@pytest.fixture
def gpu(monkeypatch):
    """A GPU of the capability set on the returned dict, on which torch._grouped_mm runs."""
    capability = {"sm": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["sm"])
    monkeypatch.setattr(kernels, "_grouped_mm_runs", lambda device, dtype: True)
    return capability


@pytest.mark.parametrize(
    "sm, dtype, fixed, chosen, why",
    [
        ((9, 0), torch.bfloat16, True, grouped_mm, "fixed shapes asked for; torch._grouped_mm has them for bfloat16"),
        ((10, 0), torch.bfloat16, True, grouped_mm, "fixed shapes asked for; torch._grouped_mm has them for bfloat16"),
        (
            (9, 0),
            torch.float32,
            True,
            grouped_mm_padded,
            "padded: fixed shapes asked for, and torch._grouped_mm has none for float32 on sm90",
        ),
        (
            (8, 0),
            torch.bfloat16,
            True,
            grouped_mm_padded,
            "padded: fixed shapes asked for, and torch._grouped_mm has none for bfloat16 on sm80",
        ),
        ((9, 0), torch.bfloat16, False, grouped_mm, "torch._grouped_mm, its fused kernel, for bfloat16 on sm90"),
        (
            (8, 0),
            torch.bfloat16,
            False,
            grouped_mm,
            "torch._grouped_mm, its loop over the experts, for bfloat16 on sm80",
        ),
    ],
)
def test_on_cuda_the_fused_kernel_only_where_it_exists_and_padded_where_shapes_must_be_fixed(
    gpu, sm, dtype, fixed, chosen, why
):
    gpu["sm"] = sm
    choice = choose_expert_matmul(get_preset("ds2-lite"), CUDA, dtype, fixed_shapes=fixed)
    assert choice.fn is chosen and choice.reason.startswith(why)


def test_tiny_in_float32_on_a_gpu_captures_the_padded_product_and_runs_prefill_with_torchs(gpu):
    """The first CUDA run's failure: float32 tiny has no fixed-shape grouped_mm on any GPU, so graphs
    must not capture it; eager ticks keep grouped_mm, whose host reads do not matter outside a graph."""
    matmuls = choose_expert_matmuls(get_preset("tiny"), CUDA, torch.float32, fixed_shapes=True)
    assert matmuls.fixed.fn is grouped_mm_padded and matmuls.eager.fn is grouped_mm
    assert "costs 16x the expert FLOPs" in matmuls.fixed.reason


def test_on_the_cpu_large_experts_loop_through_onednn_small_ones_use_grouped_mm():
    cpu = torch.device("cpu")
    large = choose_expert_matmul(get_preset("ds2-lite"), cpu, torch.float32, fixed_shapes=False)
    small = choose_expert_matmul(get_preset("tiny"), cpu, torch.float32, fixed_shapes=False)
    assert large.fn is expert_loop and large.reason.startswith("experts of 33.0 MiB on the CPU")
    assert small.fn is grouped_mm
    # compiled (decode_compile on the CPU): bfloat16 traces grouped_mm, float32 is padded
    assert choose_expert_matmul(get_preset("tiny"), cpu, torch.bfloat16, fixed_shapes=True).fn is grouped_mm
    assert choose_expert_matmul(get_preset("ds2-lite"), cpu, torch.float32, fixed_shapes=True).fn is grouped_mm_padded
    same = choose_expert_matmuls(get_preset("tiny"), cpu, torch.float32, fixed_shapes=False)
    assert same.fixed is same.eager


def test_without_torch_grouped_mm_the_padded_product_stands_in(monkeypatch):
    monkeypatch.setattr(kernels, "_grouped_mm_runs", lambda device, dtype: False)
    choice = choose_expert_matmul(get_preset("tiny"), torch.device("cpu"), torch.float32, fixed_shapes=False)
    assert (
        choice.fn is grouped_mm_padded
        and choice.reason == "padded: this torch has no torch._grouped_mm for float32 on the CPU"
    )
