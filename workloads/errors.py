"""The errors of a run, re-exported or defined here so the command line need not reach the engine:
a user's (ConfigError), and a fault that stopped a run that had started (RunFailed)."""

from engine.errors import ConfigError


class RunFailed(Exception):
    """A run stopped by a fault that is not a bug (the engine's tick raised, a pipeline rank was lost,
    the target server went away). The message is one line: what happened, what became of the
    requests in flight, and what the trace holds; the trace is closed."""


__all__ = ["ConfigError", "RunFailed"]
