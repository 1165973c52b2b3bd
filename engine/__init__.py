"""The system under trace: a DeepSeek-style MoE model, its KV cache, the scheduler and the tick loop."""

from engine.config import PRESETS, ModelConfig, get_preset
from engine.engine import Engine
from engine.errors import ConfigError
from engine.request import Request, RequestSink
from engine.scheduler import SchedulerConfig

__all__ = ["PRESETS", "ConfigError", "Engine", "ModelConfig", "Request", "RequestSink", "SchedulerConfig",
           "get_preset"]
