"""Client-side latency and throughput of a load run, with the definitions vLLM's benchmark uses.

Per request (times are when the client saw them; the request arrives when it is sent):
- TTFT, time to first token: first token - arrival.
- E2E latency: the request's end - arrival.
- TPOT, time per output token, first token excluded: (E2E - TTFT) / (output tokens - 1); only
  for requests with at least two output tokens.
- ITL, inter-token latency: every gap between consecutive tokens of a request, pooled over all
  requests (so long outputs weigh more than in TPOT).
- Queue wait: admission by the scheduler - arrival, where the admission time is known (it comes
  from the engine's trace, not from the client).

Which requests count: those that *arrived* inside the measurement window, which starts `warmup_s`
after the first send and ends `cooldown_s` before sending stopped. Latencies are taken over the
counted requests that finished. Rates divide by the time those requests took to serve: from the
window's start to the end of the last counted request (with no warmup or cooldown that is vLLM's
benchmark duration), so a system that falls behind is not credited with work it did later.
- Request throughput: counted finished requests / that duration.
- Output token throughput: their output tokens / that duration.
- Goodput: counted requests that finished and met every SLO given / that duration; a request
  with fewer than two tokens has no TPOT and meets any TPOT objective.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from tracer.events import RequestStatus
from workloads.spec import SLO

NS = 1e9
# The default objectives: none set, so every finished request counts as good.
_ANY_SLO = SLO()


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it, times in `time.monotonic_ns()`."""

    id: int
    prompt_tokens: int
    max_new_tokens: int
    planned_ns: int  # when the schedule said to send it
    sent_ns: int  # when it was sent: its arrival
    status: RequestStatus | Literal[""] = ""  # "finished", "rejected", "cancelled" or "failed"; "" until then
    reason: str = ""
    finish_ns: int = 0
    token_ns: list[int] = field(default_factory=list)  # each output token's arrival
    admit_ns: int | None = None  # from the trace, when the caller has it

    @property
    def output_tokens(self) -> int:
        return len(self.token_ns)

    @property
    def send_lag_s(self) -> float:
        return (self.sent_ns - self.planned_ns) / NS

    @property
    def ttft_s(self) -> float:
        return (self.token_ns[0] - self.sent_ns) / NS if self.token_ns else math.nan

    @property
    def e2e_s(self) -> float:
        return (self.finish_ns - self.sent_ns) / NS

    @property
    def tpot_s(self) -> float:
        n = len(self.token_ns)
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else math.nan

    @property
    def queue_wait_s(self) -> float:
        return math.nan if self.admit_ns is None else (self.admit_ns - self.sent_ns) / NS

    def itl_s(self) -> np.ndarray:
        return np.diff(np.asarray(self.token_ns, dtype=np.int64)) / NS

    def meets(self, slo: SLO) -> bool:
        """Finished and within every objective that is set."""
        if self.status != "finished":
            return False
        checks = ((slo.ttft_s, self.ttft_s), (slo.tpot_s, self.tpot_s), (slo.e2e_s, self.e2e_s))
        # NaN (no such figure for this request, e.g. TPOT of one token) never fails a check.
        return all(limit is None or not value > limit for limit, value in checks)


@dataclass(frozen=True)
class Dist:
    """Summary of a set of values (seconds); NaN throughout when there are none."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray | list[float]) -> Dist:
        a = np.asarray(values, dtype=np.float64)
        a = a[~np.isnan(a)]
        if a.size == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(int(a.size), float(a.mean()), float(p50), float(p90), float(p99), float(a.max()))


@dataclass(frozen=True)
class LoadMetrics:
    """Figures of one run, by the rules in this module's docstring."""

    window_s: tuple[float, float]  # measurement window, seconds since the first send
    requests: int  # submitted in the whole run
    counted: int  # arrived inside the window
    finished: int  # of the counted
    rejected: int
    cancelled: int
    failed: int
    duration_s: float
    request_throughput: float  # requests/s
    output_throughput: float  # tokens/s
    goodput: float  # requests/s meeting every SLO
    ttft: Dist
    tpot: Dist
    itl: Dist
    e2e: Dist
    queue_wait: Dist
    send_lag: Dist  # over every request of the run: how well the generator kept its schedule

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    records: list[RequestRecord],
    *,
    start_ns: int,
    send_end_ns: int,
    warmup_s: float = 0.0,
    cooldown_s: float = 0.0,
    slo: SLO = _ANY_SLO,
) -> LoadMetrics:
    """Aggregate the records of a run that sent from `start_ns` until `send_end_ns`."""
    lo_ns = start_ns + int(warmup_s * NS)
    hi_ns = send_end_ns - int(cooldown_s * NS)
    counted = [r for r in records if lo_ns <= r.sent_ns <= hi_ns]
    done = [r for r in counted if r.status == "finished"]
    end_ns = max((r.finish_ns for r in done), default=lo_ns)
    duration_s = (end_ns - lo_ns) / NS

    def rate(n: float) -> float:
        return n / duration_s if duration_s > 0 else math.nan

    itl = np.concatenate([r.itl_s() for r in done]) if done else np.empty(0)
    return LoadMetrics(
        window_s=((lo_ns - start_ns) / NS, (hi_ns - start_ns) / NS),
        requests=len(records),
        counted=len(counted),
        finished=len(done),
        rejected=sum(r.status == "rejected" for r in counted),
        cancelled=sum(r.status == "cancelled" for r in counted),
        failed=sum(r.status == "failed" for r in counted),
        duration_s=duration_s,
        request_throughput=rate(len(done)),
        output_throughput=rate(sum(r.output_tokens for r in done)),
        goodput=rate(sum(r.meets(slo) for r in done)),
        ttft=Dist.of([r.ttft_s for r in done]),
        tpot=Dist.of([r.tpot_s for r in done]),
        itl=Dist.of(itl),
        e2e=Dist.of([r.e2e_s for r in done]),
        queue_wait=Dist.of([r.queue_wait_s for r in done]),
        send_lag=Dist.of([r.send_lag_s for r in records]),
    )
