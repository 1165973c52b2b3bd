"""The one-line header: which recording, how it is being watched, and what state it is in."""

from __future__ import annotations

import os
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from tracer.events import SessionHeader
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


@dataclass(frozen=True, slots=True)
class Watching:
    """How a recording is being watched: what the header says beside the trace's own header."""

    path: str
    mode: str  # "live" or "replay"; in compare, the side ("A", "B")
    status: str  # the source's state: "live", "loading 40%", "loaded, index rebuilt"…
    playback: str  # e.g. "▶ 2x", "⏸ paused", "● following"


class TraceHeader(Static):
    """File, mode, model, device, policy and the source's state."""

    def show(self, watching: Watching, header: SessionHeader | None) -> None:
        summary = config_summary(header)
        status, playback = watching.status, watching.playback
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" tickscope ", style="bold reverse")
        text.append(f" {os.path.basename(watching.path)} ", style="bold")
        text.append(f"[{watching.mode}] ", style="italic")
        text.append(f"{summary['model']} · {summary['device']} · {summary['policy']}")
        text.append(f" · {summary['workload']} ", style="dim")
        # "loading 40%", "loaded, index rebuilt": styled by their first word.
        text.append(f" {status} ", style=STATE_STYLES.get(status.split(",")[0].split(" ")[0], "bold red"))
        if playback:
            text.append(f" {playback}", style="bold")
        self.update(text, layout=False)  # one line, always: no relayout per frame
