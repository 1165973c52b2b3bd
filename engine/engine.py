"""The engine: a background thread that ticks the scheduler and the model, and reports every tick.

Threads: `submit` and `cancel` may be called from any thread and never block for long (a lock held
only while the scheduler forms a batch). Everything else, sinks included, runs on the engine thread.
Each tick has exactly one host synchronisation: reading back the new tokens and the expert load.
Planning ahead (`plan_ahead`, on by default on CUDA), the host schedules tick n+1 and builds its
inputs between launching tick n and that read-back, while the device computes: the plan does not
depend on tick n's token values, only on how many there are; the values are written in at launch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.batch import SeqChunk, attention_groups
from engine.checkpoint import Checkpoint, check_weights, load_weights
from engine.config import ModelConfig, check_fits
from engine.decode_graphs import DecodeGraphs
from engine.distributed import StageGroup
from engine.distributed_stages import DistributedExecutor
from engine.errors import ConfigError, EngineFailed
from engine.kernels import choose_expert_matmuls, grouped_mm_padded
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.pipeline import check_stage_fits, plan_pipeline, split_micro_batches
from engine.request import Request
from engine.sampling import SamplingBatch
from engine.scheduler import PENDING, Scheduler, SchedulerConfig, Sequence, TickPlan
from engine.stages import PreparedTick, StageExecutor
from tracer.events import BatchEvent, ExpertsEvent, MarkEvent, RequestEvent, RequestStatus, TickEvent
from tracer.recorder import NullRecorder, Recorder

# An idle engine blocks on its queue; this bounds how long a missed wake-up could delay it.
_IDLE_WAIT_S = 0.1
# The default recorder: one shared instance, since it holds nothing.
_UNTRACED = NullRecorder()


@dataclass
class _Planned:
    """A tick scheduled and made ready on the host, not yet launched."""

    plan: TickPlan
    prepared: PreparedTick | None  # None: nothing to run (only preemptions)
    queue_depth: int  # requests left waiting once it was scheduled
    wait_ns: int  # the policy's wait before it was planned
    start_ns: int  # when it was planned; a tick planned ahead starts when it launches instead
    ahead: bool  # planned while the tick before it ran


@dataclass
class _AfterTick:
    """What the trace says is left after a tick (sequences running, KV used), taken at its `advance`
    and corrected at `resolve` for sequences that ended at a stop token: the same numbers whether the
    next tick was planned in between or not."""

    running: int
    kv_used: int
    held: dict[int, int]  # KV blocks of each sampling sequence the tick did not finish by length


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' asked for, but no CUDA device is present (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}' (choose from: auto, cpu, cuda)") from None


class Engine:
    """Serves requests from a queue, one tick (one forward pass) at a time, on a thread of its own.

    Every request submitted ends exactly once through its sink: "finished" at one of its stop tokens
    (reason "stop"; a request without any runs to the end, as serving benchmarks do) or at
    max_new_tokens ("length"), "rejected" at once by `submit` (queue full, impossible request,
    engine stopped; called on the submitting thread), "cancelled" (by `cancel` or `stop`), or "failed"
    (a tick raised: no tick runs after it, see `_fail`).

    With a `checkpoint` (engine/checkpoint.py) the weights are its, and `model_cfg` its
    `model_config()`; else they are random from `seed`.

    With a `stage_group` (rank 0 of a distributed pipeline, engine/launch.py) this process holds only
    stage 0's layers and their KV cache on the group's device; the other ranks run the rest.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        sched_cfg: SchedulerConfig,
        *,
        device: str = "auto",
        seed: int = 0,
        recorder: Recorder = _UNTRACED,
        stage_group: StageGroup | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        model_cfg.validate()
        if checkpoint is not None and stage_group is not None:
            raise ConfigError("a checkpoint (--model) runs in one process; it cannot be combined with --distributed")
        if checkpoint is not None:
            check_weights(checkpoint, model_cfg)
        sched_cfg.validate()
        self.pipeline = plan_pipeline(
            model_cfg,
            sched_cfg.stages,
            sched_cfg.stage_layers,
            sched_cfg.micro_batches,
            sched_cfg.micro_batch_size,
            sched_cfg.schedule,
        )
        self.model_cfg, self.sched_cfg = model_cfg, sched_cfg
        self.stage_group = stage_group
        self.device = resolve_device(device) if stage_group is None else stage_group.device
        self.dtype = model_cfg.torch_dtype(self.device)
        owned = None if stage_group is None else self.pipeline.stage_layers[0]
        graphs, compile_backend = self._decode_graphs_wanted()
        # a decode step captured as a CUDA graph or compiled must not read back to the host
        fixed_shapes = graphs and (self.device.type == "cuda" or compile_backend is not None)
        matmuls = choose_expert_matmuls(model_cfg, self.device, self.dtype, fixed_shapes)
        if owned is None:
            check_fits(model_cfg, self.device, sched_cfg, padded_experts=matmuls.fixed.fn is grouped_mm_padded)
        else:
            check_stage_fits(model_cfg, self.device, owned, sched_cfg)
        self.recorder = recorder
        self.checkpoint = checkpoint
        # a checkpoint's model is built empty (nothing drawn) and filled from its files
        weights_seed = None if checkpoint is not None else seed
        self.model = Transformer(model_cfg, self.device, self.dtype, weights_seed, owned=owned, expert_matmuls=matmuls)
        if checkpoint is not None:
            load_weights(self.model, checkpoint)
        self.kv = KVCache(
            model_cfg,
            sched_cfg.kv_capacity_tokens,
            self.device,
            self.dtype,
            sched_cfg.kv_block_size,
            layers=None if owned is None else len(owned),
        )
        self.scheduler = Scheduler(sched_cfg, self.kv.allocator)
        self.graphs = (
            DecodeGraphs(
                self.model, self.kv, sched_cfg.max_seqs, compile_backend, required=sched_cfg.decode_graphs == "on"
            )
            if graphs
            else None
        )
        if stage_group is None:
            self.executor: StageExecutor | DistributedExecutor = StageExecutor(
                self.model, self.kv, self.pipeline, sched_cfg.attention, self.device, self.graphs
            )
        else:
            self.executor = DistributedExecutor(self.model, self.kv, self.pipeline, sched_cfg.attention, stage_group)

        self.ticks = 0
        self.tokens_generated = 0
        self.error: EngineFailed | None = None  # what ended the tick loop, if it failed

        self._cond = threading.Condition()  # guards the scheduler's queue and the flags below
        self._cancel_ids: set[int] = set()
        self._live: dict[int, Sequence] = {}  # submitted and not yet ended
        self._accepting = True
        self._halt = False
        self._draining = False
        self._thread: threading.Thread | None = None
        self._prev_tick_start = 0
        self._plans_ahead = self._plan_ahead_wanted()
        self._ahead: _Planned | None = None  # the next tick, when planned (while the last one ran)

    def _decode_graphs_wanted(self) -> tuple[bool, str | None]:
        """Whether decode ticks go to decode graphs, and the backend that compiles their forward pass."""
        mode = self.sched_cfg.decode_graphs  # "on" was refused with a pipeline or grouping by validate()
        plain = not self.pipeline.pipelined and self.sched_cfg.attention == "ragged" and self.stage_group is None
        backend = None if self.sched_cfg.decode_compile == "off" else self.sched_cfg.decode_compile
        if mode == "on" or (mode == "auto" and plain and self.device.type == "cuda"):
            return True, backend
        if backend is not None:
            raise ConfigError(
                "decode_compile needs decode graphs: on CUDA with one stage and ragged attention, or decode_graphs 'on'"
            )
        return False, None

    def _plan_ahead_wanted(self) -> bool:
        mode = self.sched_cfg.plan_ahead
        if mode == "on" and self.stage_group is not None:
            raise ConfigError("plan_ahead 'on' needs one process: a distributed pipeline's ticks run across its ranks")
        return mode == "on" or (mode == "auto" and self.device.type == "cuda" and self.stage_group is None)

    # --- control, from any thread ------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._loop, name="tickscope-engine", daemon=True)
        self._thread.start()

    def stop(self, drain: bool = False) -> None:
        """Stop ticking. With `drain`, first finish everything submitted so far. Whatever is still
        queued or running is cancelled ("engine stopped"). Raises EngineFailed if a tick failed."""
        with self._cond:
            self._accepting = False
            if drain:
                self._draining = True
            else:
                self._halt = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._end_all("cancelled", "engine stopped")
        if self.error is not None:
            raise self.error

    def submit(self, req: Request) -> None:
        """Queue a request. Never blocks; a request that cannot be queued ends at once as rejected."""
        now = time.monotonic_ns()
        reason = self._check(req)
        with self._cond:
            if reason is None and not self._accepting:
                reason = "engine stopped"
            if reason is None and len(self.scheduler.waiting) >= self.sched_cfg.queue_limit:
                reason = "queue full"
            if reason is None and req.id in self._live:
                reason = f"request id {req.id} is already in the engine"
            if reason is None:
                seq = Sequence(req, now, list(req.prompt))
                self._live[req.id] = seq
                self.scheduler.add(seq)
                self._cond.notify()
                return
        req.sink.on_finish("rejected", reason, time.monotonic_ns())

    def cancel(self, request_id: int) -> None:
        """End a request as cancelled at the start of the next tick (unknown or ended ids are ignored)."""
        with self._cond:
            self._cancel_ids.add(request_id)

    def describe(self) -> dict[str, Any]:
        """The engine's configuration, for the trace header."""
        cfg = self.model_cfg.as_dict()
        cfg["dtype"] = str(self.dtype).removeprefix("torch.")
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        distributed = {} if self.stage_group is None else {"distributed": self.stage_group.describe()}
        matmuls = self.model.expert_matmuls
        return {
            "model": cfg,
            # has_window: whether to show window_ms, for readers that cannot import the policies
            "scheduler": {**self.sched_cfg.as_dict(), "has_window": self.scheduler.policy.has_window},
            "device": str(self.device),
            "device_name": name,
            "param_bytes": self.model_cfg.param_bytes(self.dtype),
            "kv_bytes_per_token": self.model_cfg.kv_bytes_per_token(self.dtype),
            "kv_capacity_tokens": self.kv.allocator.capacity_tokens,
            "expert_matmul": matmuls.eager.name,
            "expert_matmul_reason": matmuls.eager.reason,
            **(
                {}
                if self.graphs is None
                else {
                    "decode_graphs_expert_matmul": matmuls.fixed.name,
                    "decode_graphs_expert_matmul_reason": matmuls.fixed.reason,
                }
            ),
            # what was asked for; what ran is marked in the trace as it happens and when the engine stops
            "decode_graphs": "off" if self.graphs is None else "cuda graphs" if self.graphs.capture else "eager",
            # whether each tick was scheduled and filled while the one before it ran
            "plans_ahead": self._plans_ahead,
            "stage_layers": [[r.start, r.stop] for r in self.pipeline.stage_layers],
            "pipeline_schedule": self.pipeline.schedule.name,
            **({} if self.checkpoint is None else {"checkpoint": self.checkpoint.describe(self.dtype)}),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            **distributed,
        }

    def _check(self, req: Request) -> str | None:
        total = len(req.prompt) + req.max_new_tokens
        if not req.prompt:
            return "empty prompt"
        if req.max_new_tokens < 1:
            return f"max_new_tokens must be at least 1, got {req.max_new_tokens}"
        if total > self.model_cfg.max_seq_len:
            return f"prompt + max_new_tokens = {total} exceeds max_seq_len {self.model_cfg.max_seq_len}"
        if total > self.kv.allocator.capacity_tokens:
            return f"prompt + max_new_tokens = {total} exceeds the KV capacity {self.kv.allocator.capacity_tokens}"
        if min(req.prompt) < 0 or max(req.prompt) >= self.model_cfg.vocab_size:
            return f"token ids must be in [0, {self.model_cfg.vocab_size})"
        if (problem := req.sampling.problem()) is not None:
            return problem
        if not req.sampling.greedy and self.stage_group is not None:
            return "a distributed pipeline decodes greedily only (temperature 0)"
        return None

    # --- the tick loop, on the engine thread ---------------------------------------------------------

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    if self._ahead is None:
                        waited_from = time.monotonic_ns()
                        if not self._wait_for_tick():
                            return
                        self._ahead = self._plan(time.monotonic_ns() - waited_from, ahead=False)
                    elif self._halted():
                        return
                    self._run_planned()
        except Exception as e:  # noqa: BLE001 - kept for stop() to re-raise; requests must still end
            self._fail(e)

    def _halted(self) -> bool:
        with self._cond:
            return self._halt

    def _fail(self, error: Exception) -> None:
        """A tick raised (out of memory on a big prefill, a bad kernel, a lost pipeline rank): the
        engine's state is no longer to be trusted, so no tick runs again. The trace gets a mark
        naming the tick, every request in flight ends as "failed" with the same words, new ones are
        refused, and `stop` raises it."""
        failure = EngineFailed(self.ticks, error)
        failure.__cause__ = error
        self.error = failure
        with self._cond:
            self._accepting = False
        self.recorder.emit(MarkEvent(time.monotonic_ns(), self.ticks, str(failure)))
        self._end_all("failed", str(failure))

    def _wait_for_tick(self) -> bool:
        """Block until the policy lets the next tick start; False when the engine is to stop."""
        with self._cond:
            while True:
                if self._halt:
                    return False
                running, waiting = self.scheduler.running, self.scheduler.waiting
                if not running and not waiting:
                    if self._draining:
                        return False
                    self._cond.wait(_IDLE_WAIT_S)
                    continue
                oldest = waiting[0].arrival_ns if waiting else None
                left = self.scheduler.policy.wait_ns(time.monotonic_ns(), self._prev_tick_start, oldest, len(running))
                if left <= 0:
                    return True
                self._cond.wait(left / 1e9)  # a submit wakes us early; the loop re-checks

    def step(self) -> bool:
        """Run one tick now, without the policy's wait (for benchmarks and tests; not while started).
        Returns whether a forward pass ran. Planning ahead, the next tick is planned when it returns."""
        if self._thread is not None:
            raise RuntimeError("step() drives a stopped engine; this one runs its own loop")
        with torch.inference_mode():
            if self._ahead is None:
                self._ahead = self._plan(0, ahead=False)
            return self._run_planned()

    def _plan(self, wait_ns: int, ahead: bool) -> _Planned:
        """Schedule a tick and make its inputs on the host. `ahead`: while the tick before it runs, so
        cancellations wait for its launch (a sequence of the running tick must not end mid-tick)."""
        start = time.monotonic_ns()
        if not ahead:
            self._cancel_requested()
        with self._cond:
            plan = self.scheduler.schedule()
            queue_depth = len(self.scheduler.waiting)
        prepared = self.executor.prepare(self._chunks(plan)) if plan.entries else None
        return _Planned(plan, prepared, queue_depth, wait_ns, start, ahead)

    def _chunks(self, plan: TickPlan) -> list[SeqChunk]:
        alloc = self.kv.allocator
        return [
            SeqChunk(
                e.seq.tokens[e.start : e.start + e.count],
                e.start,
                alloc.blocks(e.seq.id, e.start + e.count),
                alloc.block_size,
                e.samples,
            )
            for e in plan.entries
        ]

    def _run_planned(self) -> bool:
        """Run the planned tick: launch it, plan the next while it runs (when planning ahead), read it
        back, commit and report it. Returns whether a forward pass ran."""
        planned, self._ahead = self._ahead, None
        assert planned is not None, "a tick is planned before it runs"
        if planned.ahead:
            self._settle(planned)
        start = time.monotonic_ns() if planned.ahead else planned.start_ns
        self._prev_tick_start = start
        plan, tick = planned.plan, self.ticks
        for seq in plan.preempted:
            self.recorder.emit(
                RequestEvent(
                    seq.id, "preempt", start, len(seq.request.prompt), seq.generated, tick=tick, reason="KV cache full"
                )
            )
        for seq in plan.admitted:
            self.recorder.emit(RequestEvent(seq.id, "admit", start, len(seq.request.prompt), seq.generated, tick=tick))
        if planned.prepared is None:
            return False

        rows = [e.seq for e in plan.entries if e.samples]
        # each row predicts the token at the position after its known ones: the noise of a draw
        sampling = SamplingBatch.of([s.request.sampling for s in rows], [len(s.tokens) for s in rows], self.device)
        flight = self.executor.launch(planned.prepared, tick, start, sampling)
        with self._cond:
            self.scheduler.advance(plan)
            after = self._after(plan)
        if self._plans_ahead and self._may_plan_ahead():
            self._ahead = self._plan(0, ahead=True)
        result = flight.result()
        end = time.monotonic_ns()
        with self._cond:
            finished = self.scheduler.resolve(plan, result.tokens)
            for seq in finished:
                del self._live[seq.id]
        for seq, token in zip(rows, result.tokens):
            seq.request.sink.on_token(token, end)
        for seq in finished:
            seq.request.sink.on_finish("finished", seq.finish_reason, end)
            if seq.id in after.held:  # finished at a stop token, so out of the counts after the tick
                after.running -= 1
                after.kv_used -= after.held[seq.id] * self.kv.allocator.block_size

        self.ticks += 1
        self.tokens_generated += len(result.tokens)
        self.recorder.emit(
            TickEvent(
                tick=tick,
                start_ns=start,
                end_ns=end,
                wait_ns=planned.wait_ns,
                seqs=len(plan.entries),
                prefill_tokens=plan.prefill_tokens,
                decode_tokens=plan.decode_tokens,
                queue_depth=planned.queue_depth,
                running=after.running,
                kv_used=after.kv_used,
                kv_capacity=self.kv.allocator.capacity_tokens,
                forward_ns=result.forward_ns,
                sampled_tokens=len(result.tokens),
            )
        )
        self.recorder.emit(self._batch_event(tick, plan))
        self.recorder.emit(ExpertsEvent(tick, result.counts))
        if result.stage is not None:
            self.recorder.emit(result.stage)
        if result.note:
            self.recorder.emit(MarkEvent(start, tick, result.note))
        return True

    def _after(self, plan: TickPlan) -> _AfterTick:
        """The counts the trace gives for a tick, as of its `advance` (under the lock)."""
        alloc = self.kv.allocator
        # a sequence finished by length is freed already: it holds no blocks
        held = {e.seq.id: n for e in plan.entries if e.samples and (n := len(alloc.tables.get(e.seq.id, ())))}
        return _AfterTick(len(self.scheduler.running), alloc.used_tokens, held)

    def _may_plan_ahead(self) -> bool:
        """Whether the policy would start the next tick as soon as this one ends, with work for it."""
        with self._cond:
            running, waiting = self.scheduler.running, self.scheduler.waiting
            if self._halt or not (running or waiting):
                return False
            oldest = waiting[0].arrival_ns if waiting else None
            return self.scheduler.policy.wait_ns(time.monotonic_ns(), self._prev_tick_start, oldest, len(running)) <= 0

    def _settle(self, planned: _Planned) -> None:
        """Bring a tick planned ahead up to date before it launches: cancellations made meanwhile take
        effect, sequences that ended since (a stop token, a cancellation) leave it, and its chunks get
        the tokens the tick before computed."""
        self._cancel_requested()
        plan = planned.plan
        with self._cond:
            live = self._live
            entries = [e for e in plan.entries if live.get(e.seq.id) is e.seq]
            plan.admitted = [s for s in plan.admitted if live.get(s.id) is s]
            plan.preempted = [s for s in plan.preempted if live.get(s.id) is s]
        if len(entries) < len(plan.entries):  # rare: rebuilt, not patched
            plan.entries = entries
            planned.prepared = self.executor.prepare(self._chunks(plan)) if entries else None
            return
        if planned.prepared is None:  # the plan only preempted: nothing runs
            return
        for chunk, e in zip(planned.prepared.chunks, entries):
            if chunk.tokens[-1] == PENDING:  # only a chunk's last token can be: it is its sequence's last
                chunk.tokens[-1] = e.seq.tokens[e.start + e.count - 1]

    def _batch_event(self, tick: int, plan: TickPlan) -> BatchEvent:
        """Who ran in this tick, with what, in which attention call: the trace's link from requests
        to ticks. Groups are split as the executor splits them (micro-batches, then `attention_groups`)."""
        entries = plan.entries
        kv_len = np.array([e.start + e.count for e in entries])
        groups = np.empty(len(entries), dtype=np.int16)
        first = 0
        micro = self.pipeline.micro_batches_for(len(entries))
        for part in split_micro_batches(list(range(len(entries))), micro):
            ids = attention_groups(kv_len[part], self.sched_cfg.attention)
            groups[part] = first + ids
            first += int(ids.max()) + 1
        return BatchEvent(
            tick,
            np.array([e.seq.id for e in entries], dtype=np.int64),
            np.array([e.prefill_tokens for e in entries], dtype=np.int32),
            np.array([e.count - e.prefill_tokens for e in entries], dtype=np.int32),
            groups,
        )

    def _cancel_requested(self) -> None:
        with self._cond:
            ids, self._cancel_ids = self._cancel_ids, set()
            ended = [self._live.pop(i) for i in ids if i in self._live]
            for seq in ended:
                self.scheduler.remove(seq)
        now = time.monotonic_ns()
        for seq in ended:
            seq.request.sink.on_finish("cancelled", "cancelled by client", now)

    def _end_all(self, status: RequestStatus, reason: str) -> None:
        with self._cond:
            ended = list(self._live.values())
            self._live.clear()
            for seq in ended:
                self.scheduler.remove(seq)
        now = time.monotonic_ns()
        for seq in ended:
            seq.request.sink.on_finish(status, reason, now)
