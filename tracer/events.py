"""The events a tickscope trace holds.

These dataclasses are the whole vocabulary shared by the engine (which emits ticks, expert load,
stages and admissions), the load generator (which emits a request's client-side life) and the
readers. Times are `time.monotonic_ns()` of the recording process; the session header anchors
that clock to wall-clock time, and readers turn times into seconds since the session started.
Per-tick arrays are numpy arrays so the trace can store them as packed little-endian bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import numpy as np

# 1.1 added the batch event, 1.2 compressed events frames, 1.3 the tick's sampled tokens, 1.4 the tick's
# absent fields and the scrape event (`tickscope watch`)
FORMAT_VERSION = (1, 4)

RequestPhase = Literal["arrive", "admit", "first_token", "preempt", "finish"]
REQUEST_PHASES: tuple[RequestPhase, ...] = get_args(RequestPhase)
# "failed": ended by a fault (the engine's tick raised, a pipeline rank was lost, the target server went
# away, or the trace could not be written past it), not by the client or a shutdown ("cancelled").
RequestStatus = Literal["finished", "rejected", "cancelled", "failed"]
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
    # The fields this tick has no data for, as a bitmask over TICK_FIELDS (absent_mask): a tick
    # recorded from a server's metrics (`tickscope watch`) knows no forward time, say. Their values
    # are 0 and mean nothing. Before 1.4 every field was known: 0.
    absent: int = 0


TICK_FIELDS = tuple(f.name for f in fields(TickEvent))  # the order a tick event is written in


def absent_mask(names: tuple[str, ...] | list[str] | set[str]) -> int:
    """The `absent` bits of these tick fields."""
    return sum(1 << TICK_FIELDS.index(name) for name in set(names))


def absent_fields(mask: int) -> tuple[str, ...]:
    """The tick fields an `absent` mask names, in TICK_FIELDS order."""
    return tuple(name for i, name in enumerate(TICK_FIELDS) if mask >> i & 1)


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
    reason: str = ""  # why it was rejected, cancelled or preempted; "stop" or "length" when finished
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


# What a scrape event's `values` hold, in this order (a later minor version may append more; a reader
# takes those it knows). Rates are per second over the interval since the previous scrape, from the
# server's counters; percentiles are of the requests its histograms counted in that interval,
# interpolated within buckets as Prometheus' histogram_quantile does. NaN: the server has no such
# metric, or (a percentile) nothing was counted in the interval.
SCRAPE_SERIES = (
    "kv_usage",  # share of the KV cache in use, 0-1
    "prompt_tokens_s",
    "generation_tokens_s",
    "requests_s",  # requests finished per second (any reason)
    "preemptions_s",
    "iterations_s",  # scheduler iterations per second (vLLM's iteration_tokens_total histogram count)
    "iteration_tokens",  # mean tokens per iteration in the interval
    "gen_throughput",  # the server's own generation throughput gauge (SGLang), tokens/s
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "itl_p50_s",
    "itl_p90_s",
    "itl_p99_s",
    "e2e_p50_s",
    "e2e_p90_s",
    "e2e_p99_s",
    "queue_p50_s",
    "queue_p99_s",
    "tick_p50_s",  # tickscope's own tick time histogram
    "tick_p99_s",
)


@dataclass(slots=True)
class ScrapeEvent:
    """One scrape of an inference server's metrics (`tickscope watch`), beside the tick it became.

    The tick event holds what maps onto a tick (running and waiting requests, tokens in the interval,
    KV use), with the fields the server has no data for marked absent; this holds the rest, as
    SCRAPE_SERIES names it (since 1.4).
    """

    tick: int
    t_ns: int  # when the answer came
    values: np.ndarray  # float64 [len(SCRAPE_SERIES)]


@dataclass(slots=True)
class MarkEvent:
    """A user's note at a moment of the recording."""

    t_ns: int
    tick: int
    text: str


Event = TickEvent | ExpertsEvent | StageEvent | RequestEvent | BatchEvent | MarkEvent | ScrapeEvent


# -- the table of event kinds ----------------------------------------------------------------------
# Everything that writes or reads events derives from KINDS: the codec (encode_event, decode_event),
# the columnar loader (tracer.columns) and tracer.frames, the index's tick ranges, the writer's
# queue limits and drop counts, the exports' files and the dashboard's decoder. A new kind is a
# dataclass above, a row in KINDS, a row in FORMAT.md's event table (a test holds the two
# together), and its DataFrame in tracer.frames.

FieldType = Literal["int", "str", "text", "bool", "shape", "packed"]
Priority = Literal["bulk", "core", "kept"]


@dataclass(frozen=True, slots=True)
class Field:
    """One element of an event on the wire, after its code.

    `int`, `str` and `bool` are msgpack values of exactly that type; `text` is a `str` the writer
    cuts to MAX_TEXT_CHARS. `shape` is an array of `len(dims)` ints: the shape of the kind's packed
    arrays whose `shape` is "shape". `packed` is a `bin` of `dtype` elements (little-endian, C
    order) shaped by the kind's shape field (`shape="shape"`), or one-dimensional: as long as its
    bytes make it (`shape=""`), or as long as the packed field `shape` names.
    """

    name: str
    type: FieldType = "int"
    dtype: str = ""  # packed: numpy's little-endian spelling, e.g. "<i4"
    shape: str = ""  # packed: see above
    dims: tuple[str, ...] = ()  # shape: what each dimension counts, as FORMAT.md names them
    optional: bool = False  # packed: nil stands for None
    fallback: str = ""  # added by a later minor version: an older event has this other field's value here
    default: int | None = None  # added by a later minor version: an older event has this value here

    @property
    def wire_name(self) -> str:
        """As FORMAT.md writes it: a shape field as its dimensions in brackets."""
        return f"[{', '.join(self.dims)}]" if self.type == "shape" else self.name


def _ints(*names: str) -> tuple[Field, ...]:
    return tuple(Field(name) for name in names)


def _shape(*dims: str) -> Field:
    return Field("shape", "shape", dims=dims)


def _packed(name: str, dtype: str, shape: str = "", *, optional: bool = False) -> Field:
    return Field(name, "packed", dtype=dtype, shape=shape, optional=optional)


@dataclass(frozen=True)
class EventKind:
    """One kind of event: its code and class, its fields in wire order, how the tracer treats it.

    `priority`: which events the writer refuses first when it falls behind (TraceWriter): `bulk`
    past `queue_max` queued events, `core` past a quarter more, `kept` never. `ticked`: its `tick`
    counts in an index entry's min_tick / max_tick, so a seek to a tick finds it. `frame`: the
    tracer.Trace DataFrame it loads into, and the name of its file in an export.
    """

    code: int
    name: str  # as the stats frame counts drops, and error messages say
    cls: type
    wire: tuple[Field, ...]
    priority: Priority
    ticked: bool
    frame: str
    names: tuple[str, ...] = field(init=False)  # the class's fields, in wire order (the shape field left out)
    required: int = field(init=False)  # fields every event has (those without a fallback come first)
    at: dict[str, int] = field(init=False, repr=False)  # each field's place in the event array, after the code

    def __post_init__(self) -> None:
        names = tuple(f.name for f in self.wire if f.type != "shape")
        if names != tuple(f.name for f in fields(self.cls)):
            raise TypeError(f"{self.name} event: wire fields {names} are not {self.cls.__name__}'s fields")
        at = {f.name: i + 1 for i, f in enumerate(self.wire)}
        required = sum(not f.fallback and f.default is None for f in self.wire)
        for i, f in enumerate(self.wire):
            if f.fallback and (i < required or at.get(f.fallback, i + 1) > i):
                raise TypeError(f"{self.name}.{f.name}: a fallback field comes last and names an earlier field")
            if f.default is not None and (i < required or f.type != "int" or f.fallback):
                raise TypeError(f"{self.name}.{f.name}: a field with a default is an int and comes last")
            if f.type == "shape" and not f.dims:
                raise TypeError(f"{self.name}: a shape field names its dimensions")
            if f.type == "packed":
                source = next((g for g in self.wire if g.name == f.shape), None) if f.shape else None
                if f.shape and (
                    source is None
                    or at[f.shape] > at[f.name]
                    or not (
                        source.type == "shape" or (source.type == "packed" and not source.shape and not source.optional)
                    )
                ):
                    raise TypeError(f"{self.name}.{f.name}: shape {f.shape!r} is not an earlier shape or 1-D array")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "required", required)
        object.__setattr__(self, "at", at)

    def wire_field(self, name: str) -> Field:
        return self.wire[self.at[name] - 1]


# Codes are never reused; a kind added in a minor version is skipped by older readers.
KINDS: tuple[EventKind, ...] = (
    EventKind(
        1,
        "tick",
        TickEvent,
        (
            *_ints(
                "tick",
                "start_ns",
                "end_ns",
                "wait_ns",
                "seqs",
                "prefill_tokens",
                "decode_tokens",
                "queue_depth",
                "running",
                "kv_used",
                "kv_capacity",
                "forward_ns",
            ),
            Field("sampled_tokens", fallback="decode_tokens"),  # since 1.3: 1.2 counted decode tokens as sampled
            Field("absent", default=0),  # since 1.4: before, every field was known
        ),
        priority="core",
        ticked=True,
        frame="ticks",
    ),
    EventKind(
        2,
        "experts",
        ExpertsEvent,
        (
            Field("tick"),
            _shape("layers", "experts"),
            _packed("counts", "<i4", "shape"),
        ),
        priority="bulk",
        ticked=True,
        frame="experts",
    ),
    EventKind(
        3,
        "stage",
        StageEvent,
        (
            Field("tick"),
            _shape("stages", "micro_batches"),
            *(
                _packed(name, "<i8", "shape")
                for name in ("measured_start_ns", "measured_end_ns", "modelled_start_ns", "modelled_end_ns")
            ),
            Field("modelled", "bool"),
        ),
        priority="bulk",
        ticked=True,
        frame="stages",
    ),
    EventKind(
        4,
        "request",
        RequestEvent,
        (
            Field("request"),
            Field("phase", "str"),
            *_ints("t_ns", "prompt_tokens", "output_tokens", "tick"),
            Field("status", "str"),
            Field("reason", "text"),
            _packed("token_us", "<u4", optional=True),
        ),
        priority="kept",
        ticked=False,
        frame="requests",
    ),
    EventKind(
        5,
        "mark",
        MarkEvent,
        (
            *_ints("t_ns", "tick"),
            Field("text", "text"),
        ),
        priority="core",
        ticked=False,
        frame="marks",
    ),
    EventKind(
        6,
        "batch",
        BatchEvent,
        (  # since 1.1
            Field("tick"),
            _packed("requests", "<i8"),
            _packed("prefill_tokens", "<i4", "requests"),
            _packed("decode_tokens", "<i4", "requests"),
            _packed("groups", "<i2", "requests"),
        ),
        priority="core",
        ticked=True,
        frame="batches",
    ),
    EventKind(
        7,
        "scrape",
        ScrapeEvent,
        (  # since 1.4
            *_ints("tick", "t_ns"),
            _packed("values", "<f8"),
        ),
        priority="core",
        ticked=True,
        frame="scrapes",
    ),
)
KIND_OF: dict[type, EventKind] = {kind.cls: kind for kind in KINDS}
KIND_BY_CODE: dict[int, EventKind] = {kind.code: kind for kind in KINDS}
KIND_NAMED: dict[str, EventKind] = {kind.name: kind for kind in KINDS}
