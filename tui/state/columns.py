"""Growable numpy columns: the dashboard keeps a million ticks' scalars this way."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


class Columns:
    """Growable numpy columns of one dtype, amortised O(1) append."""

    def __init__(self, names: Iterable[str], dtype: Any, capacity: int = 1024) -> None:
        self.names = list(names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._data = np.zeros((len(self.names), capacity), dtype=dtype)
        self.size = 0

    def append(self, row: tuple[float, ...]) -> int:
        if self.size == self._data.shape[1]:
            self.reserve(self._data.shape[1] * 2)
        self._data[:, self.size] = row
        self.size += 1
        return self.size - 1

    def col(self, name: str) -> np.ndarray:
        """A view of one column's filled part (do not keep it across appends)."""
        return self._data[self._index[name], : self.size]

    def set(self, name: str, row: int, value: float) -> None:
        self._data[self._index[name], row] = value

    def extend(self, block: np.ndarray) -> range:
        """Append the rows of a [n, columns] block; the rows they got."""
        n = len(block)
        if self.size + n > self._data.shape[1]:
            self.reserve(max(self.size + n, self._data.shape[1] * 2))
        self._data[:, self.size : self.size + n] = block.T
        self.size += n
        return range(self.size - n, self.size)

    def reserve(self, capacity: int) -> None:
        if capacity > self._data.shape[1]:
            grown = np.zeros((self._data.shape[0], capacity), dtype=self._data.dtype)
            grown[:, : self.size] = self._data[:, : self.size]
            self._data = grown

    def fill(self, size: int, value: float) -> None:
        """Make the columns exactly `size` rows of `value` (a replay's layout, filled later)."""
        self._data = np.full((self._data.shape[0], size), value, dtype=self._data.dtype)
        self.size = size

    def put(self, rows: slice, block: np.ndarray) -> None:
        self._data[:, rows] = block.T

    def resize(self, size: int) -> None:
        """Make the columns `size` rows long; rows added hold whatever was there (set them)."""
        self.reserve(size)
        self.size = size
