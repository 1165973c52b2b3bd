"""How the compare screen looks on the shipped sample pair (5 ms vs 200 ms window), small and roomy.

Nothing on it depends on the wall clock: no autoplay, aligned by tick and stepped to tick 60 (12 s
into the 200 ms recording, its batch full), both files read to their end and the delta table
computed first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tui.compare_app import CompareApp
from tui.compare_source import TraceSide

TRACES = Path(__file__).resolve().parent.parent / "traces"


async def at_tick_60(pilot) -> None:
    app = pilot.app
    for _ in range(500):
        if app.status == "loaded" and app.comparison is not None:
            break
        await pilot.pause(0.02)
    assert app.status == "loaded" and app.comparison is not None
    await pilot.press(*["right"] * 60)
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_compare_screen(snap_compare, size):
    sides = [TraceSide(TRACES / f"tiny-article-{w}.msgpack") for w in ("5ms", "200ms")]
    app = CompareApp(*sides, autoplay=False, align="tick")
    try:
        assert snap_compare(app, terminal_size=size, run_before=at_tick_60)
    finally:
        for side in sides:
            side.close()
