"""The one-line header: which recording, how it is being watched, and what state it is in."""

from __future__ import annotations

import os

from rich.text import Text
from textual.widgets import Static

from tui.state import config_summary

# How each source state reads in the header, with the style that makes trouble stand out.
STATE_STYLES = {
    "live": "bold green",
    "idle": "yellow",
    "waiting": "yellow",
    "loading": "cyan",
    "loaded": "green",
    "ended": "green",
    "truncated": "bold red",
    "replaced": "bold red",
}


class TraceHeader(Static):
    """File, mode, model, device, policy and the source's state."""

    def show(self, *, path: str, mode: str, header: object, status: str, playback: str) -> None:
        summary = config_summary(header)  # type: ignore[arg-type]
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" tickscope ", style="bold reverse")
        text.append(f" {os.path.basename(path)} ", style="bold")
        text.append(f"[{mode}] ", style="italic")
        text.append(f"{summary['model']} · {summary['device']} · {summary['policy']}")
        text.append(f" · {summary['workload']} ", style="dim")
        # "loading 40%", "loaded, index rebuilt": styled by their first word.
        text.append(f" {status} ", style=STATE_STYLES.get(status.split(",")[0].split(" ")[0], "bold red"))
        if playback:
            text.append(f" {playback}", style="bold")
        self.update(text, layout=False)  # one line, always: no relayout per frame
