"""What an export must hold, checked against `tracer.load()` of the same trace: every table with
every column, its row count and its values (Parquet and CSV), the session header beside them, and
Perfetto JSON with the tracks and events each frame's rows make. Used by test_tracer_exports.py
(a synthetic trace with pipeline stages, marks and batches) and test_cli.py (a real recording)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tracer import Trace

# Every table of a loaded trace, each exported as one file.
FRAMES = ("ticks", "requests", "experts", "stages", "marks", "batches", "scrapes")
COUNTERS = ("seqs", "queue_depth", "kv_used")


def check_tables(trace: Trace, folder: Path, ext: str) -> None:
    """`folder` holds FRAMES as `ext` files (parquet or csv) equal to the trace's, and session.json."""
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{n}.{ext}" for n in FRAMES] + ["session.json"])
    for name in FRAMES:
        expected: pl.DataFrame = getattr(trace, name)
        path = folder / f"{name}.{ext}"
        if ext == "parquet":
            got = pl.read_parquet(path)
        else:
            # CSV carries no types: the header names the columns, the values must read back as the frame's
            assert path.read_text().partition("\n")[0] == ",".join(expected.columns)
            got = pl.read_csv(path, schema_overrides=expected.schema)
        assert got.columns == expected.columns, name
        assert got.height == expected.height, name
        assert_frame_equal(got, expected, check_exact=True)
    session = json.loads((folder / "session.json").read_text())
    assert session == {
        "t0_mono_ns": trace.header.t0_mono_ns,
        "t0_wall_ns": trace.header.t0_wall_ns,
        "format_version": list(trace.header.format_version),
        "config": trace.header.config,
        "dropped": trace.dropped,
    }


def _us(seconds: float) -> float:
    return seconds * 1e6


def check_perfetto(trace: Trace, doc: dict) -> None:
    """A Chrome trace-event document holding, track by track, what the trace's frames say."""
    assert doc["displayTimeUnit"] == "ms"
    assert doc["otherData"] == {
        "tool": "tickscope",
        "t0_wall_ns": trace.header.t0_wall_ns,
        "format_version": list(trace.header.format_version),
    }
    events = doc["traceEvents"]
    assert all({"ph", "pid", "name"} <= ev.keys() for ev in events)
    assert set(Counter(ev["ph"] for ev in events)) <= {"M", "X", "C", "b", "n", "e", "i"}

    # the tracks: processes and their threads, named
    pids = {ev["args"]["name"]: ev["pid"] for ev in events if ev["ph"] == "M" and ev["name"] == "process_name"}
    stages, ticks, reqs, marks = trace.stages, trace.ticks, trace.requests, trace.marks
    modelled = stages.filter(pl.col("modelled"))
    expected_processes = {"scheduler", "requests"}
    if stages.height:
        expected_processes.add("stages (measured)")
    if modelled.height:
        expected_processes.add("stages (modelled, one device per stage)")
    assert set(pids) == expected_processes and len(set(pids.values())) == len(pids)
    threads = defaultdict(dict)
    for ev in events:
        if ev["ph"] == "M" and ev["name"] == "thread_name":
            threads[ev["pid"]][ev["tid"]] = ev["args"]["name"]
    sched = pids["scheduler"]
    assert threads[sched] == {1: "ticks", 2: "collection window"}
    n_stages = int(stages["stage"].max()) + 1 if stages.height else 0
    for name in ("stages (measured)", "stages (modelled, one device per stage)"):
        if name in pids:
            assert threads[pids[name]] == {s: f"stage {s}" for s in range(n_stages)}

    def on(pid: int, ph: str, tid: int | None = None) -> list[dict]:
        return [ev for ev in events if ev["pid"] == pid and ev["ph"] == ph and (tid is None or ev.get("tid") == tid)]

    # one slice per tick, at its time, with its batch; one per collection wait
    tick_slices = on(sched, "X", 1)
    assert [ev["name"] for ev in tick_slices] == [f"tick {t}" for t in ticks["tick"]]
    assert [ev["ts"] for ev in tick_slices] == pytest.approx([_us(s) for s in ticks["start_s"]], abs=1e-3)
    assert [ev["dur"] for ev in tick_slices] == pytest.approx(
        [_us(e - s) for s, e in zip(ticks["start_s"], ticks["end_s"])], abs=2e-3
    )
    for ev, row in zip(tick_slices, ticks.iter_rows(named=True)):
        assert ev["args"] == {k: row[k] for k in ("seqs", "prefill_tokens", "decode_tokens", "forward_s")}
    waits = ticks.filter(pl.col("wait_s") > 0)
    wait_slices = on(sched, "X", 2)
    assert len(wait_slices) == waits.height
    assert [ev["dur"] for ev in wait_slices] == pytest.approx([_us(w) for w in waits["wait_s"]], abs=2e-3)
    # one counter sample per tick and counter, with the tick's value
    for counter in COUNTERS:
        samples = [ev for ev in on(sched, "C") if ev["name"] == counter]
        assert [ev["args"][counter] for ev in samples] == ticks[counter].to_list()
    assert len(on(sched, "C")) == len(COUNTERS) * ticks.height

    # one slice per stage cell, on its stage's track, measured and (where modelled) modelled
    for name, frame, which in (
        ("stages (measured)", stages, "measured"),
        ("stages (modelled, one device per stage)", modelled, "modelled"),
    ):
        if name not in pids:
            assert frame.height == 0
            continue
        cells = on(pids[name], "X")
        frame = frame.drop_nulls("tick_start_s")
        assert len(cells) == frame.height
        assert [(ev["tid"], ev["name"]) for ev in cells] == [
            (r["stage"], f"tick {r['tick']} mb {r['micro_batch']}") for r in frame.iter_rows(named=True)
        ]
        assert [ev["ts"] for ev in cells] == pytest.approx(
            [_us(b + s) for b, s in zip(frame["tick_start_s"], frame[f"{which}_start_s"])], abs=1e-3
        )
        assert [ev["dur"] for ev in cells] == pytest.approx(
            [_us(e - s) for s, e in zip(frame[f"{which}_start_s"], frame[f"{which}_end_s"])], abs=2e-3
        )

    # each request that arrived and ended: an async slice from arrival to finish, its first token inside
    req = pids["requests"]
    ended = reqs.drop_nulls(["arrival_s", "finish_s"])
    begins, ends, firsts = on(req, "b"), on(req, "e"), on(req, "n")
    assert [ev["id"] for ev in begins] == [ev["id"] for ev in ends] == ended["request"].to_list()
    assert [ev["ts"] for ev in begins] == pytest.approx([_us(t) for t in ended["arrival_s"]], abs=1e-3)
    assert [ev["ts"] for ev in ends] == pytest.approx([_us(t) for t in ended["finish_s"]], abs=1e-3)
    assert [ev["args"] for ev in ends] == [
        {"status": s, "output_tokens": n} for s, n in zip(ended["status"], ended["output_tokens"])
    ]
    assert [ev["args"]["prompt_tokens"] for ev in begins] == ended["prompt_tokens"].to_list()
    with_first = ended.drop_nulls("first_token_s")
    assert [ev["id"] for ev in firsts] == with_first["request"].to_list()
    assert [ev["ts"] for ev in firsts] == pytest.approx([_us(t) for t in with_first["first_token_s"]], abs=1e-3)

    # each mark: a global instant with its text
    instants = [ev for ev in events if ev["ph"] == "i"]
    assert [(ev["name"], ev["s"]) for ev in instants] == [(text, "g") for text in marks["text"]]
    assert [ev["ts"] for ev in instants] == pytest.approx([_us(t) for t in marks["t_s"]], abs=1e-3)

    # nothing else: every event is one of the above
    metadata = [ev for ev in events if ev["ph"] == "M"]
    assert len(events) == (
        len(metadata)
        + len(tick_slices)
        + len(wait_slices)
        + len(on(sched, "C"))
        + stages.drop_nulls("tick_start_s").height
        + modelled.drop_nulls("tick_start_s").height
        + len(begins)
        + len(ends)
        + len(firsts)
        + len(instants)
    )
