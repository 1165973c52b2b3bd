"""What the scheduler is given and how it answers: a request, how it picks its tokens (drawn in
engine/sampling.py) and the sink its tokens go to. Free of torch, so that workloads and the command
line read sampling settings without loading it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tracer.events import RequestStatus

# Temperatures below this are greedy (as vLLM has it): dividing by them overflows float32 logits.
_MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request picks its tokens. temperature 0 (the default; below 1e-5 too) is greedy, as
    is top_k 1."""

    temperature: float = 0.0
    top_p: float = 1.0  # keep the most likely tokens whose mass reaches top_p (1: all)
    top_k: int = 0  # keep the k most likely tokens (0: all)
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature < _MIN_TEMPERATURE or self.top_k == 1

    def problem(self) -> str | None:
        """What is wrong with these parameters, in a few words, or None."""
        if not self.temperature >= 0:  # NaN included
            return f"temperature must be 0 or more, got {self.temperature}"
        if not 0 < self.top_p <= 1:
            return f"top_p must be in (0, 1], got {self.top_p}"
        if self.top_k < 0:
            return f"top_k must be 0 (all) or more, got {self.top_k}"
        if not 0 <= self.seed < 2**64:
            return f"seed must be in [0, 2**64), got {self.seed}"
        return None


GREEDY = SamplingParams()


class RequestSink(Protocol):
    """Receives a request's results. Called from the engine's thread: must not block."""

    def on_token(self, token: int, t_ns: int) -> None: ...

    def on_finish(self, status: RequestStatus, reason: str, t_ns: int) -> None:
        """Called exactly once; status is "finished", "rejected", "cancelled" or "failed". The reason
        of "finished" is "stop" (a stop token was sampled) or "length" (max_new_tokens were)."""


@dataclass(slots=True)
class Request:
    id: int
    prompt: list[int]  # token ids
    max_new_tokens: int
    sink: RequestSink
    sampling: SamplingParams = GREEDY
    # sampling one of these ends the sequence; it is still a token of the output (as EOS is)
    stop_tokens: frozenset[int] = frozenset()
