"""One recording: a workload run against one engine configuration, traced to one file.

Everything a user can get wrong (preset, workload, scheduler knobs, device, memory) is checked
before the trace file is created, so a bad flag never leaves a half-written recording behind.
Once recording, SIGINT and SIGTERM stop the load, let the engine cancel what is in flight and
close the trace cleanly; the trace is closed on every path out, errors included. A fault stops the
run too (README, "When things go wrong"): a failed tick (RunFailed, once the trace is closed) or a
trace the disk no longer takes (the writer's TraceWriteError).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from engine.checkpoint import Checkpoint, check_weights, open_checkpoint
from engine.config import ModelConfig, check_fits, get_preset
from engine.engine import Engine, resolve_device
from engine.errors import ConfigError, EngineFailed, StageLost
from engine.kv_cache import BlockAllocator
from engine.launch import launch_stages
from engine.probe import probe
from engine.scheduler import SchedulerConfig
from tracer.events import SessionHeader
from tracer.writer import TraceWriter
from workloads.errors import RunFailed
from workloads.hf_tokenizer import HFTokenizer, checkpoint_tokenizer
from workloads.loadgen import LoadResult, Progress, run_load
from workloads.signals import stop_on_signals
from workloads.spec import WorkloadSpec, load_workload, traffic_workload
from workloads.traffic import TrafficSpec
from workloads.versions import software_versions

# How often the run checks that the engine and the trace writer are still working: well within the
# writer's flush interval, so a full disk stops the run within one.
_WATCH_S = 0.05


@dataclass
class RecordingPlan:
    preset: str
    workload: str  # a preset name or a TOML path
    out: Path
    duration_s: float | None = None  # None: the workload's own (0 there = until stopped)
    device: str = "auto"
    seed: int | None = None  # None: weights from seed 0, load from the workload's seed
    scheduler_overrides: dict[str, Any] = field(default_factory=dict)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    distributed: bool = False  # one pipeline stage per process on torch.distributed (engine/launch.py)
    model: str | None = None  # a checkpoint directory: its weights instead of the preset's random ones
    # a production trace to send instead of the workload's load: the keys of a trace's [arrivals]
    traffic: dict[str, Any] | None = None

    def workload_spec(self) -> WorkloadSpec:
        """The workload this plan sends: its file or preset, with the trace and the seed it overrides."""
        spec = load_workload(self.workload)
        if self.traffic is not None:
            spec = traffic_workload(spec, self.traffic, "the --traffic options")
        return spec if self.seed is None else dataclasses.replace(spec, seed=self.seed)


@dataclass(frozen=True)
class RecordingResult:
    out: Path
    ticks: int
    requests_submitted: int
    requests_finished: int
    tokens_generated: int
    dropped_events: int
    interrupted: bool  # stopped by a signal before the workload's end
    traffic: TrafficSpec | None = None  # the trace replayed, with what its window sent and clipped


@dataclass(frozen=True)
class Prepared:
    """A plan resolved and checked, before anything is allocated."""

    model_cfg: ModelConfig
    sched_cfg: SchedulerConfig
    spec: WorkloadSpec
    checkpoint: Checkpoint | None  # with --model: where the weights come from


def model_of(preset: str, model: str | None, overrides: dict[str, Any]) -> tuple[ModelConfig, Checkpoint | None]:
    """The model a plan asks for: a checkpoint directory's (its config read and its shards' headers
    checked, nothing loaded), else the preset's."""
    if model is None:
        return get_preset(preset, **overrides), None
    checkpoint = open_checkpoint(model)
    model_cfg = checkpoint.model_config(**overrides)
    check_weights(checkpoint, model_cfg)
    return model_cfg, checkpoint


def prepare(plan: RecordingPlan) -> Prepared:
    """Resolve and validate the plan's configuration without allocating anything."""
    spec = plan.workload_spec()
    model_cfg, checkpoint = model_of(plan.preset, plan.model, plan.model_overrides)
    if checkpoint is not None and plan.distributed:
        raise ConfigError("a checkpoint (--model) runs in one process; it cannot be combined with --distributed")
    sched_cfg = SchedulerConfig(**{**spec.scheduler.overrides(), **plan.scheduler_overrides})
    sched_cfg.validate()
    spec = spec.with_context(context_tokens(model_cfg, sched_cfg))
    device = resolve_device(plan.device)
    if not plan.distributed:  # a distributed rank holds only its stage; the ranks check that themselves
        check_fits(model_cfg, device, sched_cfg)
    return Prepared(model_cfg, sched_cfg, spec, checkpoint)


class Recording:
    """A session ready to record: building it checks everything and allocates the model, but
    creates no file; `run` writes the trace."""

    def __init__(self, plan: RecordingPlan) -> None:
        prepared = prepare(plan)
        model_cfg, sched_cfg, self.spec = prepared.model_cfg, prepared.sched_cfg, prepared.spec
        # a checkpoint's tokenizer reads a workload's text prompts, and its EOS ends a sequence
        self.tokenizer = checkpoint_tokenizer(prepared.checkpoint)
        self.plan = plan
        if resolve_device(plan.device).type == "cpu":
            leave_a_core_free()
        # Ranks start before the trace file exists: one that cannot start leaves no file behind.
        try:
            self.stages = launch_stages(model_cfg, sched_cfg, plan.device, plan.seed or 0) if plan.distributed else None
        except StageLost as lost:
            raise RunFailed(f"{lost}; nothing was recorded") from lost
        try:
            self.engine = Engine(
                model_cfg,
                sched_cfg,
                device=plan.device,
                seed=plan.seed or 0,
                stage_group=self.stages.group if self.stages else None,
                checkpoint=prepared.checkpoint,
            )
        except BaseException:
            self.close()
            raise

    def close(self, abort: bool = False) -> None:
        """Stop the pipeline's other ranks, if any (`run` does this when it ends); `abort` after a
        failed tick, when they may be waiting mid-tick for a message that will never come."""
        if self.stages is not None:
            self.stages.close(abort)

    def _stop(self) -> EngineFailed | StageLost | None:
        """Stop the engine, then the pipeline's other ranks; returns the fault that ended the run, if
        one did: a failed tick, or a rank found gone only at the end (it died between ticks)."""
        try:
            self.engine.stop()
        except EngineFailed as failure:
            self.close(abort=True)
            return failure
        except BaseException:
            self.close(abort=True)
            raise
        try:
            self.close()
        except StageLost as lost:
            return lost
        return None

    def run(self, on_progress: Callable[[Progress], None] | None = None) -> RecordingResult:
        """Record to `plan.out`; blocks until the workload ends, a signal stops it or a fault does
        (RunFailed, TraceWriteError: the trace is closed either way)."""
        plan, engine, spec = self.plan, self.engine, self.spec
        header = SessionHeader(
            t0_mono_ns=time.monotonic_ns(),
            t0_wall_ns=time.time_ns(),
            config=session_config(
                engine,
                None if plan.model else plan.preset,
                plan.seed,
                workload=spec.to_dict(),
                duration_s=spec.duration_s if plan.duration_s is None else plan.duration_s,
            ),
        )
        writer = TraceWriter(plan.out, header)
        engine.recorder = writer
        try:
            engine.start()
            try:
                load = asyncio.run(_drive(engine, spec, writer, plan.duration_s, on_progress, self.tokenizer))
            finally:
                fault = self._stop()
        finally:
            writer.close()
        if fault is not None:
            failed = sum(r.status == "failed" for r in load.records)
            raise RunFailed(fault_line(fault, failed, writer)) from fault
        return RecordingResult(
            out=plan.out,
            ticks=engine.ticks,
            requests_submitted=len(load.records),
            requests_finished=sum(r.status == "finished" for r in load.records),
            tokens_generated=engine.tokens_generated,
            dropped_events=writer.dropped,
            interrupted=load.stopped,
            traffic=spec.arrivals.traffic,
        )


def context_tokens(model_cfg: ModelConfig, sched_cfg: SchedulerConfig) -> int:
    """The most tokens (prompt + output) the engine takes in one request: its `_check`'s bound."""
    return min(
        model_cfg.max_seq_len, BlockAllocator(sched_cfg.kv_capacity_tokens, sched_cfg.kv_block_size).capacity_tokens
    )


def record(plan: RecordingPlan, on_progress: Callable[[Progress], None] | None = None) -> RecordingResult:
    """Check, build and record one session."""
    return Recording(plan).run(on_progress)


async def _drive(
    engine: Engine,
    spec: WorkloadSpec,
    writer: TraceWriter,
    duration_s: float | None,
    on_progress: Callable[[Progress], None] | None,
    tokenizer: HFTokenizer | None,
) -> LoadResult:
    with stop_on_signals() as stop:
        watchdog = asyncio.create_task(stop_on_fault(stop, engine, writer))
        try:
            return await run_load(
                engine,
                spec,
                writer,
                vocab_size=engine.model_cfg.vocab_size,
                duration_s=duration_s,
                on_progress=on_progress,
                stop=stop,
                tokenizer=tokenizer,
            )
        finally:
            watchdog.cancel()


class Fallible(Protocol):
    """What a run watches: the engine (or the server standing in for it) and the trace writer."""

    @property
    def error(self) -> BaseException | None: ...


async def stop_on_fault(stop: asyncio.Event, *watched: Fallible) -> None:
    """A failed engine or a target gone answers nothing more, and a trace the disk refuses records
    nothing more: the first error among `watched` sets `stop` (within _WATCH_S), so the run ends and
    says why at once."""
    while all(w.error is None for w in watched):
        await asyncio.sleep(_WATCH_S)
    stop.set()


def fault_line(fault: BaseException, failed: int, writer: TraceWriter) -> str:
    """A run's one line after a fault, once its trace is closed: what happened, what became of the
    requests in flight, what the trace holds."""
    return f"{fault}: {failed} request{'' if failed == 1 else 's'} in flight failed; {writer.path} holds {writer.holds}"


def leave_a_core_free() -> None:
    """On the CPU, torch's intra-op threads spin while they wait; sharing every core with the load
    generator, the trace writer and (in the demo) the dashboard makes each tick several times
    slower than the model is. One core is left to the rest."""
    torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1)))


def session_config(engine: Engine, preset: str | None, seed: int | None, **more: Any) -> dict[str, Any]:
    """The trace header's configuration: the engine's own description (with a checkpoint, its
    `checkpoint` entry names it), what it was built from (the preset: None for a checkpoint),
    the software it ran on, the device's measured roofline (engine/probe.py, for costing the recording
    on its own device) and what the caller adds (the workload, the serving address)."""
    config = engine.describe()
    config.update(
        preset=preset,
        seed=seed or 0,
        versions=software_versions(),
        device_probe=probe(engine.device, engine.dtype),
        **more,
    )
    return config
