"""Every message that crosses from a worker thread to the UI thread."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from tracer.events import SessionHeader
from tui.state import FrameData


class SourceUpdate(Message):
    """What one poll of the source brought: new blocks, the header once known, the source state."""

    def __init__(self, frames: list[FrameData], header: SessionHeader | None, status: str, done: bool):
        super().__init__()
        self.frames = frames
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


class SideUpdate(Message):
    """Compare mode: side `side`'s next events (0 = A, 1 = B): trace events of a finished
    recording, or `FrameData` blocks of a followed one. `status` is that side's state as the
    header shows it ("loading", "loaded, 1 damaged part(s) skipped", "live", "idle", "ended");
    `done` once nothing more will come."""

    def __init__(self, side: int, items: list[Any], done: bool, status: str):
        super().__init__()
        self.side = side
        self.items = items
        self.done = done
        self.status = status


class ComparisonReady(Message):
    """Compare mode: the whole-recording comparison (a `tracer.compare.Comparison`), or why not."""

    def __init__(self, comparison: Any, error: str = ""):
        super().__init__()
        self.comparison = comparison
        self.error = error
