"""The dashboard's request table: every request's milestones as of any moment, from request
events read in any order."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from tui.state.blocks import (
    ADMIT,
    ARRIVE,
    FINISH,
    FIRST_TOKEN,
    PREEMPT,
    REQUEST_COLUMNS,
    STATUS_CODES,
    STATUS_NAMES,
    RequestBlock,
)
from tui.state.columns import Columns

# Rolling window of recording time over which the latency percentiles are taken.
LATENCY_WINDOW_S = 10.0


@dataclass(slots=True)
class LatencyStats:
    ttft_p50: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p99: float | None
    samples: int  # requests whose first token landed in the window
    ttft_all: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every TTFT so far
    tpot_all: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every finished request's TPOT so far
    ttft_p90: float | None = None
    tpot_p90: float | None = None


@dataclass(slots=True)
class RequestRow:
    request: int
    state: str
    prompt_tokens: int
    output_tokens: int | None  # tokens out so far; None when the trace cannot tell yet
    ttft_s: float | None
    tpot_s: float | None


@dataclass(slots=True)
class RequestLife:
    """One request's timeline, times in seconds since t0 (None: not reached, or not recorded)."""

    request: int
    status: str  # "" while it runs
    prompt_tokens: int
    output_tokens: int
    arrive_s: float
    admit_s: float | None  # the first admission
    first_token_s: float | None
    finish_s: float | None
    token_s: np.ndarray  # each output token's arrival (recorded on finish)
    history: list[tuple[str, float]]  # preemptions and later admissions, in order

    def events(self) -> list[tuple[float, str]]:
        """(time, what) in time order: the milestones, then each token in between."""
        out = [(self.arrive_s, "arrive")]
        if self.admit_s is not None:
            out.append((self.admit_s, "admit"))
        out += [(t, what) for what, t in self.history]
        if self.first_token_s is not None:
            out.append((self.first_token_s, "first token"))
        if self.finish_s is not None:
            out.append((self.finish_s, self.status or "finish"))
        return sorted(out, key=lambda e: e[0])


class RequestTable:
    """Every request seen so far, as numeric columns (NaN times: not reached, or not read yet), with
    the rare per-request extras (token times, preemptions and re-admissions) beside them. Blocks of
    request events may come in any order and the table ends the same: firsts are minima, counts
    maxima, and the history is kept in time order."""

    def __init__(self) -> None:
        self.columns = Columns(REQUEST_COLUMNS, np.float64)
        self._row: dict[int, int] = {}
        self._token_us: dict[int, np.ndarray] = {}  # request -> µs since arrival, as recorded
        self._history: dict[int, list[tuple[float, str]]] = {}  # preemptions and re-admissions, by time
        self._preempt_s = Columns(("t_s",), np.float64)

    def apply(self, block: RequestBlock) -> None:
        """Fold a block of request events into the table: bulk phases as array writes."""
        if len(block.ids) == 0:
            return
        get = self._row.get
        rows = np.empty(len(block.ids), dtype=np.int64)
        new: list[int] = []
        for i, request in enumerate(block.ids.tolist()):
            row = get(request)
            if row is None:
                row = self._row[request] = self.columns.size + len(new)
                new.append(request)
            rows[i] = row
        if new:
            fresh = np.full((len(new), len(REQUEST_COLUMNS)), np.nan)
            fresh[:, 0] = new
            fresh[:, 5:] = 0  # prompt, output, status, preempts, arrive_read
            self.columns.extend(fresh)
        col = self.columns.col
        phase, t = block.phase, block.t_s
        has_prompt = block.prompt > 0
        col("prompt_tokens")[rows[has_prompt]] = block.prompt[has_prompt]
        for code, name in ((ARRIVE, "arrive_s"), (FIRST_TOKEN, "first_token_s")):
            m = phase == code
            col(name)[rows[m]] = t[m]
        col("arrive_read")[rows[phase == ARRIVE]] = 1
        finish = phase == FINISH
        col("finish_s")[rows[finish]] = t[finish]
        # Admissions and preemptions carry the tokens generated so far, which only grow: the
        # largest seen is the latest, whatever order frames are read in.
        np.maximum.at(col("output_tokens"), rows, block.output)
        col("status")[rows[finish]] = block.status[finish]
        # Admissions: the first is what queue wait and "prefill" go by; later ones (after a
        # preemption) and the preemptions themselves are rare, and kept per request.
        admit_s = col("admit_s")
        for i in np.flatnonzero((phase == ADMIT) | (phase == PREEMPT)).tolist():
            row, when = int(rows[i]), float(t[i])
            if phase[i] == ADMIT:
                if np.isnan(admit_s[row]):
                    admit_s[row] = when
                    continue
                if when < admit_s[row]:  # frames read out of order: the earlier one is the first
                    admit_s[row], when = when, float(admit_s[row])
            what = "admit" if phase[i] == ADMIT else "preempt"
            history = self._history.setdefault(int(block.ids[i]), [])
            bisect.insort(history, (when, what))  # in time order, whatever order frames came in
            if what == "preempt":
                col("preempts")[row] += 1
                self._preempt_s.append((when,))
        self._token_us.update(block.token_us)
        # A request seen first mid-life (a tail that started late, a frame read out of order)
        # still gets an arrival time: its earliest event, until its arrival is read.
        arrive = col("arrive_s")
        missing = np.isnan(arrive[rows])
        if missing.any():
            order = np.argsort(t[missing], kind="stable")[::-1]  # earliest written last, so it wins
            arrive[rows[missing][order]] = t[missing][order]

    def latency(self, t: float, window_s: float = LATENCY_WINDOW_S) -> LatencyStats:
        """TTFT and TPOT percentiles of requests whose first token / finish fell in the window
        ending at `t` s, and every TTFT and TPOT up to it."""
        arrive = self.columns.col("arrive_s")
        first = self.columns.col("first_token_s")
        finish = self.columns.col("finish_s")
        out = self.columns.col("output_tokens")
        with np.errstate(invalid="ignore"):
            # A request whose arrival is not read yet (a replay still loading) has no TTFT yet.
            seen_first = (first <= t) & (self.columns.col("arrive_read") > 0)
            in_window = seen_first & (first > t - window_s)
            ttft = first[in_window] - arrive[in_window]
            finished = (finish <= t) & (out > 1) & (first <= t)
            done = finished & (finish > t - window_s)
            tpot = (finish[done] - first[done]) / (out[done] - 1)
            ttft_all = first[seen_first] - arrive[seen_first]
            tpot_all = (finish[finished] - first[finished]) / (out[finished] - 1)

        def pct(values: np.ndarray, q: float) -> float | None:
            return float(np.percentile(values, q)) if len(values) else None

        return LatencyStats(
            pct(ttft, 50), pct(ttft, 99), pct(tpot, 50), pct(tpot, 99), int(in_window.sum()),
            ttft_all, tpot_all, pct(ttft, 90), pct(tpot, 90),
        )  # fmt: skip

    def counters(self, t: float) -> dict[str, float]:
        """Requests arrived, finished, rejected, cancelled and preempted by `t` s."""
        finish = self.columns.col("finish_s")
        status = self.columns.col("status")
        with np.errstate(invalid="ignore"):
            ended = finish <= t
        return {
            "finished": int((ended & (status == STATUS_CODES["finished"])).sum()),
            "rejected": int((ended & (status == STATUS_CODES["rejected"])).sum()),
            "cancelled": int((ended & (status == STATUS_CODES["cancelled"])).sum()),
            "preempted": int((self._preempt_s.col("t_s") <= t).sum()),
            "arrived": int((self.columns.col("arrive_s") <= t).sum()),
        }

    def recent(self, t: float, limit: int) -> list[RequestRow]:
        """The `limit` most recently arrived requests, each as it stood at `t` s (latest first; of
        two that arrived together, the higher id first).

        Only the requests of the last latency window are sorted (all of them when that window
        holds too few): a sort of every request would be redone after every frame read.
        """
        arrive = self.columns.col("arrive_s")
        with np.errstate(invalid="ignore"):
            arrived = arrive <= t
            rows = np.flatnonzero(arrived & (arrive > t - LATENCY_WINDOW_S))
            if len(rows) < limit:
                rows = np.flatnonzero(arrived)
        latest = rows[np.lexsort((self.columns.col("request")[rows], arrive[rows]))][::-1][:limit]
        return [self._as_of(int(r), t) for r in latest]

    def _as_of(self, row: int, t: float) -> RequestRow:
        c = {name: float(self.columns.col(name)[row]) for name in REQUEST_COLUMNS}
        request = int(c["request"])
        ttft = c["first_token_s"] - c["arrive_s"] if c["first_token_s"] <= t and c["arrive_read"] else None
        tpot = None
        out: int | None = None
        if c["finish_s"] <= t:
            state = STATUS_NAMES.get(int(c["status"]), "finished") or "finished"
            out = int(c["output_tokens"])
            if out > 1 and c["first_token_s"] <= t:
                tpot = (c["finish_s"] - c["first_token_s"]) / (out - 1)
        else:
            if c["first_token_s"] <= t:
                state = "decode"
            elif c["admit_s"] <= t:
                state = "prefill"
            else:
                state = "queued"
            token_us = self._token_us.get(request)
            if token_us is not None:  # a replay knows every token's time; count those so far
                out = int((c["arrive_s"] + token_us / 1e6 <= t).sum())
        if state in ("decode", "prefill", "queued") and self._preempted_by(request, t):
            state += "*"  # preempted at least once by then (a later re-admission is not told apart)
        return RequestRow(request, state, int(c["prompt_tokens"]), out, ttft, tpot)

    def _preempted_by(self, request: int, t: float) -> bool:
        return any(what == "preempt" and when <= t for when, what in self._history.get(request, ()))

    def life(self, request: int) -> RequestLife | None:
        """Everything known of one request's life, for its timeline; None if never seen."""
        row = self._row.get(request)
        if row is None:
            return None
        c = {name: float(self.columns.col(name)[row]) for name in REQUEST_COLUMNS}

        def known(v: float) -> float | None:
            return None if np.isnan(v) else v

        token_us = self._token_us.get(request)
        return RequestLife(
            request=request,
            status=STATUS_NAMES.get(int(c["status"]), "") if known(c["finish_s"]) is not None else "",
            prompt_tokens=int(c["prompt_tokens"]),
            output_tokens=int(c["output_tokens"]),
            arrive_s=c["arrive_s"],
            admit_s=known(c["admit_s"]),
            first_token_s=known(c["first_token_s"]),
            finish_s=known(c["finish_s"]),
            token_s=(c["arrive_s"] + token_us / 1e6) if token_us is not None else np.zeros(0),
            history=[(what, t) for t, what in self._history.get(request, [])],
        )
