"""The user-error type of a recording, re-exported so the command line need not reach the engine."""

from engine.errors import ConfigError

__all__ = ["ConfigError"]
