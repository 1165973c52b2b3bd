"""Exports: Perfetto JSON that viewers accept, Parquet and CSV that read back as the frames."""

import json
from collections import defaultdict

import numpy as np
import polars as pl

from export_checks import check_perfetto, check_tables
from tracer import (
    BatchEvent,
    TickEvent,
    TraceWriter,
    export_csv,
    export_parquet,
    export_perfetto,
    from_events,
    load,
)
from tracer.synth import synthetic_session


def sample(tmp_path):
    """A synthetic session with stages (modelled), a mark, and a batch per tick (which synth lacks)."""
    header, events = synthetic_session(40)
    path = tmp_path / "t.msgpack"
    rng = np.random.default_rng(5)
    with TraceWriter(path, header) as w:
        for ev in events:
            w.emit(ev)
            if type(ev) is TickEvent and ev.seqs:
                n = ev.seqs
                w.emit(
                    BatchEvent(
                        ev.tick,
                        np.arange(n, dtype=np.int64) + ev.tick,
                        rng.integers(0, 16, n).astype(np.int32),
                        np.ones(n, dtype=np.int32),
                        (np.arange(n) % 2).astype(np.int16),
                    )
                )
    return path


def test_perfetto_json_holds_every_tick_stage_cell_request_and_mark(tmp_path):
    path = sample(tmp_path)
    trace = load(path)
    assert trace.stages.height and trace.marks.height and trace.requests.height  # something in every track
    out = export_perfetto(path, tmp_path / "out" / "trace.json")
    doc = json.loads(out.read_text())
    check_perfetto(trace, doc)
    # X slices on one track never partly overlap (viewers require nesting).
    tracks = defaultdict(list)
    for ev in doc["traceEvents"]:
        if ev["ph"] == "X":
            tracks[(ev["pid"], ev["tid"])].append((ev["ts"], ev["ts"] + ev["dur"]))
    for slices in tracks.values():
        slices.sort()
        for (_, e0), (s1, e1) in zip(slices, slices[1:]):
            assert s1 >= e0 - 1e-3 or e1 <= e0


def test_parquet_and_csv_read_back_as_every_frame(tmp_path):
    trace = load(sample(tmp_path))
    assert trace.batches.height == trace.ticks["seqs"].sum() > 0
    paths = export_parquet(trace, tmp_path / "pq")
    assert sorted(p.name for p in paths) == sorted(
        [
            "ticks.parquet",
            "requests.parquet",
            "experts.parquet",
            "stages.parquet",
            "marks.parquet",
            "batches.parquet",
            "scrapes.parquet",
            "session.json",
        ]
    )
    check_tables(trace, tmp_path / "pq", "parquet")
    export_csv(trace, tmp_path / "csv")
    check_tables(trace, tmp_path / "csv", "csv")


def test_export_of_an_empty_trace(tmp_path):
    header, _ = synthetic_session(1)
    trace = from_events(header, [])
    doc = json.loads(export_perfetto(trace, tmp_path / "e.json").read_text())
    assert all(ev["ph"] == "M" for ev in doc["traceEvents"])
    check_perfetto(trace, doc)
    export_parquet(trace, tmp_path / "pq")
    check_tables(trace, tmp_path / "pq", "parquet")
    export_csv(trace, tmp_path / "csv")
    check_tables(trace, tmp_path / "csv", "csv")
    assert pl.read_parquet(tmp_path / "pq" / "requests.parquet").height == 0
