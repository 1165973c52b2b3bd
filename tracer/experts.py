"""Expert load figures: one definition for every view (summary, compare, the dashboard).

A figure over several ticks is the mean over (tick, layer) cells of the figure of each cell, so the
dashboard's span, `tickscope summary` and compare's delta table name the same thing by the same word:

- active share: experts that got at least one token, over the layer's experts;
- imbalance: the busiest expert's tokens over the layer's mean (1.0 = perfectly even), and its
  balancedness (mean / max, the inverse vLLM logs).

A cell with no token routes nothing to speak of and is left out of all three: a dense layer's (a
DeepSeek model's first layers have no router, and their rows of the load stay zero), or a tick's
without tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class LoadFigures:
    active_share: float | None  # None: no cell at all
    imbalance: float | None  # None: no cell with a token
    balancedness: float | None
    imbalance_per_layer: list[float | None]
    cells: int  # (tick, layer) cells the means are over: those with a token


def cell_figures(load: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (tick, layer) cell of a [ticks, layers, experts] load: active share, max/mean and
    mean/max (NaN for a cell with no token)."""
    load = np.asarray(load, dtype=np.float64)
    peak = load.max(axis=2)
    mean = load.mean(axis=2)
    active = np.where(mean > 0, (load > 0).mean(axis=2), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        imbalance = np.where(mean > 0, peak / mean, np.nan)
        balancedness = np.where(mean > 0, mean / peak, np.nan)
    return active, imbalance, balancedness


def load_figures(loads: np.ndarray | list[np.ndarray]) -> LoadFigures:
    """The figures of a [ticks, layers, experts] load (a single tick is a span of one), or of
    several such stacks whose shapes differ (a recording whose shape changed midway)."""
    stacks = [np.asarray(x) for x in (loads if isinstance(loads, list) else [loads])]
    stacks = [x for x in stacks if x.ndim == 3 and x.size]
    if not stacks:
        return LoadFigures(None, None, None, [], 0)
    cells = [cell_figures(x) for x in stacks]
    layer = np.concatenate([np.broadcast_to(np.arange(x.shape[1]), x.shape[:2]).ravel() for x in stacks])
    active, imbalance, balancedness = (np.concatenate([c[i].ravel() for c in cells]) for i in range(3))

    def mean(values: np.ndarray) -> float | None:
        known = values[np.isfinite(values)]
        return float(known.mean()) if known.size else None

    layers = max(x.shape[1] for x in stacks)
    return LoadFigures(
        mean(active), mean(imbalance), mean(balancedness),
        [mean(imbalance[layer == i]) for i in range(layers)], int(np.isfinite(active).sum()),
    )  # fmt: skip
