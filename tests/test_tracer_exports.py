"""Exports: Perfetto JSON that viewers accept, Parquet and CSV that read back as the frames."""

import json
from collections import defaultdict

import polars as pl

from tracer import TraceWriter, export_csv, export_parquet, export_perfetto, from_events, load
from tracer.synth import synthetic_session


def sample(tmp_path):
    header, events = synthetic_session(40)
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, header) as w:
        for ev in events:
            w.emit(ev)
    return path


def test_perfetto_json_is_well_formed_and_nests(tmp_path):
    path = sample(tmp_path)
    out = export_perfetto(path, tmp_path / "out" / "trace.json")
    doc = json.loads(out.read_text())
    events = doc["traceEvents"]
    phases = defaultdict(int)
    for ev in events:
        phases[ev["ph"]] += 1
        assert {"ph", "pid", "name"} <= ev.keys()
    trace = load(path)
    assert phases["X"] >= trace.ticks.height + trace.stages.height  # ticks, and each stage cell at least once
    assert phases["b"] == phases["e"] == trace.requests.drop_nulls("finish_s").height
    assert phases["C"] == 3 * trace.ticks.height and phases["i"] == trace.marks.height
    # X slices on one track never partly overlap (viewers require nesting).
    tracks = defaultdict(list)
    for ev in events:
        if ev["ph"] == "X":
            tracks[(ev["pid"], ev["tid"])].append((ev["ts"], ev["ts"] + ev["dur"]))
    for slices in tracks.values():
        slices.sort()
        for (s0, e0), (s1, e1) in zip(slices, slices[1:]):
            assert s1 >= e0 - 1e-3 or e1 <= e0
    names = {ev["args"]["name"] for ev in events if ev["ph"] == "M" and ev["name"] == "process_name"}
    assert {"scheduler", "requests", "stages (measured)"} <= names


def test_parquet_and_csv_read_back(tmp_path):
    trace = load(sample(tmp_path))
    paths = export_parquet(trace, tmp_path / "pq")
    assert sorted(p.name for p in paths) == sorted(
        ["ticks.parquet", "requests.parquet", "experts.parquet", "stages.parquet", "marks.parquet", "batches.parquet",
         "session.json"])
    for name in ("ticks", "requests", "experts", "stages", "marks"):
        assert pl.read_parquet(tmp_path / "pq" / f"{name}.parquet").equals(getattr(trace, name))
    export_csv(trace, tmp_path / "csv")
    ticks = pl.read_csv(tmp_path / "csv" / "ticks.csv")
    assert ticks.columns == trace.ticks.columns and ticks.height == trace.ticks.height
    session = json.loads((tmp_path / "csv" / "session.json").read_text())
    assert session["config"] == trace.header.config


def test_export_of_an_empty_trace(tmp_path):
    header, _ = synthetic_session(1)
    trace = from_events(header, [])
    doc = json.loads(export_perfetto(trace, tmp_path / "e.json").read_text())
    assert all(ev["ph"] == "M" for ev in doc["traceEvents"])
    export_parquet(trace, tmp_path / "pq")
    assert pl.read_parquet(tmp_path / "pq" / "requests.parquet").height == 0
