"""Continuous batching: tick whenever there is work, and admit into every tick."""

from __future__ import annotations

from dataclasses import dataclass

from engine.policies.base import Policy


@dataclass(frozen=True)
class Continuous(Policy):
    name = "continuous"
