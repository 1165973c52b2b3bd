"""The command line end to end: a real recording on the tiny engine, read back every way a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tracer
from export_checks import check_perfetto, check_tables
from tui.cli import main

SUMMARY_KEYS = {
    "ticks",
    "requests_submitted",
    "requests_finished",
    "tokens_generated",
    "span_s",
    "served_rate_tok_s",
    "device_s_per_token",
    "device_s_per_output_token",
    "capacity_tok_s",
    "bytes_per_token",
    "experts_touched_per_layer",
    "experts_expected_uniform",
    "accelerator",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p99_s",
    "mean_batch_seqs",
    "experts_active_frac",
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run.msgpack"
    assert (
        main(["record", "--preset", "tiny", "--workload", "smoke", "--duration", "2", "--out", str(out), "--quiet"])
        == 0
    )
    return out


def test_record_writes_a_trace_that_loads(recorded: Path) -> None:
    trace = tracer.load(recorded)
    assert trace.problems == []
    assert trace.ticks.height > 0
    assert trace.requests.height > 0
    # every request ends exactly once, and the trace says how
    assert set(trace.requests["status"].to_list()) <= {"finished", "rejected", "cancelled"}
    assert trace.header.config["preset"] == "tiny"
    assert trace.header.config["workload"]["name"] == "smoke"
    layers = trace.header.config["model"]["layers"]
    assert trace.experts["layer"].n_unique() == layers


def test_summary_json_has_the_promised_figures(recorded: Path, capsys) -> None:
    assert main(["summary", str(recorded), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert SUMMARY_KEYS <= summary.keys()
    trace = tracer.load(recorded)
    assert summary["ticks"] == trace.ticks.height
    assert summary["requests_submitted"] == trace.requests.height
    assert summary["tokens_generated"] == trace.requests["output_tokens"].sum()
    assert summary["requests_finished"] > 0 and summary["served_rate_tok_s"] > 0
    # every token the requests got was sampled in some tick
    assert summary["output_tokens"] == summary["tokens_generated"] == trace.ticks["sampled_tokens"].sum()


def test_summary_table_names_the_figures(recorded: Path, capsys) -> None:
    assert main(["summary", str(recorded)]) == 0
    out = capsys.readouterr().out
    for key in ("ticks", "served_rate_tok_s", "device_s_per_token", "ttft_p99_s", "experts_active_frac"):
        assert key in out


@pytest.mark.parametrize("to", ["perfetto", "parquet", "csv"])
def test_export_holds_what_the_trace_loads_as(recorded: Path, tmp_path: Path, to: str) -> None:
    out = tmp_path / ("trace.json" if to == "perfetto" else "frames")
    assert main(["export", str(recorded), "--to", to, str(out)]) == 0
    trace = tracer.load(recorded)
    assert trace.ticks.height and trace.requests.height and trace.experts.height and trace.batches.height
    if to == "perfetto":
        check_perfetto(trace, json.loads(out.read_text()))
    else:
        check_tables(trace, out, to)


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["summary", "missing.msgpack"], "no such file: missing.msgpack"),
        (["summary", "not-a-trace.msgpack"], "not a tickscope trace"),
        (["replay", "not-a-trace.msgpack"], "not a tickscope trace"),
        (["live", "not-a-trace.msgpack"], "not a tickscope trace"),
        (["live", "."], "is a directory"),
        (["record", "--preset", "huge", "--out", "x.msgpack"], "unknown preset 'huge'"),
        (["record", "--workload", "nope", "--out", "x.msgpack"], "unknown workload 'nope'"),
        (["record", "--duration", "-1", "--out", "x.msgpack"], "must be a positive number of seconds"),
        (["record", "--max-seqs", "0", "--out", "x.msgpack"], "must be a positive whole number"),
        (["record", "--device", "cuda", "--out", "x.msgpack"], "no CUDA device"),
        (["record", "--decode-graphs", "on", "--stages", "2", "--out", "x.msgpack"], "decode_graphs 'on' needs one"),
        (["record", "--out", "exists.msgpack"], "already exists"),
        (["record", "--out", "nodir/x.msgpack"], "does not exist"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "not-a-trace.msgpack").write_text("hello")
    (tmp_path / "exists.msgpack").write_text("keep me")
    if "cuda" in args and _cuda_present():
        pytest.skip("a CUDA device is present")
    result = _run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.msgpack").exists()  # nothing half-written
    assert (tmp_path / "exists.msgpack").read_text() == "keep me"  # nothing lost


def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_closes_the_recording_cleanly(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "stopped.msgpack"
    child = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "record", "--workload", "demo", "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and tracer.open_trace(out).tick_count > 20:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the recording made no progress")
        os.kill(child.pid, signum)
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, stderr
    trace = tracer.load(out)
    assert trace.problems == []
    statuses = trace.requests["status"].to_list()
    assert statuses and all(s in ("finished", "rejected", "cancelled") for s in statuses)


def test_demo_records_follows_and_leaves_a_complete_trace(tmp_path: Path, monkeypatch, capsys) -> None:
    """`demo` = a recording child + the live dashboard; quitting the dashboard must stop the child
    cleanly. The dashboard is stood in for by a follower that quits once the trace has grown."""
    import tui.app

    out = tmp_path / "demo.msgpack"
    followed: list[int] = []

    def quit_after_some_ticks(path: str, mode: str, **_) -> None:
        assert (path, mode) == (str(out), "live")
        tail = tracer.TraceTail(path)
        deadline = time.monotonic() + 60
        while len(followed) < 20 and time.monotonic() < deadline:
            followed.extend(e.tick for e in tail.poll() if isinstance(e, tracer.TickEvent))
            time.sleep(0.05)
        tail.close()

    monkeypatch.setattr(tui.app, "run_dashboard", quit_after_some_ticks)
    assert main(["demo", "--out", str(out)]) == 0
    assert len(followed) >= 20
    assert f"trace written to {out}" in capsys.readouterr().out
    trace = tracer.load(out)
    assert trace.problems == []
    assert trace.ticks.height >= len(followed)
    assert set(trace.requests["status"].to_list()) <= {"finished", "rejected", "cancelled"}
    assert not (tmp_path / "demo.msgpack.log").exists()


# the start of a `python -c` script in which the dashboard's packages cannot be imported
UI_PACKAGES_ABSENT = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("polars", "textual", "matplotlib", "pyarrow"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Absent())
"""

_WITHOUT_UI_PACKAGES = (
    UI_PACKAGES_ABSENT
    + """
from tui.cli import main
sys.exit(main(sys.argv[1:]))
"""
)


def test_record_needs_neither_polars_nor_textual(tmp_path: Path) -> None:
    """A GPU server may have torch and msgpack but not the dashboard's packages."""
    out = tmp_path / "lean.msgpack"
    args = ["record", "--workload", "smoke", "--duration", "1", "--quiet", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_UI_PACKAGES, *args],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert tracer.load(out).ticks.height > 0


def test_summary_costs_on_an_accelerator_and_refuses_an_unknown_one(recorded: Path, capsys) -> None:
    assert main(["summary", str(recorded), "--json", "--accelerator", "H100-SXM", "--price", "2.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["accelerator"]["name"] == "H100-SXM" and summary["accelerator"]["label"] == "modelled"
    assert summary["accelerator"]["usd_per_hour"] == 2.5 and summary["price_usd_per_hour"] == 2.5
    assert main(["summary", str(recorded), "--accelerator", "this-device"]) == 0  # the header's probe
    capsys.readouterr()
    for verb in ("summary", "replay"):
        assert main([verb, str(recorded), "--accelerator", "TPU-v9"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "unknown accelerator 'TPU-v9'" in err and "H100-SXM" in err


def test_this_device_without_a_probe_is_one_line(tmp_path: Path, capsys) -> None:
    from tracer.synth import synthetic_session

    path = tmp_path / "noprobe.msgpack"
    header, events = synthetic_session(5)
    with tracer.TraceWriter(path, header) as w:
        for ev in events:
            w.emit(ev)
    assert main(["summary", str(path), "--accelerator", "this-device"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "this-device" in err
