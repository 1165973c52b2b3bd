"""One request's life as a timeline: arrive, admit, first token, every token, preemptions, finish."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.state import RequestLife
from tui.widgets.stats import fmt_s

# How each moment is drawn on the strip, and the colour of its line in the list.
MOMENTS = {
    "arrive": ("A", "yellow"),
    "admit": ("a", "blue"),
    "preempt": ("✕", "bold red"),
    "first token": ("F", "bold cyan"),
    "finished": ("◆", "bold green"),
    "rejected": ("◆", "bold red"),
    "cancelled": ("◆", "red"),
    "finish": ("◆", "green"),
}
PHASE_STYLES = {"queued": "yellow", "prefill": "blue", "decode": "cyan"}


def strip(life: RequestLife, width: int) -> Text:
    """Arrival to finish across `width` columns: waiting, prefill and decode spans, each token as
    a tick mark, and the milestones on top."""
    end = life.finish_s if life.finish_s is not None else max([life.arrive_s, *life.token_s.tolist()])
    span = max(end - life.arrive_s, 1e-9)

    def col(t: float) -> int:
        return min(int((t - life.arrive_s) / span * (width - 1)), width - 1)

    cells: list[tuple[str, str]] = [(" ", "")] * width
    admit = life.admit_s if life.admit_s is not None else end
    first = life.first_token_s if life.first_token_s is not None else end
    for a, b, phase, char in (
        (life.arrive_s, admit, "queued", "·"),
        (admit, first, "prefill", "▬"),
        (first, end, "decode", "─"),
    ):
        for c in range(col(a), col(b) + 1):
            cells[c] = (char, PHASE_STYLES[phase])
    for t in life.token_s.tolist():
        cells[col(t)] = ("┃", "bold cyan")
    for t, what in life.events():
        cells[col(t)] = (MOMENTS.get(what, ("?", ""))[0], MOMENTS.get(what, ("", "bold"))[1])
    text = Text(no_wrap=True)
    for char, style in cells:
        text.append(char, style=style)
    return text


def summary(life: RequestLife) -> Text:
    text = Text()
    text.append(f"request {life.request}", style="bold")
    text.append(f"  {life.status or 'running'}", style=MOMENTS.get(life.status, ("", "cyan"))[1])
    text.append(f"  prompt {life.prompt_tokens} tok · out {life.output_tokens or len(life.token_s)} tok")
    figures = []
    if life.admit_s is not None:
        figures.append(f"queue wait {fmt_s(life.admit_s - life.arrive_s)}")
    if life.first_token_s is not None:
        figures.append(f"TTFT {fmt_s(life.first_token_s - life.arrive_s)}")
    if life.finish_s is not None:
        figures.append(f"E2E {fmt_s(life.finish_s - life.arrive_s)}")
        if life.first_token_s is not None and life.output_tokens > 1:
            tpot = (life.finish_s - life.first_token_s) / (life.output_tokens - 1)
            figures.append(f"TPOT {fmt_s(tpot)}")
    if len(life.token_s) > 1:
        itl = np.diff(life.token_s)
        figures.append(
            f"ITL p50 {fmt_s(float(np.percentile(itl, 50)))} p99 {fmt_s(float(np.percentile(itl, 99)))} "
            f"max {fmt_s(float(itl.max()))}"
        )
    text.append("\n" + " · ".join(figures), style="dim")
    return text


def moments(life: RequestLife, now_s: float) -> Text:
    """Every milestone and token, one a line, relative to arrival; those after the current tick dim."""
    rows: list[tuple[float, str, str]] = [(t, what, MOMENTS.get(what, ("", ""))[1]) for t, what in life.events()]
    prev = None
    for i, t in enumerate(life.token_s.tolist(), start=1):
        gap = f"  (+{fmt_s(t - prev)})" if prev is not None else ""
        rows.append((t, f"token {i}{gap}", "cyan"))
        prev = t
    rows.sort(key=lambda r: r[0])
    text = Text(no_wrap=True)
    for i, (t, what, style) in enumerate(rows):
        later = t > now_s + 1e-9
        text.append(f"{'+' + fmt_s(t - life.arrive_s):>10}  ", style="dim")
        text.append(what, style=f"{style} dim" if later else style)
        if later:
            text.append("  (after the current tick)", style="dim italic")
        if i + 1 < len(rows):
            text.append("\n")
    return text


class RequestScreen(ModalScreen[None]):
    """Opened from the recent-requests table; escape closes it."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, life: RequestLife, now_s: float) -> None:
        super().__init__()
        self.life = life
        self.now_s = now_s

    def compose(self) -> ComposeResult:
        with Vertical(id="request-box") as box:
            box.border_title = f"request {self.life.request}"
            box.border_subtitle = "A arrive · a admit · F first token · ┃ token · ✕ preempt · ◆ end"
            yield Static(summary(self.life), id="request-summary")
            yield Static(id="request-strip")
            with VerticalScroll(id="request-moments"):
                yield Static(moments(self.life, self.now_s))

    def on_resize(self) -> None:
        strip_widget = self.query_one("#request-strip", Static)
        strip_widget.update(strip(self.life, max(strip_widget.size.width, 10)))

    def action_close(self) -> None:
        self.dismiss(None)
