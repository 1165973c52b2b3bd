"""The sweep: grid and file names, the knee rule, and a real two-point sweep with its resume."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import tracer
from tracer.plots import CurvePoint
from tui.cli import main
from workloads.sweep import GridPoint, SweepPlan, frontier, knee, recorded_cleanly, run_sweep


def curve(*rows: tuple[float, float, float]) -> list[CurvePoint]:
    """Points from (window ms, throughput, p99 s)."""
    return [CurvePoint(f"w{w:g}", w, None, tput, p99 / 2, p99, 0.5) for w, tput, p99 in rows]


def test_grid_points_name_their_traces_predictably(tmp_path):
    plan = SweepPlan("tiny", "smoke", [0, 5, 20], tmp_path, max_seqs=[32, 128])
    names = [p.name for p in plan.grid()]
    assert names == ["w0_s32", "w5_s32", "w20_s32", "w0_s128", "w5_s128", "w20_s128"]
    assert plan.trace_path(plan.grid()[1]) == tmp_path / "w5_s32.msgpack"
    assert GridPoint(0.5, None).name == "w0.5"
    assert GridPoint(0, 8).scheduler_overrides() == {"policy": "continuous", "window_ms": 0.0, "max_seqs": 8}
    assert GridPoint(50, None).scheduler_overrides() == {"policy": "window", "window_ms": 50.0}


def test_knee_is_where_latency_stops_buying_throughput():
    points = curve(
        (0, 100.0, 0.010),
        (5, 200.0, 0.020),  # 2x latency, 2x throughput: slope 1
        (20, 300.0, 0.040),  # 2x latency, 1.5x throughput: slope 0.58
        (50, 310.0, 0.100),  # 2.5x latency, 3% more: slope 0.04, so 20 ms is the knee
        (200, 315.0, 0.400),
    )
    assert knee(points) == 2


def test_knee_ignores_points_off_the_frontier():
    points = curve((0, 100.0, 0.010), (5, 90.0, 0.050), (20, 400.0, 0.020), (50, 405.0, 0.500))
    assert frontier(points) == [0, 2, 3]
    assert knee(points) == 2


def test_knee_is_the_last_point_when_every_step_pays_and_none_without_data():
    assert knee(curve((0, 100.0, 0.01), (5, 200.0, 0.02), (20, 400.0, 0.04))) == 2
    assert knee([CurvePoint("w0", 0, None, None, None, None, None)]) is None


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A real sweep on tiny: two 1 s points, continuous batching and a 20 ms window."""
    out = tmp_path_factory.mktemp("sweep")
    rows = run_sweep(SweepPlan("tiny", "smoke", [0, 20], out, duration_s=1.0, device="cpu"))
    assert [r.skipped for r in rows] == [False, False]
    return out


def plan_for(out: Path) -> SweepPlan:
    return SweepPlan("tiny", "smoke", [0, 20], out, duration_s=1.0, device="cpu")


def test_sweep_records_each_point_to_a_clean_trace(sweep_dir):
    for name, policy in (("w0", "continuous"), ("w20", "window")):
        path = sweep_dir / f"{name}.msgpack"
        assert recorded_cleanly(path)
        config = tracer.load(path).header.config
        assert config["scheduler"]["policy"] == policy
    assert tracer.load(sweep_dir / "w20.msgpack").header.config["scheduler"]["window_ms"] == 20
    assert not list(sweep_dir.glob("*.partial"))


def test_sweep_command_resumes_prints_the_table_and_plots(sweep_dir, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*.msgpack")}
    code = main(["sweep", "--workload", "smoke", "--window", "0,20", "--duration", "1",
                 "--device", "cpu", "--out", str(sweep_dir), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(" w")}
    assert set(lines) == {"w0", "w20"} and all("kept" in line for line in lines.values())
    assert "◀ knee" in out and "knee: on the throughput-vs-p99 frontier" in out
    assert {p.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*.msgpack")} == before
    image = imread(sweep_dir / "sweep.png")
    assert image.shape[0] > 300 and image.shape[1] > 800
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20


def test_a_torn_point_is_recorded_again(sweep_dir, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    for name in ("w0.msgpack", "w20.msgpack"):
        (out / name).write_bytes((sweep_dir / name).read_bytes())
    torn = out / "w20.msgpack"
    with open(torn, "r+b") as f:  # as a killed writer leaves it: the footer and a partial frame gone
        f.truncate(os.path.getsize(torn) - 40)
    assert not recorded_cleanly(torn)
    seen = []
    rows = run_sweep(plan_for(out), on_point=lambda i, point, skipped: seen.append((point.name, skipped)))
    assert seen == [("w0", True), ("w20", False)]
    assert recorded_cleanly(torn) and [r.skipped for r in rows] == [True, False]


def test_sweep_refuses_bad_lists_and_knobs_before_recording(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--workload", "smoke", "--window", "5,5", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "appears twice" in capsys.readouterr().err
    code = main(["sweep", "--workload", "smoke", "--window", "0,5", "--max-seqs", "4096",
                 "--duration", "1", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 2 and "max_tokens" in capsys.readouterr().err  # 4096 seqs > 2048 tokens a tick
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
