"""The compare screen: two recordings side by side, the same panels for each, and the delta table.

Each side holds every panel of the registry. What fits depends on the terminal's height: on a
short terminal a side shows the panels that always show (the throughput chart) and one more, on a
taller one the heatmap too; `p` cycles which one. On a roomy terminal, or a tall one with the delta
table hidden, every panel is shown. The screen decides, and marks the panels to show `-shown`.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from tracer.compare import ConfigDifference
from tui.panels import PANELS
from tui.widgets.controls import ReplayControls, Scrubber
from tui.widgets.delta import CompareHeader, DeltaPanel
from tui.widgets.header import TraceHeader, Watching
from tui.widgets.panel import Frame, show_panels

SIDES = ("a", "b")
TALL_ROWS = 40  # from here the heatmap always shows (the screen's -tall breakpoint)
TALL_KEEPS = "experts"  # that panel: out of the cycle on a tall terminal
ROOMY_ROWS = 56  # from here every panel shows, the delta table too


class SidePanels(Vertical):
    """Every panel of one side, the dashboard's own, compact.

    Focusable (Tab, or a click), so that `m` knows which recording a new mark belongs to.
    """

    can_focus = True

    def __init__(self, side: str) -> None:
        super().__init__(id=f"side-{side}", classes="side")
        self.side = side
        self.panels = {
            panel.key: panel.make(True, id=f"{side}-{panel.key}", classes=f"panel side-{panel.key}") for panel in PANELS
        }

    def compose(self) -> ComposeResult:
        yield TraceHeader(classes="side-header")
        yield from self.panels.values()

    def show(self, frame: Frame, watching: Watching) -> None:
        self.query_one(TraceHeader).show(watching, frame.state.header)
        show_panels(self.panels.values(), frame)


class CompareScreen(Screen[None]):
    """Mounted once; `show_frame` updates both sides, the header and the scrubber in place."""

    AUTO_FOCUS = ""  # nothing focused at start: the playback keys are the app's, marks go to A
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (150, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (TALL_ROWS, "-tall")]

    def __init__(self) -> None:
        super().__init__()
        self.sides = [SidePanels(side) for side in SIDES]
        self.turn = next(panel.key for panel in PANELS if panel.cycles)  # the cycled panel shown, as `p` left it
        self._has_stages = False

    def compose(self) -> ComposeResult:
        yield CompareHeader(id="compare-header")
        with Horizontal(id="sides"):
            yield from self.sides
        delta = DeltaPanel(id="delta", classes="panel")
        delta.border_title = "delta over the whole recordings (d: toggle)"
        yield delta
        yield ReplayControls(id="controls")
        yield Footer()

    def on_resize(self) -> None:
        self._update_panels()

    def toggle_delta(self) -> None:
        self.toggle_class("show-delta")
        self._update_panels()

    def _roomy(self) -> bool:
        # On a tall terminal, `d` hides the delta table: the room it leaves fits every panel.
        height = self.size.height
        return height >= ROOMY_ROWS or (height >= TALL_ROWS and self.has_class("show-delta"))

    def _kept(self) -> set[str]:
        """The panels shown whatever `p` chose, at this size."""
        kept = {panel.key for panel in PANELS if not panel.cycles}
        return kept | {TALL_KEEPS} if self.size.height >= TALL_ROWS else kept

    def _available(self) -> list[str]:
        """The panels these recordings have something for."""
        return [panel.key for panel in PANELS if self._has_stages or not panel.needs_stages]

    def panel_cycle(self) -> tuple[str, ...]:
        """The panels `p` goes through at this size: none when every panel is shown."""
        if self._roomy():
            return ()
        kept = self._kept()
        return tuple(key for key in self._available() if key not in kept)

    def _shown(self) -> set[str]:
        if self._roomy():
            return set(self._available())
        cycle = self.panel_cycle()
        # A panel not in this size's cycle ("experts" on a tall terminal, where the heatmap is
        # always there) stands for the cycle's first.
        return self._kept() | ({self.turn if self.turn in cycle else cycle[0]} if cycle else set())

    def _update_panels(self) -> None:
        self.set_class(self._roomy(), "-roomy")
        shown = self._shown()
        for side in self.sides:
            for key, panel in side.panels.items():
                panel.set_class(key in shown, "-shown")

    def cycle_panels(self) -> str | None:
        """Show the next panel; returns its key, or None when all are shown already."""
        cycle = self.panel_cycle()
        if not cycle:
            return None
        at = cycle.index(self.turn) if self.turn in cycle else 0  # that stood for the first: on to the second
        self.turn = cycle[(at + 1) % len(cycle)]
        self._update_panels()
        return self.turn

    def show_header(self, names: tuple[str, str], diffs: tuple[ConfigDifference, ...] | None, status: str) -> None:
        self.query_one(CompareHeader).show(names[0], names[1], diffs, status)

    def show_frame(
        self,
        frames: Sequence[Frame],
        watching: Sequence[Watching],
        scrub: tuple[int, int, list[tuple[int, str]], str],
    ) -> None:
        """Update both sides and the scrubber; exceptions propagate so the app can pause."""
        has_stages = any(f.state.has_stages for f in frames)
        if has_stages != self._has_stages:
            self._has_stages = has_stages
            self._update_panels()
        for side, frame, watched in zip(self.sides, frames, watching):
            side.show(frame, watched)
        self.query_one(Scrubber).show(*scrub)
