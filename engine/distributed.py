"""One pipeline stage per process, on torch.distributed: the process group, the device each rank
uses, and the clock offsets between ranks.

Activations go over the default group (NCCL between GPUs, gloo on the CPU); the tick's batch
metadata, the per-tick results and the clock ping-pong over a gloo group on the host, so control
never waits for a device copy. The announcement of each tick has a gloo group of its own, whose
timeout no idle engine reaches (a long collection window, a gap in the load): the other ranks wait
there between ticks. Every pair of ranks that exchanges activations sends once when the group is
joined: NCCL builds a pair's communicator at its first message, which would otherwise be timed in
the first tick, as a bubble.

A rank that dies closes its connections: its peers' next message to or from it fails at once. A rank
that hangs is noticed when a message waits past JOIN_TIMEOUT. Either way the error becomes StageLost
(`StageGroup.lost`), naming the rank and its stage.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from engine.errors import ConfigError, StageLost

if TYPE_CHECKING:  # torch.distributed re-exports Store without __all__, which mypy does not count as public
    from torch._C._distributed_c10d import Store

# How long ranks wait for each other to join, and for any one message: a rank that died shows up
# as an error after this, never as a recording that hangs forever.
JOIN_TIMEOUT = datetime.timedelta(seconds=120)
# How long the other ranks wait for rank 0 to announce the next tick: longer than any idle engine.
IDLE_TIMEOUT = datetime.timedelta(days=365)
CLOCK_ROUNDS = 16  # ping-pongs per rank; the one with the shortest round trip gives the offset
# How long a rank that lost a peer waits to see that peer's process end (its connections close a
# moment before its parent can see it has exited), to say how it ended.
_REAPED_S = 1.0


def pick_device(device: str, local_rank: int, local_world_size: int) -> tuple[torch.device, str]:
    """This rank's device and the backend: NCCL when every rank on this host has a GPU of its own,
    else gloo on the CPU (`auto`), or an error when CUDA was asked for. Every rank of a host decides
    alike, so the ranks agree on the backend."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cpu":
        return torch.device("cpu"), "gloo"
    enough = gpus >= local_world_size and dist.is_nccl_available()
    if device.startswith("cuda") and not enough:
        raise ConfigError(
            f"--distributed on cuda needs one GPU per rank ({local_world_size} ranks on this host), "
            f"but {gpus} CUDA device(s) are present (use --device cpu)"
        )
    if device not in ("auto", "cuda") and not device.startswith("cuda"):
        raise ConfigError(f"unknown device '{device}' (choose from: auto, cpu, cuda)")
    return (torch.device("cuda", local_rank), "nccl") if enough else (torch.device("cpu"), "gloo")


@dataclass
class StageGroup:
    """This process's place in the pipeline. Clock figures are measured by rank 0 (rank r's clock
    minus rank 0's; rank 0's own entry is 0) and stay empty on the other ranks."""

    rank: int
    world_size: int
    backend: str
    device: torch.device
    control: Any  # the gloo process group for metadata, results and clocks
    announce: Any  # the gloo process group on which rank 0 announces each tick (IDLE_TIMEOUT)
    launcher: str  # "torch.multiprocessing" or "torchrun"
    clock_offsets_ns: list[int] = field(default_factory=list)
    clock_rtt_ns: list[int] = field(default_factory=list)
    # rank -> how its process ended ("killed by signal 9"), for the ranks this process started whose
    # process ended other than when told to stop (then with code 0)
    ended: Callable[[], dict[int, str]] | None = field(default=None, repr=False)
    stage_layers: list[range] = field(default_factory=list, repr=False)  # each rank's layers, for messages

    def lost(self, error: RuntimeError, peer: int | None = None) -> StageLost | None:
        """`error`, raised by a message to or from `peer` (None: a broadcast, or not known), as the
        loss of a rank: the first rank this process started that has ended, else `peer`; None when
        it is not a transport error (a kernel's, say) and no rank has ended."""
        transport = isinstance(error, dist.DistError) or any(word in str(error) for word in ("gloo", "NCCL"))
        deadline = time.monotonic() + (_REAPED_S if transport and self.ended is not None else 0.0)
        while (gone := self.gone()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if gone is not None or not transport:
            return gone
        # gloo: "[.../pair.cc:537] Read error [127.0.0.1]:65169: Connection reset by peer. This is ..."
        detail = str(error).split("] ", 1)[-1].split(". ")[0].strip()
        who = self.name(peer) if peer is not None else "a rank of the pipeline"
        return StageLost(f"{who} stopped answering ({detail})")

    def gone(self) -> StageLost | None:
        """The first rank this process started whose process has ended unbidden, or None."""
        ended = self.ended() if self.ended is not None else {}
        if not ended:
            return None
        rank = min(ended)
        return StageLost(f"{self.name(rank)} is gone ({ended[rank]})")

    def name(self, rank: int) -> str:
        return rank_name(rank, self.stage_layers)

    def describe(self) -> dict[str, Any]:
        """For the trace header: how the ranks ran and how their clocks were aligned."""
        return {
            "ranks": self.world_size,
            "backend": self.backend,
            "launcher": self.launcher,
            "clock_offsets_ns": self.clock_offsets_ns,
            "clock_rtt_ns": self.clock_rtt_ns,
            "clock_sync": f"min-RTT of {CLOCK_ROUNDS} ping-pongs per rank, offset = midpoint estimate",
            "merge": "per tick: every rank sends its cells to rank 0, which shifts them by the offsets",
        }


def rank_name(rank: int, stage_layers: Sequence[range]) -> str:
    """ "rank 1 (stage 1, layers 2–3)": one stage per rank, rank r serving stage r."""
    if rank < len(stage_layers):
        layers = stage_layers[rank]
        span = f"layer {layers.start}" if len(layers) == 1 else f"layers {layers.start}–{layers.stop - 1}"
        return f"rank {rank} (stage {rank}, {span})"
    return f"rank {rank} (stage {rank})"


def started_key(rank: int) -> str:
    """The store key a spawned rank sets once it is about to join the process group: rank 0 waits
    for them all before it joins (engine/launch.py), watching for a rank that died on the way."""
    return f"tickscope/started/{rank}"


def join(
    rank: int,
    world_size: int,
    device: str,
    local_rank: int,
    local_world_size: int,
    launcher: str,
    store: Store | None = None,
    timeout: datetime.timedelta = JOIN_TIMEOUT,
) -> StageGroup:
    """Join the process group (from `store`, or torchrun's environment when None), then, on every
    rank together, send once over every activation link and measure the clock offsets. `timeout`:
    how long a message of the control group may wait (joining and activations: JOIN_TIMEOUT; the
    announcement of the next tick: IDLE_TIMEOUT)."""
    dev, backend = pick_device(device, local_rank, local_world_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if store is not None and rank > 0:
        store.set(started_key(rank), "1")
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=JOIN_TIMEOUT,
        init_method=None if store is not None else "env://",
    )
    control = dist.new_group(backend="gloo", timeout=timeout)
    announce = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    group = StageGroup(rank, world_size, backend, dev, control, announce, launcher)
    warm_up_links(rank, world_size, dev)
    offsets, rtts = sync_clocks(rank, world_size, control)
    group.clock_offsets_ns, group.clock_rtt_ns = offsets, rtts
    return group


def warm_up_links(rank: int, world_size: int, device: torch.device) -> None:
    """One message down the pipeline, rank r to r + 1, over the activations' group and device."""
    buf = torch.zeros(1, device=device)
    if rank > 0:
        dist.recv(buf, rank - 1)
    if rank < world_size - 1:
        dist.send(buf, rank + 1)


def sync_clocks(rank: int, world_size: int, control: Any, rounds: int = CLOCK_ROUNDS) -> tuple[list[int], list[int]]:
    """Rank 0 pings each rank in turn; the rank answers with its monotonic clock. With t0, t1 rank 0's
    send and receive times and tr the answer, offset = tr - (t0 + t1) / 2, wrong by at most half the
    round trip; of all rounds the shortest round trip is kept. Returns (offsets, round trips) on rank
    0, ([], []) elsewhere."""
    buf = torch.zeros(1, dtype=torch.int64)
    if rank != 0:
        for _ in range(rounds):
            dist.recv(buf, 0, group=control)
            buf[0] = time.monotonic_ns()
            dist.send(buf, 0, group=control)
        return [], []
    offsets, rtts = [0], [0]
    for r in range(1, world_size):
        best_rtt, best_offset = np.iinfo(np.int64).max, 0
        for _ in range(rounds):
            t0 = time.monotonic_ns()
            dist.send(buf, r, group=control)
            dist.recv(buf, r, group=control)
            t1 = time.monotonic_ns()
            if t1 - t0 < best_rtt:
                best_rtt, best_offset = t1 - t0, int(buf[0]) - (t0 + t1) // 2
        offsets.append(int(best_offset))
        rtts.append(int(best_rtt))
    return offsets, rtts


def torchrun_env() -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, local world size) when torchrun started this process, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))


def leave() -> None:
    """Leave the process group (every rank, at the end)."""
    if dist.is_initialized():
        dist.destroy_process_group()
