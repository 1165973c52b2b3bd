"""A server's Prometheus exposition text, read into what `tickscope watch` needs of it.

Samples are kept by their own names (`vllm:prompt_tokens_total`, `..._bucket`), summed over label
sets (several models or ranks on one server are one server here), so counters are found whether
the exposition calls their family `x` or `x_total`. A histogram is its cumulative bucket counts by
upper bound. Parsing is prometheus_client's; anything it refuses is not Prometheus text.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from prometheus_client.parser import text_string_to_metric_families


class NotPrometheus(ValueError):
    """The text is not in the Prometheus exposition format."""


@dataclass
class Histogram:
    """Cumulative counts by upper bound (`+Inf` last), as a scrape reads them."""

    bounds: np.ndarray  # float64, increasing, the last +Inf
    counts: np.ndarray  # float64, cumulative
    total: float = math.nan  # the observations' sum (the _sum sample)

    def since(self, before: Histogram | None) -> Histogram | None:
        """The observations made between `before` and this scrape; None when the buckets changed
        (then nothing is known of the interval). A counter that went down is a restarted server:
        its counts since the restart are the interval's, as Prometheus' increase() takes them."""
        if before is None or not np.array_equal(before.bounds, self.bounds):
            return None
        delta = self.counts - before.counts
        if (delta < 0).any():
            return self
        return Histogram(self.bounds, delta, self.total - before.total)

    def quantile(self, q: float) -> float:
        """Prometheus' histogram_quantile over these buckets: the bucket holding rank q·total,
        interpolated linearly within it (the lowest bucket from 0 when its bound is positive); a
        rank in the +Inf bucket is the largest finite bound. NaN when nothing was counted."""
        counts = np.maximum.accumulate(self.counts)  # as Prometheus, a bucket never counts less than the one below
        total = counts[-1] if len(counts) else 0.0
        if len(counts) < 2 or not math.isinf(self.bounds[-1]) or total <= 0:
            return math.nan
        rank = q * total
        b = int(np.searchsorted(counts, rank, side="left"))
        if b == len(counts) - 1:
            return float(self.bounds[-2])
        upper = float(self.bounds[b])
        if b == 0:
            if upper <= 0:
                return upper
            lower, below = 0.0, 0.0
        else:
            lower, below = float(self.bounds[b - 1]), float(counts[b - 1])
        return lower + (upper - lower) * (rank - below) / (float(counts[b]) - below)

    def mean(self) -> float:
        """The mean observation; NaN for none."""
        n = float(self.counts[-1]) if len(self.counts) else 0.0
        return self.total / n if n > 0 else math.nan


@dataclass
class Exposition:
    """One scrape's samples: values summed over label sets, and the label sets themselves."""

    values: dict[str, float] = field(default_factory=dict)
    labels: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # histogram name -> le -> count
    families: tuple[str, ...] = ()  # every metric family, as the server named it

    def value(self, *names: str) -> float | None:
        """The first of `names` present (a counter's `_total` sample found too)."""
        for name in names:
            for sample in (name, name + "_total"):
                if sample in self.values:
                    return self.values[sample]
        return None

    def share(self, *names: str) -> float | None:
        """A gauge that is a share (0-1): the mean over its label sets (several engines), not the sum."""
        for name in names:
            if name in self.values:
                return self.values[name] / max(1, len(self.labels[name]))
        return None

    def histogram(self, *names: str) -> Histogram | None:
        for name in names:
            by_le = self.buckets.get(name + "_bucket")
            if by_le:
                bounds = np.array(sorted(by_le), dtype=np.float64)
                counts = np.array([by_le[b] for b in bounds.tolist()], dtype=np.float64)
                return Histogram(bounds, counts, self.values.get(name + "_sum", math.nan))
        return None

    def has(self, name: str) -> bool:
        return self.value(name) is not None or name + "_bucket" in self.buckets or name in self.labels


def parse(text: str) -> Exposition:
    """NotPrometheus, naming what is wrong, for text that is not the exposition format."""
    values: defaultdict[str, float] = defaultdict(float)
    labels: defaultdict[str, list[dict[str, str]]] = defaultdict(list)
    buckets: defaultdict[str, defaultdict[float, float]] = defaultdict(lambda: defaultdict(float))
    families = []
    try:
        for family in text_string_to_metric_families(text):
            families.append(family.name)
            for sample in family.samples:
                if sample.name.endswith("_bucket") and "le" in sample.labels:
                    buckets[sample.name][float(sample.labels["le"])] += sample.value
                    continue
                values[sample.name] += sample.value
                labels[sample.name].append(dict(sample.labels))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        raise NotPrometheus(f"not Prometheus text ({exc}; it begins {first!r})") from None
    return Exposition(dict(values), dict(labels), {k: dict(v) for k, v in buckets.items()}, tuple(families))
