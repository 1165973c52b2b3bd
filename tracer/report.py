"""A compare report without a terminal: `report.md` and its PNGs, written into one directory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer.atomic import atomic_path
from tracer.compare import (
    NOT_JUDGED,
    Comparison,
    Costing,
    compare,
    delta_rows,
    figure_label,
    format_config_value,
    headline,
)
from tracer.frames import Trace
from tracer.plots import plot_delta_table, plot_expert_heatmaps, plot_latency_cdfs, plot_timeline

# Image files of a report, in the order the Markdown shows them, with their captions.
IMAGES = (
    ("timeline.png", "Served rate and batch size over time since each recording's start (dotted: marks)"),
    ("latency_cdf.png", "TTFT and TPOT of finished requests, cumulative"),
    ("experts.png", "Expert load: mean tokens per tick on each expert of each layer"),
    ("delta_table.png", "The delta table"),
)


@dataclass(frozen=True, slots=True)
class Report:
    markdown: Path
    images: tuple[Path, ...]
    comparison: Comparison


def trace_names(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> tuple[str, str]:
    """Short names for two trace paths: file names, with the folder added when those are equal."""
    pa, pb = Path(a), Path(b)
    if pa.name != pb.name:
        return pa.name, pb.name
    return f"{pa.parent.name}/{pa.name}", f"{pb.parent.name}/{pb.name}"


def setup_line(config: Any) -> str:
    """One line naming what matters of a recording's setup."""
    cfg = config if isinstance(config, dict) else {}
    sched, workload = cfg.get("scheduler"), cfg.get("workload")
    sched = sched if isinstance(sched, dict) else {}
    workload = workload if isinstance(workload, dict) else {}
    parts = [
        f"preset {cfg.get('preset', '?')}",
        f"device {cfg.get('device_name') or cfg.get('device') or '?'}",
        f"policy {sched.get('policy', '?')}",
    ]
    # traces recorded before the header said whether the policy has a window: only "window" had one
    if sched.get("has_window", sched.get("policy") == "window"):
        parts.append(f"window {format_config_value(sched.get('window_ms'))} ms")
    parts += [f"max seqs {sched.get('max_seqs', '?')}", f"workload {workload.get('name', '?')}"]
    return " · ".join(parts)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def markdown(a: Trace, b: Trace, comparison: Comparison, images: tuple[str, ...]) -> str:
    """The report's text: the trade-off in one sentence, each figure's verdict, the delta table, what
    the figures mean, config differences, figures, marks."""
    lines = [
        f"# tickscope compare: {comparison.a_name} vs {comparison.b_name}",
        "",
        f"- **A** `{comparison.a_name}`: {setup_line(a.header.config)}",
        f"- **B** `{comparison.b_name}`: {setup_line(b.header.config)}",
        "",
        f"**{headline(comparison)}**",
        "",
    ]
    lines += [f"- {note}" for note in comparison.notes]
    lines += ["", "## Figure by figure", ""] if comparison.notes else ["## Figure by figure", ""]
    for d in comparison.deltas:
        label = figure_label(comparison, d.figure)
        if d.winner in ("A", "B"):
            name = comparison.a_name if d.winner == "A" else comparison.b_name
            lines.append(f"- {label}: **{d.winner}** ({name}) is better, {d.by}.")
        elif d.winner == "even":
            lines.append(f"- {label}: neither is better ({d.by}).")
        elif d.winner == NOT_JUDGED:
            lines.append(f"- {label}: {NOT_JUDGED} ({d.by}; why: below).")
        else:
            lines.append(f"- {label}: not compared ({comparison.missing(d)}).")
    lines += ["", "## Delta table", ""]
    lines += _table(("figure", "A", "B", "B vs A", "better"), delta_rows(comparison))
    lines += ["", "## What the figures are", ""]
    for d in comparison.deltas:
        if d.figure.note:
            judged = f"; {NOT_JUDGED}" if d.figure.higher_is_better is None else ""
            lines.append(f"- **{figure_label(comparison, d.figure)}**: {d.figure.note}{judged}.")
    lines += ["", "## What differs in their configurations", ""]
    if comparison.config:
        lines += _table(
            ("setting", "A", "B"),
            [(f"`{c.key}`", format_config_value(c.a), format_config_value(c.b)) for c in comparison.config],
        )
    else:
        lines.append("Nothing: both recordings ran the same configuration.")
    lines += ["", "## Figures", ""]
    for name, caption in IMAGES:
        if name in images:
            lines += [f"![{caption}]({name})", "", f"*{caption}.*", ""]
    lines += ["## Marks", ""]
    any_marks = False
    for label, trace in (("A", a), ("B", b)):
        for row in trace.marks.iter_rows(named=True):
            any_marks = True
            lines.append(f"- {label}, tick {row['tick']} ({row['t_s']:.2f} s): {_cell(row['text'])}")
    if not any_marks:
        lines.append("No marks in either recording.")
    return "\n".join(lines) + "\n"


def write_report(
    a: Trace,
    b: Trace,
    out_dir: str | os.PathLike[str],
    *,
    names: tuple[str, str] | None = None,
    costing: Costing | None = None,
) -> Report:
    """Compare two loaded recordings (costed as `costing` asks) and write `out_dir/report.md` with its
    PNGs; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if names is None:
        names = trace_names(a.path or "A", b.path or "B")
    comparison = compare(a, b, a_name=names[0], b_name=names[1], costing=costing)
    plot_timeline(a, b, names, out / "timeline.png")
    plot_latency_cdfs(a, b, names, out / "latency_cdf.png")
    plot_expert_heatmaps(a, b, names, out / "experts.png")
    plot_delta_table(comparison, out / "delta_table.png")
    image_names = tuple(name for name, _ in IMAGES)
    md = out / "report.md"
    with atomic_path(md) as temporary:
        temporary.write_text(markdown(a, b, comparison, image_names), encoding="utf-8")
    return Report(md, tuple(out / n for n in image_names), comparison)
