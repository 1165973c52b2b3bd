"""The scheduling policies' registry: one module per policy, found without torch, named in errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import engine.policies
from engine.errors import ConfigError
from engine.kv_cache import BlockAllocator
from engine.policies import make_policy, policy_names
from engine.policies.static import Static
from engine.policies.window import Window
from engine.scheduler import Scheduler, SchedulerConfig
from tui.cli import build_parser


def test_the_registry_names_each_policy_module_once():
    assert policy_names() == ("continuous", "static", "window")
    assert make_policy(SchedulerConfig(policy="window", window_ms=5)) == Window(5.0)
    assert [make_policy(SchedulerConfig(policy=n)).has_window for n in policy_names()] == [False, False, True]


def test_an_unknown_policy_is_one_line_naming_the_known_ones():
    with pytest.raises(ConfigError) as err:
        SchedulerConfig(policy="eager").validate()
    assert str(err.value) == "unknown scheduler policy 'eager' (choose from: continuous, static, window)"


def test_policies_decide_waits_and_admissions():
    ms = 1_000_000
    assert make_policy(SchedulerConfig()).wait_ns(5 * ms, 0, 0, running=0) <= 0  # continuous: at once
    assert Static().wait_ns(5 * ms, 0, 0, running=3) <= 0 and not Static().admits(3) and Static().admits(0)
    assert Window(20.0).wait_ns(5 * ms, 0, 0, running=3) == 15 * ms and Window(20.0).admits(3)


_NEW_POLICY = '''
from dataclasses import dataclass

from engine.policies.base import Policy


@dataclass(frozen=True)
class Alternate(Policy):
    """Stands for any new policy: admits only every other tick."""

    name = "alternate"

    def admits(self, running: int) -> bool:
        return running % 2 == 0
'''


@pytest.fixture
def new_policy_module(tmp_path, monkeypatch):
    """A policy module dropped into the package, as a contributor would add one."""
    (tmp_path / "alternate.py").write_text(_NEW_POLICY)
    monkeypatch.setattr(engine.policies, "__path__", [*engine.policies.__path__, str(tmp_path)])
    engine.policies._registry.cache_clear()
    yield
    engine.policies._registry.cache_clear()
    sys.modules.pop("engine.policies.alternate", None)


def test_a_new_policy_is_one_module(new_policy_module):
    assert "alternate" in policy_names()
    cfg = SchedulerConfig(policy="alternate")
    cfg.validate()
    scheduler = Scheduler(cfg, BlockAllocator(64, 16))
    assert scheduler.policy.name == "alternate" and not scheduler.policy.has_window
    args = build_parser().parse_args(["record", "--out", "x.msgpack", "--policy", "alternate"])
    assert args.policy == "alternate"


def test_choices_and_policies_import_without_torch():
    """The command line offers them before it decides whether it needs the engine at all."""
    code = (
        "import sys; import engine.choices, engine.policies, workloads.spec, tui.cli; "
        "tui.cli.build_parser(); engine.policies.policy_names(); assert 'torch' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
