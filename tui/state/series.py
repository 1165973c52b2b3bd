"""A per-tick series folded into chart buckets, each keeping its min and max so spikes survive,
and kept up to date bucket by bucket as rows change."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Series:
    """One series downsampled to buckets, keeping each bucket's min and max so spikes survive."""

    lo: np.ndarray
    hi: np.ndarray
    cursor_bucket: int  # bucket holding the current tick, -1 when none
    peak: float


@dataclass(slots=True)
class _Buckets:
    """One chart's buckets as of state version `version`, for a series of `n` ticks."""

    version: int
    n: int
    lo: np.ndarray
    hi: np.ndarray
    edges: np.ndarray  # first row of each bucket
    peak: float = 0.0

    def __post_init__(self) -> None:
        self.peak = peak_of(self.hi)

    def update(self, values: np.ndarray, changed: list[tuple[int, int]]) -> None:
        """Redo the buckets that hold any of the `changed` row ranges."""
        if not len(self.edges):
            return
        for lo, hi in changed:
            if hi <= lo:
                continue
            first = int(np.searchsorted(self.edges, lo, side="right")) - 1
            last = int(np.searchsorted(self.edges, hi - 1, side="right")) - 1
            start = int(self.edges[first])
            stop = int(self.edges[last + 1]) if last + 1 < len(self.edges) else self.n
            local = self.edges[first : last + 1] - start
            self.lo[first : last + 1] = np.fmin.reduceat(values[start:stop], local)
            self.hi[first : last + 1] = np.fmax.reduceat(values[start:stop], local)
        self.peak = peak_of(self.hi)


def downsample(values: np.ndarray, buckets: int, cursor: int) -> Series:
    """Fold `values` into `buckets` (at most one per value) of near-equal size, min and max kept.

    NaN (a tick not loaded yet) is left out of its bucket; a bucket of nothing but NaN is NaN.
    """
    lo, hi, edges = bucket_bounds(values, buckets)
    return Series(lo, hi, cursor_bucket(edges, cursor, len(values)), peak_of(hi))


def bucket_bounds(values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each bucket's min and max, and the index of its first value."""
    n = len(values)
    if n == 0 or buckets <= 0:
        empty = np.zeros(0)
        return empty, empty, np.zeros(0, dtype=np.int64)
    buckets = min(buckets, n)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]
    return np.fmin.reduceat(values, edges), np.fmax.reduceat(values, edges), edges


def cursor_bucket(edges: np.ndarray, cursor: int, n: int) -> int:
    return int(np.searchsorted(edges, cursor, side="right")) - 1 if 0 <= cursor < n else -1


def peak_of(hi: np.ndarray) -> float:
    finite = hi[np.isfinite(hi)]
    return float(finite.max()) if len(finite) else 0.0
