"""The playback core: one app over N recordings, each read by a worker thread into its own state.

The dashboard (tui/app.py) is the one-recording case, compare (tui/compare_app.py) the
two-recording one, as toolong shows one file or several merged with one view. Both read their
sources with the same worker loop (back-pressure included), fetch the detail of the ticks in view
with `fetch_missing` (a split tick completed from the next frame, a heat span pinned), save marks
beside each trace, and draw one coalesced frame per change, pausing playback with a notification
when a frame fails to draw. What each app brings: its clock (a cursor over one recording, or
`LockStep` over two), its screen, and its own keys among the shared ones (tui/keys.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from textual import work
from textual.app import App
from textual.reactive import var
from textual.worker import get_current_worker

import tracer
from tracer.events import MarkEvent
from tui.gc_tuning import GcTuning
from tui.messages import PanelResized, SourceFailed, SourceUpdate
from tui.screens.help import HelpScreen
from tui.screens.mark import MarkScreen
from tui.source import POLL_BUDGET_S, Source, fetch_missing
from tui.state import DashboardState
from tui.widgets.panel import Frame

# Replay speeds, slowest first; None plays one tick per frame whatever the recorded timing.
SPEEDS: tuple[float | None, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, None)
DEFAULT_SPEED = SPEEDS.index(1.0)
FRAME_S = 1 / 30  # playing: frame interval, smooth enough, and leaves the UI thread room
POLL_S = 0.1  # how often an unchanged file is polled again (a live view lags under 250 ms)
CHUNKS_IN_FLIGHT = 2  # back-pressure, per recording: polls read but not yet ingested by the UI thread
BUSY_S = 0.5  # after a seek, a step or a played frame, the background loaders hold back for this long
BAD_STATES = {"truncated": "the trace file was truncated", "replaced": "the trace file was replaced"}


def speed_label(speed: float | None) -> str:
    return "max" if speed is None else f"{speed:g}x"


@dataclass(eq=False)
class Feed:
    """One recording of the app: where its frames come from, the state they go into, and how far
    reading has got (as the UI thread last heard)."""

    source: Source
    name: str = ""  # compare's "A" or "B", said with what is said about this recording
    state: DashboardState = field(default_factory=DashboardState)
    status: str = "loading"
    done: bool = False
    # A replay: read through its index in the background (paced, and "loading" until read to its
    # end). Else the recording is followed as it grows.
    replay: bool = field(init=False)
    slots: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(CHUNKS_IN_FLIGHT))

    def __post_init__(self) -> None:
        self.replay = self.source.layout() is not None

    def named(self, text: str, sep: str = ": ") -> str:
        """`text` about this recording: "B: text" in compare, the text alone when it is the only one."""
        return f"{self.name}{sep}{text}" if self.name else text

    def open(self) -> None:
        """What is known before any frame is read: the header, a replay's place for every tick,
        and the marks kept beside the trace."""
        if self.source.header is not None:
            self.state.set_header(self.source.header)
        layout = self.source.layout()
        if layout is not None:
            self.state.set_layout(layout)
        self.state.marks.extend(tracer.read_marks(self.source.path)[0])


class PlaybackApp(App[None]):
    """What the dashboard and compare do the same way. A subclass brings the clock (`_advance`, the
    seeking actions, `_position`), the screen (`_draw`) and its own keys."""

    # `var`, not `reactive`: a reactive on the app repaints the whole screen when it changes (a
    # full-screen update per step); the watchers ask for a frame that updates the panels instead.
    playing: var[bool] = var(False)  # the clock runs (live: following the end)
    speed_index: var[int] = var(DEFAULT_SPEED)
    status: var[str] = var("loading")

    NO_MARKS = "no marks in this recording"

    def __init__(self, feeds: Sequence[Feed], *, autoplay: bool) -> None:
        super().__init__()
        self.feeds = tuple(feeds)
        self.autoplay = autoplay
        self._wall = 0.0  # monotonic time the clock last moved, or was set
        self._frame_pending = False
        self._last_error = ""
        # Until when the loaders hold back (monotonic seconds): set on the UI thread, read by the
        # workers (a float assignment: no lock needed).
        self._busy_until = 0.0
        self._gc = GcTuning()  # see tui/gc_tuning.py: no 50-130 ms full collections mid-frame

    # -- lifecycle ----------------------------------------------------------------------------

    def on_mount(self) -> None:
        self._gc.apply()
        for feed in self.feeds:
            feed.open()
        self._clock = self.set_interval(FRAME_S, self._advance, pause=True)
        self._started()
        for index in range(len(self.feeds)):
            self._read_source(index)
        self._schedule_frame()

    def _started(self) -> None:
        """Mounted, the clock made, the sources about to be read."""
        raise NotImplementedError

    def on_unmount(self) -> None:
        self._gc.restore()

    def on_resize(self) -> None:
        self._schedule_frame()

    def on_panel_resized(self, message: PanelResized) -> None:
        self._schedule_frame()

    @work(thread=True, exit_on_error=False)
    def _read_source(self, index: int) -> None:
        """Poll one recording's source for as long as the app runs; only messages leave this thread.

        A replay read to its end is still polled: its source decodes the detail of the frames
        around the tick in view ahead of time. While the user plays or seeks, a replay's loader
        takes one frame at a time and pauses in between, leaving the interpreter to the UI thread.
        """
        feed = self.feeds[index]
        worker = get_current_worker()
        last_status = ""
        told_done = False
        while not worker.is_cancelled:
            busy = feed.replay and time.monotonic() < self._busy_until
            try:
                frames = feed.source.poll(0.0 if busy else POLL_BUDGET_S)
                status = feed.source.status()
            except Exception as exc:  # a bad trace must not take the app down
                self.post_message(SourceFailed(index, f"{type(exc).__name__}: {exc}"))
                return
            done = feed.source.done
            if frames or status != last_status or done != told_done:
                # Wait for the UI thread to catch up, but never past a cancel (the app quitting).
                while not feed.slots.acquire(timeout=POLL_S):
                    if worker.is_cancelled:
                        return
                self.post_message(SourceUpdate(index, frames, feed.source.header, status, done))
                last_status, told_done = status, done
            if busy or not frames:
                time.sleep(POLL_S)

    def on_source_update(self, message: SourceUpdate) -> None:
        feed = self.feeds[message.feed]
        ticks = feed.state.n_ticks
        try:
            if message.header is not None and feed.state.header is None:
                feed.state.set_header(message.header)
            for frame in message.frames:
                feed.state.ingest_frame(frame)
        finally:
            feed.slots.release()
        status = "loading" if feed.replay and not message.done else message.status
        if status in BAD_STATES and status != feed.status:
            text = feed.named(f"{BAD_STATES[status]}; showing what was read before")
            self.notify(text, severity="warning", timeout=10)
        ended = message.done and not feed.done
        feed.status, feed.done = status, message.done
        self._fed(feed, grew=feed.state.n_ticks != ticks, ended=ended)
        self._schedule_frame()

    def _fed(self, feed: Feed, *, grew: bool, ended: bool) -> None:
        """`feed` took an update: it `grew` by ticks, or `ended` (nothing more will come)."""
        raise NotImplementedError

    def on_source_failed(self, message: SourceFailed) -> None:
        self.status = "error"
        error = self.feeds[message.feed].named(message.error)
        self.notify(error, title="cannot read the trace", severity="error", timeout=10)

    def watch_status(self) -> None:
        self._schedule_frame()

    # -- playback -----------------------------------------------------------------------------

    def _run_clock(self, running: bool) -> None:
        self._reset_clock()
        if running:
            self._clock.resume()
        else:
            self._clock.pause()

    def _reset_clock(self) -> None:
        """Play on from where the clock stands now."""
        self._wall = time.monotonic()

    def _elapsed(self) -> float:
        """Wall seconds since the clock last moved; it moves now."""
        now = time.monotonic()
        elapsed, self._wall = now - self._wall, now
        return elapsed

    def _hold_loaders(self) -> None:
        self._busy_until = time.monotonic() + BUSY_S

    def _advance(self) -> None:
        """One frame of play: move the clock on by the wall time since the last."""
        raise NotImplementedError

    def watch_speed_index(self) -> None:
        self._reset_clock()
        self._schedule_frame()

    def action_faster(self) -> None:
        self.speed_index = min(self.speed_index + 1, len(SPEEDS) - 1)

    def action_slower(self) -> None:
        self.speed_index = max(self.speed_index - 1, 0)

    def playback_label(self) -> str:
        return f"{'▶' if self.playing else '⏸'} {speed_label(SPEEDS[self.speed_index])}"

    def action_seek_fraction(self, fraction: float) -> None:
        """Go to `fraction` (0..1) of the way through the recording (a click on the scrubber)."""
        raise NotImplementedError

    # -- marks --------------------------------------------------------------------------------

    def _position(self) -> float:
        """Where the clock stands, in the units of `_position_of`."""
        raise NotImplementedError

    def _position_of(self, feed: Feed, index: int) -> float:
        """Where the clock stands when `feed` shows its tick `index`."""
        raise NotImplementedError

    def _mark_positions(self) -> list[tuple[float, Feed, MarkEvent]]:
        """Every recording's marks as (position, recording, mark), in order. A mark sits where its
        recording shows its tick."""
        out = []
        for feed in self.feeds:
            state = feed.state
            if state.n_ticks:
                out += [(self._position_of(feed, state.index_of_tick(m.tick)), feed, m) for m in state.marks]
        return sorted(out, key=lambda m: m[0])

    def action_mark(self, direction: int) -> None:
        marks = self._mark_positions()
        if not marks:
            self.notify(self.NO_MARKS)
            return
        here = self._position()
        # a hair past the position: a mark the clock sits on is not the next one
        targets = [m[0] for m in marks if (m[0] > here + 1e-9 if direction > 0 else m[0] < here - 1e-9)]
        if targets:
            position = targets[0] if direction > 0 else targets[-1]
            self._go_to_marks(position, [(feed, mark) for at, feed, mark in marks if at == position])

    def _go_to_marks(self, position: float, marks: list[tuple[Feed, MarkEvent]]) -> None:
        """Move the clock to `position`, where `marks` are, and say what they note."""
        raise NotImplementedError

    def _mark_target(self) -> tuple[Feed, int]:
        """Where `m` puts a mark: which recording, at which tick index."""
        raise NotImplementedError

    def action_add_mark(self) -> None:
        feed, index = self._mark_target()  # where `m` was pressed, even if the view moves on meanwhile
        state = feed.state
        if not state.n_ticks or not os.path.isfile(feed.source.path):
            self.notify("marks need a recorded tick in a trace file", severity="warning")
            return
        tick, t_s = state.tick_number(index), state.time_at(index)
        mark = MarkEvent(t_ns=state.t0_ns + round(t_s * 1e9), tick=tick, text="")
        where = feed.named(f"tick {tick} ({t_s:.2f} s)", " ")
        self.push_screen(MarkScreen(where), lambda text: self._save_mark(feed, mark, text))

    def _save_mark(self, feed: Feed, mark: MarkEvent, text: str | None) -> None:
        if not text:
            return
        mark = MarkEvent(t_ns=mark.t_ns, tick=mark.tick, text=text)
        try:
            # Beside the trace, never in it: a trace file is append-only and may be someone else's.
            saved = tracer.add_mark(feed.source.path, mark)
        except (OSError, ValueError) as exc:
            self.notify(f"mark not saved: {exc}", severity="error")
            return
        feed.state.marks.append(mark)
        self.notify(feed.named(f"mark saved in {os.path.basename(saved)}"), timeout=3)
        self._schedule_frame()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- frames -------------------------------------------------------------------------------

    def _schedule_frame(self) -> None:
        """Coalesce every change made while handling one message into one frame."""
        if not self._frame_pending:
            self._frame_pending = True
            self.call_later(self._render_frame)

    def _render_frame(self) -> None:
        self._frame_pending = False
        try:
            self._draw()
        except Exception as exc:  # one bad tick must not end the session: pause and say so
            self.playing = False
            error = f"{self._frame_name()} failed: {type(exc).__name__}: {exc}"
            if error != self._last_error:
                self._last_error = error
                self.log.error(error)
                self.notify(error, title="paused", severity="error", timeout=10)

    def _draw(self) -> None:
        """Show the current frame on the screen, once it is mounted."""
        raise NotImplementedError

    def _frame_name(self) -> str:
        """The frame being drawn, for the notification when it fails."""
        raise NotImplementedError

    def _frame(self, feed: Feed, index: int, span: int = 1) -> Frame:
        """`feed` at tick `index`, as the panels draw it: the expert counts (over `span` ticks, the
        [ticks, layers, experts] stack of those held) and stage cells, read back from the trace
        when the state does not hold them."""
        state, source = feed.state, feed.source
        if not state.n_ticks:
            return Frame(state, index, heat_span=span)
        lo = max(index - span + 1, 0)
        state.pin(lo, index)
        fetch_missing(state, source, lo, index)
        source.focus(state.tick_number(index))
        detail = state.detail(index)
        stages = detail.stages if detail is not None else None
        if span > 1:
            experts = state.span_experts(lo, index)
        else:
            experts = detail.experts if detail is not None else None
        return Frame(state, index, experts, stages, span)
