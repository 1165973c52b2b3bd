"""A distributed pipeline that idles longer than any control message may wait: the other ranks wait
for the next tick on a group of their own, whose timeout no idle engine reaches."""

from __future__ import annotations

import datetime
import time

import pytest
import torch.distributed as dist

from decode_runs import Tokens
from engine.config import get_preset
from engine.engine import Engine
from engine.launch import launch_stages
from engine.request import Request
from engine.scheduler import SchedulerConfig

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not in this torch build",
)


def test_an_idle_gloo_pipeline_outlives_a_message_timeout_shorter_than_its_idle_time():
    cfg, sched = get_preset("tiny"), SchedulerConfig(stages=2)
    stages = launch_stages(cfg, sched, "cpu", 0, timeout=datetime.timedelta(seconds=2))
    try:
        engine = Engine(cfg, sched, device="cpu", stage_group=stages.group)
        sinks = [Tokens(), Tokens()]
        for i, sink in enumerate(sinks):
            engine.submit(Request(i, [1, 2, 3, 4], 3, sink))
            while engine.step():
                pass
            if i == 0:
                time.sleep(5)  # rank 1 waits for the next tick: past the 2 s any message may wait
    finally:
        stages.close()
    alone = Engine(cfg, SchedulerConfig(), device="cpu")
    reference = Tokens()
    alone.submit(Request(0, [1, 2, 3, 4], 3, reference))
    while alone.step():
        pass
    assert sinks[0].tokens == sinks[1].tokens == reference.tokens and len(reference.tokens) == 3
