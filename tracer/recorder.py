"""The one interface the engine and the load generator record through."""

from __future__ import annotations

from typing import Protocol

from tracer.events import Event


class Recorder(Protocol):
    """Takes events from hot loops. `emit` must never block on I/O."""

    def emit(self, event: Event) -> None: ...


class NullRecorder:
    """Records nothing: for running the engine untraced."""

    def emit(self, event: Event) -> None:
        pass


class ListRecorder:
    """Keeps events in memory: for tests and for callers that want them directly."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)
