"""What every panel shares: asking for a new frame when its size changes."""

from __future__ import annotations

from textual import events

from tui.messages import PanelResized


class Panel:
    """Mixin for widgets that draw to their size: a resize (or appearing) needs a fresh frame.

    A plain mixin, not a Widget subclass, so it does not disturb the widget's own CSS and
    component classes (DataTable's, for one).
    """

    def on_resize(self, event: events.Resize) -> None:
        self.post_message(PanelResized())  # type: ignore[attr-defined]  # the widget's
