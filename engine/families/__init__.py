"""The checkpoint families tickscope loads, one small adapter each over the one model (engine/model.py),
in one registry keyed by the `architectures` names of a Hugging Face config.json. What an adapter is:
engine/families/base.py. Adding a family: a module with a `FAMILY`, listed in FAMILIES."""

from __future__ import annotations

from typing import Any

from engine.errors import ConfigError
from engine.families import deepseek, mixtral, olmoe, qwen2_moe, qwen3_moe
from engine.families.base import Family, Placement

FAMILIES: tuple[Family, ...] = (qwen3_moe.FAMILY, qwen2_moe.FAMILY, olmoe.FAMILY, mixtral.FAMILY, deepseek.FAMILY)

REGISTRY: dict[str, Family] = {architecture: f for f in FAMILIES for architecture in f.architectures}


def family_for(config: dict[str, Any]) -> tuple[str, Family]:
    """The architecture config.json names, and its family; a ConfigError naming the supported ones."""
    names = config.get("architectures")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"config.json names no architectures (supported: {', '.join(REGISTRY)})")
    for name in names:
        if name in REGISTRY:
            return name, REGISTRY[name]
    raise ConfigError(f"unsupported architecture {', '.join(names)} (supported: {', '.join(REGISTRY)})")


__all__ = ["FAMILIES", "REGISTRY", "Family", "Placement", "family_for"]
