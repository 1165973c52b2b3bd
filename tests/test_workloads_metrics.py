"""Client-side metrics against cases worked out by hand (times in ms for readability)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workloads.metrics import Dist, RequestRecord, summarize
from workloads.spec import SLO

MS = 1_000_000
S = 1000 * MS


def rec(rid, sent_ms, tokens_ms, finish_ms=None, status="finished", planned_ms=None, admit_ms=None):
    return RequestRecord(
        id=rid,
        prompt_tokens=4,
        max_new_tokens=len(tokens_ms),
        planned_ns=int((sent_ms if planned_ms is None else planned_ms) * MS),
        sent_ns=int(sent_ms * MS),
        status=status,
        finish_ns=int((finish_ms if finish_ms is not None else (tokens_ms or [sent_ms])[-1]) * MS),
        token_ns=[int(t * MS) for t in tokens_ms],
        admit_ns=None if admit_ms is None else int(admit_ms * MS),
    )


def test_per_request_definitions():
    # Sent at 100 ms; tokens at 150, 170, 230, 250 ms; ended at 250 ms; admitted at 120 ms.
    r = rec(0, 100, [150, 170, 230, 250], planned_ms=99.5, admit_ms=120)
    assert r.ttft_s == pytest.approx(0.050)
    assert r.e2e_s == pytest.approx(0.150)
    assert r.tpot_s == pytest.approx((0.150 - 0.050) / 3)  # first token excluded
    assert np.allclose(r.itl_s(), [0.020, 0.060, 0.020])
    assert r.queue_wait_s == pytest.approx(0.020)
    assert r.send_lag_s == pytest.approx(0.0005)


def test_one_token_has_no_tpot_and_no_token_has_no_ttft():
    one = rec(0, 0, [40])
    assert math.isnan(one.tpot_s) and one.itl_s().size == 0
    assert math.isnan(rec(1, 0, [], finish_ms=5, status="rejected").ttft_s)


def test_slo_checks_every_objective_set():
    r = rec(0, 0, [100, 120, 140])  # ttft 0.1, tpot 0.02, e2e 0.14
    assert r.meets(SLO())
    assert r.meets(SLO(ttft_s=0.1, tpot_s=0.021, e2e_s=0.14))  # limits are inclusive
    assert not r.meets(SLO(ttft_s=0.099))
    assert not r.meets(SLO(tpot_s=0.019))
    assert not r.meets(SLO(e2e_s=0.139))
    assert rec(1, 0, [30]).meets(SLO(tpot_s=0.001))  # one token: no TPOT to miss
    assert not rec(2, 0, [], finish_ms=1, status="rejected").meets(SLO())


def test_aggregates_with_itl_pooled_over_requests():
    records = [
        rec(0, 0, [100, 110]),  # ttft .1, tpot .01, itl [.01]
        rec(1, 500, [700, 740, 780, 820]),  # ttft .2, tpot .04, itl [.04 x3]
        rec(2, 900, [], finish_ms=901, status="rejected"),
        rec(3, 950, [1000], finish_ms=1100, status="cancelled"),
    ]
    m = summarize(records, start_ns=0, send_end_ns=1 * S, slo=SLO(ttft_s=0.15))
    assert (m.requests, m.counted, m.finished, m.rejected, m.cancelled) == (4, 4, 2, 1, 1)
    assert m.window_s == (0.0, 1.0)
    assert m.duration_s == pytest.approx(0.820)  # window start to the last counted finish
    assert m.request_throughput == pytest.approx(2 / 0.820)
    assert m.output_throughput == pytest.approx(6 / 0.820)
    assert m.goodput == pytest.approx(1 / 0.820)  # only request 0 meets the TTFT objective
    assert m.ttft.count == 2 and m.ttft.mean == pytest.approx(0.15)
    assert m.tpot.mean == pytest.approx(0.025)
    # ITL pools every gap: one of 10 ms and three of 40 ms, so the mean is not TPOT's mean.
    assert m.itl.count == 4 and m.itl.mean == pytest.approx(0.0325)
    assert m.e2e.max == pytest.approx(0.320)
    assert m.queue_wait.count == 0  # no admission times known


def test_warmup_and_cooldown_exclude_by_arrival():
    records = [rec(i, 1000 * i, [1000 * i + 50]) for i in range(10)]  # one per second
    m = summarize(records, start_ns=0, send_end_ns=10 * S, warmup_s=2, cooldown_s=3)
    # Window [2 s, 7 s]: requests sent at 2, 3, 4, 5, 6 and 7 s count.
    assert m.window_s == (2.0, 7.0) and m.counted == 6 and m.requests == 10
    assert m.duration_s == pytest.approx(5.05)  # 2 s to the last counted end at 7.05 s
    assert m.send_lag.count == 10  # the generator's schedule is judged over the whole run


def test_dist_percentiles_and_empty():
    d = Dist.of(np.arange(1, 101, dtype=float))
    assert (d.count, d.mean, d.p50, d.max) == (100, 50.5, 50.5, 100)
    assert d.p99 == pytest.approx(99.01)
    empty = Dist.of([math.nan])
    assert empty.count == 0 and math.isnan(empty.p50)


def test_nothing_finished_gives_nan_rates():
    m = summarize([rec(0, 0, [], finish_ms=1, status="rejected")], start_ns=0, send_end_ns=S)
    assert m.finished == 0 and math.isnan(m.request_throughput) and m.rejected == 1
    assert isinstance(m.to_dict()["ttft"], dict)
