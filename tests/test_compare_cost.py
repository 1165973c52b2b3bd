"""What a token costs, in compare and its report: the headline, the priced and modelled rows, pipelines,
and recordings that cannot be costed. Every number is checked against tests/compare_costs.py, which
recomputes it from `tracer.load()`'s frames."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

import tracer
from compare_costs import busy_and_devices, independent_costs, probe_profile, profile
from tracer.compare import FIGURES, NOT_JUDGED, Costing, compare, delta_rows, figure_label, format_value, headline
from tracer.cost import NO_TICKS
from tracer.events import RequestEvent, SessionHeader
from tracer.synth import synthetic_session
from tui.cli import main

TRACES = Path(__file__).resolve().parent.parent / "traces"
SHIPPED = (TRACES / "tiny-article-5ms.msgpack", TRACES / "tiny-article-200ms.msgpack")
FIG = {f.key: f for f in FIGURES}


@pytest.fixture(scope="module")
def shipped() -> tuple[tracer.Trace, tracer.Trace]:
    a, b = (tracer.load(p) for p in SHIPPED)
    return a, b


def rows_by_key(comparison) -> dict[str, tuple[str, ...]]:
    return {d.figure.key: row for d, row in zip(comparison.deltas, delta_rows(comparison))}


def test_the_article_samples_say_b_is_cheaper_per_token_and_a_faster_to_first_token(shipped, tmp_path, capsys):
    a, b = shipped
    cost_a, cost_b = (independent_costs(t)["device_s_per_token"] for t in shipped)
    ttft_a, ttft_b = (t.requests["ttft_s"].drop_nulls().quantile(0.5, "linear") for t in shipped)
    assert cost_b < cost_a and ttft_a < ttft_b  # the article's trade-off, in the data
    expected = (
        f"B is cheaper per token, A faster to first token: B costs {1 - cost_b / cost_a:.0%} less device "
        f"time per processed token; its p50 TTFT is {ttft_b / ttft_a:.1f}× higher."
    )
    assert headline(compare(a, b)) == expected
    assert main(["compare", *map(str, SHIPPED), "--report", str(tmp_path)]) == 0
    assert f"**{expected}**" in (tmp_path / "report.md").read_text()
    assert "B is cheaper per token, A faster to first token" in capsys.readouterr().out


def test_the_headline_states_no_trade_off_when_there_is_none(shipped):
    a, _ = shipped
    assert headline(compare(a, a)) == (
        "Neither is cheaper per token nor faster to first token: both cost the same device time per processed "
        "token (same); the same p50 TTFT (same)."
    )
    # a copy of A whose ticks take half the time and whose first tokens come twice as soon
    quicker = dataclasses.replace(
        a, ticks=a.ticks.with_columns(pl.col("forward_s") / 2), requests=a.requests.with_columns(pl.col("ttft_s") / 2)
    )
    assert headline(compare(a, quicker)) == (
        "B is cheaper per token and faster to first token: B costs 50% less device time per processed token; "
        "its p50 TTFT is 2.0× lower too."
    )


def test_cost_rows_lead_and_the_served_rate_is_not_judged(shipped):
    comparison = compare(*shipped)
    keys = [d.figure.key for d in comparison.deltas]
    assert keys[:4] == ["device_s_per_token", "device_s_per_output_token", "capacity_output_tok_s", "served_rate_tok_s"]
    assert keys.index("bytes_per_token") < keys.index("ttft_p50_s")
    assert comparison.delta("served_rate_tok_s").verdict == NOT_JUDGED
    assert comparison.tally()[NOT_JUDGED] == 2  # served rate, experts touched
    touched = comparison.delta("experts_touched_per_layer")
    expected = [independent_costs(t) for t in shipped]
    assert rows_by_key(comparison)["experts_touched_per_layer"][1:3] == tuple(
        f"{e['experts_touched_per_layer']:.1f} ({e['experts_expected_uniform']:.1f})" for e in expected
    )
    assert touched.beside == tuple(pytest.approx(e["experts_expected_uniform"]) for e in expected)
    assert "bubble_share" not in keys  # neither recording has a pipeline
    assert "usd_per_mtok_measured" not in keys and not any(k.startswith("accelerator.") for k in keys)


@pytest.mark.parametrize(("accelerator", "price"), [("H100-SXM", None), ("MI300X", 2.5), (None, 1.25)])
def test_priced_and_modelled_rows_match_an_independent_count(shipped, tmp_path, accelerator, price):
    costing = Costing(accelerator, price)
    comparison = compare(*shipped, costing=costing)
    rows = rows_by_key(comparison)
    expected = [independent_costs(t, profile(accelerator) if accelerator else None, price) for t in shipped]
    shown = {f.key for f in FIGURES if costing.shows(f)}
    assert ("usd_per_mtok_measured" in shown) == (price is not None)
    assert ("accelerator.usd_per_mtok_modelled" in shown) == (accelerator is not None)
    for key in expected[0]:
        if key not in shown or FIG[key].beside:
            continue
        label, a_cell, b_cell, _change, _better = rows[key]
        assert (a_cell, b_cell) == tuple(format_value(FIG[key], e[key]) for e in expected), key
        if key.startswith("accelerator."):
            assert label.startswith("modelled ") and label.endswith(f", {accelerator}")
    if accelerator:
        assert any(n.startswith(f"modelled on {accelerator}: each recording's own ticks") for n in comparison.notes)
    if price:
        assert f"measured $ at ${price:,.2f} per device-hour of the recording's device" in comparison.notes
    # the report shows the same rows, labelled the same
    flags = (["--accelerator", accelerator] if accelerator else []) + (["--price", str(price)] if price else [])
    assert main(["compare", *map(str, SHIPPED), "--report", str(tmp_path), *flags]) == 0
    text = (tmp_path / "report.md").read_text()
    for key in shown & set(rows):
        label, a_cell, b_cell, change, better = rows[key]
        assert f"| {label} | {a_cell} | {b_cell} | {change} | {better} |" in text, key


def test_this_device_is_each_recordings_own_probe(shipped):
    comparison = compare(*shipped, costing=Costing("this-device", 4.0))
    rows = rows_by_key(comparison)
    expected = [independent_costs(t, probe_profile(t), 4.0) for t in shipped]
    for key in ("accelerator.capacity_output_tok_s", "accelerator.usd_per_mtok_modelled"):
        assert rows[key][1:3] == tuple(format_value(FIG[key], e[key]) for e in expected), key
    assert figure_label(comparison, FIG["accelerator.capacity_output_tok_s"]) == "modelled capacity, this-device"


def test_an_unknown_accelerator_is_one_line_and_exit_2(tmp_path, capsys):
    for extra in (["--report", str(tmp_path / "out")], []):  # the report, and the dashboard before it starts
        assert main(["compare", *map(str, SHIPPED), "--accelerator", "H1OO", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unknown accelerator 'H1OO'" in err
        assert "H100-SXM" in err and "MI300X" in err and "this-device" in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def client_side(tmp_path_factory) -> Path:
    """A trace as `record --target` writes it: requests seen from the client, no ticks."""
    header, events = synthetic_session(40, seed=2)
    path = tmp_path_factory.mktemp("client") / "client.msgpack"
    client = SessionHeader(
        header.t0_mono_ns, header.t0_wall_ns, {"target": "http://127.0.0.1:8000", "workload": header.config["workload"]}
    )
    with tracer.TraceWriter(path, client) as writer:
        for event in events:
            if isinstance(event, RequestEvent):
                writer.emit(event)
    return path


def test_a_client_side_trace_shows_cost_rows_as_unavailable_with_the_reason(client_side, tmp_path, capsys):
    client, sample = tracer.load(client_side), tracer.load(SHIPPED[0])
    assert client.ticks.height == 0
    comparison = compare(client, sample, costing=Costing("this-device", 2.0))
    for key in (
        "device_s_per_token",
        "capacity_output_tok_s",
        "bytes_per_token",
        "usd_per_mtok_measured",
        "accelerator.usd_per_mtok_modelled",
    ):
        delta = comparison.delta(key)
        assert delta.a is None and delta.b is not None and delta.verdict == "no data", key
        assert comparison.missing(delta) == f"A: {NO_TICKS}"
    assert f"A: cost figures unavailable: {NO_TICKS}" in comparison.notes
    assert any(n.startswith("A: not modelled on this-device: ") for n in comparison.notes)
    assert headline(comparison).startswith(
        f"A is faster to first token: device time per token not compared (A: {NO_TICKS}); A's p50 TTFT is"
    )
    assert main(["compare", str(client_side), str(SHIPPED[0]), "--report", str(tmp_path), "--price", "2"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert f"- device time/processed tok: not compared (A: {NO_TICKS})." in text
    assert f"- A: cost figures unavailable: {NO_TICKS}" in text
    assert "cost figures unavailable" in capsys.readouterr().out


def pipeline_pair(folder: Path) -> tuple[Path, Path]:
    """Two short real recordings on tiny with 2 stages: 1 micro-batch, and 4 (fewer when a tick has
    fewer sequences; a 100 ms window gathers several)."""
    from conftest import COMPARE_WORKLOAD
    from workloads.run import Recording, RecordingPlan

    workload = folder / "pipe.toml"
    workload.write_text(COMPARE_WORKLOAD.replace("duration_s = 1.5", "duration_s = 1.0"))
    paths = []
    for micro_batches in (1, 4):
        out = folder / f"m{micro_batches}.msgpack"
        plan = RecordingPlan(
            preset="tiny",
            workload=str(workload),
            out=out,
            device="cpu",
            scheduler_overrides={"stages": 2, "micro_batches": micro_batches, "window_ms": 100},
        )
        Recording(plan).run()
        paths.append(out)
    return paths[0], paths[1]


def test_a_pipelines_capacity_and_cost_are_per_makespan_with_one_device_per_stage(tmp_path):
    # A differential test rather than "4 micro-batches serve more": on a shared 2-core CPU the tiny
    # model's cells cost about the same whatever their size, so the direction is not reliable.
    m1, m4 = (tracer.load(p) for p in pipeline_pair(tmp_path))
    comparison = compare(m1, m4, costing=Costing(price=3.0))
    rows = rows_by_key(comparison)
    expected = [independent_costs(t, price=3.0) for t in (m1, m4)]
    for key in (
        "device_s_per_token",
        "device_s_per_output_token",
        "capacity_output_tok_s",
        "usd_per_mtok_measured",
        "bytes_per_token",
    ):
        assert rows[key][1:3] == tuple(format_value(FIG[key], e[key]) for e in expected), key
    for trace in (m1, m4):  # every tick ran pipelined: busy for its makespan, on both stages' devices
        assert (busy_and_devices(trace)[1] == 2).all()
    counts = m4.stages.group_by("tick").agg(pl.col("micro_batch").n_unique())["micro_batch"]
    assert counts.max() > 1
    fewest, most = counts.min(), counts.max()
    m4_shape = f"{most} micro-batches" if fewest == most else f"{fewest}-{most} micro-batches"
    note = next(n for n in comparison.notes if n.startswith("pipelined ("))
    assert f"A 2 stages × 1 micro-batch, modelled; B 2 stages × {m4_shape}, modelled" in note
    assert "capacity is tokens per makespan-second and device time is makespan × stages" in note
