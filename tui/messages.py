"""Every message that crosses from a worker thread to the UI thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from tracer.events import SessionHeader
from tui.state import FrameData


# eq=False: a message is an event, compared (and hashed) by identity, as Textual's own are.
@dataclass(eq=False)
class SourceUpdate(Message):
    """What one poll of recording `feed` (the app's index of it) brought: new blocks, the header
    once known, the source's state as the header shows it ("loaded", "live", "ended"…), and
    `done` once nothing more will come."""

    feed: int
    frames: list[FrameData]
    header: SessionHeader | None
    status: str
    done: bool


@dataclass(eq=False)
class SourceFailed(Message):
    """Reading recording `feed` raised; the app keeps running and says why."""

    feed: int
    error: str


class PanelResized(Message):
    """A panel changed size: the frame it drew no longer fits. Coalesced by the app."""


@dataclass(eq=False)
class ComparisonReady(Message):
    """Compare mode: the whole-recording comparison (a `tracer.compare.Comparison`), or why not."""

    comparison: Any
    error: str = ""
