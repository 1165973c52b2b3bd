"""`tickscope compare A B --report DIR`: the figures, the PNGs, the text.

On two pairs: the shipped sample traces (5 ms vs 200 ms window, as users first try it) and a
pair recorded here by the current engine (so a change to what the engine records is caught too).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import tracer
from compare_costs import independent_costs, other_figures
from tracer.compare import FIGURES, NOT_JUDGED, Costing, format_value
from tracer.events import MarkEvent
from tracer.report import IMAGES, setup_line, write_report
from tui.cli import main

TRACES = Path(__file__).resolve().parent.parent / "traces"
SHIPPED = (TRACES / "tiny-article-5ms.msgpack", TRACES / "tiny-article-200ms.msgpack")
FIG = {f.key: f for f in FIGURES}
SHOWN = {f.label: f.key for f in FIGURES if Costing().shows(f)}  # no --price, no --accelerator, no stages


def independent_figures(trace: tracer.Trace) -> dict[str, float | None]:
    """The compared figures recomputed here straight from the frames, not through summarize()."""
    return {**independent_costs(trace), **other_figures(trace)}


def delta_table_rows(markdown: str) -> dict[str, list[str]]:
    section = markdown.split("## Delta table", 1)[1].split("##", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


@pytest.fixture(scope="module", params=["shipped", "recorded"])
def pair(request) -> tuple[Path, Path]:
    return SHIPPED if request.param == "shipped" else request.getfixturevalue("compare_pair")


@pytest.fixture(scope="module")
def report(pair, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["compare", str(pair[0]), str(pair[1]), "--report", str(out)]) == 0
    return out


def test_report_delta_table_matches_figures_computed_from_the_frames(pair, report):
    rows = delta_table_rows((report / "report.md").read_text())
    assert set(rows) == set(SHOWN)
    expected = [independent_figures(tracer.load(p)) for p in pair]
    for label, (a_cell, b_cell, _change, _better) in rows.items():
        key = SHOWN[label]
        for cell, e in zip((a_cell, b_cell), expected):
            beside = FIG[key].beside
            reference = f" ({format_value(FIG[key], e[beside])})" if beside else ""
            assert cell == format_value(FIG[key], e[key]) + reference


def test_report_says_which_is_better_on_each_figure_and_by_how_much(pair, report):
    text = (report / "report.md").read_text()
    rows = delta_table_rows(text)
    # The longer window spaces every token a window apart and fills the batch: the article's trade-off.
    assert rows["TPOT p50"][3].startswith("A, ") and rows["TPOT p50"][3].endswith("× lower")
    assert rows["mean batch"][3].startswith("B, ")
    # ... and its tokens cheap: less device time and fewer bytes read per token, at a higher capacity
    for label in ("device time/processed tok", "device time/output tok", "capacity", "modelled B/processed tok"):
        assert rows[label][3].startswith("B, "), label
    assert rows["served rate"][3] == NOT_JUDGED
    window = tracer.open_trace(pair[1]).header.config["scheduler"]["window_ms"]
    assert f"| `scheduler.window_ms` | 5 | {window:g} |" in text
    # every figure gets a sentence with the table's verdict: the winner by name, even, or no data
    summary = text.split("## Delta table", 1)[0]
    for label, (_a, _b, _change, better) in rows.items():
        line = next(x for x in summary.splitlines() if x.startswith(f"- {label}: "))
        winner = better.split(",", 1)[0]
        if winner in ("A", "B"):
            name = pair[0 if winner == "A" else 1].name
            assert line == f"- {label}: **{winner}** ({name}) is better, {better.split(', ', 1)[1]}.", line
        elif better == "no data":
            assert "not compared" in line, line
        elif better == NOT_JUDGED:
            assert line.startswith(f"- {label}: {NOT_JUDGED} (B "), line
            assert f"- **{label}**: {FIG[SHOWN[label]].note}; {NOT_JUDGED}." in text
        else:
            assert line == f"- {label}: neither is better ({better}).", line


def test_report_figures_exist_and_are_not_blank(report):
    """Non-trivial: big enough, many colours, contrast — a blank or single-colour PNG fails."""
    for name, _caption in IMAGES:
        path = report / name
        assert path.stat().st_size > 5_000, name
        pixels = imread(path)
        colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
        assert len(colours) > 20 and pixels.std() > 0.05, name
        assert f"]({name})" in (report / "report.md").read_text()


def test_report_lists_marks_from_the_sidecar(compare_pair, tmp_path):
    a = tmp_path / "a.msgpack"
    shutil.copy(compare_pair[0], a)
    trace = tracer.load(a)
    tracer.add_mark(a, MarkEvent(t_ns=trace.header.t0_mono_ns + 500_000_000, tick=7, text="batch | grows"))
    written = write_report(tracer.load(a), tracer.load(compare_pair[1]), tmp_path / "out")
    assert "- A, tick 7 (0.50 s): batch \\| grows" in written.markdown.read_text()


def test_compare_report_refuses_a_missing_trace(compare_pair, tmp_path, capsys):
    assert main(["compare", str(compare_pair[0]), str(tmp_path / "nope.msgpack"), "--report", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_setup_line_shows_the_window_of_policies_that_have_one():
    sched = {"max_seqs": 8, "window_ms": 5.0}
    assert "window 5 ms" in setup_line({"scheduler": {**sched, "policy": "burst", "has_window": True}})
    assert "window" not in setup_line({"scheduler": {**sched, "policy": "static", "has_window": False}})
    # traces recorded before the header carried has_window: only the "window" policy had one
    assert "window 5 ms" in setup_line({"scheduler": {**sched, "policy": "window"}})
    assert "window" not in setup_line({"scheduler": {**sched, "policy": "continuous"}})
