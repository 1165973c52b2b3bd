"""Pipeline stages on one device: layers in S stages, the batch in M micro-batches, every cell timed.

The cells run one after another here, in an order the schedule allows (engine/pipeline.py), and
each is timed with device events. `modelled_timeline` then places the measured costs on S devices:
a cell starts when its micro-batch has left the previous stage and its stage has finished its
previous cell. Warmup, drain and bubbles are the idle time of that timeline. Across processes,
engine/distributed_stages.py runs the same cells for real, one stage per rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.batch import HostBatch, SeqChunk
from engine.decode_graphs import DecodeGraphs, FilledTick
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.pipeline import PipelinePlan, split_micro_batches
from engine.sampling import SamplingBatch, pick_tokens
from tracer.events import StageEvent
from tracer.timeline import modelled_timeline, run_order


@dataclass
class ForwardResult:
    """One tick's forward pass, as the engine needs it."""

    tokens: list[int]  # the next token of every sampling chunk, in chunk order
    counts: np.ndarray  # expert load [layers, experts]
    forward_ns: int  # device time of the forward pass
    stage: StageEvent | None  # the pipeline cells, when there is a pipeline
    note: str = ""  # what made this tick unusual, for the trace's marks (graphs captured in it)


@dataclass
class PreparedTick:
    """What the host makes of a tick before it runs: its batches (the decode graphs' filled buffer, or
    each micro-batch's HostBatch), all but the token ids, which are read from `chunks` at launch. So a
    tick can be prepared while the device still runs the one before, whose tokens some chunks end with."""

    chunks: list[SeqChunk]
    work: FilledTick | list[HostBatch]


class InFlight:
    """A tick launched on the device; `result()` reads it back, the tick's one host synchronisation."""

    def __init__(self, out: Tensor, finish: Callable[[np.ndarray], ForwardResult], note: str = "") -> None:
        self.out, self._finish = out, finish
        self.note = note  # what made this tick unusual, for the trace's marks

    @classmethod
    def done(cls, result: ForwardResult) -> InFlight:
        """A tick that ran to its end when launched (a distributed pipeline's)."""
        return cls(torch.zeros(0), lambda _: result, result.note)

    def result(self) -> ForwardResult:
        result = self._finish(read_back(self.out))
        result.note = self.note
        return result


class CellClock:
    """Marks between cells: CUDA events on the GPU, the host's monotonic clock on the CPU. On the GPU
    nothing is read until `read()`, after the tick's one synchronisation.

    `start_ns` is the first mark on the host's monotonic clock. With `anchor`, the first mark on the
    GPU waits for the device to be idle so that `start_ns` is when its event really ran: ranks of a
    distributed pipeline place their cells on one timeline through it.
    """

    def __init__(self, device: torch.device, anchor: bool = False) -> None:
        self.cuda = device.type == "cuda"
        self.anchor = anchor
        self.marks: list[Any] = []  # monotonic ns on the CPU, CUDA events on the GPU
        self.start_ns = 0

    def mark(self) -> None:
        if not self.cuda:
            self.marks.append(time.monotonic_ns())
            self.start_ns = self.start_ns or self.marks[0]
            return
        if not self.marks:
            if self.anchor:
                torch.cuda.synchronize()  # between ticks the device is idle: this costs nothing
            self.start_ns = time.monotonic_ns()
        event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        event.record()
        self.marks.append(event)

    def read(self) -> np.ndarray:
        """ns since the first mark, for every mark (on the GPU, once the last mark has run)."""
        if self.cuda:
            self.marks[-1].synchronize()  # a no-op after the tick's synchronisation; else it is that
            ns = np.array([self.marks[0].elapsed_time(e) * 1e6 for e in self.marks], dtype=np.int64)
        else:
            ns = np.array(self.marks, dtype=np.int64) - self.marks[0]
        return ns


def cells_from_marks(
    marks: np.ndarray, order: list[tuple[int, int]], stages: int, micro_batches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end [stages, micro_batches] of cells run one after another in `order`, from the
    marks before the first cell and after each."""
    start = np.zeros((stages, micro_batches), dtype=np.int64)
    end = np.zeros((stages, micro_batches), dtype=np.int64)
    for k, (s, m) in enumerate(order):
        start[s, m], end[s, m] = marks[k], marks[k + 1]
    return start, end


class StageExecutor:
    """Runs a tick's forward pass as pipeline cells on one device."""

    def __init__(
        self,
        model: Transformer,
        kv: KVCache,
        plan: PipelinePlan,
        grouping: str,
        device: torch.device,
        graphs: DecodeGraphs | None = None,
    ) -> None:
        self.model, self.kv, self.plan = model, kv, plan
        self.grouping, self.device = grouping, device
        self.graphs = graphs

    def prepare(self, chunks: list[SeqChunk]) -> PreparedTick:
        """The host's part of a tick (see PreparedTick). Decode-only ticks go to the decode graphs,
        when there are any; the rest run as cells."""
        graphs = self.graphs
        if graphs is not None and graphs.takes(chunks):
            return PreparedTick(chunks, graphs.prepare(chunks))
        return PreparedTick(chunks, self._cells_batches(chunks))

    def launch(
        self, prepared: PreparedTick, tick: int, tick_start_ns: int, sampling: SamplingBatch | None = None
    ) -> InFlight:
        """Start a prepared tick on the device. Tokens are picked as `sampling` says
        (engine/sampling.py; None: greedy). Graphs the engine chose by itself (`auto`) that fail to
        capture are turned off, and the run goes on eagerly; asked for (`on`), their failure ends it."""
        graphs, work = self.graphs, prepared.work
        if not isinstance(work, FilledTick):
            return self._launch_cells(work, tick, tick_start_ns, sampling)
        assert graphs is not None
        try:
            return self._launch_graph(graphs, work, sampling)
        except RuntimeError as error:
            if graphs.required:
                raise
            graphs.turn_off(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            flight = self._launch_cells(self._cells_batches(prepared.chunks), tick, tick_start_ns, sampling)
            flight.note = f"decode graphs off from here on: capturing one failed ({graphs.failed})"
            return flight

    def _cells_batches(self, chunks: list[SeqChunk]) -> list[HostBatch]:
        micro = self.plan.micro_batches_for(len(chunks))
        return [HostBatch(p, self.grouping) for p in split_micro_batches(chunks, micro)]

    def _launch_cells(
        self, batches: list[HostBatch], tick: int, tick_start_ns: int, sampling: SamplingBatch | None
    ) -> InFlight:
        """The embedding runs in stage 0's cells, the LM head in the last's."""
        plan, model = self.plan, self.model
        micro = len(batches)
        parts = [b.to_device(self.device) for b in batches]
        cfg = model.cfg
        counts = torch.zeros(cfg.layers, cfg.routed_experts, device=self.device, dtype=torch.int32)
        order = run_order(plan.schedule, plan.stages, micro)
        hidden: dict[int, Tensor] = {}  # each micro-batch's activations, as far as it has come
        logits: list[Tensor | None] = [None] * micro
        last = plan.stages - 1
        clock = CellClock(self.device)
        clock.mark()
        for s, m in order:
            layers, batch = plan.stage_layers[s], parts[m]
            if s == 0:
                hidden[m] = model.embed_tokens(batch)
            k, v = self.kv.k[layers.start : layers.stop], self.kv.v[layers.start : layers.stop]
            hidden[m] = model.run_layers(hidden[m], batch, k, v, counts, layers)
            if s == last:
                logits[m] = model.logits(hidden[m], batch)
            clock.mark()
        next_tokens = pick_tokens(torch.cat([x for x in logits if x is not None]), sampling).to(torch.int32)

        def result(host: np.ndarray) -> ForwardResult:
            n = len(next_tokens)
            marks = clock.read()
            stage = None
            if plan.pipelined:
                start, end = cells_from_marks(marks, order, plan.stages, micro)
                modelled_start, modelled_end = modelled_timeline(end - start, plan.schedule)
                offset = clock.start_ns - tick_start_ns  # cell times are relative to the tick's start
                stage = StageEvent(tick, start + offset, end + offset, modelled_start + offset, modelled_end + offset)
            return ForwardResult(host[:n].tolist(), host[n:].reshape(counts.shape), int(marks[-1]), stage)

        return InFlight(torch.cat([next_tokens, counts.flatten()]), result)

    def _launch_graph(self, graphs: DecodeGraphs, filled: FilledTick, sampling: SamplingBatch | None) -> InFlight:
        clock = CellClock(self.device)
        clock.mark()
        out = graphs.launch(filled, sampling)
        clock.mark()
        cfg = self.model.cfg
        n = len(filled.chunks)

        def result(host: np.ndarray) -> ForwardResult:
            counts = host[len(host) - cfg.layers * cfg.routed_experts :].reshape(cfg.layers, cfg.routed_experts)
            return ForwardResult(host[:n].tolist(), counts, int(clock.read()[-1]), None)

        return InFlight(out, result, graphs.note)


def read_back(device_values: Tensor) -> np.ndarray:
    """The tick's one host synchronisation: its tokens and expert load, in one copy (a copy on the CPU
    too: a replayed bucket writes its next output where this one was)."""
    host: np.ndarray = device_values.to("cpu", copy=True).numpy()
    return host
