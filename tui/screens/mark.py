"""The `m` prompt: a note to pin at the current tick (saved beside the trace by the app)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from tracer.marks import MAX_MARK_TEXT


class MarkScreen(ModalScreen[str | None]):
    """Returns the note typed, or None when cancelled or left empty."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where  # e.g. "tick 57 (1.23 s)"

    def compose(self) -> ComposeResult:
        with Vertical(id="mark-box"):
            yield Label(f"note at {self.where}")
            yield Input(placeholder="what happens here", max_length=MAX_MARK_TEXT, id="mark-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
