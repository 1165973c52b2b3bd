"""The matrix products the model calls, and which of them this device and dtype should use.

Weights are stored [out, in], as nn.Linear and HuggingFace's experts keep them; stacked routed experts
are [E, out, in]. A decode step of a large MoE is bound by reading these weights, so the choice here
is about which kernel reads them fastest without breaking what the rest of the engine needs (a CUDA
graph, for one, cannot hold a kernel that reads a value back to the host).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ModelConfig

# On the CPU, weights of at least this size go to oneDNN: its small-batch GEMMs read float32 weights
# at close to the memory's speed, MKL's (behind F.linear) at a third to a half of it on the AMD EPYC
# we measured (bench/RESULTS.md). Below it, a oneDNN call's ~12 us of setup outweighs the read, and
# F.linear's ~3 us wins: tiny's weights are all under it, ds2-lite's (but the router) all over.
_ONEDNN_MIN_BYTES = 1 << 20


def _onednn_linear_works() -> bool:
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), torch.ones(3, 2), None, "none", [], "")
        return True
    except (RuntimeError, NotImplementedError):
        return False


_ONEDNN = _onednn_linear_works()


def linear(x: Tensor, w: Tensor) -> Tensor:
    """x [N, in] times w [out, in] transposed: [N, out]. On the CPU, large float32 weights go to
    oneDNN (see _ONEDNN_MIN_BYTES); everything else, CUDA included, to F.linear."""
    if _ONEDNN and x.is_cpu and w.dtype == torch.float32 and w.numel() * 4 >= _ONEDNN_MIN_BYTES:
        out: Tensor = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        return out
    return F.linear(x, w)


# ---------------------------------------------------------------------------------------------------
# Expert products: rows offs[e-1]:offs[e] of x (sorted by expert) times expert e's weights
# ---------------------------------------------------------------------------------------------------


def grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """x [N, in] sorted by expert; w [E, out, in]; offs int32 [E] cumulative row counts (offs[-1] == N).
    One call: on CUDA one kernel (bfloat16 on SM90+; elsewhere torch falls back to a loop that reads
    the offsets back to the host), on the CPU a C++ loop over the experts."""
    return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)


def grouped_mm_padded(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """The same product with nothing read back to the host, for CUDA graphs where `grouped_mm` has no
    fixed-shape kernel: every expert's rows are scattered into an [E, N, in] block (N rows is the most
    any expert can get) and multiplied with one batched matmul. Correct, but E times the FLOPs."""
    n, experts = x.shape[0], w.shape[0]
    expert_of_row = torch.searchsorted(offs, torch.arange(n, device=x.device, dtype=offs.dtype), right=True)
    first_row = offs - torch.diff(offs, prepend=offs.new_zeros(1))
    row_in_expert = torch.arange(n, device=x.device) - first_row[expert_of_row]
    padded = x.new_zeros(experts, n, x.shape[1])
    padded[expert_of_row, row_in_expert] = x
    return torch.bmm(padded, w.transpose(1, 2))[expert_of_row, row_in_expert]


def expert_loop(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """The same product as one `linear` per expert that has rows, for the CPU with large experts: each
    active expert's weights are read once, by oneDNN (a Python call costs ~15 us; reading one
    ds2-lite expert, ~1 ms). Reads the offsets on the host, which costs nothing on the CPU."""
    parts, start = [], 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            parts.append(linear(x[start:end], w[e]))
        start = end
    return torch.cat(parts)


@dataclass(frozen=True)
class ExpertMatmul:
    """An expert product, and why it was chosen (the trace header records both)."""

    fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    reason: str

    @property
    def name(self) -> str:
        return self.fn.__name__


@dataclass(frozen=True)
class ExpertMatmuls:
    """The expert product of ticks run eagerly, and that of the decode graphs' step, which is captured
    or compiled and so must read nothing back to the host. Eager ticks (prefill above all) never pay
    for the fixed shapes: the padded product's E times the FLOPs and memory would be theirs too."""

    eager: ExpertMatmul
    fixed: ExpertMatmul


def choose_expert_matmuls(
    cfg: ModelConfig, device: torch.device, dtype: torch.dtype, fixed_shapes: bool
) -> ExpertMatmuls:
    """`fixed_shapes`: whether decode steps will be captured or compiled (else both are the eager one)."""
    eager = choose_expert_matmul(cfg, device, dtype, fixed_shapes=False)
    return ExpertMatmuls(eager, choose_expert_matmul(cfg, device, dtype, fixed_shapes=True) if fixed_shapes else eager)


def _grouped_mm_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this build runs `torch._grouped_mm` here at all (older builds lack it)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x = torch.zeros(2, 16, device=device, dtype=dtype)
        grouped_mm(
            x,
            torch.zeros(2, 16, 16, device=device, dtype=dtype),
            torch.tensor([1, 2], device=device, dtype=torch.int32),
        )
        return True
    except (RuntimeError, NotImplementedError):
        return False


def choose_expert_matmul(
    cfg: ModelConfig, device: torch.device, dtype: torch.dtype, fixed_shapes: bool
) -> ExpertMatmul:
    """The expert product for this device and dtype. `fixed_shapes`: the decode step will be captured
    as a CUDA graph or compiled, so nothing in it may read a value back to the host."""
    runs = _grouped_mm_runs(device, dtype)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        fused = dtype == torch.bfloat16 and major >= 9
        where = f"{str(dtype).removeprefix('torch.')} on sm{major}{minor}"
    else:
        fused = dtype == torch.bfloat16  # not a fused kernel, but torch.compile traces it in bfloat16 only
        where = f"{str(dtype).removeprefix('torch.')} on the CPU"
    if fixed_shapes:
        if fused and runs:
            return ExpertMatmul(grouped_mm, f"fixed shapes asked for; torch._grouped_mm has them for {where}")
        return ExpertMatmul(
            grouped_mm_padded,
            f"padded: fixed shapes asked for, and torch._grouped_mm has none "
            f"for {where} (its fallback reads the offsets on the host); "
            f"costs {cfg.routed_experts}x the expert FLOPs",
        )
    expert_bytes = 3 * cfg.hidden * cfg.moe_intermediate * dtype.itemsize
    if device.type == "cpu" and _ONEDNN and dtype == torch.float32 and expert_bytes >= _ONEDNN_MIN_BYTES:
        return ExpertMatmul(
            expert_loop,
            f"experts of {expert_bytes / 2**20:.1f} MiB on the CPU: one oneDNN GEMM "
            f"per active expert reads them fastest",
        )
    if runs:
        kernel = "its fused kernel" if device.type == "cuda" and fused else "its loop over the experts"
        return ExpertMatmul(grouped_mm, f"torch._grouped_mm, {kernel}, for {where}")
    return ExpertMatmul(grouped_mm_padded, f"padded: this torch has no torch._grouped_mm for {where}")
