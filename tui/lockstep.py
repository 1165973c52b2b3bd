"""Two recordings played in lock-step: one position, two current ticks. No Textual in here.

Aligned by **time**, the position is seconds since each recording's start and each side shows the
last tick that had ended by then, so a 200 ms window's long ticks sit beside the many short ticks
a 5 ms window made in the same time. Aligned by **tick**, the position is a tick ordinal and both
show their n-th tick, which lines up batches rather than moments. A recording that is shorter
than the position holds its last tick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tui.state import DashboardState

ALIGNMENTS = ("time", "tick")
TICKS_PER_S = 10.0  # tick alignment: ticks played per second at 1x


@dataclass
class LockStep:
    align: str = "time"
    position: float = 0.0  # seconds ("time") or a tick ordinal ("tick")

    def indices(self, a: DashboardState, b: DashboardState) -> tuple[int, int]:
        """Each side's current tick index."""
        return self._index(a), self._index(b)

    def _index(self, state: DashboardState) -> int:
        if state.n_ticks == 0:
            return 0
        if self.align == "time":
            return state.index_at_time(self.position)
        return min(int(self.position), state.n_ticks - 1)

    def length(self, a: DashboardState, b: DashboardState) -> float:
        """The last position: the longer recording's end (seconds or last tick ordinal)."""
        if self.align == "time":
            return max(a.duration_s, b.duration_s)
        return float(max(a.n_ticks, b.n_ticks, 1) - 1)

    def seek(self, a: DashboardState, b: DashboardState, position: float) -> None:
        self.position = min(max(position, 0.0), self.length(a, b))

    def step(self, a: DashboardState, b: DashboardState, delta: int) -> None:
        """One tick on: in tick alignment both sides move; in time alignment the clock moves to
        the next (previous) tick end of either side, so the side with shorter ticks moves each step."""
        if self.align == "tick":
            self.seek(a, b, int(self.position) + delta)
            return
        ends = [s.ticks.col("end_s") for s in (a, b) if s.n_ticks]
        if not ends:
            return
        t = self.position
        if delta > 0:
            later = [e[i] for e in ends if (i := int(np.searchsorted(e, t, side="right"))) < len(e)]
            if later:
                self.seek(a, b, float(min(later)))
        else:
            earlier = [e[i - 1] for e in ends if (i := int(np.searchsorted(e, t, side="left"))) > 0]
            self.seek(a, b, float(max(earlier)) if earlier else 0.0)

    def advance(self, a: DashboardState, b: DashboardState, wall_s: float, speed: float | None) -> bool:
        """Play on by `wall_s` seconds of wall time at `speed` (None: one step per call).
        Returns False once the end is reached."""
        if speed is None:
            self.step(a, b, 1)
        elif self.align == "time":
            self.seek(a, b, self.position + wall_s * speed)
        else:
            self.seek(a, b, self.position + wall_s * speed * TICKS_PER_S)
        return self.position < self.length(a, b)

    def toggle(self, a: DashboardState, b: DashboardState) -> None:
        """Switch alignment, keeping side A on the tick it shows."""
        index = self._index(a)
        if self.align == "time":
            self.align, self.position = "tick", float(index)
        else:
            self.align = "time"
            self.position = a.time_at(index) if a.n_ticks else 0.0
        self.seek(a, b, self.position)

    def fraction(self, a: DashboardState, b: DashboardState) -> float:
        length = self.length(a, b)
        return self.position / length if length > 0 else 0.0
