"""Every message that crosses from a worker thread to the UI thread."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from tracer.events import SessionHeader


class SourceUpdate(Message):
    """What one poll of the source brought: new events, the header once known, the source state."""

    def __init__(self, events: list[Any], header: SessionHeader | None, status: str, done: bool):
        super().__init__()
        self.events = events
        self.header = header
        self.status = status
        self.done = done


class SourceFailed(Message):
    """The source raised while reading; the app keeps running and says why."""

    def __init__(self, error: str):
        super().__init__()
        self.error = error


class PanelResized(Message):
    """A panel changed size: the frame it drew no longer fits. Coalesced by the app."""
