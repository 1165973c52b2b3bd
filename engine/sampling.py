"""Next tokens from logits: greedy, or sampled with a temperature, top-k and top-p, per request.

A tick's rows may each ask for something different, and are sampled in one call. Sampling uses the
Gumbel-max trick: argmax(logits / T + g) is a draw from softmax(logits / T) when g is Gumbel noise.
The noise of (request seed, position, token id) comes from a hash, not a generator's stream, so a
request draws the same tokens whichever requests share its ticks, in whatever order, and a token
recomputed after preemption is the same token. The hash is integer arithmetic on the device: no
per-request generator, no host round trip, one kernel sequence for the batch.

A tick in which every row is greedy takes the argmax alone, as before sampling existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.request import SamplingParams

_M32 = 0xFFFFFFFF
# The peak of a draw's temporaries, per logit of a drawing row: 44 bytes with top-k or top-p (the sort,
# its token order, the masks, the hashed noise), 28 without; measured (tests/test_sampling.py).
SAMPLING_BYTES_PER_LOGIT = 44


@dataclass
class SamplingBatch:
    """The rows of one tick that draw rather than take the argmax, as device tensors [D]."""

    rows: Tensor  # int64: which rows of the tick's logits draw
    temperature: Tensor  # float32
    top_p: Tensor  # float32
    top_k: Tensor  # int64, 0 = all
    key: Tensor  # int64 in [0, 2**32): the hash of (seed, position) each row's noise starts from
    filtered: bool  # some row has a top-k or top-p to apply

    @classmethod
    def of(cls, params: list[SamplingParams], positions: list[int], device: torch.device) -> SamplingBatch | None:
        """The batch for rows with `params`, each predicting the token at `positions` of its sequence;
        None when every row is greedy."""
        rows = [i for i, p in enumerate(params) if not p.greedy]
        if not rows:
            return None
        drawing = [params[i] for i in rows]
        seeds = torch.tensor([[p.seed & _M32, p.seed >> 32] for p in drawing], dtype=torch.int64)
        at = torch.tensor([positions[i] for i in rows], dtype=torch.int64)
        key = _mix(_mix(seeds[:, 0] ^ _mix(seeds[:, 1])) ^ at)
        columns = [
            rows,
            [p.temperature for p in drawing],
            [p.top_p for p in drawing],
            [min(p.top_k, 1 << 31) for p in drawing],  # past the vocabulary, all the same
            key.tolist(),
        ]
        # one copy to the device: float64 holds every column exactly (keys and top_k are below 2**53)
        values = torch.tensor(columns, dtype=torch.float64).to(device, non_blocking=True)
        return cls(
            rows=values[0].long(),
            temperature=values[1].float(),
            top_p=values[2].float(),
            top_k=values[3].long(),
            key=values[4].long(),
            filtered=any(p.top_p < 1 or p.top_k > 0 for p in drawing),
        )


def pick_tokens(logits: Tensor, batch: SamplingBatch | None) -> Tensor:
    """The next token of every row of `logits` [S, vocab] (int64 [S]): its argmax, or a draw where
    `batch` says. Only the drawing rows are worked on: each makes a few [vocab] temporaries."""
    best = logits.argmax(dim=-1)
    if batch is None:
        return best
    scores = logits.index_select(0, batch.rows).float() / batch.temperature[:, None]
    drawing, vocab = scores.shape
    if batch.filtered:
        # as transformers and vLLM do: top-k first, then top-p over what top-k kept, renormalised
        scores, order = scores.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=logits.device)
        k = torch.where(batch.top_k > 0, batch.top_k, vocab)
        scores = scores.masked_fill(rank >= k[:, None], float("-inf"))
        probs = scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        scores = scores.masked_fill(mass_before >= batch.top_p[:, None], float("-inf"))
        drawn = order.gather(1, (scores + _gumbel(batch.key, order)).argmax(dim=-1, keepdim=True)).squeeze(1)
    else:
        ids = torch.arange(vocab, device=logits.device).expand(drawing, vocab)
        drawn = (scores + _gumbel(batch.key, ids)).argmax(dim=-1)
    return best.index_copy(0, batch.rows, drawn)


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) of int64 values in [0, 2**32): products past 2**63
    wrap, and the mask keeps their low 32 bits, which is all the hash uses."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _gumbel(key: Tensor, ids: Tensor) -> Tensor:
    """Gumbel noise [S, n] for token ids [S, n] of rows whose keys are [S]."""
    h = _mix(key[:, None] ^ _mix(ids))
    u = ((h >> 8).float() + 0.5) / (1 << 24)  # 24 bits: exact in float32, never 0 or 1
    return -torch.log(-torch.log(u))
