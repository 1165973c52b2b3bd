"""What a scheduling policy decides, and its defaults: tick as soon as there is work, admit always."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # the scheduler imports torch; a policy must not, for the command line's sake
    from engine.scheduler import SchedulerConfig


@dataclass(frozen=True)
class Policy:
    """When the next tick starts, and whether it admits waiting requests.

    A subclass in a module of engine/policies is found by the registry (engine/policies/__init__.py)
    under its `name`. The engine asks `wait_ns` while there is work, again after every arrival, and
    ticks once it answers 0 or less; the scheduler asks `admits` after placing the running sequences.
    """

    name: ClassVar[str]
    # whether the policy waits for a collection window (`window_ms`): the trace header records it as
    # `scheduler.has_window`, so readers show the window without knowing each policy
    has_window: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: SchedulerConfig) -> Policy:
        """The policy with the scheduler knobs it needs."""
        return cls()

    def wait_ns(self, now_ns: int, last_tick_ns: int, oldest_arrival_ns: int | None, running: int) -> int:
        """How long to wait before the next tick: `last_tick_ns` is when the previous tick started,
        `oldest_arrival_ns` the head of the queue's arrival (None: nothing waits), `running` the
        sequences holding KV. There is work (running or waiting) whenever this is asked."""
        return 0

    def admits(self, running: int) -> bool:
        """Whether this tick may admit from the queue, with `running` sequences still holding KV."""
        return True
