"""The events a tickscope trace holds.

These dataclasses are the whole vocabulary shared by the engine (which emits ticks, expert load,
stages and admissions), the load generator (which emits a request's client-side life) and the
readers. Times are `time.monotonic_ns()` of the recording process; the session header anchors
that clock to wall-clock time, and readers turn times into seconds since the session started.
Per-tick arrays are numpy arrays so the trace can store them as packed little-endian bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union, get_args

import numpy as np

FORMAT_VERSION = (1, 3)  # 1.1 added the batch event, 1.2 compressed events frames, 1.3 the tick's sampled tokens

RequestPhase = Literal["arrive", "admit", "first_token", "preempt", "finish"]
REQUEST_PHASES: tuple[RequestPhase, ...] = get_args(RequestPhase)
RequestStatus = Literal["finished", "rejected", "cancelled"]
REQUEST_STATUSES: tuple[RequestStatus, ...] = get_args(RequestStatus)


@dataclass(slots=True)
class SessionHeader:
    """First thing in every trace: what was recorded, and the clock anchor."""

    t0_mono_ns: int
    t0_wall_ns: int
    config: dict[str, Any] = field(default_factory=dict)
    format_version: tuple[int, int] = FORMAT_VERSION


@dataclass(slots=True)
class TickEvent:
    """One scheduler iteration: one forward pass over the batch."""

    tick: int
    start_ns: int  # the forward pass began (after the policy's wait)
    end_ns: int  # the tick's tokens were ready on the host
    wait_ns: int  # time the policy spent collecting arrivals before this tick
    seqs: int  # sequences in the batch
    prefill_tokens: int
    decode_tokens: int
    queue_depth: int  # requests still waiting after this tick's admissions
    running: int  # sequences holding KV after this tick
    kv_used: int  # tokens held in the KV cache after this tick
    kv_capacity: int
    forward_ns: int  # device-measured time of the forward pass
    # Tokens sampled (output tokens): one per decoding sequence, and one for each prefill that
    # reached the end of its known tokens, so a request's first token counts in the tick it came.
    # A 1.2 trace has no such field; readers give it the tick's decode tokens, all 1.2 recorded.
    sampled_tokens: int


TICK_FIELDS = tuple(f.name for f in fields(TickEvent))  # the order a tick event is written in


@dataclass(slots=True)
class ExpertsEvent:
    """Expert load of one tick: tokens routed to each expert of each MoE layer."""

    tick: int
    counts: np.ndarray  # int32 [layers, experts]


@dataclass(slots=True)
class StageEvent:
    """Pipeline cells of one tick, times relative to the tick's start_ns.

    `measured_*` are the cells as they ran; `modelled_*` the timeline they would have on one
    device per stage (or, when `modelled` is False, the measured multi-device timeline itself).
    """

    tick: int
    measured_start_ns: np.ndarray  # int64 [stages, micro_batches]
    measured_end_ns: np.ndarray
    modelled_start_ns: np.ndarray
    modelled_end_ns: np.ndarray
    modelled: bool = True


@dataclass(slots=True)
class RequestEvent:
    """A moment in one request's life.

    Each request ends with exactly one `finish`. `arrive`, `first_token` and `finish` are
    client-side (the load generator or the serving front); `admit` and `preempt` come from the
    scheduler. On `finish`, `token_us` holds each output token's arrival time in microseconds
    since `arrive`, so TTFT, TPOT and ITL can be recomputed from the trace alone.
    """

    request: int
    phase: RequestPhase
    t_ns: int
    prompt_tokens: int = 0
    output_tokens: int = 0
    tick: int = -1  # the tick it happened in, when the scheduler knows it
    status: RequestStatus | Literal[""] = ""  # set on finish only
    reason: str = ""  # why it was rejected, cancelled or preempted
    token_us: np.ndarray | None = None  # uint32 [output_tokens], on finish


@dataclass(slots=True)
class BatchEvent:
    """Who took part in one tick: one row per sequence of its batch, in batch order.

    It links each request to the ticks it ran in. Over a request's rows, prefill + decode tokens
    add up to its prompt + output tokens - 1 (the last token is sampled, never fed back), plus
    whatever was computed again after each preemption (a preempted sequence's KV is dropped and
    all its known tokens return as prefill). `group` numbers the tick's attention calls: one per
    micro-batch with `ragged` attention, one per distinct key length
    (prefix + chunk) in a micro-batch with `same-length`.
    """

    tick: int
    requests: np.ndarray  # int64 [seqs] request ids
    prefill_tokens: np.ndarray  # int32 [seqs] prompt tokens (or tokens recomputed after a preemption)
    decode_tokens: np.ndarray  # int32 [seqs] generated tokens fed back (the last sampled one while decoding)
    groups: np.ndarray  # int16 [seqs] the attention call each sequence was in


@dataclass(slots=True)
class MarkEvent:
    """A user's note at a moment of the recording."""

    t_ns: int
    tick: int
    text: str


Event = Union[TickEvent, ExpertsEvent, StageEvent, RequestEvent, BatchEvent, MarkEvent]
