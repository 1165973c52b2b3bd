"""Scheduling policies, one module each, and the registry that finds them.

A new policy is one new module here defining a `Policy` subclass (engine/policies/base.py): the
registry imports every module of this package, so the scheduler config, workload files, the command
line and the trace header (`scheduler.has_window`) take it up with no other file changed. Nothing
here imports torch, so that the command line can list the policies before it builds an engine.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING

from engine.choices import check_choice
from engine.policies.base import Policy

if TYPE_CHECKING:
    from engine.scheduler import SchedulerConfig

__all__ = ["Policy", "make_policy", "policy_names"]


@cache
def _registry() -> dict[str, type[Policy]]:
    policies: dict[str, type[Policy]] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"):
        for obj in vars(importlib.import_module(f"{__name__}.{module}")).values():
            if isinstance(obj, type) and issubclass(obj, Policy) and obj.__module__ == f"{__name__}.{module}":
                if obj.name in policies:  # two modules claiming one name would make the choice ambiguous
                    raise RuntimeError(
                        f"policy '{obj.name}' is defined twice ({policies[obj.name].__module__}, {module})"
                    )
                policies[obj.name] = obj
    return policies


def policy_names() -> tuple[str, ...]:
    """Every policy's name, in module order: the choices the command line and workload files offer."""
    return tuple(_registry())


def make_policy(cfg: SchedulerConfig) -> Policy:
    """The policy `cfg.policy` names, with its knobs; an unknown name is a one-line ConfigError."""
    check_choice("scheduler policy", cfg.policy, policy_names())
    return _registry()[cfg.policy].from_config(cfg)
