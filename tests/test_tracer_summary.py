"""summarize: the headline figures, goodput against SLOs, expert balance, JSON safety."""

import json

import numpy as np
import pytest
from rich.console import Console

from tracer import ExpertsEvent, RequestEvent, SessionHeader, TickEvent, from_events, summarize, summary_table
from tracer.synth import synthetic_session

MS = 1_000_000


def finished(rid, arrive_ms, ttft_ms, total_ms, tokens):
    token_us = np.linspace(ttft_ms * 1000, total_ms * 1000, tokens).astype(np.uint32)
    return [
        RequestEvent(rid, "arrive", arrive_ms * MS, prompt_tokens=4),
        RequestEvent(rid, "first_token", (arrive_ms + ttft_ms) * MS),
        RequestEvent(
            rid, "finish", (arrive_ms + total_ms) * MS, output_tokens=tokens, status="finished", token_us=token_us
        ),
    ]


def trace_with(slo=None):
    header = SessionHeader(0, 0, {"workload": {"slo": slo or {}}})
    events = (
        finished(1, 0, 10, 100, 10)
        + finished(2, 0, 50, 500, 10)
        + finished(3, 0, 10, 1000, 1)
        + [RequestEvent(4, "arrive", 0), RequestEvent(4, "finish", 10 * MS, status="rejected")]
    )
    events += [TickEvent(i, i * 100 * MS, (i + 1) * 100 * MS, 0, 2 + i, 0, 1, 0, 1, 1, 10, 1, 1) for i in range(10)]
    counts = [np.array([[4, 4, 0, 0], [1, 1, 1, 1]], np.int32), np.array([[8, 0, 0, 0], [0, 0, 0, 0]], np.int32)]
    events += [ExpertsEvent(i, c) for i, c in enumerate(counts)]
    return from_events(header, events)


def test_headline_figures():
    s = summarize(trace_with())
    assert s["ticks"] == 10 and s["mean_batch_seqs"] == pytest.approx(6.5)
    counts = (s["requests_submitted"], s["requests_finished"], s["requests_rejected"], s["requests_cancelled"])
    assert counts == (4, 3, 1, 0)
    assert s["tokens_generated"] == 21 and s["span_s"] == pytest.approx(1.0)
    assert s["served_rate_tok_s"] == pytest.approx(10.0)  # the ticks' sampled tokens over the span
    assert s["ttft_p50_s"] == pytest.approx(0.010)
    # TPOT exists only for the two multi-token requests: 0.01 and 0.05 s per token.
    assert s["tpot_p50_s"] == pytest.approx(0.03) and s["tpot_p99_s"] == pytest.approx(0.0496)
    assert s["e2e_p50_s"] == pytest.approx(0.5)
    assert s["itl_p50_s"] == pytest.approx(np.median(np.r_[np.full(9, 0.01), np.full(9, 0.05)]), rel=1e-3)


def test_expert_balance():
    s = summarize(trace_with())
    # (tick, layer) cells: [4,4,0,0] active 1/2, max/mean 2; [1,1,1,1] 1, 1; [8,0,0,0] 1/4, 4; an empty
    # layer routed nothing (a dense layer's row is one): left out
    assert s["experts_active_frac"] == pytest.approx((0.5 + 1 + 0.25) / 3)
    assert s["expert_imbalance"] == pytest.approx((2 + 1 + 4) / 3)
    assert s["expert_imbalance_per_layer"] == pytest.approx([3.0, 1.0])


@pytest.mark.parametrize(
    "slo, good",
    [
        ({}, 3),
        ({"ttft_s": 0.02}, 2),
        ({"ttft_s": 0.02, "e2e_s": 0.5}, 1),
        ({"tpot_s": 0.02}, 2),
        ({"e2e_s": 0.01}, 0),
    ],
)
def test_goodput_counts_requests_meeting_every_slo(slo, good):
    s = summarize(trace_with(slo))
    assert s["goodput_req_s"] == pytest.approx(good / 1.0)
    assert s["slo"] == slo


def test_empty_trace_summary_is_json_safe():
    s = summarize(from_events(SessionHeader(0, 0), []))
    json.dumps(s, allow_nan=False)
    assert s["ticks"] == 0 and s["served_rate_tok_s"] is None and s["ttft_p50_s"] is None


def test_summary_table_renders_every_figure():
    header, events = synthetic_session(40)
    s = summarize(from_events(header, events))
    console = Console(width=100, record=True)
    console.print(summary_table(s))
    text = console.export_text()
    for key in ("served_rate_tok_s", "goodput_req_s", "expert_imbalance_per_layer"):
        assert key in text
    assert "ms" in text and "tok/s" in text
