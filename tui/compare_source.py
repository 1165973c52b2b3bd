"""Where compare mode's frames come from: one recording, finished or still being written. No Textual here.

Each side is a dashboard `Source`, read as the dashboard reads one. A finished recording (the
writer closed it: footer and index intact) is a replay: read through its index in the background,
each tick's detail fetched when it is in view. Any other trace may still be growing, so it is
*followed* the way live mode follows one. A recording whose writer died never gets its footer:
once it has not grown for `stopped_after_s` it counts as ended without one (`done`, so compare mode
shows its final figures), and is still followed in case it was only a long pause.
"""

from __future__ import annotations

import os
import time

import numpy as np

import tracer
from tracer.events import SessionHeader
from tui.source import POLL_BUDGET_S, LiveSource, ReplaySource
from tui.state import FrameData

FINAL_STATES = ("ended", "truncated", "replaced")  # a followed trace that will not grow again
# A followed trace that has not grown for this long is taken to have stopped without its footer
# (the writer crashed or was killed). A live recorder flushes every 0.1 s while it has ticks; only an
# engine with no requests at all stays this quiet, and it is read again the moment it grows.
STOPPED_AFTER_S = 10.0
STOPPED = "idle (no footer: recording stopped uncleanly?)"


class TraceSide:
    """One recording of a compare, as a `Source`. Opening reads the header, so a bad file raises here."""

    def __init__(self, path: str | os.PathLike[str], *, stopped_after_s: float = STOPPED_AFTER_S) -> None:
        self.path = os.fspath(path)
        self.stopped_after_s = stopped_after_s
        with tracer.open_trace(self.path) as reader:
            self.header: SessionHeader | None = reader.header
            self.following = not reader.closed_cleanly
        self._source: LiveSource | ReplaySource = LiveSource(self.path) if self.following else ReplaySource(self.path)
        # Nothing more is expected, as of the last poll: a finished trace read to its end, or a
        # followed one that ended or stopped (a stopped one is still followed: it may grow again).
        self.done = False

    def layout(self) -> np.ndarray | None:
        return self._source.layout()

    def poll(self, budget_s: float = POLL_BUDGET_S) -> list[FrameData]:
        frames = self._source.poll(budget_s)
        self.done = self.status() in (*FINAL_STATES, STOPPED) if self.following else self._source.done
        return frames

    def focus(self, tick: int) -> None:
        self._source.focus(tick)

    def fetch(self, tick: int, *, rows: bool = True) -> FrameData | None:
        return self._source.fetch(tick, rows=rows)

    def status(self) -> str:
        """The source's state ("loaded", with any damage skipped; a followed trace's live, idle,
        ended…), or STOPPED once a followed file has not changed for `stopped_after_s`."""
        status = self._source.status()
        if self.following and status in ("live", "idle") and self._quiet_s() >= self.stopped_after_s:
            return STOPPED
        return status

    def _quiet_s(self) -> float:
        """Seconds since the file last changed. The file's own time, not when it was first polled:
        a recording that crashed long before it was opened reads as stopped at once."""
        try:
            return time.time() - os.stat(self.path).st_mtime
        except OSError:
            return 0.0  # gone or replaced: the tail says which

    def close(self) -> None:
        self._source.close()
