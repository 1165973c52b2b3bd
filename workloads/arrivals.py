"""When an open-loop workload sends: each request's send time, in seconds from the start.

All kinds are one renewal process run on a unit-rate clock and mapped onto real time through the
rate: gaps with mean 1 (exponential for Poisson, gamma with the given coefficient of variation,
exactly 1 for constant), whose running sum is "operational time" u; a send happens at the real
time t where the integral of the rate from 0 to t equals u. With one rate that is just u / rate;
with a ramp of rate steps the same mapping gives each step its own rate with no special cases
and no jump in the process at a step boundary. The first request is sent at t = 0.

Times are computed ahead, in blocks, as absolute offsets from the start, so a late send never
delays the ones after it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from workloads.spec import ArrivalSpec, RateStep

_BLOCK = 4096


def unit_gaps(kind: str, cv: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` gaps between arrivals of a unit-rate process of this kind (mean 1)."""
    if kind == "poisson":
        return rng.exponential(1.0, size=n)
    if kind == "gamma":
        # Gamma(shape k, scale 1/k) has mean 1 and coefficient of variation 1/sqrt(k).
        shape = 1.0 / cv**2
        return rng.gamma(shape, 1.0 / shape, size=n)
    if kind == "constant":
        return np.ones(n)
    raise ValueError(f"{kind!r} arrivals have no gap distribution")


def to_real_time(u: np.ndarray, steps: tuple[RateStep, ...]) -> np.ndarray:
    """Operational times -> seconds, under a piecewise-constant rate given as steps."""
    starts = np.array([s.at_s for s in steps])
    rates = np.array([s.rate for s in steps])
    # Operational time reached at the start of each step.
    u_at_start = np.concatenate(([0.0], np.cumsum(rates[:-1] * np.diff(starts))))
    i = np.searchsorted(u_at_start, u, side="right") - 1
    real: np.ndarray = starts[i] + (u - u_at_start[i]) / rates[i]
    return real


def send_times(spec: ArrivalSpec, rng: np.random.Generator) -> Iterator[float]:
    """Send offsets in seconds, increasing; endless except for replay (the caller stops it)."""
    if spec.kind == "replay":
        yield from spec.times_s
        return
    if spec.kind == "closed":
        raise ValueError("a closed loop has no send schedule")
    steps = spec.rate_steps()
    u_next = 0.0
    while True:
        gaps = unit_gaps(spec.kind, spec.cv, rng, _BLOCK)
        u = u_next + np.concatenate(([0.0], np.cumsum(gaps[:-1])))
        u_next = u[-1] + gaps[-1]
        yield from to_real_time(u, steps).tolist()
