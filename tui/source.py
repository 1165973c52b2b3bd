"""Where the dashboard's events come from: no Textual in here.

Every source answers `poll()` with the events that are new since the last call, so a replay and a
live tail share one data path into `DashboardState`: a replay hands over the finished file in
chunks (and says `done` at its end), a live source hands over what the recorder appended. Only a
replay can also fetch one tick's bulky detail from the trace index when the state no longer holds
it. Sources are polled from one worker thread; `detail()` is called from the UI thread, so a
replay keeps a second reader for it rather than sharing the streaming one.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator, Protocol

import numpy as np

import tracer
from tracer.events import ExpertsEvent, SessionHeader, StageEvent, TickEvent

TICKED = (TickEvent, ExpertsEvent, StageEvent)

# Events handed over per replay poll: large enough to load fast, small enough that the first
# frame shows while the rest of a big file is still loading.
REPLAY_CHUNK = 20_000

# A live file that has not grown for this long is shown as idle.
IDLE_AFTER_S = 2.0


class Source(Protocol):
    path: str
    header: SessionHeader | None
    done: bool  # no more events will come (a finished replay)

    def poll(self) -> list[Any]: ...

    def status(self) -> str: ...

    def detail(self, tick: int) -> tuple[np.ndarray | None, StageEvent | None] | None: ...

    def close(self) -> None: ...


class MemorySource:
    """Events already in memory (a ListRecorder's): for tests, and for callers that hold them."""

    def __init__(self, header: SessionHeader, events: list[Any], path: str = "<memory>") -> None:
        self.path = path
        self.header = header
        self._events = events
        self._pos = 0
        self.done = False

    def poll(self) -> list[Any]:
        chunk = self._events[self._pos : self._pos + REPLAY_CHUNK]
        self._pos += len(chunk)
        self.done = self._pos >= len(self._events)
        return chunk

    def status(self) -> str:
        return "loaded"

    def detail(self, tick: int) -> tuple[np.ndarray | None, StageEvent | None] | None:
        experts = next(
            (e.counts for e in self._events if isinstance(e, ExpertsEvent) and e.tick == tick), None
        )
        stages = next(
            (e for e in self._events if isinstance(e, StageEvent) and e.tick == tick), None
        )
        return experts, stages

    def close(self) -> None:
        pass


class ReplaySource:
    """A finished (or crashed) recording read from the start, with per-tick seeks by index.

    Opening reads the header, so a missing or malformed file raises `TraceFormatError` (or
    `OSError`) here, before any terminal is taken over.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._reader = tracer.open_trace(self.path)
        self.header = self._reader.header
        self._events: Iterator[Any] = iter(self._reader.events())
        self._seeker: Any = None
        self.done = False

    def poll(self) -> list[Any]:
        chunk: list[Any] = []
        for event in self._events:
            chunk.append(event)
            if len(chunk) >= REPLAY_CHUNK:
                return chunk
        self.done = True
        return chunk

    def status(self) -> str:
        problems = getattr(self._reader, "problems", None)
        return f"loaded, {len(problems)} damaged part(s) skipped" if problems else "loaded"

    def detail(self, tick: int) -> tuple[np.ndarray | None, StageEvent | None] | None:
        if self._seeker is None:
            self._seeker = tracer.open_trace(self.path)
        experts = stages = None
        for event in self._seeker.events_from_tick(tick):
            if isinstance(event, TICKED) and event.tick > tick:
                break  # ticks are written in order: the wanted one is behind us
            if isinstance(event, ExpertsEvent) and event.tick == tick:
                experts = event.counts
            elif isinstance(event, StageEvent) and event.tick == tick:
                stages = event
        return experts, stages

    def close(self) -> None:
        for reader in (self._reader, self._seeker):
            close = getattr(reader, "close", None)
            if close is not None:
                close()


class LiveSource:
    """A trace being written: each poll returns what was appended since the previous one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._tail = tracer.TraceTail(self.path)
        self.header: SessionHeader | None = None
        self.done = False
        self._last_growth = time.monotonic()

    def poll(self) -> list[Any]:
        events = self._tail.poll()
        if self.header is None:
            self.header = self._tail.header
        if events:
            self._last_growth = time.monotonic()
        return events

    def status(self) -> str:
        """One of: waiting, live, idle, ended (the writer closed it), truncated, replaced."""
        state = self._tail.state
        if state != "ok":
            return state
        if self._tail.finished:
            return "ended"
        return "idle" if time.monotonic() - self._last_growth > IDLE_AFTER_S else "live"

    def detail(self, tick: int) -> tuple[np.ndarray | None, StageEvent | None] | None:
        # A growing file's index is not final; the state's recent-detail cache is all there is.
        return None

    def close(self) -> None:
        close = getattr(self._tail, "close", None)
        if close is not None:
            close()


def open_source(path: str | os.PathLike[str], mode: str) -> Source:
    """The source for `mode` ("live" or "replay") on `path`."""
    if mode == "live":
        return LiveSource(path)
    if mode == "replay":
        return ReplaySource(path)
    raise ValueError(f"unknown dashboard mode {mode!r} (live or replay)")
