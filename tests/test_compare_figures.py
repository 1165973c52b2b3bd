"""tracer.compare: directions, verdicts (and figures not judged), configuration differences, the bubble share."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.compare import FIGURES, NOT_JUDGED, Delta, compare, config_diff, flatten, format_change
from tracer.events import SessionHeader, StageEvent, TickEvent
from tracer.frames import from_events

FIG = {f.key: f for f in FIGURES}


@pytest.mark.parametrize(
    ("key", "a", "b", "winner", "by"),
    [
        ("ttft_p50_s", 0.100, 0.040, "B", "2.5× lower"),  # latency: lower wins
        ("ttft_p50_s", 0.040, 0.048, "A", "17% lower"),  # a share of the higher one: 0.040 is 17% under 0.048
        ("device_s_per_token", 7.4e-4, 4.7e-4, "B", "36% lower"),  # cost: lower wins
        ("capacity_output_tok_s", 100.0, 118.0, "B", "18% higher"),  # capacity: higher wins
        ("capacity_output_tok_s", 300.0, 100.0, "A", "3.0× higher"),
        ("capacity_output_tok_s", 100.0, 100.5, "even", "within 1%"),
        ("requests_rejected", 5.0, 0.0, "B", "5 fewer"),  # a zero leaves no ratio: absolute
        ("goodput_req_s", 0.0, 2.5, "B", "+2.5 req/s"),
        ("served_rate_tok_s", 210.0, 142.5, NOT_JUDGED, "B 32% lower"),  # the offered load: shown, not judged
        ("experts_touched_per_layer", 4.0, 13.0, NOT_JUDGED, "B 3.2× higher"),
        ("served_rate_tok_s", 210.0, 210.0, NOT_JUDGED, "same"),
        ("bubble_share", None, 0.2, None, "no data"),
        ("requests_rejected", 0.0, 0.0, "even", "same"),
    ],
)
def test_winner_and_margin_follow_each_figures_direction(key, a, b, winner, by):
    delta = Delta(FIG[key], a, b)
    assert delta.winner == winner
    assert delta.by == by


def test_a_figure_not_judged_says_so_in_its_verdict():
    assert Delta(FIG["served_rate_tok_s"], 210.0, 142.5).verdict == NOT_JUDGED
    assert Delta(FIG["served_rate_tok_s"], None, 142.5).verdict == "no data"
    assert Delta(FIG["capacity_output_tok_s"], 100.0, 118.0).verdict == "B, 18% higher"


def test_change_is_a_percentage_until_it_doubles():
    assert format_change(Delta(FIG["capacity_output_tok_s"], 100.0, 112.5)) == "+12.5%"
    assert format_change(Delta(FIG["tpot_p50_s"], 0.005, 0.2)) == "×40.00"
    assert format_change(Delta(FIG["goodput_req_s"], 0.0, 3.0)) == "n/a"


def test_config_diff_names_nested_keys_and_ignores_versions_and_the_device_probe():
    a = {
        "preset": "tiny",
        "scheduler": {"window_ms": 5.0, "max_seqs": 32},
        "versions": {"torch": "2.4"},
        "model": {"layers": 4},
        "device_probe": {"copy_bytes_per_s": 2.9e10},
    }
    b = {
        "preset": "tiny",
        "scheduler": {"window_ms": 200.0, "max_seqs": 32},
        "versions": {"torch": "2.5"},
        "model": {"layers": 4, "router_skew": 0.1},
        "device_probe": {"copy_bytes_per_s": 3.1e10},
    }
    diffs = {d.key: (d.a, d.b) for d in config_diff(a, b)}
    assert diffs == {"scheduler.window_ms": (5.0, 200.0), "model.router_skew": (None, 0.1)}
    # model before scheduler: a reader sees what was run before how it was scheduled
    assert [d.key for d in config_diff(a, b)] == ["model.router_skew", "scheduler.window_ms"]
    assert flatten({"x": {"y": [1, 2]}, "z": {}}) == {"x.y": [1, 2], "z": {}}


def test_bubble_share_row_of_a_two_stage_pipeline():
    # Stage 0 computes 0-10 and 10-20, stage 1 computes 10-20 and 20-30: each is idle for a
    # third of the 30 ns tick (stage 1's warmup, stage 0's drain), so a third of stage-time idles.
    ms = 1_000_000
    start = np.array([[0, 10], [10, 20]], dtype=np.int64) * ms
    end = start + 10 * ms
    header = SessionHeader(t0_mono_ns=0, t0_wall_ns=0, config={})
    events = [
        TickEvent(0, 0, 30 * ms, 0, 2, 0, 2, 0, 2, 0, 100, 30 * ms, 2),
        StageEvent(0, start, end, start, end),
    ]
    pipelined, flat = from_events(header, events), from_events(header, events[:1])
    assert compare(pipelined, pipelined).delta("bubble_share").a == pytest.approx(1 / 3)
    assert compare(flat, pipelined).delta("bubble_share").a is None
