"""Compare mode's text panels: the header naming what differs, and the delta table."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from tracer.compare import Comparison, ConfigDifference, delta_table, format_config_value
from tui.widgets.panel import Panel

# A value in the one-line list of differences: long ones (a workload's description) would push
# every other difference off the line.
DIFF_VALUE_CHARS = 24


def _short(value: object) -> str:
    text = format_config_value(value)
    return text if len(text) <= DIFF_VALUE_CHARS else text[: DIFF_VALUE_CHARS - 1] + "…"


def differences_text(diffs: tuple[ConfigDifference, ...]) -> Text:
    """ "differs: scheduler.window_ms 5 → 200 · workload.name a → b" (or "same configuration")."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if not diffs:
        text.append(" same configuration", style="dim")
        return text
    text.append(" differs: ", style="bold yellow")
    for i, d in enumerate(diffs):
        if i:
            text.append(" · ", style="dim")
        text.append(d.key, style="bold")
        text.append(f" {_short(d.a)} → {_short(d.b)}")
    return text


class CompareHeader(Static):
    """Both recordings' names, and the configuration differences (as many as fit)."""

    def show(self, a_name: str, b_name: str, diffs: tuple[ConfigDifference, ...] | None, status: str) -> None:
        top = Text(no_wrap=True, overflow="ellipsis")
        top.append(" tickscope ", style="bold reverse")
        top.append(" compare ", style="italic")
        top.append(f"A {a_name}", style="bold cyan")
        top.append("  vs  ", style="dim")
        top.append(f"B {b_name}", style="bold magenta")
        top.append(f"  {status}", style="green" if status == "loaded" else "cyan")
        bottom = differences_text(diffs) if diffs is not None else Text(" reading headers…", style="dim")
        self.update(Group(top, bottom))


class DeltaPanel(Panel, Static):
    """The whole-recording delta table: each figure for A and B, and which is better by how much."""

    def show(self, comparison: Comparison | None, message: str = "") -> None:
        if comparison is None:
            self.update(Text(message or "computing the comparison…", style="dim italic"))
            return
        self.border_subtitle = "whole recordings · the trade-off under the table"
        table = delta_table(comparison)
        table.show_edge = False  # the panel's border frames it: two more rows for the sides
        self.update(table)
