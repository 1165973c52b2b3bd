"""Arrival schedules and length distributions: right shape, right means, same for the same seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from workloads.arrivals import send_times, to_real_time, unit_gaps
from workloads.distributions import RandomStreams, RequestMaker, sample_lengths
from workloads.spec import ArrivalSpec, LengthSpec, RateStep, parse_workload


def times(spec: ArrivalSpec, n: int, seed: int = 0) -> np.ndarray:
    return np.array(list(itertools.islice(send_times(spec, np.random.default_rng(seed)), n)))


@pytest.mark.parametrize(
    "kind, cv, expected_cv",
    [("poisson", 1.0, 1.0), ("gamma", 0.5, 0.5), ("gamma", 4.0, 4.0), ("constant", 1.0, 0.0)],
)
def test_open_loop_rate_and_burstiness(kind, cv, expected_cv):
    t = times(ArrivalSpec(kind, rate=50.0, cv=cv), 40_000)
    assert t[0] == 0 and np.all(np.diff(t) >= 0)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(expected_cv, abs=0.1 * max(expected_cv, 1))


def test_times_are_absolute_and_blocks_join_seamlessly():
    # 10,000 times cross two 4096-blocks; a constant rate must stay exactly on its grid, so
    # nothing accumulates from one block to the next.
    t = times(ArrivalSpec("constant", rate=1000.0), 10_000)
    assert np.allclose(t, np.arange(10_000) / 1000.0, atol=1e-9)


def test_same_seed_same_schedule_other_seed_other():
    spec = ArrivalSpec("gamma", rate=20.0, cv=2.0)
    assert np.array_equal(times(spec, 5000, seed=1), times(spec, 5000, seed=1))
    assert not np.array_equal(times(spec, 100, seed=1), times(spec, 100, seed=2))


def test_ramp_changes_rate_at_each_step():
    steps = (RateStep(0, 10.0), RateStep(20, 100.0), RateStep(30, 40.0))
    t = times(ArrivalSpec("poisson", steps=steps), 20_000)
    for lo, hi, rate in ((0, 20, 10.0), (20, 30, 100.0), (30, 200, 40.0)):
        n = np.count_nonzero((t >= lo) & (t < hi))
        assert n == pytest.approx(rate * (hi - lo), rel=0.15)


def test_to_real_time_by_hand():
    steps = (RateStep(0, 2.0), RateStep(3, 10.0))
    # 2/s for 3 s reaches u = 6; then each unit of u is 0.1 s.
    u = np.array([0.0, 1.0, 6.0, 7.0, 26.0])
    assert np.allclose(to_real_time(u, steps), [0.0, 0.5, 3.0, 3.1, 5.0])


def test_replay_sends_the_file_times():
    spec = ArrivalSpec("replay", times_s=(0.0, 0.2, 0.2, 1.5))
    assert list(send_times(spec, np.random.default_rng(0))) == [0.0, 0.2, 0.2, 1.5]


def test_unit_gaps_reject_closed_loop():
    with pytest.raises(ValueError):
        unit_gaps("closed", 1.0, np.random.default_rng(0), 3)


@pytest.mark.parametrize(
    "spec, mean",
    [
        (LengthSpec("fixed", value=7), 7),
        (LengthSpec("uniform", min=10, max=20), 15),
        (LengthSpec("lognormal", mean=64, sigma=0.5), 64),
        (LengthSpec("file", values=(1, 2, 9)), 4),
    ],
)
def test_length_means_and_bounds(spec, mean):
    a = sample_lengths(spec, np.random.default_rng(0), 50_000)
    assert a.dtype == np.int64 and a.min() >= spec.min and a.max() <= spec.max
    assert a.mean() == pytest.approx(mean, rel=0.02)
    assert np.array_equal(a, sample_lengths(spec, np.random.default_rng(0), 50_000))


def test_lengths_clip_to_bounds():
    wide = LengthSpec("lognormal", mean=100, sigma=1.5, min=20, max=150)
    a = sample_lengths(wide, np.random.default_rng(0), 10_000)
    assert a.min() == 20 and a.max() == 150
    u = sample_lengths(LengthSpec("uniform", min=3, max=5), np.random.default_rng(0), 1000)
    assert set(u.tolist()) == {3, 4, 5}  # both ends included


def test_request_maker_is_reproducible_and_streams_are_independent():
    text = """
    seed = 9
    [arrivals]
    kind = "poisson"
    rate = 1.0
    [prompt]
    kind = "uniform"
    min = 1
    max = 40
    [output]
    kind = "uniform"
    min = 1
    max = 40
    """
    spec = parse_workload(text, "t")
    a = RequestMaker(spec, RandomStreams.from_seed(9), vocab_size=100)
    b = RequestMaker(spec, RandomStreams.from_seed(9), vocab_size=100)
    first = [a.next() for _ in range(2000)]  # crosses a length block
    assert first == [b.next() for _ in range(2000)]
    assert all(1 <= len(p) <= 40 and all(0 <= t < 100 for t in p) for p, _ in first)
    # Changing the output distribution leaves prompts alone.
    fixed_output = text.rsplit("[output]", 1)[0] + '[output]\nkind = "fixed"\nvalue = 3\n'
    spec2 = parse_workload(fixed_output, "t")
    c = RequestMaker(spec2, RandomStreams.from_seed(9), vocab_size=100)
    second = [c.next() for _ in range(50)]
    assert [p for p, _ in second] == [p for p, _ in first[:50]]
    assert {n for _, n in second} == {3}
