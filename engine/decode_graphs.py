"""Decode ticks replayed as CUDA graphs, one graph per (batch, context) bucket.

A tick in which every sequence decodes one token is fixed by two numbers: how many sequences run (B)
and the longest context among them (L). Padded up to a bucket (B', L'), its forward pass has fixed
shapes and reads nothing back to the host, so it is captured once as a CUDA graph and replayed: one
launch for the whole step instead of ~75 kernel launches per layer, which at small batches cost more
host time than the GPU spends on the step.

Inputs travel in one pinned host buffer and one copy: tokens, positions, the slot each new K/V goes
to, context lengths and block tables; which keys each row sees is computed from them on the device.
A tick is filled (`prepare`) before it runs (`launch`), possibly while the one before it still runs
(the engine plans ahead on CUDA): so there are two buffers, used in turn, and the token ids, which
the previous tick may still be computing, are written only at launch.
Padding rows write their K/V to the cache's scratch slot, attend to that one key, and are left out
of the expert load (they still pass through the experts: the price of a fixed shape).

Every bucket the engine can run (batch up to max_seqs, context up to what a sequence can hold) is
captured up front, when the first decode tick comes, and the trace marks that tick: mid-run, each
new bucket's capture would hold a tick up, and there are over a hundred for ds2-lite. Captures are
made on a side stream that waits for the current one, without torch's `graph` context, which
synchronises the device and empties its caches for each, and which leaves the capture stream
current when a capture fails at its end: here the stream in use before is always restored.

With a compile backend, the padded forward pass goes through torch.compile first (fullgraph, dynamic
shapes: one compile serves every bucket but batch 1, which is specialised), and the graph captures the
fused kernels: even replayed, ~75 small kernels per layer leave gaps between them that bind a small
batch's step; fused, it can read weights at the memory's pace.

Ticks with prefill, pipelines and same-length attention groups run eagerly (engine/stages.py). On the
CPU there are no graphs: with `decode_graphs = "on"` the same padded path runs eagerly, which is how
the tests check it.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.batch import AttnCall, ForwardBatch, KVSlots, SeqChunk
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.sampling import SamplingBatch, pick_tokens

# Shortest context bucket: below it, a graph per size would buy nothing measurable.
_MIN_CONTEXT = 64


def buckets(limit: int, step: int = 1, smallest: int = 1) -> list[int]:
    """Sizes to pad to: powers of two and the midpoints 1.5x between them (so padding wastes at most a
    third), rounded up to multiples of `step`, from `smallest` up to and including `limit`."""
    sizes = {limit}
    k = 0
    while 2**k < limit:
        for size in (2**k, 3 * 2 ** (k - 1)) if k else (1,):
            size = -(-size // step) * step
            if smallest <= size < limit:
                sizes.add(size)
        k += 1
    return sorted(sizes)


def _bucket_for(sizes: list[int], n: int) -> int | None:
    i = bisect.bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else None


class _Bucket:
    """The views of the shared input buffer that one bucket's forward pass reads, in the order the host
    fills them, and (on CUDA, once captured) its graph and output."""

    def __init__(self, inputs: Tensor, seqs: int, context: int, block_size: int) -> None:
        self.seqs, self.context = seqs, context
        self.blocks = context // block_size
        b = seqs
        self.tokens, self.positions, self.slots, self.context_len = (inputs[i * b : (i + 1) * b] for i in range(4))
        self.block_table = inputs[4 * b : 4 * b + b * self.blocks].view(b, self.blocks)
        self.size = 4 * b + b * self.blocks
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Tensor | None = None


@dataclass
class FilledTick:
    """A decode tick made ready on the host: its bucket, and the host buffer holding its inputs."""

    bucket: _Bucket
    chunks: list[SeqChunk]
    context: np.ndarray  # each row's keys, this tick's included
    host: Tensor


class DecodeGraphs:
    """Runs decode-only ticks padded to buckets: replayed CUDA graphs on the GPU, eagerly on the CPU."""

    # the CUDA API the captures go through: the tests put a stand-in here, to fail a capture on the CPU
    cuda: ModuleType | Any = torch.cuda

    def __init__(
        self, model: Transformer, kv: KVCache, max_seqs: int, compile_backend: str | None = None, required: bool = True
    ) -> None:
        self.model, self.kv = model, kv
        self.required = required  # asked for by the user, so a failure to capture is an error
        self.failed: str | None = None  # why the graphs were turned off, when they were
        self.compile_backend = compile_backend
        self._step = (
            self._forward
            if compile_backend is None
            else torch.compile(self._forward, backend=compile_backend, fullgraph=True, dynamic=True)
        )
        self.device = kv.k.device
        self.capture = self.device.type == "cuda"
        self.block_size = kv.allocator.block_size
        longest = min(model.cfg.max_seq_len, kv.allocator.capacity_tokens)  # the most a sequence can hold
        max_context = -(-longest // self.block_size) * self.block_size
        self.batch_buckets = buckets(max_seqs)
        self.context_buckets = buckets(max_context, self.block_size, _MIN_CONTEXT)
        self._size = self.batch_buckets[-1] * (4 + max_context // self.block_size)
        self._make_buffers()
        # where replayed graphs leave their logits for the draws made after them; made by `warm_up`
        self._logits = torch.empty(0)
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self.captured: list[tuple[int, int]] = []  # (batch, context) of each graph, in capture order
        self.used: set[tuple[int, int]] = set()  # (batch, context) of every bucket a tick ran in
        self.note = ""  # what the last `launch` did besides the tick (the warm-up), for the trace's marks
        self._pool: Any = None

    def _make_buffers(self) -> None:
        """The host buffers ticks are filled in, and the inputs the forward pass reads. Captured: two
        host buffers (pinned on CUDA) used in turn, since a tick planned ahead is filled while the copy
        from the other may still be queued, and a copy of one as the inputs. Not captured (the CPU):
        one, which the forward pass reads itself, each tick having run by the time the next is filled."""
        self._hosts = [
            torch.empty(self._size, dtype=torch.int64, pin_memory=self.device.type == "cuda")
            for _ in range(1 + self.capture)
        ]
        self._turn = 0
        self._host = self._hosts[0]  # the buffer `_fill` writes
        self._inputs = torch.empty(self._size, dtype=torch.int64, device=self.device) if self.capture else self._host

    @property
    def buckets_used(self) -> list[tuple[int, int]]:
        """(batch, context) of every bucket a tick ran in so far."""
        return sorted(self.used)

    def takes(self, chunks: list[SeqChunk]) -> bool:
        """Whether this tick is decode only and fits the largest bucket (and the graphs are on)."""
        if self.failed is not None or len(chunks) > self.batch_buckets[-1]:
            return False
        if not all(len(c.tokens) == 1 and c.sample for c in chunks):
            return False
        return max(c.start for c in chunks) + 1 <= self.context_buckets[-1]

    def prepare(self, chunks: list[SeqChunk]) -> FilledTick:
        """The host's part of a tick: its bucket, and its inputs in a host buffer but the token ids,
        which `launch` reads from the chunks (so this may run while the previous tick still does).
        Check `takes` first."""
        context = np.array([c.start + 1 for c in chunks])
        seqs = _bucket_for(self.batch_buckets, len(chunks))
        longest = _bucket_for(self.context_buckets, int(context.max()))
        assert seqs is not None and longest is not None, "takes() said the tick fits"
        self._turn = (self._turn + 1) % len(self._hosts)
        self._host = self._hosts[self._turn]
        filled = FilledTick(self._bucket(seqs, longest), chunks, context, self._host)
        self._fill(filled.bucket, chunks, context)
        return filled

    def launch(self, filled: FilledTick, sampling: SamplingBatch | None = None) -> Tensor:
        """Run a prepared tick: its tokens [B'] then expert load [layers * experts], int32, on the
        device; the first len(chunks) tokens are the real rows'. The step takes greedy tokens; with
        `sampling` the real rows' tokens are drawn after it from the logits it left (engine/sampling.py
        runs outside the graphs: one capture per bucket serves every mix of requests)."""
        self.note = ""
        bucket, chunks = filled.bucket, filled.chunks
        if self.capture and not self.captured:
            self.warm_up()
        self.used.add((bucket.seqs, bucket.context))
        filled.host.numpy()[: len(chunks)] = [c.tokens[0] for c in chunks]
        self._send(bucket, filled.host)
        if bucket.graph is None:  # the CPU
            out, logits = self._step(bucket)
        else:
            bucket.graph.replay()
            assert bucket.out is not None
            out, logits = bucket.out, self._logits[: bucket.seqs]
        if sampling is None:
            return out
        n = len(chunks)
        return torch.cat([pick_tokens(logits[:n], sampling).to(torch.int32), out[n:]])

    def turn_off(self, reason: str) -> None:
        """No decode tick goes to the graphs from now on; those captured are released."""
        self.failed = reason
        for bucket in self._buckets.values():
            if bucket.graph is not None:
                bucket.graph.reset()
            bucket.graph = bucket.out = None

    def warm_up(self) -> None:
        """Capture every bucket, smallest first. Their inputs are padding rows only, so the runs that
        capture them write K/V to the scratch block alone; replays read the real inputs."""
        start = time.monotonic()
        # one buffer that every graph leaves its logits in: one output [B', vocab] per graph would
        # hold hundreds of MB for a real vocabulary, for the draws of a single tick at a time
        self._logits = torch.empty(
            self.batch_buckets[-1], self.model.cfg.vocab_size, dtype=self.kv.k.dtype, device=self.device
        )
        # pageable, not pinned: a copy from it has read it when it returns, so the next bucket's fill
        # cannot overwrite a copy still queued (from a pinned buffer it could, and a capture's first
        # run would read another bucket's layout and write K/V to real slots); and no host sync
        padding = torch.empty(self._size, dtype=torch.int64)
        for seqs in self.batch_buckets:
            for context in self.context_buckets:
                bucket = self._bucket(seqs, context)
                self._fill(bucket, [], np.zeros(0, np.int64), padding)
                self._send(bucket, padding)
                self._capture(bucket)
        compiled = f", compiled by {self.compile_backend}" if self.compile_backend else ""
        self.note = (
            f"decode graphs: {len(self.captured)} captured up front{compiled} (batch "
            f"{self.batch_buckets[0]}-{self.batch_buckets[-1]} x context {self.context_buckets[0]}-"
            f"{self.context_buckets[-1]}) in {time.monotonic() - start:.2f} s: this tick includes it"
        )

    def _send(self, bucket: _Bucket, host: Tensor) -> None:
        """The bucket's inputs to the device, in one copy from a pinned buffer (on the CPU, nothing)."""
        if self._inputs is not host:
            self._inputs[: bucket.size].copy_(host[: bucket.size], non_blocking=True)

    def _bucket(self, seqs: int, context: int) -> _Bucket:
        key = (seqs, context)
        if key not in self._buckets:
            self._buckets[key] = _Bucket(self._inputs, seqs, context, self.block_size)
        return self._buckets[key]

    def _fill(self, bucket: _Bucket, chunks: list[SeqChunk], context: np.ndarray, into: Tensor | None = None) -> None:
        """Write the tick's inputs but its token ids into the host buffer (or `into`) in `bucket`'s
        layout; padding rows (token 0) write their K/V to the scratch slot and see one key. Whole
        columns at a time: at batch 256, a Python loop over the rows would cost more host time than
        the GPU spends on a small model's step."""
        n, b = len(chunks), bucket.seqs
        host = (self._host if into is None else into).numpy()[: bucket.size]
        host[:] = 0
        table = host[4 * b :].reshape(b, bucket.blocks)
        if n:
            slots = KVSlots(chunks)
            rows = np.arange(n)
            host[b : b + n] = context - 1
            host[2 * b : 2 * b + n] = slots(rows, context - 1)
            host[3 * b : 3 * b + n] = context
            table[:n] = slots.table(rows, context, bucket.blocks)
        host[2 * b + n : 3 * b] = self.kv.scratch_slot
        host[3 * b + n : 4 * b] = 1
        table[n:, 0] = self.kv.scratch_slot // self.block_size

    def _forward(self, bucket: _Bucket) -> tuple[Tensor, Tensor]:
        """The captured region: fixed shapes, no host synchronisation. Greedy tokens [B'] then the
        expert load, and the logits [B', vocab]."""
        attention = AttnCall(None, bucket.block_table, bucket.context_len, 1, None)
        batch = ForwardBatch(
            bucket.tokens,
            bucket.positions,
            bucket.slots,
            [attention],
            torch.arange(bucket.seqs, device=self.device),
            self.block_size,
            counted=bucket.slots != self.kv.scratch_slot,
            fixed_shapes=True,
        )
        logits, counts = self.model(batch, self.kv.k, self.kv.v)
        return torch.cat([logits.argmax(dim=-1).to(torch.int32), counts.flatten()]), logits

    def _region(self, bucket: _Bucket) -> Tensor:
        """What a graph captures: the step, and its logits copied to the buffer the draws read."""
        out, logits = self._step(bucket)
        self._logits[: bucket.seqs].copy_(logits)
        return out

    def _capture(self, bucket: _Bucket) -> None:
        """Capture `bucket`'s forward pass on a side stream that first runs it once uncaptured (cuBLAS
        and the allocator settle there; compiling happens then, the first time). Whatever fails, in
        the region or at the capture's end, the stream in use before is current again after."""
        cuda = self.cuda
        if self._pool is None:
            self._pool = cuda.graph_pool_handle()
        current = cuda.current_stream(self.device)
        side = cuda.Stream(self.device)
        side.wait_stream(current)
        graph = cuda.CUDAGraph()
        cuda.set_stream(side)
        try:
            self._region(bucket)
            # thread_local: the load generator and the trace writer run on other threads meanwhile
            graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
            try:
                out = self._region(bucket)
            finally:
                graph.capture_end()  # ends the capture even when the region failed (it then raises)
        finally:
            cuda.set_stream(current)
        current.wait_stream(side)
        bucket.graph, bucket.out = graph, out
        self.captured.append((bucket.seqs, bucket.context))
