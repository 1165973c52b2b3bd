"""The engine's errors: those a user can cause, and the faults that stop a running engine. Each is
shown as one line, never as a traceback."""

from __future__ import annotations

import traceback
from pathlib import Path


class ConfigError(ValueError):
    """An impossible or unknown configuration (preset, scheduler knob, device)."""


class StageLost(RuntimeError):
    """A pipeline rank stopped answering (its process died, or hung past the process group's
    timeout): which rank, its stage and layers, and what is known of why. One line."""


class EngineFailed(RuntimeError):
    """The tick loop stopped on an exception (`__cause__`): the tick it was running, and what it raised.

    The message is one line: "the engine failed at tick 57: RuntimeError: CUDA out of memory (at
    engine/model.py:212)", where the place is the innermost line of the engine's own code that was
    running; a lost pipeline rank (StageLost) is said as it is, with no place.
    """

    def __init__(self, tick: int, error: BaseException) -> None:
        super().__init__(f"the engine failed at tick {tick}: {_describe(error)}")
        self.tick = tick


def _describe(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0][:300]
    if isinstance(error, StageLost):
        return first
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    place = _innermost_own_line(error)
    return f"{text} (at {place})" if place else text


def _innermost_own_line(error: BaseException) -> str | None:
    """ "engine/model.py:212": where the engine's own code was when `error` was raised (the frames past
    it are torch's, or a test's)."""
    package = Path(__file__).resolve().parent
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(package):
            return f"{path.relative_to(package.parent)}:{frame.lineno}"
    return None
