"""What each request asks for: prompt and output lengths from a distribution, prompt token ids.

Each kind of randomness has its own generator spawned from the workload's seed, so the requests
are the same run after run, and changing (say) the arrival process leaves the lengths alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from workloads.spec import LengthSpec, WorkloadSpec
from workloads.traffic import MOONCAKE_BLOCK, Blocks

_BLOCK = 1024  # lengths are drawn this many at a time: one numpy call instead of one per request
_TOKEN_BLOCK = 1 << 16
_BLOCK_CACHE = 4096  # a trace's prompt blocks kept (16 MB): past that, the oldest are made again when named


@dataclass
class RandomStreams:
    """Independent generators for the independent random choices of one run."""

    arrivals: np.random.Generator
    prompt_lengths: np.random.Generator
    output_lengths: np.random.Generator
    prompt_tokens: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> RandomStreams:
        return cls(*(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)))


def sample_lengths(spec: LengthSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` token counts (int64) drawn from `spec`, clipped to [spec.min, spec.max]."""
    if spec.kind == "fixed":
        return np.full(n, spec.value, dtype=np.int64)
    if spec.kind == "uniform":
        return rng.integers(spec.min, spec.max, size=n, endpoint=True, dtype=np.int64)
    if spec.kind == "lognormal":
        # Parameterised by the distribution's own mean (what a user knows about their traffic):
        # E[X] = exp(mu + sigma^2 / 2), so mu = ln(mean) - sigma^2 / 2.
        mu = math.log(spec.mean) - spec.sigma**2 / 2
        raw = rng.lognormal(mu, spec.sigma, size=n)
    elif spec.kind == "file":
        raw = rng.choice(np.asarray(spec.values, dtype=np.float64), size=n)
    else:
        raise ValueError(f"unknown length kind {spec.kind!r}")
    return np.clip(np.rint(raw), spec.min, spec.max).astype(np.int64)


class RequestMaker:
    """Makes the n-th request's prompt and output budget, the same for the same seed."""

    def __init__(
        self, spec: WorkloadSpec, streams: RandomStreams, vocab_size: int, prompts: list[list[int]] | None = None
    ) -> None:
        """`prompts`: the token ids of a `text` prompt spec's prompts, sent in turn, round and round."""
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, not {vocab_size}")
        if (prompts is None) != (spec.prompt.kind != "text"):
            raise ValueError("token ids are given for text prompts, and for them only")
        self._vocab_size = vocab_size
        self._prompts = prompts
        self._sent = 0
        self._tokens = streams.prompt_tokens
        self._pairs = self._pairs_of(spec, streams)
        self._seed = spec.seed
        self._blocks: dict[int, np.ndarray] = {}
        # Token ids are cut from a pre-drawn block: one numpy call per request costs more than
        # the rest of sending it.
        self._pool = np.empty(0, dtype=np.int64)
        self._pos = 0

    def next(self) -> tuple[list[int], int]:
        """(prompt token ids, max new tokens) of the next request."""
        prompt_len, max_new = self.lengths()
        return self.prompt(prompt_len), max_new

    def lengths(self) -> tuple[int, int]:
        """(prompt tokens, max new tokens) of the next request, drawn from the workload's distributions."""
        return next(self._pairs)

    def prompt(self, prompt_len: int, blocks: Blocks = ()) -> list[int]:
        """Token ids of a prompt this long: the tokens of its trace's `blocks` first, as far as they
        reach, the rest fresh; or a `text` spec's next prompt, whatever its length."""
        if self._prompts is not None:
            given = self._prompts[self._sent % len(self._prompts)]
            self._sent += 1
            return list(given)
        shared = [self._block(block) for block in blocks[: -(-prompt_len // MOONCAKE_BLOCK)]]
        head = np.concatenate(shared)[:prompt_len] if shared else self._pool[:0]
        fresh = prompt_len - len(head)
        if self._pos + fresh > len(self._pool):
            size = max(_TOKEN_BLOCK, fresh)
            self._pool = self._tokens.integers(0, self._vocab_size, size=size)
            self._pos = 0
        tail = self._pool[self._pos : self._pos + fresh]
        self._pos += fresh
        prompt: list[int] = (np.concatenate((head, tail)) if len(head) else tail).tolist()
        return prompt

    def _block(self, block: int) -> np.ndarray:
        """The tokens of a trace's prompt block: the same for the same id and seed, in every request."""
        tokens = self._blocks.get(block)
        if tokens is None:
            if len(self._blocks) >= _BLOCK_CACHE:
                del self._blocks[next(iter(self._blocks))]  # the oldest: a trace's blocks are mostly reused soon
            rng = np.random.default_rng([self._seed, block])
            tokens = self._blocks[block] = rng.integers(0, self._vocab_size, size=MOONCAKE_BLOCK)
        return tokens

    @staticmethod
    def _pairs_of(spec: WorkloadSpec, streams: RandomStreams) -> Iterator[tuple[int, int]]:
        while True:
            if spec.prompt.kind == "text":  # the prompts are given: no length to draw
                prompts = np.zeros(_BLOCK, dtype=np.int64)
            else:
                prompts = sample_lengths(spec.prompt, streams.prompt_lengths, _BLOCK)
            outputs = sample_lengths(spec.output, streams.output_lengths, _BLOCK)
            yield from zip(prompts.tolist(), outputs.tolist())
