"""Where compare mode's events come from: one finished recording read in chunks. No Textual here.

Compare mode plays two whole recordings, so it streams each file's events once into a
`DashboardState` and fetches a tick's expert counts by index when the state no longer holds
them. `chunks()` runs on a worker thread; `experts()` on the UI thread, with its own reader, so
the two never share a file position.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

import tracer
from tracer.events import ExpertsEvent, SessionHeader, StageEvent, TickEvent

CHUNK = 20_000  # events per chunk: big enough to load fast, small enough to show a first frame soon


class TraceSide:
    """One recording of a compare. Opening reads the header, so a bad file raises here."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._reader = tracer.open_trace(self.path)
        self.header: SessionHeader = self._reader.header
        self._seeker: Any = None

    def chunks(self) -> Iterator[list[Any]]:
        """Every event in file order, CHUNK at a time."""
        chunk: list[Any] = []
        for event in self._reader.events():
            chunk.append(event)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        yield chunk

    @property
    def problems(self) -> list[str]:
        return list(self._reader.problems)

    def experts(self, tick: int) -> np.ndarray | None:
        """Expert counts of `tick`, read through the trace index."""
        if self._seeker is None:
            self._seeker = tracer.open_trace(self.path)
        for event in self._seeker.events_from_tick(tick):
            if isinstance(event, ExpertsEvent) and event.tick == tick:
                return event.counts
            if isinstance(event, (TickEvent, ExpertsEvent, StageEvent)) and event.tick > tick:
                return None  # ticks are written in order: it is not in the file
        return None

    def close(self) -> None:
        for reader in (self._reader, self._seeker):
            if reader is not None:
                reader.close()
