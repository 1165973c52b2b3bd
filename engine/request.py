"""What the scheduler is given and how it answers: a request and the sink its tokens go to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tracer.events import RequestStatus


class RequestSink(Protocol):
    """Receives a request's results. Called from the engine's thread: must not block."""

    def on_token(self, token: int, t_ns: int) -> None: ...

    def on_finish(self, status: RequestStatus, reason: str, t_ns: int) -> None:
        """Called exactly once; status is "finished", "rejected", "cancelled" or "failed"."""


@dataclass(slots=True)
class Request:
    id: int
    prompt: list[int]  # token ids
    max_new_tokens: int
    sink: RequestSink
