"""Decode ticks replayed as CUDA graphs, one graph per (batch, context) bucket.

A tick in which every sequence decodes one token is fixed by two numbers: how many sequences run (B)
and the longest context among them (L). Padded up to a bucket (B', L'), its forward pass has fixed
shapes and reads nothing back to the host, so it is captured once as a CUDA graph and replayed: one
launch for the whole step instead of ~75 kernel launches per layer, which at small batches cost more
host time than the GPU spends on the step.

Inputs travel in one pinned host buffer and one copy: tokens, positions, the slot each new K/V goes
to, context lengths and block tables; which keys each row sees is computed from them on the device.
Padding rows write their K/V to the cache's scratch slot, attend to that one key, and are left out
of the expert load (they still pass through the experts: the price of a fixed shape). The first tick
of a bucket pays for its capture (a warm-up run, then the capture), and the trace marks it; later
ticks replay it.

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

import numpy as np
import torch
from torch import Tensor

from engine.batch import AttnCall, ForwardBatch, KVSlots, SeqChunk
from engine.kv_cache import KVCache
from engine.model import Transformer

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
        self.tokens, self.positions, self.slots, self.context_len = (inputs[i * b:(i + 1) * b] for i in range(4))
        self.block_table = inputs[4 * b:4 * b + b * self.blocks].view(b, self.blocks)
        self.size = 4 * b + b * self.blocks
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Tensor | None = None


class DecodeGraphs:
    """Runs decode-only ticks padded to buckets: replayed CUDA graphs on the GPU, eagerly on the CPU."""

    def __init__(self, model: Transformer, kv: KVCache, max_seqs: int, compile_backend: str | None = None,
                 required: bool = True) -> None:
        self.model, self.kv = model, kv
        self.required = required  # asked for by the user, so a failure to capture is an error
        self.failed: str | None = None  # why the graphs were turned off, when they were
        self.compile_backend = compile_backend
        self._step = (self._forward if compile_backend is None
                      else torch.compile(self._forward, backend=compile_backend, fullgraph=True, dynamic=True))
        self.device = kv.k.device
        self.capture = self.device.type == "cuda"
        self.block_size = kv.allocator.block_size
        max_context = -(-model.cfg.max_seq_len // self.block_size) * self.block_size
        self.batch_buckets = buckets(max_seqs)
        self.context_buckets = buckets(max_context, self.block_size, _MIN_CONTEXT)
        largest = self.batch_buckets[-1]
        size = largest * (4 + max_context // self.block_size)
        host = torch.empty(size, dtype=torch.int64, pin_memory=self.capture)
        self._host, self._host_np = host, host.numpy()
        # on the CPU the forward pass reads the host buffer itself; on CUDA a copy of it
        self._inputs = torch.empty(size, dtype=torch.int64, device=self.device) if self.capture else host
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self.captured: list[tuple[int, int]] = []  # (batch, context) of each graph, in capture order
        self._pool = torch.cuda.graph_pool_handle() if self.capture else None

    @property
    def buckets_used(self) -> list[tuple[int, int]]:
        """(batch, context) of every bucket run so far: on CUDA, the graphs captured."""
        return sorted(self._buckets)

    def takes(self, chunks: list[SeqChunk]) -> bool:
        """Whether this tick is decode only and fits the largest bucket (and the graphs are on)."""
        if self.failed is not None or len(chunks) > self.batch_buckets[-1]:
            return False
        if not all(len(c.tokens) == 1 and c.sample for c in chunks):
            return False
        return max(c.start for c in chunks) + 1 <= self.context_buckets[-1]

    def run(self, chunks: list[SeqChunk]) -> Tensor:
        """The tick's greedy tokens [B'] then expert load [layers * experts], int32, on the device; the
        first len(chunks) tokens are the real rows'. Check `takes` first."""
        n = len(chunks)
        context = np.array([c.start + 1 for c in chunks])
        seqs = _bucket_for(self.batch_buckets, n)
        bucket = self._bucket(seqs, _bucket_for(self.context_buckets, int(context.max())))
        self._fill(bucket, chunks, context)
        if self._inputs is not self._host:
            self._inputs[:bucket.size].copy_(self._host[:bucket.size], non_blocking=True)
        if not self.capture:
            return self._step(bucket)
        if bucket.graph is None:
            self._capture(bucket)
        bucket.graph.replay()
        return bucket.out

    def _bucket(self, seqs: int, context: int) -> _Bucket:
        key = (seqs, context)
        if key not in self._buckets:
            self._buckets[key] = _Bucket(self._inputs, seqs, context, self.block_size)
        return self._buckets[key]

    def _fill(self, bucket: _Bucket, chunks: list[SeqChunk], context: np.ndarray) -> None:
        """Write the tick's inputs into the host buffer in `bucket`'s layout; padding rows write their
        K/V to the scratch slot and see one key. Whole columns at a time: at batch 256, a Python
        loop over the rows would cost more host time than the GPU spends on a small model's step."""
        n, b = len(chunks), bucket.seqs
        host = self._host_np[:bucket.size]
        host[:] = 0
        slots = KVSlots(chunks)
        rows = np.arange(n)
        host[:n] = [c.tokens[0] for c in chunks]
        host[b:b + n] = context - 1
        host[2 * b:2 * b + n] = slots(rows, context - 1)
        host[2 * b + n:3 * b] = self.kv.scratch_slot
        host[3 * b:3 * b + n] = context
        host[3 * b + n:4 * b] = 1
        table = host[4 * b:].reshape(b, bucket.blocks)
        table[:n] = slots.table(rows, context, bucket.blocks)
        table[n:, 0] = self.kv.scratch_slot // self.block_size

    def _forward(self, bucket: _Bucket) -> Tensor:
        """The captured region: fixed shapes, no host synchronisation."""
        attention = AttnCall(None, bucket.block_table, bucket.context_len, 1, None)
        batch = ForwardBatch(bucket.tokens, bucket.positions, bucket.slots, [attention],
                             torch.arange(bucket.seqs, device=self.device), self.block_size,
                             counted=bucket.slots != self.kv.scratch_slot)
        logits, counts = self.model(batch, self.kv.k, self.kv.v)
        return torch.cat([logits.argmax(dim=-1).to(torch.int32), counts.flatten()])

    def _capture(self, bucket: _Bucket) -> None:
        # A warm-up run on a side stream first, as capture requires (cuBLAS and the allocator settle
        # there). It computes exactly what the replay will: the same inputs, the same K/V written.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._step(bucket)  # and compiles, the first time
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the load generator and the trace writer run on other threads meanwhile
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            bucket.out = self._step(bucket)
        bucket.graph = graph
        self.captured.append((bucket.seqs, bucket.context))
