"""A tick's micro-batches as one int64 array, for rank 0 to broadcast to the other stages.

Layout: [M, chunks in micro-batch 0 .. M-1, then per chunk: start, n_tokens, sample, n_blocks,
tokens..., blocks...]. KV slots travel as the sequence's block numbers, as SeqChunk holds them.
"""

from __future__ import annotations

import numpy as np

from engine.batch import SeqChunk


def encode_tick(parts: list[list[SeqChunk]]) -> np.ndarray:
    head = [len(parts)] + [len(p) for p in parts]
    body: list[np.ndarray] = []
    for part in parts:
        for c in part:
            body.append(np.array([c.start, len(c.tokens), int(c.sample), len(c.blocks)], dtype=np.int64))
            body.append(np.asarray(c.tokens, dtype=np.int64))
            body.append(np.asarray(c.blocks, dtype=np.int64))
    return np.concatenate([np.asarray(head, dtype=np.int64)] + body)


def decode_tick(data: np.ndarray, block_size: int) -> list[list[SeqChunk]]:
    micro = int(data[0])
    sizes = data[1 : 1 + micro].tolist()
    at = 1 + micro
    parts: list[list[SeqChunk]] = []
    for size in sizes:
        part = []
        for _ in range(size):
            start, n_tokens, sample, n_blocks = (int(v) for v in data[at : at + 4])
            at += 4
            tokens = data[at : at + n_tokens].tolist()
            at += n_tokens
            blocks = data[at : at + n_blocks].tolist()
            at += n_blocks
            part.append(SeqChunk(tokens, start, blocks, block_size, bool(sample)))
        parts.append(part)
    return parts
