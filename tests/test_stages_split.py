"""Which layers each stage holds: balanced by weight bytes or given; the model and KV cache of one
stage; the tick's micro-batches on the wire between ranks; the pipeline flags on the command line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.batch import SeqChunk
from engine.config import get_preset
from engine.distributed import pick_device
from engine.errors import ConfigError
from engine.kv_cache import BlockAllocator
from engine.launch import launch_stages
from engine.model import Transformer
from engine.pipeline import (
    balance_layers,
    explicit_layers,
    layer_param_counts,
    parse_stage_layers,
    plan_pipeline,
    stage_param_bytes,
    stage_weights,
)
from engine.scheduler import SchedulerConfig
from engine.stage_wire import decode_tick, encode_tick
from tui.cli import build_parser
from tui.cli.options import plan_from_args


def test_balance_minimises_the_heaviest_stage():
    assert balance_layers(np.array([4, 1, 1, 1, 1, 4]), 3) == [range(0, 1), range(1, 5), range(5, 6)]
    assert balance_layers(np.ones(4, dtype=np.int64), 2) == [range(0, 2), range(2, 4)]
    split = balance_layers(np.ones(27, dtype=np.int64), 4)
    assert [i for r in split for i in r] == list(range(27)) and sorted(len(r) for r in split) == [6, 7, 7, 7]
    with pytest.raises(ConfigError, match="5 stages"):
        balance_layers(np.ones(4, dtype=np.int64), 5)


def test_embedding_and_head_weigh_on_the_first_and_last_stage():
    tiny = get_preset("tiny")
    _, per_layer, _ = layer_param_counts(tiny)
    # a vocabulary whose embedding (and LM head) weighs as much as three decoder layers
    cfg = dataclasses.replace(tiny, layers=6, vocab_size=3 * per_layer // tiny.hidden)
    assert stage_weights(cfg).sum() == cfg.param_count()
    split = plan_pipeline(cfg, 3, (), 1, 0, "gpipe").stage_layers
    assert [len(r) for r in split] == [1, 4, 1]  # an even split (2, 2, 2) would load the ends double
    assert sum(stage_param_bytes(cfg, r, 4) for r in split) == cfg.param_bytes(torch.float32)


def test_explicit_stage_layers():
    assert explicit_layers((3, 3, 2), 8) == [range(0, 3), range(3, 6), range(6, 8)]
    assert parse_stage_layers("3,3,2") == (3, 3, 2)
    with pytest.raises(ConfigError, match="add up to 7"):
        explicit_layers((3, 2, 2), 8)
    for bad in ("3,x", "3,0"):
        with pytest.raises(ConfigError):
            parse_stage_layers(bad)
    with pytest.raises(ConfigError, match="2 stage layer counts given for 3 stages"):
        SchedulerConfig(stages=3, stage_layers=(2, 2)).validate()
    with pytest.raises(ConfigError, match="schedule"):
        SchedulerConfig(schedule="zigzag").validate()


def test_a_stage_holds_only_its_layers_with_the_same_weights():
    cfg = get_preset("tiny")
    whole = Transformer(cfg, torch.device("cpu"), torch.float32, seed=3)
    last = Transformer(cfg, torch.device("cpu"), torch.float32, seed=3, owned=range(2, 4))
    assert last.embed is None and last.lm_head is not None
    assert torch.equal(last.layers[3].moe.w13, whole.layers[3].moe.w13) and torch.equal(last.lm_head, whole.lm_head)
    with pytest.raises(RuntimeError, match="another pipeline stage"):
        last.layers[0](None)
    held = sum(p.numel() for p in last.parameters())
    assert held == stage_param_bytes(cfg, range(2, 4), 1)  # its layers, the head, the final norm


def test_micro_batches_survive_the_wire():
    alloc = BlockAllocator(256, block_size=4)
    alloc.grow(7, 10)
    alloc.grow(8, 3)
    parts = [
        [SeqChunk([5, 6, 7], 0, alloc.blocks(7, 3), 4, False), SeqChunk([9], 2, alloc.blocks(8, 3), 4, True)],
        [SeqChunk([1, 2], 8, alloc.blocks(7, 10), 4, True)],
    ]
    back = decode_tick(encode_tick(parts), 4)
    assert [[(c.tokens, c.start, c.blocks, c.block_size, c.sample) for c in p] for p in back] == [
        [(c.tokens, c.start, c.blocks, c.block_size, c.sample) for c in p] for p in parts
    ]


def test_pipeline_flags_reach_the_scheduler_config():
    args = build_parser().parse_args(
        ["record", "--out", "x.msgpack", "--stage-layers", "3,1", "--micro-batch-size", "4", "--distributed"]
    )
    plan = plan_from_args(args, args.out, None)
    assert plan.distributed
    assert plan.scheduler_overrides == {"stages": 2, "stage_layers": (3, 1), "micro_batch_size": 4}
    with pytest.raises(SystemExit):  # a count and a size of micro-batches contradict each other
        build_parser().parse_args(["record", "--out", "x", "--micro-batches", "2", "--micro-batch-size", "4"])


def test_a_distributed_pipeline_is_refused_before_any_process_starts():
    with pytest.raises(ConfigError, match="at least 2 stages"):
        launch_stages(get_preset("tiny"), SchedulerConfig(stages=1), "cpu", 0)
    with pytest.raises(ConfigError, match="exceed"):
        launch_stages(get_preset("tiny"), SchedulerConfig(stages=5), "cpu", 0)
    assert pick_device("cpu", 1, 2) == (torch.device("cpu"), "gloo")
    if torch.cuda.device_count() < 2:
        with pytest.raises(ConfigError, match="one GPU per rank"):
            pick_device("cuda", 1, 2)
