"""What the registry knows of a panel (tui/panels/__init__.py lists them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from textual.widget import Widget


class Build(Protocol):
    def __call__(self, compact: bool, *, id: str, classes: str) -> Widget:
        """The panel's widget, mounted once, that shows frames; `compact`: a compare side's."""
        ...


@dataclass(frozen=True)
class PanelSpec:
    key: str  # its id: #experts on the dashboard, #a-experts and .side-experts on compare's side A
    title: str  # its border title
    help: str  # what it shows: its paragraph of the `?` screen (markdown)
    build: Build
    compact_title: str = ""  # a compare side's border title, when it shows less
    cycles: bool = True  # compare: shown in turn (`p`) when not every panel fits; else always shown
    needs_stages: bool = False  # compare: shown only for a recording with stage timings

    def make(self, compact: bool, *, id: str, classes: str) -> Widget:
        panel = self.build(compact, id=id, classes=classes)
        panel.border_title = self.compact_title if compact and self.compact_title else self.title
        return panel


def one_widget(cls: type[Widget]) -> Build:
    """A panel that is one widget, the same on a compare side."""
    return lambda compact, *, id, classes: cls(id=id, classes=classes)
