"""How a tick is pipelined: which layers each stage holds, how many micro-batches a batch makes, and
in which order each stage runs its micro-batches (the schedule).

Plain Python and numpy, no tensors: the single-device executor, the distributed ranks and the
tests all share these answers. The split balances weight bytes (the embedding weighs on the first
stage, the LM head on the last), because a stage's decode time is mostly reading its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from engine.config import ModelConfig, TickLimits, activation_bytes, available_bytes
from engine.errors import ConfigError
from tracer.timeline import GPipe, Schedule

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------
# The stage split
# ---------------------------------------------------------------------------------------------------


def layer_param_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    """Parameters of the embedding, of the heaviest decoder layer (a dense first layer may weigh less
    than a MoE one), and of the head (final norm + LM head)."""
    embed = cfg.vocab_size * cfg.hidden
    head = cfg.vocab_size * cfg.hidden + cfg.hidden
    per_layer = max(cfg.layer_param_count(i) for i in range(cfg.layers))
    return embed, per_layer, head


def stage_weights(cfg: ModelConfig) -> np.ndarray:
    """What each layer weighs for balancing, with the embedding added to the first layer and the
    head to the last: the stage that holds them carries them."""
    embed, _, head = layer_param_counts(cfg)
    w = np.array([cfg.layer_param_count(i) for i in range(cfg.layers)], dtype=np.int64)
    w[0] += embed
    w[-1] += head
    return w


def balance_layers(weights: np.ndarray, stages: int) -> list[range]:
    """Consecutive layers per stage, at least one each, minimising the heaviest stage (exact: a small
    dynamic programme over split points; layers and stages are tens at most)."""
    n = len(weights)
    if not 1 <= stages <= n:
        raise ConfigError(f"cannot split {n} layers into {stages} stages (each stage needs a layer)")
    prefix = np.concatenate([[0], np.cumsum(weights)])
    # best[k][j]: lightest heaviest-stage for layers [0, j) in k stages; cut[k][j]: where stage k starts
    best = np.full((stages + 1, n + 1), np.iinfo(np.int64).max, dtype=np.int64)
    cut = np.zeros((stages + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0
    for k in range(1, stages + 1):
        for j in range(k, n - (stages - k) + 1):
            for i in range(k - 1, j):
                cost = max(best[k - 1, i], prefix[j] - prefix[i])
                if cost < best[k, j]:
                    best[k, j], cut[k, j] = cost, i
    bounds = [n]
    for k in range(stages, 0, -1):
        bounds.append(int(cut[k, bounds[-1]]))
    bounds.reverse()
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def explicit_layers(counts: tuple[int, ...] | list[int], layers: int) -> list[range]:
    """Stages holding `counts[s]` consecutive layers each, e.g. (3, 3, 2) for 8 layers."""
    if any(c < 1 for c in counts):
        raise ConfigError(f"every stage needs at least one layer, got stage layers {list(counts)}")
    if sum(counts) != layers:
        raise ConfigError(f"stage layers {list(counts)} add up to {sum(counts)}, but the model has {layers} layers")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def parse_stage_layers(text: str) -> tuple[int, ...]:
    """ "3,3,2" -> (3, 3, 2)."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"stage layers must be whole numbers separated by commas, got {text!r}") from None
    if any(c < 1 for c in counts):
        raise ConfigError(f"every stage needs at least one layer, got {text!r}")
    return counts


# ---------------------------------------------------------------------------------------------------
# Micro-batches
# ---------------------------------------------------------------------------------------------------


def micro_batch_count(seqs: int, micro_batches: int, micro_batch_size: int) -> int:
    """Micro-batches for a batch of `seqs` sequences: `micro_batch_size` sequences each when it is set
    (0 = unset), else `micro_batches`; never more than there are sequences, never zero."""
    wanted = math.ceil(seqs / micro_batch_size) if micro_batch_size else micro_batches
    return max(1, min(wanted, seqs))


def split_micro_batches(items: list[T], micro_batches: int) -> list[list[T]]:
    """Consecutive items per micro-batch, as even in count as possible; never an empty one."""
    parts = np.array_split(np.arange(len(items)), max(1, min(micro_batches, len(items))))
    return [[items[i] for i in part] for part in parts]


# ---------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------

SCHEDULES: dict[str, Schedule] = {"gpipe": GPipe()}


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise ConfigError(f"unknown pipeline schedule '{name}' (choose from: {', '.join(SCHEDULES)})")
    return SCHEDULES[name]


@dataclass(frozen=True)
class PipelinePlan:
    """The engine's pipeline: stage layers, micro-batching and schedule, resolved for one model."""

    stage_layers: list[range]
    micro_batches: int
    micro_batch_size: int  # 0 = use micro_batches
    schedule: Schedule

    @property
    def stages(self) -> int:
        return len(self.stage_layers)

    @property
    def pipelined(self) -> bool:
        return is_pipelined(self.stages, self.micro_batches, self.micro_batch_size)

    def micro_batches_for(self, seqs: int) -> int:
        return micro_batch_count(seqs, self.micro_batches, self.micro_batch_size)


def is_pipelined(stages: int, micro_batches: int, micro_batch_size: int) -> bool:
    """Whether there is a pipeline to show (more than one stage or micro-batch)."""
    return stages > 1 or micro_batches > 1 or micro_batch_size > 0


def plan_pipeline(
    cfg: ModelConfig,
    stages: int,
    stage_layers: tuple[int, ...],
    micro_batches: int,
    micro_batch_size: int,
    schedule: str,
) -> PipelinePlan:
    """The pipeline for this model: `stage_layers` counts when given (they fix the stage count), else
    `stages` stages balanced by weight bytes."""
    if stage_layers:
        if len(stage_layers) != stages:
            raise ConfigError(f"{len(stage_layers)} stage layer counts given for {stages} stages")
        split = explicit_layers(stage_layers, cfg.layers)
    else:
        if stages > cfg.layers:
            raise ConfigError(f"stages ({stages}) exceed the model's layers ({cfg.layers})")
        split = balance_layers(stage_weights(cfg), stages)
    return PipelinePlan(split, micro_batches, micro_batch_size, get_schedule(schedule))


def stage_param_bytes(cfg: ModelConfig, layers: range, itemsize: int) -> int:
    """Weight bytes one stage holds: its layers, plus the embedding on the first and the head on the last."""
    embed, _, head = layer_param_counts(cfg)
    params = sum(cfg.layer_param_count(i) for i in layers)
    params += embed if layers.start == 0 else 0
    params += head if layers.stop == cfg.layers else 0
    return params * itemsize


def check_stage_fits(cfg: ModelConfig, device: torch.device, layers: range, tick: TickLimits) -> None:
    """Refuse, before allocating, a stage (its weights + its layers' KV cache + the largest tick's
    activations, engine/config.py) its device cannot hold. Every layer is drawn, owned or not (model.py):
    one more layer, and the largest weight twice, for a moment."""
    dtype = cfg.torch_dtype(device)
    params = (
        stage_param_bytes(cfg, layers, dtype.itemsize)
        + layer_param_counts(cfg)[1] * dtype.itemsize
        + cfg.largest_weight_bytes(dtype)
    )
    kv = cfg.kv_bytes_per_token(dtype) // cfg.layers * len(layers) * tick.kv_capacity_tokens
    need = params + kv + activation_bytes(cfg, dtype, tick)
    have = available_bytes(device)
    if need > have:
        raise ConfigError(
            f"stage of layers {layers.start}-{layers.stop - 1} needs {need / 1e9:.2f} GB on {device} "
            f"but only {have / 1e9:.2f} GB is available; use more stages, a smaller KV capacity or smaller ticks"
        )
