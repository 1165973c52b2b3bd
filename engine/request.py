"""What the scheduler is given and how it answers: a request and the sink its tokens go to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from engine.sampling import GREEDY, SamplingParams
from tracer.events import RequestStatus


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
