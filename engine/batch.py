"""A tick's batch as the model sees it: every sequence's chunk flattened into one row per token, and
the attention calls that read each sequence's keys back from the paged KV cache (kv_cache.py).

Built on the host with numpy a column at a time, not a sequence at a time (a tick may hold hundreds of
sequences), and copied to the device in one transfer. Nothing dense travels: a call carries its rows,
its sequences' block tables and key counts; which keys a query may see is worked out on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from torch import Tensor


@dataclass
class SeqChunk:
    """One sequence's part of a tick: tokens [start, start + len(tokens)) of it."""

    tokens: list[int]
    start: int
    # the sequence's KV blocks, through this chunk: position p's K/V lives in slot
    # blocks[p // block_size] * block_size + p % block_size (kv_cache.py)
    blocks: list[int]
    block_size: int
    sample: bool  # the chunk ends the known tokens, so its last row predicts the next token


@dataclass
class AttnCall:
    """Sequences whose attention is one SDPA call: each has `q` queries and sees the keys of its own
    cache blocks, the last of them its chunk's own. Queries are never padded: decodes (q = 1) of any
    lengths make one call, prefill chunks one call per shape (q, keys)."""

    rows: Tensor | None  # [seqs * q] the queries' rows in the flat batch, sequence by sequence; None: all, in order
    block_table: Tensor  # [seqs, blocks] each sequence's cache blocks; past its last, block 0 (never seen)
    kv_len: Tensor  # [seqs] keys of each sequence, this tick's included
    q: int
    kv: int | None  # the key count when every sequence has the same (then no key is padded), else None


@dataclass
class ForwardBatch:
    tokens: Tensor  # [T] token ids
    positions: Tensor  # [T] position of each token in its sequence
    slots: Tensor  # [T] cache slot each token's K/V is written to
    attention: list[AttnCall]  # every row is the query of exactly one call
    sample_index: Tensor  # [S] rows whose next-token logits are wanted
    block_size: int
    # [T] bool: rows whose expert choices count in the tick's load (False for padding); None = all
    counted: Tensor | None = None
    fixed_shapes: bool = False  # the step is captured or compiled: nothing in it may read back to the host


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """starts[i], starts[i] + 1, ..., starts[i] + lengths[i] - 1, for every i, concatenated."""
    out: np.ndarray = np.arange(int(lengths.sum())) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return out


class KVSlots:
    """The cache slots and block tables of a tick's sequences."""

    def __init__(self, chunks: list[SeqChunk]) -> None:
        self.block_size = chunks[0].block_size
        self.n_blocks = np.fromiter((len(c.blocks) for c in chunks), np.int64, len(chunks))
        self.blocks = np.fromiter(chain.from_iterable(c.blocks for c in chunks), np.int64, int(self.n_blocks.sum()))
        self.first = np.cumsum(self.n_blocks) - self.n_blocks  # each sequence's first block in `blocks`

    def __call__(self, seq: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The slot of `position` of sequence `seq` (index into the chunks), elementwise."""
        bs = self.block_size
        slots: np.ndarray = self.blocks[self.first[seq] + position // bs] * bs + position % bs
        return slots

    def table(self, seqs: np.ndarray, kv_len: np.ndarray, width: int) -> np.ndarray:
        """[len(seqs), width] block tables holding keys 0..kv_len-1 of each of `seqs`, 0 past them."""
        used = -(-kv_len // self.block_size)
        column = concat_ranges(np.zeros(len(seqs), np.int64), used)
        out = np.zeros((len(seqs), width), np.int64)
        out[np.repeat(np.arange(len(seqs)), used), column] = self.blocks[np.repeat(self.first[seqs], used) + column]
        return out


def attention_groups(kv_len: np.ndarray, grouping: str) -> np.ndarray:
    """The attention group (0, 1, ...) of each sequence, given their key lengths (cached prefix + this
    tick's chunk): all in one with `ragged`, one per distinct length, shortest first, with `same-length`.
    The trace records these groups, so this is the one place that decides them. A group runs as one
    call for its decodes and one per shape of its prefill chunks (`make_batch`)."""
    if grouping == "ragged":
        return np.zeros(len(kv_len), dtype=np.int64)
    return np.unique(kv_len, return_inverse=True)[1].reshape(-1)


class HostBatch:
    """A tick's inputs as the host builds them (numpy, one column at a time), before they travel.

    Everything but the token ids is worked out when the batch is built; the ids are read from the
    chunks when it is sent (`to_device`). So a batch can be built while the device still runs the
    previous tick, and the token that tick is computing, written into its chunk once known, still
    goes with it (engine.py's planning ahead)."""

    def __init__(self, chunks: list[SeqChunk], grouping: str = "ragged") -> None:
        n = len(chunks)
        self.chunks = chunks
        lengths = np.fromiter((len(c.tokens) for c in chunks), np.int64, n)
        starts = np.fromiter((c.start for c in chunks), np.int64, n)
        row_start = np.cumsum(lengths) - lengths
        self.rows = int(lengths.sum())
        positions = concat_ranges(starts, lengths)
        slot_of = KVSlots(chunks)
        self.block_size = slot_of.block_size
        slots = slot_of(np.repeat(np.arange(n), lengths), positions)
        sample = (row_start + lengths - 1)[np.fromiter((c.sample for c in chunks), bool, n)]

        kv_len = starts + lengths
        group = attention_groups(kv_len, grouping)
        # decodes of a group share one call whatever their lengths; prefill chunks share one if alike. One
        # int64 key per sequence (group, q and keys take 21 bits each): np.unique of rows is 10x slower
        shape = (group << 42) | (lengths << 21) | np.where(lengths > 1, kv_len, 0)
        call_of = np.unique(shape, return_inverse=True)[1].reshape(-1)
        # the token ids lead, filled in by `to_device`
        self.arrays: list[np.ndarray] = [np.empty(self.rows, np.int64), positions, slots, sample]
        self.shapes: list[tuple[int, int | None, bool]] = []  # each call's q, kv and whether it is all rows in order
        for c in range(int(call_of.max()) + 1):
            members = np.flatnonzero(call_of == c)
            kv = kv_len[members]
            width = -(-int(kv.max()) // slot_of.block_size)
            self.arrays += [concat_ranges(row_start[members], lengths[members]), slot_of.table(members, kv, width), kv]
            self.shapes.append(
                (int(lengths[members[0]]), int(kv[0]) if (kv == kv[0]).all() else None, len(members) == n)
            )

    def to_device(self, device: torch.device) -> ForwardBatch:
        """The model's inputs on `device`, token ids as the chunks hold them now, in one copy."""
        self.arrays[0][:] = np.fromiter(chain.from_iterable(c.tokens for c in self.chunks), np.int64, self.rows)
        tokens_t, positions_t, slots_t, sample_t, *per_call = _to_device(self.arrays, device)
        calls = [
            AttnCall(None if whole else rows, table, kv, q, same)
            for (q, same, whole), rows, table, kv in zip(self.shapes, per_call[0::3], per_call[1::3], per_call[2::3])
        ]
        return ForwardBatch(tokens_t, positions_t, slots_t, calls, sample_t, self.block_size)


def make_batch(chunks: list[SeqChunk], device: torch.device, grouping: str = "ragged") -> ForwardBatch:
    """Flatten a tick's sequence chunks into model inputs and attention calls (see AttnCall)."""
    return HostBatch(chunks, grouping).to_device(device)


def _to_device(arrays: list[np.ndarray], device: torch.device) -> list[Tensor]:
    """int64 arrays as views of one tensor on `device`: one copy per tick, not one per array."""
    flat = torch.from_numpy(np.concatenate([a.ravel() for a in arrays])).to(device, non_blocking=True)
    views, at = [], 0
    for a in arrays:
        views.append(flat[at : at + a.size].view(a.shape))
        at += a.size
    return views
