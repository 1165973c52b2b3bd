"""What every panel shares: the frame it draws (`show(frame)`), and asking for a new frame when its
size changes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
from rich.text import Text
from textual import events
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from tracer.events import StageEvent
from tui.messages import PanelResized
from tui.state import DashboardState


@dataclass(frozen=True, slots=True)
class Frame:
    """One recording at one tick: all that a panel draws from."""

    state: DashboardState
    index: int  # the tick in view, as an index into the state
    experts: np.ndarray | None = None  # its [layers, experts] counts, or a heat span's [ticks, ...] stack
    stages: StageEvent | None = None  # its stage cells
    heat_span: int = 1  # ticks the heatmap averages over (1 = the current tick)


class ShowsFrames(Protocol):
    def show(self, frame: Frame) -> None: ...


class Panel:
    """Mixin for widgets that draw to their size: a resize (or appearing) needs a fresh frame.
    Every panel's widget, or each of its parts, is one (a hidden one is drawn when it appears).

    `needs` names what it draws from (tick fields, `experts`, `requests`): where the recording
    has none of it, `show_panels` has it say so (`show_missing`) instead of drawing.

    A plain mixin, not a Widget subclass, so it does not disturb the widget's own CSS and
    component classes (DataTable's, for one).
    """

    needs: tuple[str, ...] = ()

    if TYPE_CHECKING:  # what the mixin uses of the widget it is mixed into

        def post_message(self, message: Message) -> bool: ...

    def show_missing(self, line: str) -> None:
        """Say there is nothing to draw, and why (a Static's way; line widgets have their own)."""
        cast(Static, self).update(Text(line, style="dim italic"))

    def on_resize(self, event: events.Resize) -> None:
        self.post_message(PanelResized())


class PanelGroup(Vertical):
    """A panel made of several widgets, each drawing the same frame."""

    def show(self, frame: Frame) -> None:
        show_panels(self.children, frame)


def show_panels(panels: Iterable[Widget], frame: Frame) -> None:
    """Draw those of `panels` on screen (each a panel of the registry, or a part of one: all show
    frames). A hidden one is drawn when it appears: its resize asks for a frame."""
    for panel in panels:
        if not panel.display:
            continue
        missing = frame.state.missing(panel.needs) if isinstance(panel, Panel) else None
        if missing is None:
            cast(ShowsFrames, panel).show(frame)
        else:
            cast(Panel, panel).show_missing(missing)
