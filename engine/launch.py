"""Starting the ranks of a distributed pipeline: spawned here with torch.multiprocessing, or already
started by torchrun (its RANK / WORLD_SIZE / MASTER_ADDR environment), one stage per rank.

Rank 0 is the calling process: it keeps the scheduler, the load generator and the trace writer.
When a tick fails (a rank lost, or any other error) rank 0 kills the ranks it started rather than
wait for them; the others, torchrun's, see their connections to it close and exit with one line.
"""

from __future__ import annotations

import datetime
import functools
import os
import signal
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import ProcessContext, ProcessException, ProcessRaisedException, start_processes

from engine.config import ModelConfig, check_fits
from engine.distributed import (
    JOIN_TIMEOUT,
    StageGroup,
    join,
    leave,
    pick_device,
    rank_name,
    started_key,
    torchrun_env,
)
from engine.distributed_stages import serve_stage, stop_workers
from engine.errors import ConfigError, StageLost
from engine.pipeline import PipelinePlan, check_stage_fits, plan_pipeline
from engine.scheduler import SchedulerConfig

if TYPE_CHECKING:  # torch.distributed re-exports Store without __all__, which mypy does not count as public
    from torch._C._distributed_c10d import Store

# A worker that does not exit this long after rank 0 said stop is killed.
_JOIN_S = 30.0
# How often rank 0, waiting for the ranks it spawned to start, looks for one that died instead.
_POLL_S = 0.1


class LaunchedStages:
    """Rank 0's handle on the pipeline's ranks; `close` stops and joins them (idempotent)."""

    def __init__(self, group: StageGroup, workers: ProcessContext | None, plan: PipelinePlan) -> None:
        self.group, self.workers = group, workers
        group.stage_layers = list(plan.stage_layers)
        if workers is not None:
            group.ended = functools.partial(_ended, workers)
        self._closed = False

    def close(self, abort: bool = False) -> None:
        """Tell the other ranks to stop and wait for the ones started here; with `abort` (a tick
        failed, so ranks may be gone or waiting mid-tick), kill those instead. Raises StageLost when
        a rank turns out to be gone only now (it died while the pipeline was idle)."""
        if self._closed:
            return
        self._closed = True
        lost = None if abort else self.group.gone()
        try:
            if not abort and lost is None:
                lost = self._stop()
        finally:
            try:
                if self.workers is not None and (abort or lost is not None):
                    _kill(self.workers)
                elif self.workers is not None:
                    try:
                        _join_or_kill(self.workers)
                    except ProcessException:  # one died after the others were told to stop
                        lost = self.group.gone()
                        if lost is None:
                            raise
            finally:
                leave()  # last: a worker may still be reading the stop message
        if lost is not None:
            raise lost

    def _stop(self) -> StageLost | None:
        """Tell the other ranks that no tick follows; the rank found gone doing so, if one was."""
        try:
            stop_workers(self.group)
        except RuntimeError as exc:
            lost = self.group.lost(exc)
            if lost is None:
                raise
            return lost
        return None


def _ended(workers: ProcessContext) -> dict[int, str]:
    """The started ranks whose process has ended unbidden (a rank told to stop exits with 0), and how."""
    return {
        index + 1: _how(p.exitcode) for index, p in enumerate(workers.processes) if not p.is_alive() and p.exitcode != 0
    }


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _kill(workers: ProcessContext) -> None:
    """Kill the workers still running, and reap them all."""
    for p in workers.processes:
        if p.is_alive():
            p.kill()
        p.join()


def _join_or_kill(workers: ProcessContext) -> None:
    """Wait for the workers to exit (re-raising a worker's error), killing any left after _JOIN_S."""
    deadline = time.monotonic() + _JOIN_S
    try:
        # join returns as soon as one worker exits: True once all have
        while not workers.join(timeout=max(0.0, deadline - time.monotonic())) and time.monotonic() < deadline:
            pass
    finally:
        _kill(workers)


def _plan(model_cfg: ModelConfig, sched_cfg: SchedulerConfig) -> PipelinePlan:
    return plan_pipeline(
        model_cfg,
        sched_cfg.stages,
        sched_cfg.stage_layers,
        sched_cfg.micro_batches,
        sched_cfg.micro_batch_size,
        sched_cfg.schedule,
    )


def _threads_per_rank(world_size: int) -> int:
    """On the CPU the ranks share the cores: each gets its share, so none spins on another's."""
    return max(1, (os.cpu_count() or 1) // world_size)


def launch_stages(
    model_cfg: ModelConfig,
    sched_cfg: SchedulerConfig,
    device: str,
    seed: int,
    timeout: datetime.timedelta = JOIN_TIMEOUT,
) -> LaunchedStages:
    """Rank 0's side: join the torchrun job this process belongs to, or spawn ranks 1..S-1. `timeout`:
    how long a control message may wait, when the ranks are spawned here (engine/distributed.join)."""
    world = sched_cfg.stages
    if world < 2:
        raise ConfigError("a distributed pipeline needs at least 2 stages (--stages)")
    plan = _plan(model_cfg, sched_cfg)  # a bad split is refused before any process starts
    env = torchrun_env()
    if env is not None:
        rank, env_world, local_rank, local_world = env
        if env_world != world or rank != 0:
            raise ConfigError(
                f"torchrun started {env_world} ranks (this is rank {rank}); --stages is {world}: "
                "they must match, and ranks other than 0 serve their stage"
            )
        return LaunchedStages(join(0, world, device, local_rank, local_world, "torchrun"), None, plan)
    _check_local_fits(model_cfg, sched_cfg, plan, device)
    store = dist.TCPStore(  # type: ignore[attr-defined]  # re-exported by torch.distributed without __all__
        "127.0.0.1", 0, world, True, timeout=JOIN_TIMEOUT, wait_for_workers=False
    )
    # with join=False it returns the context; torch leaves it unannotated
    workers: ProcessContext = start_processes(  # type: ignore[no-untyped-call]  # torch: unannotated
        _spawned_worker,
        args=(world, store.port, model_cfg, sched_cfg, device, seed, timeout),
        nprocs=world - 1,
        join=False,
        daemon=True,
        start_method="spawn",
    )
    try:
        torch.set_num_threads(min(torch.get_num_threads(), _threads_per_rank(world)))
        _wait_for_workers(store, workers, plan)
        group = join(0, world, device, 0, world, "torch.multiprocessing", store, timeout)
        return LaunchedStages(group, workers, plan)
    except StageLost:
        _kill(workers)
        raise
    except BaseException:
        _join_or_kill(workers)
        raise


def _wait_for_workers(store: Store, workers: ProcessContext, plan: PipelinePlan) -> None:
    """Until every spawned rank is about to join. One that ends first (its start failed: an import,
    its device, memory) ends the wait at once, named; inside the process group's rendezvous rank 0
    would wait JOIN_TIMEOUT for it."""
    keys = [started_key(r) for r in range(1, plan.stages)]
    deadline = time.monotonic() + JOIN_TIMEOUT.total_seconds()
    while not store.check(keys):  # a check, not store.wait: each wait that times out logs a warning
        if ended := _ended(workers):
            rank = min(ended)
            name = rank_name(rank, plan.stage_layers)
            raise StageLost(f"{name} {ended[rank]} before joining the pipeline{_raised(workers)}")
        if time.monotonic() > deadline:
            raise StageLost(f"the ranks did not start within {JOIN_TIMEOUT.total_seconds():.0f} s")
        time.sleep(_POLL_S)


def _raised(workers: ProcessContext) -> str:
    """ ": " and the last line of the error a failed worker raised (torch keeps its traceback), if one did."""
    try:
        workers.join(timeout=0)
    except ProcessRaisedException as e:
        return ": " + str(e).strip().splitlines()[-1]
    except ProcessException:  # killed, or exited without raising: its exit says all there is
        pass
    return ""


def _check_local_fits(model_cfg: ModelConfig, sched_cfg: SchedulerConfig, plan: PipelinePlan, device: str) -> None:
    """Before spawning: every stage on its own GPU, or all of them in this host's memory, must fit
    (a rank that failed to allocate would surface only as a broken connection)."""
    first = pick_device(device, 0, plan.stages)[0]
    if first.type == "cpu":
        check_fits(model_cfg, first, sched_cfg)  # the ranks share the host: the whole model and cache
        return
    for rank, layers in enumerate(plan.stage_layers):
        check_stage_fits(model_cfg, pick_device(device, rank, plan.stages)[0], layers, sched_cfg)


def _spawned_worker(
    index: int,
    world: int,
    port: int,
    model_cfg: ModelConfig,
    sched_cfg: SchedulerConfig,
    device: str,
    seed: int,
    timeout: datetime.timedelta,
) -> None:
    rank = index + 1  # the spawner is rank 0
    torch.set_num_threads(_threads_per_rank(world))
    store = dist.TCPStore(  # type: ignore[attr-defined]  # re-exported by torch.distributed without __all__
        "127.0.0.1", port, world, False, timeout=JOIN_TIMEOUT
    )
    _serve(join(rank, world, device, rank, world, "torch.multiprocessing", store, timeout), model_cfg, sched_cfg, seed)


def serve_from_env(model_cfg: ModelConfig, sched_cfg: SchedulerConfig, device: str, seed: int) -> int:
    """A torchrun rank other than 0: serve this rank's stage until rank 0 stops. Returns ticks served."""
    env = torchrun_env()
    if env is None:
        raise ConfigError("not started by torchrun (no RANK / WORLD_SIZE / MASTER_ADDR in the environment)")
    rank, world, local_rank, local_world = env
    if world != sched_cfg.stages:
        raise ConfigError(f"torchrun started {world} ranks but --stages is {sched_cfg.stages}")
    return _serve(join(rank, world, device, local_rank, local_world, "torchrun"), model_cfg, sched_cfg, seed)


def _serve(group: StageGroup, model_cfg: ModelConfig, sched_cfg: SchedulerConfig, seed: int) -> int:
    # Ctrl-C reaches every process of the terminal's group: rank 0 handles it and says stop; a
    # worker that died of it first would leave rank 0 waiting on a closed connection.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    plan = _plan(model_cfg, sched_cfg)
    group.stage_layers = list(plan.stage_layers)
    try:
        check_stage_fits(model_cfg, group.device, plan.stage_layers[group.rank], sched_cfg)
        return serve_stage(group, model_cfg, sched_cfg, plan, seed)
    except RuntimeError as exc:
        lost = group.lost(exc)
        if lost is None:
            raise
        raise StageLost(f"{group.name(group.rank)}: {lost}") from exc
    finally:
        leave()
