"""Who runs in the next tick: the scheduler's knobs, the sequences it holds, and the batch it forms.

Everything here is plain Python over a `BlockAllocator`: no model, no threads, no clock but the one
passed in, so that admission can be tested on its own. The engine owns the lock around it.

A sequence is its known tokens (prompt, then each generated token) and how many of them already have
K/V in the cache. Each tick it is given the next `n` of the rest: a whole prompt, a chunk of it, or
the one token generated last tick (decode). When a chunk reaches the end of the known tokens, the
tick predicts the next one. So prefill, chunked prefill, decode and recompute after preemption are
one mechanism.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.choices import (
    DECODE_COMPILE,
    DECODE_GRAPHS,
    GROUPINGS,
    PLAN_AHEAD,
    DecodeCompile,
    DecodeGraphs,
    Grouping,
    PlanAhead,
    check_choice,
)
from engine.errors import ConfigError
from engine.kv_cache import BlockAllocator
from engine.pipeline import get_schedule, is_pipelined
from engine.policies import make_policy
from engine.request import Request

# The token a sequence has between `advance` and `resolve`: its tick has run, or is running, and its
# value is not yet read back. Never a token id.
PENDING = -1


@dataclass
class SchedulerConfig:
    policy: str = "continuous"  # a module of engine/policies: when ticks start, when they admit
    window_ms: float = 0.0  # the collection window, for policies that have one ("window")
    max_seqs: int = 64  # sequences in one tick
    max_tokens: int = 2048  # tokens in one tick: prefill chunks + one per decoding sequence
    prefill_chunk: int = 512  # most prompt tokens of one sequence in one tick
    kv_capacity_tokens: int = 65536
    queue_limit: int = 1024  # requests waiting for admission; past it, submissions are rejected
    attention: Grouping = "ragged"  # one attention call for the batch, or one per same-length group
    kv_block_size: int = 16
    stages: int = 1  # pipeline stages the layers are split into (timed and modelled on one device)
    micro_batches: int = 1  # slices of each tick's batch that flow through the stages in turn
    micro_batch_size: int = 0  # sequences per micro-batch; when set (> 0) it decides the count instead
    stage_layers: tuple[int, ...] = ()  # layers of each stage; empty = balanced by weight bytes
    schedule: str = "gpipe"  # the order stages run their micro-batches in (engine/pipeline.py)
    # decode-only ticks padded to buckets and replayed as CUDA graphs (engine/decode_graphs.py). auto:
    # on CUDA with one stage and ragged attention; on: also on the CPU, run eagerly (for testing)
    decode_graphs: DecodeGraphs = "auto"
    # torch.compile the decode graphs' forward pass before capture: "inductor" fuses its ~75 kernels
    # per layer (compiled for dynamic shapes: ~3 compiles in all); "aot_eager" traces without fusing
    decode_compile: DecodeCompile = "off"
    # schedule tick n+1 and build its inputs while the device runs tick n (engine.py). auto: on CUDA,
    # where the host is free meanwhile; on: also on the CPU, where the forward pass is the host's own
    # work and nothing is hidden (for testing); never with a distributed pipeline
    plan_ahead: PlanAhead = "auto"

    def validate(self) -> None:
        make_policy(self)  # an unknown policy fails here, naming the known ones, not at the first tick
        check_choice("attention grouping", self.attention, GROUPINGS)
        check_choice("decode_graphs", self.decode_graphs, DECODE_GRAPHS)
        check_choice("decode_compile", self.decode_compile, DECODE_COMPILE)
        check_choice("plan_ahead", self.plan_ahead, PLAN_AHEAD)
        if self.decode_compile != "off" and self.decode_graphs == "off":
            raise ConfigError("decode_compile compiles the decode graphs; it cannot be used with decode_graphs 'off'")
        pipelined = is_pipelined(self.stages, self.micro_batches, self.micro_batch_size)
        if self.decode_graphs == "on" and (pipelined or self.attention != "ragged"):
            raise ConfigError("decode_graphs 'on' needs one pipeline stage, one micro-batch and ragged attention")
        if self.window_ms < 0:
            raise ConfigError(f"window_ms must be 0 or more, got {self.window_ms}")
        for name in ("max_seqs", "max_tokens", "prefill_chunk", "kv_block_size", "stages", "micro_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue_limit < 0:
            raise ConfigError(f"queue_limit must be 0 or more, got {self.queue_limit}")
        if self.micro_batch_size < 0:
            raise ConfigError(f"micro_batch_size must be 0 (unset) or more, got {self.micro_batch_size}")
        if self.stage_layers and len(self.stage_layers) != self.stages:
            raise ConfigError(f"{len(self.stage_layers)} stage layer counts given for {self.stages} stages")
        get_schedule(self.schedule)
        if self.max_tokens < self.max_seqs:
            # otherwise a full batch of decoding sequences could not all advance in one tick
            raise ConfigError(f"max_tokens ({self.max_tokens}) must be at least max_seqs ({self.max_seqs})")
        if self.kv_capacity_tokens < self.kv_block_size:
            raise ConfigError(
                f"kv_capacity_tokens ({self.kv_capacity_tokens}) is less than one KV block "
                f"({self.kv_block_size} tokens)"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class Sequence:
    request: Request
    arrival_ns: int
    tokens: list[int]  # the prompt, then every generated token
    computed: int = 0  # leading tokens whose K/V is in the cache
    generated: int = 0
    prefill_end: int = 0  # positions before this are prefill work: the prompt, or all known tokens on recompute
    finish_reason: str = ""  # once finished: "stop" (a stop token) or "length" (max_new_tokens)

    @property
    def id(self) -> int:
        return self.request.id

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.computed


@dataclass
class Scheduled:
    seq: Sequence
    start: int  # first position this tick computes
    count: int
    prefill_tokens: int
    samples: bool  # the chunk reaches the end of the known tokens, so it predicts the next one


@dataclass
class TickPlan:
    """One tick's batch and the admissions and preemptions that formed it."""

    entries: list[Scheduled] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def prefill_tokens(self) -> int:
        return sum(e.prefill_tokens for e in self.entries)

    @property
    def decode_tokens(self) -> int:
        return sum(e.count - e.prefill_tokens for e in self.entries)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, allocator: BlockAllocator) -> None:
        self.cfg = cfg
        self.policy = make_policy(cfg)
        self.kv = allocator
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is the first preempted

    def add(self, seq: Sequence) -> None:
        seq.prefill_end = len(seq.tokens)
        self.waiting.append(seq)

    def schedule(self) -> TickPlan:
        """Form the next tick's batch: running sequences first, then admissions from the queue."""
        plan = TickPlan()
        budget = self.cfg.max_tokens
        scheduled: set[int] = set()
        # decodes before prefill chunks, so that a long prompt never stalls sequences mid-answer
        for seq in sorted(self.running, key=lambda s: s.pending > 1):
            if seq in plan.preempted:
                continue
            n = min(seq.pending, self.cfg.prefill_chunk, budget)
            if n == 0 or not self._reserve(seq, n, plan, scheduled):
                continue
            self._add_entry(plan, seq, n)
            scheduled.add(seq.id)
            budget -= n

        if not self.policy.admits(len(self.running)):
            return plan
        # first come, first served: the head of the queue is never overtaken, so it cannot starve
        while self.waiting and len(self.running) < self.cfg.max_seqs and budget > 0:
            seq = self.waiting[0]
            n = min(seq.pending, self.cfg.prefill_chunk, budget)
            if not self.kv.can_grow(seq.id, n):
                break
            self.waiting.popleft()
            self.kv.grow(seq.id, n)
            self.running.append(seq)
            plan.admitted.append(seq)
            self._add_entry(plan, seq, n)
            budget -= n
        return plan

    def _reserve(self, seq: Sequence, n: int, plan: TickPlan, scheduled: set[int]) -> bool:
        """Make room for `n` more tokens of `seq`, preempting the most recently admitted sequences
        not yet in this tick until it fits (possibly `seq` itself: then False)."""
        while not self.kv.try_grow(seq.id, seq.computed + n):
            victim = next(s for s in reversed(self.running) if s.id not in scheduled)
            self.preempt(victim)
            plan.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def preempt(self, seq: Sequence) -> None:
        """Free its KV and put it back at the head of the queue; it is recomputed from all its known
        tokens when admitted again (cheaper to build than swapping, and what vLLM does by default)."""
        self.kv.free(seq.id)
        self.running.remove(seq)
        seq.computed = 0
        seq.prefill_end = len(seq.tokens)
        self.waiting.appendleft(seq)

    @staticmethod
    def _add_entry(plan: TickPlan, seq: Sequence, n: int) -> None:
        prefill = max(0, min(seq.computed + n, seq.prefill_end) - seq.computed)
        plan.entries.append(Scheduled(seq, seq.computed, n, prefill, seq.computed + n == len(seq.tokens)))

    def commit(self, plan: TickPlan, next_tokens: list[int]) -> list[Sequence]:
        """Apply a tick's results: `next_tokens` holds one token per sampling entry, in order.
        Returns the sequences that sampled a stop token or reached max_new_tokens, already removed
        and freed, with their `finish_reason` set."""
        self.advance(plan)
        return self.resolve(plan, next_tokens)

    def advance(self, plan: TickPlan) -> None:
        """The part of a tick's results known before its tokens are: every entry's K/V is in the cache,
        every sampling entry has one more token (PENDING until `resolve`), and those reaching
        max_new_tokens are finished ("length", removed and freed). The next tick can be planned from
        here while this one still runs."""
        for e in plan.entries:
            e.seq.computed += e.count
            if e.samples:
                e.seq.tokens.append(PENDING)
                e.seq.generated += 1
                if e.seq.generated >= e.seq.request.max_new_tokens:
                    e.seq.finish_reason = "length"
                    self.remove(e.seq)

    def resolve(self, plan: TickPlan, next_tokens: list[int]) -> list[Sequence]:
        """Write an advanced tick's tokens in place of its PENDING ones. Returns the sequences it
        finished, in entry order: at a stop token ("stop", removed and freed here, wherever a plan made
        since `advance` put them) or at max_new_tokens ("length")."""
        finished = []
        sampled = iter(next_tokens)
        for e in (e for e in plan.entries if e.samples):
            token = next(sampled)
            e.seq.tokens[-1] = token  # PENDING is the last: no token is added between advance and resolve
            if token in e.seq.request.stop_tokens:
                if not e.seq.finish_reason:
                    self.remove(e.seq)
                e.seq.finish_reason = "stop"
            elif not e.seq.finish_reason:
                continue
            finished.append(e.seq)
        return finished

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out, wherever it is (if anywhere: one finished by `advance` is out already),
        and free its KV."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
        self.kv.free(seq.id)
