"""Starting a distributed pipeline's ranks: what rank 0 does when one of them fails to start."""

from __future__ import annotations

import time

import pytest
import torch.distributed as dist

import engine.launch
from engine.config import get_preset
from engine.distributed import JOIN_TIMEOUT
from engine.errors import StageLost
from engine.launch import launch_stages
from engine.scheduler import SchedulerConfig

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not in this torch build",
)


def dies_at_start(*args: object) -> None:
    """A spawned rank whose start fails before it joins (it runs in the child: spawn imports this module)."""
    raise RuntimeError("no such device")


def test_a_rank_that_dies_before_joining_is_named_at_once(monkeypatch):
    """Not after the rendezvous's JOIN_TIMEOUT: rank 0 watches the ranks it spawned while it waits."""
    monkeypatch.setattr(engine.launch, "_spawned_worker", dies_at_start)
    started = time.monotonic()
    with pytest.raises(StageLost) as lost:
        launch_stages(get_preset("tiny"), SchedulerConfig(stages=2), "cpu", seed=0)
    assert time.monotonic() - started < JOIN_TIMEOUT.total_seconds() / 4
    said = "rank 1 (stage 1, layers 2–3) exited with code 1 before joining the pipeline: RuntimeError: no such device"
    assert str(lost.value) == said


def test_record_says_so_in_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    from tui.cli import main

    monkeypatch.setattr(engine.launch, "_spawned_worker", dies_at_start)
    out = tmp_path / "never.msgpack"
    argv = ["record", "--stages", "2", "--distributed", "--device", "cpu", "--duration", "2", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "tickscope record: error: rank 1 (stage 1, layers 2–3) exited with code 1 before joining the pipeline: "
        "RuntimeError: no such device; nothing was recorded"
    )
    assert not out.exists()
