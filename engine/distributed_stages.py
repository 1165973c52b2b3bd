"""Pipeline stages for real, one per process: rank 0 inside the engine, the others serving ticks.

Per tick, rank 0 broadcasts the micro-batches (engine/stage_wire.py) on the control group; every
rank builds the same model inputs, and runs its stage's cells in the schedule's order: receive the
micro-batch's activations from the previous rank (rank 0 embeds the tokens instead), run its
layers into its own KV cache, send the activations on with `isend` (so a stage never waits for the
next to be ready), or, on the last rank, compute the logits. Each rank times its cells on its own
monotonic clock and, when the tick is done, sends rank 0 its cells, its layers' expert load and
(last rank) the greedy tokens. Rank 0 shifts every rank's cells by its clock offset onto its own
clock: the StageEvent it records is measured (`modelled=False`), idle time included.

A rank lost mid-tick (dead, or silent past the group's timeout) fails the tick with StageLost, naming
it (`StageGroup.lost`); the engine then fails as for any other exception in a tick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from engine.batch import ForwardBatch, SeqChunk, make_batch
from engine.config import ModelConfig
from engine.distributed import StageGroup
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.pipeline import PipelinePlan, split_micro_batches
from engine.sampling import SamplingBatch
from engine.scheduler import SchedulerConfig
from engine.stage_wire import decode_tick, encode_tick
from engine.stages import CellClock, ForwardResult, InFlight, PreparedTick
from tracer.events import StageEvent

OP_STOP, OP_TICK = 0, 1


@dataclass
class StageCells:
    """One rank's cells of one tick, on its own monotonic clock."""

    start_ns: np.ndarray  # int64 [micro_batches]
    end_ns: np.ndarray
    tokens: Tensor | None  # last stage: greedy next tokens of the sampled rows, in chunk order


def run_stage(
    model: Transformer,
    kv: KVCache,
    plan: PipelinePlan,
    stage: int,
    parts: list[ForwardBatch],
    counts: Tensor,
    device: torch.device,
) -> StageCells:
    """This rank's cells of one tick. Time spent waiting for activations is outside every cell: it is
    the rank's idle time (warmup, bubbles)."""
    stages, micro = plan.stages, len(parts)
    layers = plan.stage_layers[stage]
    clock = CellClock(device, anchor=True)
    clock.mark()
    order = plan.schedule.stage_order(stage, stages, micro)
    logits: dict[int, Tensor] = {}  # by micro-batch: the last stage runs each one once
    sends = []
    for m in order:
        batch = parts[m]
        if stage:
            x = torch.empty(batch.tokens.shape[0], model.cfg.hidden, dtype=kv.k.dtype, device=device)
            dist.recv(x, stage - 1)
        clock.mark()
        if not stage:
            x = model.embed_tokens(batch)
        x = model.run_layers(x, batch, kv.k, kv.v, counts, layers)
        if stage == stages - 1:
            logits[m] = model.logits(x, batch)
        clock.mark()
        if stage < stages - 1:
            x = x.contiguous()
            work = dist.isend(x, stage + 1)
            assert work is not None  # None is for a rank outside the group, and every stage is in it
            sends.append((work, x))  # the tensor lives until its send is done
    for work, _sent in sends:
        work.wait()
    tokens = torch.cat([logits[m] for m in range(micro)]).argmax(dim=-1) if stage == stages - 1 else None
    marks = clock.start_ns + clock.read()[1:]
    start, end = np.zeros(micro, dtype=np.int64), np.zeros(micro, dtype=np.int64)
    start[order], end[order] = marks[0::2], marks[1::2]
    return StageCells(start, end, tokens)


def _batches(split: list[list[SeqChunk]], device: torch.device, grouping: str) -> list[ForwardBatch]:
    return [make_batch(p, device, grouping) for p in split]


class DistributedExecutor:
    """Rank 0's part of a tick: stage 0's cells here, the rest on the other ranks."""

    def __init__(self, model: Transformer, kv: KVCache, plan: PipelinePlan, grouping: str, group: StageGroup) -> None:
        self.model, self.kv, self.plan, self.grouping, self.group = model, kv, plan, grouping, group
        self._peer: int | None = None  # the rank the message under way is to or from (None: all of them)

    def prepare(self, chunks: list[SeqChunk]) -> PreparedTick:
        """Nothing is made ahead: a tick's inputs are encoded for the other ranks when it runs."""
        return PreparedTick(chunks, [])

    def launch(
        self, prepared: PreparedTick, tick: int, tick_start_ns: int, sampling: SamplingBatch | None = None
    ) -> InFlight:
        """Runs the tick to its end: the ranks exchange its activations and results as it goes. Tokens
        are greedy: the last rank picks them, and the engine refuses requests that sample."""
        assert sampling is None, "the engine admits greedy requests only to a distributed pipeline"
        self._peer = None
        try:
            return InFlight.done(self._run(prepared.chunks, tick, tick_start_ns))
        except RuntimeError as exc:
            lost = self.group.lost(exc, self._peer)
            if lost is None:
                raise
            raise lost from exc

    def _run(self, chunks: list[SeqChunk], tick: int, tick_start_ns: int) -> ForwardResult:
        plan, group, cfg = self.plan, self.group, self.model.cfg
        stages, micro = plan.stages, plan.micro_batches_for(len(chunks))
        split = split_micro_batches(chunks, micro)
        wire = torch.from_numpy(encode_tick(split))
        dist.broadcast(torch.tensor([OP_TICK, tick, len(wire)]), 0, group=group.announce)
        dist.broadcast(wire, 0, group=group.control)
        counts = torch.zeros(cfg.layers, cfg.routed_experts, device=group.device, dtype=torch.int32)
        self._peer = 1  # stage 0 sends its activations to rank 1
        own = run_stage(
            self.model, self.kv, plan, 0, _batches(split, group.device, self.grouping), counts, group.device
        )

        start = np.zeros((stages, micro), dtype=np.int64)
        end = np.zeros((stages, micro), dtype=np.int64)
        start[0], end[0] = own.start_ns, own.end_ns
        load = counts.cpu().numpy()  # stage 0's rows; the other ranks fill in theirs
        samples = sum(c.sample for c in chunks)
        tokens: list[int] = []
        for r in range(1, stages):
            layers = plan.stage_layers[r]
            rows = len(layers) * cfg.routed_experts
            buf = torch.empty(2 * micro + rows + (samples if r == stages - 1 else 0), dtype=torch.int64)
            self._peer = r
            dist.recv(buf, r, group=group.control)
            got = buf.numpy()
            offset = group.clock_offsets_ns[r]  # rank r's clock minus ours
            start[r], end[r] = got[:micro] - offset, got[micro : 2 * micro] - offset
            load[layers.start : layers.stop] = got[2 * micro : 2 * micro + rows].reshape(len(layers), -1)
            if r == stages - 1:
                tokens = got[2 * micro + rows :].tolist()
        start -= tick_start_ns
        end -= tick_start_ns
        stage = StageEvent(tick, start, end, start.copy(), end.copy(), modelled=False)
        return ForwardResult(tokens, load, int(end.max() - start.min()), stage)


def stop_workers(group: StageGroup) -> None:
    """Rank 0: tell every other rank that no tick follows."""
    dist.broadcast(torch.tensor([OP_STOP, 0, 0]), 0, group=group.announce)


def serve_stage(
    group: StageGroup, model_cfg: ModelConfig, sched_cfg: SchedulerConfig, plan: PipelinePlan, seed: int
) -> int:
    """Ranks 1..S-1: hold this rank's layers and their KV cache, run every tick rank 0 announces,
    until it says stop. Returns the ticks served."""
    stage, device = group.rank, group.device
    layers = plan.stage_layers[stage]
    dtype = model_cfg.torch_dtype(device)
    model = Transformer(model_cfg, device, dtype, seed, owned=layers)
    kv = KVCache(model_cfg, sched_cfg.kv_capacity_tokens, device, dtype, sched_cfg.kv_block_size, layers=len(layers))
    last = stage == plan.stages - 1
    head = torch.zeros(3, dtype=torch.int64)
    ticks = 0
    with torch.inference_mode():
        while True:
            dist.broadcast(head, 0, group=group.announce)  # as long as the engine idles
            if int(head[0]) == OP_STOP:
                return ticks
            wire = torch.empty(int(head[2]), dtype=torch.int64)
            dist.broadcast(wire, 0, group=group.control)
            split = decode_tick(wire.numpy(), kv.allocator.block_size)
            counts = torch.zeros(model_cfg.layers, model_cfg.routed_experts, device=device, dtype=torch.int32)
            cells = run_stage(model, kv, plan, stage, _batches(split, device, sched_cfg.attention), counts, device)
            parts = [cells.start_ns, cells.end_ns, counts[layers.start : layers.stop].flatten().cpu().numpy()]
            if last:
                assert cells.tokens is not None  # the last stage predicts the tokens
                parts.append(cells.tokens.cpu().numpy())
            msg = torch.from_numpy(np.concatenate([p.astype(np.int64) for p in parts]))
            dist.send(msg, 0, group=group.control)
            ticks += 1
