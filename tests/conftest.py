"""Fixtures shared across test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


# torch's intra-op thread count is process-wide, and a recording or a server on the CPU lowers it
# (workloads/run.py `leave_a_core_free`, engine/launch.py for pipeline ranks): without this, one
# test's count would be every later test's. Each test, and each fixture of any scope, gets back
# the count it started with when it ends.
@pytest.fixture(autouse=True)
def _torch_threads_restored():
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        # restored when the fixture is torn down (a module's server keeps its core free until then)
        fixturedef.addfinalizer(lambda: torch.set_num_threads(threads))


# The same load twice, short: 10 requests/s of 10-token answers for 1.5 s. Only the collection
# window differs (5 ms vs 100 ms), the article's comparison in miniature; the tight TPOT SLO
# makes goodput differ too (100 ms between tokens breaks it, 5 ms does not).
COMPARE_WORKLOAD = """\
description = "compare tests: a short Poisson load"
seed = 3
duration_s = 1.5

[arrivals]
kind = "poisson"
rate = 10.0

[prompt]
kind = "uniform"
min = 8
max = 24

[output]
kind = "fixed"
value = 10

[slo]
ttft_s = 0.5
tpot_s = 0.05

[scheduler]
policy = "window"
max_seqs = 32
"""


@pytest.fixture(scope="session")
def compare_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two real recordings on the tiny engine: (5 ms window, 100 ms window)."""
    from workloads.run import Recording, RecordingPlan

    folder = tmp_path_factory.mktemp("compare")
    workload = folder / "compare.toml"
    workload.write_text(COMPARE_WORKLOAD)
    paths = []
    for window in (5, 100):
        out = folder / f"w{window}.msgpack"
        plan = RecordingPlan(
            preset="tiny", workload=str(workload), out=out, device="cpu", scheduler_overrides={"window_ms": window}
        )
        Recording(plan).run()
        paths.append(out)
    return paths[0], paths[1]


@pytest.fixture
def live(tmp_path):
    """A trace being written: its path and its writer (closed at the end if the test did not)."""
    import tui_synth
    from tracer import TraceWriter

    path = str(tmp_path / "live.msgpack")
    writer = TraceWriter(path, tui_synth.header())
    yield path, writer
    writer.close()
