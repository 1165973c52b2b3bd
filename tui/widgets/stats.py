"""Text panels: latency percentiles over a rolling window, and queue / KV / request counters."""

from __future__ import annotations

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tui.state import LATENCY_WINDOW_S, DashboardState
from tui.widgets.panel import Panel

SPARK = "▁▂▃▄▅▆▇█"


def fmt_s(seconds: float | None) -> str:
    """Latency in the unit that keeps three digits: 850µs, 12.3ms, 1.52s."""
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def histogram(values: np.ndarray, width: int) -> Text:
    """A one-line distribution of `values` (log-spaced buckets: latencies have long tails)."""
    if len(values) == 0 or width <= 0:
        return Text("")
    # Equal bins of log(value): numpy's fast path for uniform bins, where explicit geometric
    # edges would binary-search every value (a million-tick replay has hundreds of thousands).
    logs = np.log(np.clip(values, 1e-6, None))
    low, high = float(logs.min()), float(logs.max())
    if high - low < 1e-6:  # one value (or nearly): a range numpy can split into `width` bins
        low, high = low - 0.5, high + 0.5
    counts, _ = np.histogram(logs, bins=width, range=(low, high))
    peak = counts.max() or 1
    return Text("".join(SPARK[int(c * (len(SPARK) - 1) / peak)] if c else " " for c in counts))


class LatencyPanel(Panel, Static):
    """TTFT and TPOT p50/p99 over the last seconds of recording, and TTFT's distribution so far."""

    _shown_lines = -1

    def show(self, state: DashboardState, index: int) -> None:
        stats = state.latency(index)
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim")
        table.add_column(justify="right", style="bold")
        table.add_column(justify="right", style="bold")
        table.add_row("", "p50", "p99")
        table.add_row("TTFT", fmt_s(stats.ttft_p50), fmt_s(stats.ttft_p99))
        table.add_row("TPOT", fmt_s(stats.tpot_p50), fmt_s(stats.tpot_p99))
        throughput = state.mean_throughput(index)
        table.add_row("tok/s", f"{throughput:,.0f}", "")
        lines: list = [table]
        # The distribution needs two more lines than a short terminal can spare.
        if self.screen.has_class("-tall") and len(stats.ttft_all):
            lines.append(Text("TTFT so far ", style="dim") + Text(
                f"{fmt_s(float(stats.ttft_all.min()))}…{fmt_s(float(stats.ttft_all.max()))}",
                style="dim",
            ))
            lines.append(histogram(stats.ttft_all, max(self.size.width, 1)))
        self.border_subtitle = f"last {LATENCY_WINDOW_S:g}s · n={stats.samples}"
        # Re-layout only when the panel's height changes (the distribution comes and goes).
        self.update(Group(*lines), layout=len(lines) != self._shown_lines)
        self._shown_lines = len(lines)


def meter(used: float, capacity: float, width: int) -> Text:
    share = used / capacity if capacity > 0 else 0.0
    filled = int(round(min(share, 1.0) * width))
    color = "green" if share < 0.7 else "yellow" if share < 0.9 else "red"
    return Text("█" * filled, style=color) + Text("░" * (width - filled), style="dim")


class QueuePanel(Panel, Static):
    """Queue depth, running sequences, KV use, and requests finished / rejected / preempted."""

    _shown = False

    def show(self, state: DashboardState, index: int) -> None:
        if state.n_ticks == 0:
            self.update(Text("waiting for the first tick", style="dim italic"))
            return
        row = state.tick_row(index)
        counts = state.counters(index)
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("queue ", style="dim")
        text.append(f"{row['queue_depth']:.0f}", style="bold")
        text.append("  running ", style="dim")
        text.append(f"{row['running']:.0f}", style="bold")
        text.append("  batch ", style="dim")
        text.append(f"{row['seqs']:.0f} seq {row['prefill_tokens'] + row['decode_tokens']:.0f} tok")
        text.append("\nKV ", style="dim")
        bar = max(min(self.size.width - 22, 30), 4)
        text.append_text(meter(row["kv_used"], row["kv_capacity"], bar))
        text.append(f" {row['kv_used']:.0f}/{row['kv_capacity']:.0f}")
        text.append("\ndone ", style="dim")
        text.append(f"{counts['finished']}", style="bold green")
        text.append("  rejected ", style="dim")
        text.append(f"{counts['rejected']}", style="bold red" if counts["rejected"] else "bold")
        text.append("  preempted ", style="dim")
        text.append(f"{counts['preempted']}", style="bold yellow" if counts["preempted"] else "bold")
        self.update(text, layout=not self._shown)  # always three lines once shown
        self._shown = True
