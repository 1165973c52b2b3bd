"""A collection window: each tick waits `window_ms` collecting arrivals, then admits them together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.policies.base import Policy

if TYPE_CHECKING:
    from engine.scheduler import SchedulerConfig


@dataclass(frozen=True)
class Window(Policy):
    name = "window"
    has_window = True
    window_ms: float = 0.0

    @classmethod
    def from_config(cls, cfg: SchedulerConfig) -> Policy:
        return cls(cfg.window_ms)

    def deadline_ns(self, last_tick_ns: int, oldest_arrival_ns: int | None, running: int) -> int:
        """When the window closes (monotonic ns).

        The window opens when the previous tick starts; if nothing is running, not before the oldest
        waiting request arrived, so a request reaching an idle engine waits one whole window, as in
        the article, rather than riding on a window that opened while nobody was there.
        """
        opens = last_tick_ns if running or oldest_arrival_ns is None else max(last_tick_ns, oldest_arrival_ns)
        return opens + int(self.window_ms * 1e6)

    def wait_ns(self, now_ns: int, last_tick_ns: int, oldest_arrival_ns: int | None, running: int) -> int:
        return self.deadline_ns(last_tick_ns, oldest_arrival_ns, running) - now_ns
