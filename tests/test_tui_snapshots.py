"""How the main screen looks, at the smallest and a roomy size: on a sample trace shipped in
`traces/` (a real CPU recording) and on a deterministic synthetic one (which has the pipeline
stages and marks the samples lack). Nothing on the main screen depends on the wall clock: times
are seconds since the recording's start."""

from __future__ import annotations

from pathlib import Path

import pytest

import tui_synth
from tui.app import TickscopeApp
from tui.source import ReplaySource

SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
SAMPLE = Path(__file__).resolve().parent.parent / "traces" / "tiny-article-5ms.msgpack"


@pytest.fixture
def trace(tmp_path) -> str:
    # The file name shows in the header, so it is fixed; the folder is not shown.
    path = str(tmp_path / "synthetic.msgpack")
    tui_synth.write_trace(path, 120)
    return path


def at_tick(tick: int):
    async def run_before(pilot) -> None:
        app = pilot.app
        for _ in range(500):
            if app.status == "loaded":
                break
            await pilot.pause(0.02)
        await pilot.press("g", *str(tick), "enter")
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()

    return run_before


@SIZES
def test_main_screen(snap_compare, trace, size):
    app = TickscopeApp(ReplaySource(trace), "replay", autoplay=False)
    assert snap_compare(app, terminal_size=size, run_before=at_tick(60))


@SIZES
def test_main_screen_on_a_sample_trace(snap_compare, size):
    # the samples are committed: a missing one is a broken checkout, not a reason to skip
    assert SAMPLE.is_file(), f"{SAMPLE} is missing (traces/ is part of the repository)"
    app = TickscopeApp(ReplaySource(SAMPLE), "replay", autoplay=False)
    assert snap_compare(app, terminal_size=size, run_before=at_tick(1500))
