"""Compare mode: two recordings in one app, side by side, playing in lock-step.

The dashboard's playback core over two recordings (tui/playback.py), one `DashboardState` and one
column of the dashboard's panels each; `LockStep` turns one position into each side's current
tick. A finished recording is read as a replay reads it, a growing one followed as live mode
follows it. The whole-recording delta table is computed by another worker from `tracer.load`, so a
big pair of recordings shows its panels long before its table; while a side grows it is recomputed
now and then, and once more when that side ends.
"""

from __future__ import annotations

import os
import time

from textual import work
from textual.binding import Binding
from textual.dom import DOMNode
from textual.screen import Screen

import tracer
from tracer.compare import Comparison, Costing, compare, config_diff
from tracer.events import MarkEvent
from tracer.report import trace_names
from tui import keys
from tui.compare_source import TraceSide
from tui.lockstep import LockStep
from tui.messages import ComparisonReady
from tui.playback import SPEEDS, Feed, PlaybackApp
from tui.screens.compare import SIDES, CompareScreen, SidePanels
from tui.state import DashboardState
from tui.widgets.delta import DeltaPanel
from tui.widgets.header import Watching

SCRUB_STEPS = 1000  # time alignment: positions the scrubber resolves
# A growing side's delta table is recomputed at most this often: `tracer.load` reads the whole file.
RECOMPARE_S = 5.0
SIDE_NAMES = ("A", "B")
# each side's marks on the shared scrubber get a colour of their own, so a note says whose it is
SIDE_STYLES = {"A": "bold cyan", "B": "bold magenta"}


class CompareApp(PlaybackApp):
    """Two replays, one clock. `t` switches between aligning by time and by tick."""

    CSS_PATH = ["tickscope.tcss", "compare.tcss"]
    TITLE = "tickscope compare"
    # The compare keys come before home/end: an 80-column footer shows only the first few.
    BINDINGS = [
        *keys.PLAY,
        *keys.step("Back", "On"),
        Binding("d", "toggle_delta", "Delta table"),
        Binding("p", "cycle_panels", "Panels"),
        Binding("t", "toggle_align", "Align time/tick"),
        *keys.mark("Add mark (focused side, else A)"),
        *keys.SPEED,
        *keys.JUMP,
    ]
    NO_MARKS = "no marks in either recording"

    def __init__(
        self, a: TraceSide, b: TraceSide, *, autoplay: bool = True, align: str = "time", costing: Costing | None = None
    ) -> None:
        super().__init__([Feed(side, name) for side, name in zip((a, b), SIDE_NAMES)], autoplay=autoplay)
        self.costing = costing  # what the delta table's cost rows are costed on
        self.names = trace_names(a.path, b.path)
        self.lockstep = LockStep(align=align)
        self.compare_screen = CompareScreen()
        self.comparison: Comparison | None = None
        self._caught_up = [False, False]  # read to the end the file had (a growing one goes on)
        self._comparing = False
        self._compared_at = 0.0  # monotonic time the last comparison started
        self._stale = False  # a side grew (or ended) since the last comparison started

    @property
    def states(self) -> tuple[DashboardState, DashboardState]:
        a, b = self.feeds
        return a.state, b.state

    def get_default_screen(self) -> Screen[None]:
        return self.compare_screen

    def _started(self) -> None:
        self._start_comparison()

    def _fed(self, feed: Feed, *, grew: bool, ended: bool) -> None:
        side = self.feeds.index(feed)
        if feed.replay:
            self._caught_up[side] = feed.done
        else:
            self._caught_up[side] = True  # each poll reads to the end the file has now
            self._stale = self._stale or grew or ended
        if all(self._caught_up):
            if self.status == "loading":
                self.playing = self.autoplay
            self.status = "loaded" if all(f.done for f in self.feeds) else "following"
        self._maybe_recompare()

    # -- the delta table ----------------------------------------------------------------------

    @work(thread=True, exit_on_error=False)
    def _compute_comparison(self) -> None:
        paths = [f.source.path for f in self.feeds]
        if not all(os.path.isfile(p) for p in paths):
            self.post_message(ComparisonReady(None, "the delta table needs both recordings as files"))
            return
        try:
            a, b = (tracer.load(p) for p in paths)
            comparison = compare(a, b, a_name=self.names[0], b_name=self.names[1], costing=self.costing)
            self.post_message(ComparisonReady(comparison))
        except Exception as exc:  # shown in the panel; the side-by-side view still works
            self.post_message(ComparisonReady(None, f"cannot compare: {type(exc).__name__}: {exc}"))

    def _start_comparison(self) -> None:
        self._comparing, self._stale = True, False
        self._compared_at = time.monotonic()
        self._compute_comparison()

    def _maybe_recompare(self) -> None:
        """A growing side changes the figures: compare again, one worker at a time, and not more
        often than RECOMPARE_S unless every side has ended (the final figures, at once)."""
        if self._comparing or not self._stale:
            return
        if all(f.done for f in self.feeds) or time.monotonic() - self._compared_at >= RECOMPARE_S:
            self._start_comparison()
        else:
            self.set_timer(RECOMPARE_S, self._maybe_recompare)

    def on_comparison_ready(self, message: ComparisonReady) -> None:
        self._comparing = False
        self.comparison = message.comparison
        delta = self.compare_screen.query_one("#delta", DeltaPanel)
        growing = [f.name for f in self.feeds if not f.replay and not f.done]
        delta.border_title = (
            "delta over the whole recordings (d: toggle)"
            if not growing
            else (f"delta so far: {' and '.join(growing)} still recording (d: toggle)")
        )
        delta.show(message.comparison, message.error)
        self._maybe_recompare()

    # -- playback -----------------------------------------------------------------------------

    def watch_playing(self, playing: bool) -> None:
        self._run_clock(playing)
        self._schedule_frame()

    def _advance(self) -> None:
        self._hold_loaders()
        # At the end, a growing recording holds the clock there to follow it; else playing stops.
        ended = not self.lockstep.advance(*self.states, self._elapsed(), SPEEDS[self.speed_index])
        if ended and all(f.done for f in self.feeds):
            self.playing = False
        self._schedule_frame()

    def _seek(self, position: float) -> None:
        self._hold_loaders()
        self.lockstep.seek(*self.states, position)
        self._schedule_frame()

    def action_toggle_play(self) -> None:
        if not self.playing and self.lockstep.position >= self.lockstep.length(*self.states):
            self._seek(0.0)  # play at the end starts over
        self.playing = not self.playing

    def action_step(self, delta: int) -> None:
        self.playing = False
        self._hold_loaders()
        self.lockstep.step(*self.states, delta)
        self._schedule_frame()

    def action_jump_start(self) -> None:
        self._seek(0.0)

    def action_jump_end(self) -> None:
        self._seek(self.lockstep.length(*self.states))

    def action_seek_fraction(self, fraction: float) -> None:
        self._seek(fraction * self.lockstep.length(*self.states))

    def action_toggle_align(self) -> None:
        self.lockstep.toggle(*self.states)
        self.notify(f"aligned by {self.lockstep.align}", timeout=2)
        self._schedule_frame()

    def action_toggle_delta(self) -> None:
        self.compare_screen.toggle_delta()

    def action_cycle_panels(self) -> None:
        if self.compare_screen.cycle_panels() is None:
            self.notify("every panel is shown at this size", timeout=2)

    # -- marks --------------------------------------------------------------------------------

    def _position(self) -> float:
        return self.lockstep.position

    def _position_of(self, feed: Feed, index: int) -> float:
        """A tick's ordinal (tick alignment), or the time it ended."""
        return float(index) if self.lockstep.align == "tick" else feed.state.time_at(index)

    def _go_to_marks(self, position: float, marks: list[tuple[Feed, MarkEvent]]) -> None:
        feed, mark = marks[0]
        self.playing = False
        self._seek(position)
        self.notify(f"{feed.name} tick {mark.tick}: {mark.text}", timeout=3)

    def _mark_target(self) -> tuple[Feed, int]:
        """The side holding the focus (Tab or a click on it), A when neither does, at its tick."""
        node: DOMNode | None = self.focused
        while node is not None and not isinstance(node, SidePanels):
            node = node.parent
        side = SIDES.index(node.side) if isinstance(node, SidePanels) else 0
        return self.feeds[side], self.lockstep.indices(*self.states)[side]

    # -- frames -------------------------------------------------------------------------------

    def playback_label(self) -> str:
        return f"{super().playback_label()} · by {self.lockstep.align}"

    def _frame_name(self) -> str:
        return "compare frame"

    def _draw(self) -> None:
        if not self.compare_screen.is_mounted:
            return
        a, b = self.states
        diffs = None
        if a.header is not None and b.header is not None:
            diffs = config_diff(a.header.config or {}, b.header.config or {})
        self.compare_screen.show_header(self.names, diffs, self.status)
        indices = self.lockstep.indices(a, b)
        playback = self.playback_label()
        frames = [self._frame(feed, index) for feed, index in zip(self.feeds, indices)]
        watching = [Watching(feed.source.path, feed.name, feed.status, playback) for feed in self.feeds]
        self.compare_screen.show_frame(frames, watching, self._scrub(indices))

    def _scrub(self, indices: tuple[int, int]) -> tuple[int, int, list[tuple[int, str]], str]:
        """Scrubber position, total, each side's mark positions and the label, in the alignment's
        own units (tick ordinals, or SCRUB_STEPS steps of the time line)."""
        a, b = self.states
        ls = self.lockstep
        labels = []
        for feed, index in zip(self.feeds, indices):
            labels.append(
                f"{feed.name} tick {feed.state.tick_number(index)}" if feed.state.n_ticks else f"{feed.name} —"
            )
        marks = self._mark_positions()
        if ls.align == "tick":
            total = max(a.n_ticks, b.n_ticks)
            label = f"tick #{int(ls.position)} · " + " · ".join(labels)
            return int(ls.position), total, [(int(p), SIDE_STYLES[feed.name]) for p, feed, _ in marks], label
        length = ls.length(a, b)
        scale = (SCRUB_STEPS - 1) / length if length > 0 else 0.0
        label = f"{ls.position:.2f}/{length:.2f}s · " + " · ".join(labels)
        ticks = [(round(p * scale), SIDE_STYLES[feed.name]) for p, feed, _ in marks]
        return round(ls.position * scale), SCRUB_STEPS, ticks, label


def run_compare(a: str, b: str, *, align: str = "time", costing: Costing | None = None) -> None:
    """Open two recordings side by side, the delta table costed as `costing` asks. Both are opened
    first, so a missing or malformed file raises (`TraceFormatError`, `OSError`) before the terminal
    is taken over."""
    sides = [TraceSide(a)]
    try:
        sides.append(TraceSide(b))
        CompareApp(sides[0], sides[1], align=align, costing=costing).run()
    finally:
        for side in sides:
            side.close()
