"""The system under trace: a DeepSeek-style MoE model, its KV cache, the scheduler and the tick loop."""

import importlib

from engine.errors import ConfigError
from engine.request import Request, RequestSink

# Names built on torch are imported on first use, so that importing a light module of this package
# (engine.choices, engine.policies: what the command line offers) does not load torch.
_ON_TORCH = {
    "PRESETS": "engine.config",
    "ModelConfig": "engine.config",
    "get_preset": "engine.config",
    "Engine": "engine.engine",
    "SchedulerConfig": "engine.scheduler",
}


def __getattr__(name: str) -> object:
    if name in _ON_TORCH:
        return getattr(importlib.import_module(_ON_TORCH[name]), name)
    raise AttributeError(f"module 'engine' has no attribute '{name}'")


__all__ = ["PRESETS", "ConfigError", "Engine", "ModelConfig", "Request", "RequestSink", "SchedulerConfig", "get_preset"]
