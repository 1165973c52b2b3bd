"""Workload files: every preset loads, and every mistake is one line naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.scheduler import SchedulerConfig
from workloads.spec import RateStep, list_workloads, load_workload

SHIPPED = {"smoke", "demo", "local-single-user", "article-5ms", "article-200ms", "bursty", "overload", "pipeline"}

BASE = """
seed = 1
duration_s = 10

[arrivals]
kind = "poisson"
rate = 5.0

[prompt]
kind = "fixed"
value = 16

[output]
kind = "uniform"
min = 4
max = 8
"""


def write(tmp_path: Path, text: str, name: str = "w.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_preset_loads_and_configures_the_scheduler(name):
    spec = load_workload(name)
    assert spec.name == name and spec.description
    SchedulerConfig(**spec.scheduler.overrides()).validate()
    assert spec.to_dict()["name"] == name


def test_list_workloads_names_the_shipped_presets():
    assert set(list_workloads()) == SHIPPED


def test_article_presets_differ_only_in_the_window():
    a, b = load_workload("article-5ms").to_dict(), load_workload("article-200ms").to_dict()
    assert a["scheduler"].pop("window_ms") == 5 and b["scheduler"].pop("window_ms") == 200
    for d in (a, b):
        del d["name"], d["description"]
    assert a == b


def test_smoke_is_short_and_demo_runs_until_stopped():
    assert 0 < load_workload("smoke").duration_s <= 10
    demo = load_workload("demo")
    assert demo.duration_s == 0 and demo.requests == 0


def test_unknown_workload_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        load_workload("nope")
    msg = str(err.value)
    assert "unknown workload 'nope'" in msg and "smoke" in msg and "overload" in msg
    assert "\n" not in msg


def test_path_loads_with_defaults(tmp_path):
    spec = load_workload(write(tmp_path, BASE, "mine.toml"))
    assert spec.name == "mine" and spec.seed == 1 and spec.duration_s == 10
    assert spec.arrivals.rate_steps() == (RateStep(0.0, 5.0),)
    assert spec.prompt.value == 16 and (spec.output.min, spec.output.max) == (4, 8)
    assert spec.scheduler.overrides() == {}


@pytest.mark.parametrize(
    "change, expected",
    [
        (("seed = 1", "seed = 1\nbogus = 2"), "unknown key 'bogus' in"),
        (("rate = 5.0", "rate = 5.0\nburst = 3"), "unknown key 'arrivals.burst' in"),
        (("value = 16", "value = 16\nmean = 3"), "unknown key 'prompt.mean' in"),
        (("duration_s = 10", "duration_s = -1"), "'duration_s' is negative (-1)"),
        (("rate = 5.0", "rate = 0"), "'arrivals.rate' must be greater than 0"),
        (('kind = "poisson"', 'kind = "zipf"'), "'arrivals.kind' is 'zipf' (choose from: poisson"),
        (("min = 4\nmax = 8", "min = 9\nmax = 8"), "min (9) is greater than max (8)"),
        (("value = 16", 'value = "16"'), "'prompt.value' must be a whole number"),
        (("duration_s = 10", "duration_s = 10\nwarmup_s = 6\ncooldown_s = 4"), "leave nothing"),
        (("rate = 5.0", "rate = 5.0\nsteps = [{at_s = 0, rate = 1}]"), "either 'rate' or 'steps'"),
        (("[arrivals]", '[scheduler]\npolicy = "fifo"\n[arrivals]'), "'scheduler.policy' is"),
        (("[arrivals]", "[scheduler]\nwindow = 5\n[arrivals]"), "unknown key 'scheduler.window'"),
        (("[arrivals]", "[slo]\nttft_s = -0.5\n[arrivals]"), "'slo.ttft_s' must be greater than 0"),
        (("seed = 1", "seed = 1 +"), "is not valid TOML"),
    ],
)
def test_mistakes_name_the_problem_and_the_file(tmp_path, change, expected):
    path = write(tmp_path, BASE.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_workload(path)
    msg = str(err.value)
    assert expected in msg and str(path) in msg and "\n" not in msg


def test_missing_table_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing table \[output\]"):
        load_workload(write(tmp_path, BASE.split("[output]")[0]))
    with pytest.raises(ConfigError, match="cannot read workload file"):
        load_workload(tmp_path / "absent.toml")


def test_ramp_steps(tmp_path):
    text = BASE.replace("rate = 5.0", "steps = [{at_s = 0, rate = 2}, {at_s = 5, rate = 20}]")
    spec = load_workload(write(tmp_path, text))
    assert spec.arrivals.steps == (RateStep(0, 2), RateStep(5, 20))
    bad = BASE.replace("rate = 5.0", "steps = [{at_s = 1, rate = 2}]")
    with pytest.raises(ConfigError, match=r"steps\[0\].at_s must be 0"):
        load_workload(write(tmp_path, bad))
    bad = BASE.replace("rate = 5.0", "steps = [{at_s = 0, rate = 2, ratee = 3}]")
    with pytest.raises(ConfigError, match=r"unknown key 'arrivals.steps\[0\].ratee'"):
        load_workload(write(tmp_path, bad))


def test_replay_and_length_files_are_read_relative_to_the_workload(tmp_path):
    (tmp_path / "arrivals.csv").write_text("arrival_s,other\n0.5,x\n0.1,y\n2.0,z\n")
    (tmp_path / "lengths.jsonl").write_text('{"n": 10}\n{"n": 700}\n\n{"n": 3}\n')
    text = BASE.replace('kind = "poisson"\nrate = 5.0', 'kind = "replay"\nfile = "arrivals.csv"').replace(
        'kind = "fixed"\nvalue = 16',
        'kind = "file"\nfile = "lengths.jsonl"\ncolumn = "n"\nmax = 512',
    )
    spec = load_workload(write(tmp_path, text))
    assert spec.arrivals.times_s == (0.1, 0.5, 2.0)
    assert spec.prompt.values == (10, 512, 3)  # clipped to max
    d = spec.to_dict()
    assert d["arrivals"]["times_s"] == 3 and d["prompt"]["values"] == 3


def test_bad_data_file_names_file_and_line(tmp_path):
    (tmp_path / "times.txt").write_text("0.1\n# a comment\nsoon\n")
    text = BASE.replace('kind = "poisson"\nrate = 5.0', 'kind = "replay"\nfile = "times.txt"')
    with pytest.raises(ConfigError, match=r"times.txt line 3: 'soon' is not a number"):
        load_workload(write(tmp_path, text))
    (tmp_path / "t.csv").write_text("when\n1\n")
    text = BASE.replace('kind = "poisson"\nrate = 5.0', 'kind = "replay"\nfile = "t.csv"')
    with pytest.raises(ConfigError, match=r"t.csv has no column 'arrival_s'"):
        load_workload(write(tmp_path, text))


def test_closed_loop_needs_users(tmp_path):
    text = BASE.replace('kind = "poisson"\nrate = 5.0', 'kind = "closed"\nthink_s = 1')
    with pytest.raises(ConfigError, match="missing key 'arrivals.users'"):
        load_workload(write(tmp_path, text))
