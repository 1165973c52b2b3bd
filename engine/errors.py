"""Errors a user can cause: shown as one line, never as a traceback."""


class ConfigError(ValueError):
    """An impossible or unknown configuration (preset, scheduler knob, device)."""
