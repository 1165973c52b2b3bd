"""Where compare mode's events come from: one recording, finished or still being written. No Textual here.

A finished recording (the writer closed it: footer and index intact) is streamed once, in chunks,
into a `DashboardState`. Any other trace may still be growing, so it is *followed* the way live
mode follows one, through the dashboard's `LiveSource` (a `tracer.TraceTail` underneath): each
poll brings what was appended since the last. A recording whose writer died never gets its footer:
once it has not grown for `stopped_after_s` it counts as ended without one (`done`, so compare mode
shows its final figures), and is still followed in case it was only a long pause.

`chunks()` / `poll()` run on a worker thread; `detail()` on the UI thread with its own file
handle, so the two never share a file position.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

import numpy as np

import tracer
from tracer.events import ExpertsEvent, SessionHeader, StageEvent
from tui.source import LiveSource
from tui.state import FrameData

CHUNK = 20_000  # events per chunk: big enough to load fast, small enough to show a first frame soon
FINAL_STATES = ("ended", "truncated", "replaced")  # a followed trace that will not grow again
# A followed trace that has not grown for this long is taken to have stopped without its footer
# (the writer crashed or was killed). A live recorder flushes every 0.1 s while it has ticks; only an
# engine with no requests at all stays this quiet, and it is read again the moment it grows.
STOPPED_AFTER_S = 10.0
STOPPED = "idle (no footer: recording stopped uncleanly?)"


class TraceSide:
    """One recording of a compare. Opening reads the header, so a bad file raises here."""

    def __init__(self, path: str | os.PathLike[str], *, stopped_after_s: float = STOPPED_AFTER_S) -> None:
        self.path = os.fspath(path)
        self.stopped_after_s = stopped_after_s
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
        """"loaded" (with any damage skipped), or a followed trace's live state: live, idle, ended…
        or STOPPED once the file has not changed for `stopped_after_s`."""
        if self._live is not None:
            status = self._live.status()
            if status in ("live", "idle") and self._quiet_s() >= self.stopped_after_s:
                return STOPPED
            return status
        problems = self._reader.problems
        return f"loaded, {len(problems)} damaged part(s) skipped" if problems else "loaded"

    def _quiet_s(self) -> float:
        """Seconds since the file last changed. The file's own time, not when it was first polled:
        a recording that crashed long before it was opened reads as stopped at once."""
        try:
            return time.time() - os.stat(self.path).st_mtime
        except OSError:
            return 0.0  # gone or replaced: the tail says which

    @property
    def done(self) -> bool:
        """Nothing more is expected: a finished trace (once read), or a followed one that ended or
        stopped. A stopped one can still grow again (`finished` says whether to keep following)."""
        return self._live is None or self.status() in (*FINAL_STATES, STOPPED)

    @property
    def finished(self) -> bool:
        """Nothing more can come: a finished trace, or a followed one that ended or was damaged."""
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
