"""Static batching: admit a batch only when nothing is running, then run it to completion.

Ticks start as soon as there is work: what keeps the batch static is admission, not a wait.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.policies.base import Policy


@dataclass(frozen=True)
class Static(Policy):
    name = "static"

    def admits(self, running: int) -> bool:
        return running == 0
