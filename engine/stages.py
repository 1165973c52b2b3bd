"""Pipeline stages on one device: layers in S stages, the batch in M micro-batches, every cell timed.

The cells run one after another here, stage by stage (GPipe order), and each is timed with device
events. `modelled_timeline` then places the measured costs on S devices: a cell starts when its
micro-batch has left the previous stage and its stage has finished the previous micro-batch. Warmup,
drain and bubbles are the idle time of that timeline.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from engine.model import SeqChunk, Transformer, make_batch


def split_layers(layers: int, stages: int) -> list[range]:
    """Consecutive layers per stage, as even as possible (all our layers weigh the same)."""
    bounds = np.linspace(0, layers, stages + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def split_micro_batches(chunks: list[SeqChunk], micro_batches: int) -> list[list[SeqChunk]]:
    """Consecutive sequences per micro-batch, as even in count as possible; never an empty one."""
    parts = np.array_split(np.arange(len(chunks)), min(micro_batches, len(chunks)))
    return [[chunks[i] for i in part] for part in parts]


def modelled_timeline(cost_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end [stages, micro_batches] of cells with these costs, one device per stage."""
    stages, micro = cost_ns.shape
    start = np.zeros_like(cost_ns)
    end = np.zeros_like(cost_ns)
    for s in range(stages):
        for m in range(micro):
            ready = end[s - 1, m] if s else 0  # its activations arrive from the previous stage
            free = end[s, m - 1] if m else 0  # this stage's device is done with the previous micro-batch
            start[s, m] = max(ready, free)
            end[s, m] = start[s, m] + cost_ns[s, m]
    return start, end


class _Clock:
    """Cell times relative to the forward's start: CUDA events on the GPU, the host clock on the CPU.
    On the GPU nothing is read until `read()`, after the tick's one synchronisation."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter_ns())

    def read(self) -> np.ndarray:
        """ns since the first mark, for every mark."""
        if self.cuda:
            return np.array([self.marks[0].elapsed_time(e) * 1e6 for e in self.marks], dtype=np.int64)
        return np.array(self.marks, dtype=np.int64) - self.marks[0]


class StageExecutor:
    def __init__(self, model: Transformer, stages: int, micro_batches: int, grouping: str) -> None:
        self.model = model
        self.stage_layers = split_layers(model.cfg.layers, stages)
        self.micro_batches = micro_batches
        self.grouping = grouping

    def forward(self, chunks: list[SeqChunk], kv_k: Tensor, kv_v: Tensor,
                device: torch.device) -> tuple[Tensor, Tensor, _Clock, int]:
        """Logits of the sampled rows (in chunk order), expert load [layers, experts], the cell clock
        and the number of micro-batches. The embedding runs in stage 0's cells, the LM head in the last's."""
        parts = [make_batch(p, device, self.grouping) for p in split_micro_batches(chunks, self.micro_batches)]
        cfg = self.model.cfg
        counts = torch.zeros(cfg.layers, cfg.routed_experts, device=device, dtype=torch.int32)
        clock = _Clock(device)
        clock.mark()
        hidden: list[Tensor] = []
        logits: list[Tensor] = []
        last = len(self.stage_layers) - 1
        for s, layers in enumerate(self.stage_layers):
            for m, batch in enumerate(parts):
                x = self.model.embed_tokens(batch) if s == 0 else hidden[m]
                x = self.model.run_layers(x, batch, kv_k, kv_v, counts, layers)
                if s == 0:
                    hidden.append(x)
                else:
                    hidden[m] = x
                if s == last:
                    logits.append(self.model.logits(x, batch))
                clock.mark()
        return torch.cat(logits), counts, clock, len(parts)


def cell_times(clock: _Clock, stages: int, micro_batches: int) -> tuple[np.ndarray, np.ndarray]:
    """Measured start and end [stages, micro_batches] from the clock of a stage-major run."""
    marks = clock.read()
    return (marks[:-1].reshape(stages, micro_batches), marks[1:].reshape(stages, micro_batches))
