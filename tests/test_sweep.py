"""The sweep: grid and file names, the knee rule, and a real two-point sweep with its resume and its
cost columns (checked against tests/compare_costs.py, which recomputes them from the frames)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import tracer
from compare_costs import independent_costs, profile
from tracer.compare import Costing
from tracer.plots import CurvePoint
from tui.cli import main
from workloads.sweep import KNEE_RULE, GridPoint, SweepPlan, cost_measure, knee, recorded_cleanly, run_sweep


def curve(*rows: tuple[float, float, float]) -> list[CurvePoint]:
    """Points from (window ms, cost, p99 TTFT s)."""
    return [CurvePoint(f"w{w:g}", w, None, cost, 1 / cost, p99 / 2, p99, 4.0, 4.2) for w, cost, p99 in rows]


def test_grid_points_name_their_traces_predictably(tmp_path):
    plan = SweepPlan("tiny", "smoke", [0, 5, 20], tmp_path, max_seqs=[32, 128])
    names = [p.name for p in plan.grid()]
    assert names == ["w0_s32", "w5_s32", "w20_s32", "w0_s128", "w5_s128", "w20_s128"]
    assert plan.trace_path(plan.grid()[1]) == tmp_path / "w5_s32.msgpack"
    assert GridPoint(0.5, None).name == "w0.5"
    assert GridPoint(0, 8).scheduler_overrides() == {"policy": "continuous", "window_ms": 0.0, "max_seqs": 8}
    assert GridPoint(50, None).scheduler_overrides() == {"policy": "window", "window_ms": 50.0}


def test_knee_is_the_cheapest_point_within_twice_the_lowest_p99():
    points = curve(
        (0, 1.00, 0.010),
        (5, 0.60, 0.015),
        (20, 0.45, 0.020),  # 2x the lowest p99: still within
        (50, 0.30, 0.021),  # just past it, however cheap
        (200, 0.20, 0.400),
    )
    assert knee(points) == 2
    assert KNEE_RULE == "knee: the cheapest point whose p99 TTFT is within 2× of the sweep's lowest p99 TTFT"


def test_knee_prefers_the_quicker_of_equal_costs_and_skips_points_without_figures():
    points = curve((0, 0.5, 0.010), (5, 0.5, 0.008), (20, 0.9, 0.005))
    assert knee(points) == 1
    points.append(CurvePoint("w50", 50, None, None, None, None, 0.001, None, None))  # no cost: not a candidate
    assert knee(points) == 1
    assert knee([CurvePoint("w0", 0, None, None, None, None, None, None, None)]) is None


def test_the_curves_cost_is_modelled_dollars_then_measured_dollars_then_device_time():
    modelled = {
        "accelerator": {"name": "H200", "usd_per_mtok_modelled": 0.5},
        "usd_per_mtok_measured": 2.0,
        "device_s_per_output_token": 0.001,
    }
    measured = {**modelled, "accelerator": None}
    assert cost_measure([modelled], Costing("H200", 3.0)).of(modelled) == 0.5
    assert cost_measure([measured], Costing(price=3.0)).name == "$/M output tok at $3.00/h, measured"
    device = cost_measure([measured], Costing())
    assert device.of(measured) == pytest.approx(1.0) and device.name == "device ms/output tok, measured"
    unpriced = {**modelled, "accelerator": {"name": "this-device", "usd_per_mtok_modelled": None}}
    assert cost_measure([unpriced], Costing("this-device")).key == "device_s_per_output_token"


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


def close(cell: str, value: float) -> bool:
    """A table cell shows `value` to the precision it is printed with."""
    number = float(cell.replace(",", ""))
    if "e" in cell:
        return number == pytest.approx(value, rel=0.05)
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return abs(number - value) <= 0.5 * 10**-decimals + 1e-12


def test_sweep_command_resumes_prints_the_table_and_plots(sweep_dir, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*.msgpack")}
    code = main(
        [
            "sweep",
            "--workload",
            "smoke",
            "--window",
            "0,20",
            "--duration",
            "1",
            "--device",
            "cpu",
            "--out",
            str(sweep_dir),
            "--quiet",
            "--price",
            "2",
            "--accelerator",
            "H100-SXM",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("point"))
    assert header.split() == [
        "point",
        "served",
        "capacity",
        "dev",
        "ms",
        "$",
        "meas",
        "$",
        "model",
        "p50",
        "p99",
        "batch",
        "rej",
        "run",
    ]
    lines = {line.split()[0]: line.split() for line in out.splitlines() if re.match(r"^ ?w\d", line)}
    assert set(lines) == {"w0", "w20"} and all(cells[-1] == "kept" for cells in lines.values())
    # every cost figure against the frames; the knee by its rule from those figures
    p99 = {}
    cheapest = {}
    for name, cells in lines.items():
        trace = tracer.load(sweep_dir / f"{name}.msgpack")
        e = independent_costs(trace, profile("H100-SXM"), 2.0)
        served, capacity, dev_ms, usd_measured, usd_modelled = cells[1:6]
        assert close(served, e["served_rate_tok_s"]) and close(capacity, e["capacity_output_tok_s"])
        assert close(dev_ms, e["device_s_per_output_token"] * 1000)
        assert close(usd_measured, e["usd_per_mtok_measured"])
        assert close(usd_modelled, e["accelerator.usd_per_mtok_modelled"])
        ttft = trace.requests["ttft_s"].drop_nulls().to_numpy()
        assert close(cells[6], np.percentile(ttft, 50) * 1000) and close(cells[7], np.percentile(ttft, 99) * 1000)
        p99[name], cheapest[name] = np.percentile(ttft, 99), e["accelerator.usd_per_mtok_modelled"]
    within = [n for n in p99 if p99[n] <= 2 * min(p99.values())]
    knee_at = min(within, key=lambda n: (cheapest[n], p99[n]))
    assert "◀" in lines[knee_at] and all("◀" not in lines[n] for n in lines if n != knee_at)
    assert "curve: $/M output tok on H100-SXM, modelled, and capacity, against TTFT p50 and p99" in out
    assert KNEE_RULE in out
    assert {p.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*.msgpack")} == before
    image = imread(sweep_dir / "sweep.png")
    assert image.shape[0] > 600 and image.shape[1] > 800
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20


def test_sweep_refuses_an_unknown_accelerator_before_recording(tmp_path, capsys):
    code = main(
        [
            "sweep",
            "--workload",
            "smoke",
            "--window",
            "0,5",
            "--duration",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
            "--accelerator",
            "TPU-v9",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown accelerator 'TPU-v9'" in err and "H200" in err
    assert not (tmp_path / "out").exists()


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
    code = main(
        [
            "sweep",
            "--workload",
            "smoke",
            "--window",
            "0,5",
            "--max-seqs",
            "4096",
            "--duration",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "max_tokens" in capsys.readouterr().err  # 4096 seqs > 2048 tokens a tick
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
