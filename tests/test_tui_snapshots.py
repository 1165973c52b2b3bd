"""How the main screen looks on a deterministic recording, at the smallest and a roomy size."""

from __future__ import annotations

import pytest

import tui_synth
from tui.app import TickscopeApp
from tui.source import ReplaySource


@pytest.fixture
def trace(tmp_path) -> str:
    # The file name shows in the header, so it is fixed; the folder is not shown.
    path = str(tmp_path / "synthetic.msgpack")
    tui_synth.write_trace(path, 120)
    return path


async def at_tick_60(pilot) -> None:
    app = pilot.app
    for _ in range(300):
        if app.status == "loaded":
            break
        await pilot.pause(0.02)
    await pilot.press("g", *"60", "enter")
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_main_screen(snap_compare, trace, size):
    app = TickscopeApp(ReplaySource(trace), "replay", autoplay=False)
    assert snap_compare(app, terminal_size=size, run_before=at_tick_60)
