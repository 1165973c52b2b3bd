"""Text panels: latency percentiles and distributions, and queue / KV / request counters."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text
from textual.strip import Strip
from textual.widgets import Static

from tui.state import LATENCY_WINDOW_S, Series
from tui.widgets.charts import bar_chart
from tui.widgets.lines import LinesWidget, text_lines
from tui.widgets.panel import Frame, Panel


def _known(value: float) -> float | None:
    """NaN (the server had nothing to say) as None, which shows as a dash."""
    return None if np.isnan(value) else value


def _rate(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:,.1f}"


def fmt_s(seconds: float | None) -> str:
    """Latency in the unit that keeps three digits: 51ns, 850µs, 12.3ms, 1.52s."""
    if seconds is None:
        return "—"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f}ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def log_histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, float, float]:
    """Counts of `values` in `bins` log-spaced buckets (latencies have long tails), and the range
    they span."""
    # Equal bins of log(value): numpy's fast path for uniform bins, where explicit geometric
    # edges would binary-search every value (a million-tick replay has hundreds of thousands).
    logs = np.log(np.clip(values, 1e-6, None))
    low, high = float(logs.min()), float(logs.max())
    if high - low < 1e-6:  # one value (or nearly): a range numpy can split into `bins` bins
        low, high = low - 0.5, high + 0.5
    counts, _ = np.histogram(logs, bins=bins, range=(low, high))
    return counts, float(np.exp(low)), float(np.exp(high))


class LatencyPanel(LinesWidget):
    """TTFT and TPOT percentiles over the last seconds of recording and, where there is room,
    their distributions over the recording so far (side by side on a wide panel). A watched server
    without requests in the trace: its own percentiles over the interval that ends at the tick."""

    needs = ("latency",)

    def show(self, frame: Frame) -> None:
        state, index = frame.state, frame.index
        server = state.server_latency(index)
        if server is not None:
            self._show_server(server)
            return
        stats = state.latency(index)
        width, height = self.size.width, self.size.height
        wide = width >= 60  # room for a p90 column
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim")
        for _ in range(3 if wide else 2):
            table.add_column(justify="right", style="bold")
        rows = (("TTFT", stats.ttft_p50, stats.ttft_p90, stats.ttft_p99),
                ("TPOT", stats.tpot_p50, stats.tpot_p90, stats.tpot_p99))  # fmt: skip
        table.add_row("", *(("p50", "p90", "p99") if wide else ("p50", "p99")))
        for name, p50, p90, p99 in rows:
            table.add_row(name, *map(fmt_s, (p50, p90, p99) if wide else (p50, p99)))
        table.add_row("tok/s", f"{state.mean_throughput(index):,.0f}")
        console = self.app.console
        options = console.options.update(width=max(width, 1), height=None)
        lines = [Strip(line) for line in console.render_lines(table, options, pad=False, new_lines=False)]
        room = height - len(lines) - 1  # a blank line between the figures and the charts
        if room >= 3:
            lines.append(Strip.blank(width))
            if width >= 90:
                half = (width - 2) // 2
                left = self._distribution("TTFT so far", stats.ttft_all, half, room, "cyan")
                right = self._distribution("TPOT so far", stats.tpot_all, width - 2 - half, room, "magenta")
                for i in range(max(len(left), len(right))):
                    a = left[i].crop_extend(0, half, None) if i < len(left) else Strip.blank(half)
                    lines.append(Strip.join([a, Strip.blank(2)] + ([right[i]] if i < len(right) else [])))
            else:  # one above the other, or TTFT alone when there is room for one
                each = room // 2 if room >= 6 else room
                lines += self._distribution("TTFT so far", stats.ttft_all, width, each, "cyan")
                if room >= 6:
                    lines += self._distribution("TPOT so far", stats.tpot_all, width, room - each, "magenta")
        self.border_subtitle = f"last {LATENCY_WINDOW_S:g}s · n={stats.samples}"
        self.set_lines(lines)

    def _show_server(self, figures: dict[str, float]) -> None:
        """The scrape's percentiles (server-side: as the server timed its requests)."""
        wide = self.size.width >= 60
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim")
        for _ in range(3 if wide else 2):
            table.add_column(justify="right", style="bold")
        table.add_row("", *(("p50", "p90", "p99") if wide else ("p50", "p99")))
        for label, name in (("TTFT", "ttft"), ("ITL", "itl"), ("E2E", "e2e")):
            levels = ("p50", "p90", "p99") if wide else ("p50", "p99")
            table.add_row(label, *(fmt_s(_known(figures[f"{name}_{level}_s"])) for level in levels))
        for label, name in (("req/s", "requests_s"), ("tok/s", "generation_tokens_s")):
            table.add_row(label, _rate(figures[name]))
        self.border_subtitle = "server-side · the interval to this scrape"
        console = self.app.console
        options = console.options.update(width=max(self.size.width, 1), height=None)
        self.set_lines([Strip(line) for line in console.render_lines(table, options, pad=False, new_lines=False)])

    def _distribution(self, label: str, values: np.ndarray, width: int, height: int, color: str) -> list[Strip]:
        """A titled bar chart of `values` `height` rows high: title, bars, and the range under them
        (fastest left, slowest right, log scale)."""
        if height < 3 or width < 12 or len(values) == 0:
            return []
        counts, low, high = log_histogram(values, width)
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(label, style=f"bold {color}")
        title.append(f"  n={len(values)}  median {fmt_s(float(np.median(values)))}", style="dim")
        bars = counts.astype(np.float64)
        lo_label, hi_label = fmt_s(low), fmt_s(high)
        middle = "log scale".center(max(width - len(lo_label) - len(hi_label), 0))
        axis = Text(lo_label + middle + hi_label, style="dim")
        return (
            text_lines(self.app.console, title, width)
            + bar_chart(Series(bars, bars, -1, float(bars.max())), width, height - 2, color)
            + text_lines(self.app.console, axis, width)
        )


def meter(used: float, capacity: float, width: int) -> Text:
    share = used / capacity if capacity > 0 else 0.0
    filled = int(round(min(share, 1.0) * width))
    color = "green" if share < 0.7 else "yellow" if share < 0.9 else "red"
    return Text("█" * filled, style=color) + Text("░" * (width - filled), style="dim")


class QueuePanel(Panel, Static):
    """Queue depth, running sequences, KV use, and requests finished / rejected / preempted; a line
    the recording has no data for says so (DashboardState.missing, the panels' rule)."""

    needs = ("queue_depth",)
    _shown = False

    def show(self, frame: Frame) -> None:
        state, index = frame.state, frame.index
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
        no_kv, no_requests = state.missing(("kv_used",)), state.missing(("requests",))
        if no_kv is None:
            bar = max(min(self.size.width - 22, 30), 4)
            text.append_text(meter(row["kv_used"], row["kv_capacity"], bar))
            text.append(f" {row['kv_used']:.0f}/{row['kv_capacity']:.0f}")
        else:
            text.append(no_kv, style="dim italic")
        text.append("\ndone ", style="dim")
        if no_requests is None:
            text.append(f"{counts['finished']}", style="bold green")
            text.append("  rejected ", style="dim")
            text.append(f"{counts['rejected']}", style="bold red" if counts["rejected"] else "bold")
            text.append("  preempted ", style="dim")
            text.append(f"{counts['preempted']}", style="bold yellow" if counts["preempted"] else "bold")
        else:
            text.append(no_requests, style="dim italic")
        self.update(text, layout=not self._shown)  # always three lines once shown
        self._shown = True


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}B"


def fmt_usd(usd: float | None) -> str:
    return "—" if usd is None else f"${usd:,.2f}" if usd >= 0.01 else f"${usd:.2g}"


class CostPanel(Panel, Static):
    """What a token costs at the current tick and over the last seconds: measured device time per
    token and capacity (tokens per busy second), modelled bytes per token and the experts each layer
    touched against uniform routing's expectation, and $ per million output tokens when a price or
    an accelerator is given. Rows come most telling first, so a short panel keeps those."""

    needs = ("forward_ns",)

    def show(self, frame: Frame) -> None:
        state, index = frame.state, frame.index
        if state.n_ticks == 0:
            self.update(Text("what a token costs: waiting for the first tick", style="dim italic"))
            return
        lo, began = state.window(index)
        tick = state.cost(index, index, state.time_at(index - 1) if index else began)
        window = state.cost(lo, index, began)
        rows = [("per token", "tick", f"{LATENCY_WINDOW_S:g}s", "")]
        rows += [(label, fmt(tick[key], tick), fmt(window[key], window), note) for label, key, fmt, note in COST_ROWS]
        if state.price is not None:
            rows.append(
                (
                    "$/Mtok",
                    fmt_usd(tick["usd_per_mtok_measured"]),
                    fmt_usd(window["usd_per_mtok_measured"]),
                    f"measured, at ${state.price:g} per device-hour",
                )
            )
        if window["accelerator"] is not None:
            on_tick, on_window = tick["accelerator"], window["accelerator"]
            name = on_window["name"]
            rows.append(
                (
                    name,
                    fmt_s(on_tick["roofline_s_per_token"]),
                    fmt_s(on_window["roofline_s_per_token"]),
                    "modelled: roofline time per token",
                )
            )
            rows.append(
                (
                    f"{name} $/Mtok",
                    fmt_usd(on_tick["usd_per_mtok_modelled"]),
                    fmt_usd(on_window["usd_per_mtok_modelled"]),
                    "modelled",
                )
            )
        if window["unavailable"]:
            rows.append(("", "", "", window["unavailable"]))
        table = Table.grid(padding=(0, 1))
        table.add_column(style="dim", no_wrap=True)
        table.add_column(justify="right", style="bold", no_wrap=True)
        table.add_column(justify="right", style="bold", no_wrap=True)
        notes = self.size.width >= 90  # what each figure is, where there is room beside the figures
        if notes:
            table.add_column(style="dim", no_wrap=True, overflow="ellipsis")
        for row in rows:
            table.add_row(*row[: 4 if notes else 3])
        self.update(table)


def experts_touched(touched: float | None, cost: dict[str, Any]) -> str:
    """Distinct experts a layer touched, against what uniform routing would touch for those tokens."""
    expected = cost["experts_expected_uniform"]
    return "—" if touched is None or expected is None else f"{touched:.1f}/{expected:.1f}"


def fmt_rate(tokens_s: float | None) -> str:
    return "—" if tokens_s is None else f"{tokens_s:,.0f}"


# (label, cost key, format, note): the figures of tracer/cost.py the panel shows, most telling first.
COST_ROWS = (
    ("device", "device_s_per_token", lambda v, c: fmt_s(v), "busy device time per token (prefill + decode)"),
    ("bytes", "bytes_per_token", lambda v, c: fmt_bytes(v), "read per token, modelled: weights once a tick, KV"),
    ("experts", "experts_touched_per_layer", experts_touched, "touched per layer / uniform routing's expectation"),
    ("capacity", "capacity_tok_s", lambda v, c: fmt_rate(v), "tok/s were the device never idle"),
    ("device/out", "device_s_per_output_token", lambda v, c: fmt_s(v), "busy device time per output token"),
)
