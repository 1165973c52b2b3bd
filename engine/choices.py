"""The engine's named choices, each written once as a `Literal` alias with its values beside it.

The command line and the workload files offer these before anything has imported torch, and the
scheduler checks them: so this module imports nothing heavy. Scheduling policies are not listed
here: each is a module of engine/policies, and `engine.policies.policy_names()` names them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from engine.errors import ConfigError

# one attention call for the batch, or one per group of sequences with the same key length
Grouping = Literal["ragged", "same-length"]
GROUPINGS: tuple[Grouping, ...] = get_args(Grouping)

# decode-only ticks replayed as CUDA graphs: auto on CUDA when they apply, on also on the CPU (eagerly)
DecodeGraphs = Literal["auto", "on", "off"]
DECODE_GRAPHS: tuple[DecodeGraphs, ...] = get_args(DecodeGraphs)

# how the decode graphs' forward pass is torch.compiled before capture
DecodeCompile = Literal["off", "inductor", "aot_eager"]
DECODE_COMPILE: tuple[DecodeCompile, ...] = get_args(DecodeCompile)

# whether the engine plans and fills tick n+1 while the device runs tick n: auto on CUDA, in one process
PlanAhead = Literal["auto", "on", "off"]
PLAN_AHEAD: tuple[PlanAhead, ...] = get_args(PlanAhead)

# where the engine runs, as the command line offers it (the engine also takes "cuda:N")
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[Device, ...] = get_args(Device)


def check_choice(what: str, value: str, options: Iterable[str]) -> None:
    """A ConfigError of one line naming the known values, unless `value` is one of `options`."""
    options = tuple(options)
    if value not in options:
        raise ConfigError(f"unknown {what} '{value}' (choose from: {', '.join(options)})")
