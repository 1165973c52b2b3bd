"""Where compare mode's events come from: one recording, finished or still being written. No Textual here.

A finished recording (the writer closed it: footer and index intact) is streamed once, in chunks,
into a `DashboardState`. Any other trace may still be growing, so it is *followed* the way live
mode follows one, through the dashboard's `LiveSource` (a `tracer.TraceTail` underneath): each
poll brings what was appended since the last. A recording whose writer died is followed too; it
simply stops growing and reads as "idle".

`chunks()` / `poll()` run on a worker thread; `detail()` on the UI thread with its own file
handle, so the two never share a file position.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

import tracer
from tracer.events import ExpertsEvent, SessionHeader, StageEvent
from tui.source import LiveSource
from tui.state import FrameData

CHUNK = 20_000  # events per chunk: big enough to load fast, small enough to show a first frame soon
FINAL_STATES = ("ended", "truncated", "replaced")  # a followed trace that will not grow again


class TraceSide:
    """One recording of a compare. Opening reads the header, so a bad file raises here."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._reader = tracer.open_trace(self.path)
        self.header: SessionHeader = self._reader.header
        self.following = not self._reader.closed_cleanly
        self._live = LiveSource(self.path) if self.following else None
        if self.following:
            self._reader.close()  # the header was all it was opened for
        self._seeker: Any = None

    def chunks(self) -> Iterator[list[Any]]:
        """A finished recording's events in file order, CHUNK at a time."""
        chunk: list[Any] = []
        for event in self._reader.events():
            chunk.append(event)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        yield chunk

    def poll(self) -> list[FrameData]:
        """A followed recording: what was appended since the previous poll."""
        assert self._live is not None, "poll() follows a growing trace; chunks() reads a finished one"
        return self._live.poll()

    def status(self) -> str:
        """"loaded" (with any damage skipped), or a followed trace's live state: live, idle, ended…"""
        if self._live is not None:
            return self._live.status()
        problems = self._reader.problems
        return f"loaded, {len(problems)} damaged part(s) skipped" if problems else "loaded"

    @property
    def done(self) -> bool:
        """Nothing more will come: a finished trace (once read), or a followed one that ended."""
        return self._live is None or self._live.status() in FINAL_STATES

    def detail(self, tick: int) -> tuple[np.ndarray | None, StageEvent | None]:
        """Expert counts and stage cells of `tick`, read again from the trace (UI thread)."""
        if self._live is not None:
            return self._live.detail(tick) or (None, None)
        if self._seeker is None:
            self._seeker = tracer.open_trace(self.path)
        experts = stages = None
        for event in self._seeker.events_for_ticks(tick, tick):
            if isinstance(event, ExpertsEvent) and event.tick == tick:
                experts = event.counts
            elif isinstance(event, StageEvent) and event.tick == tick:
                stages = event
        return experts, stages

    def close(self) -> None:
        for reader in (self._reader, self._seeker, self._live):
            if reader is not None:
                reader.close()
