"""Garbage-collector settings for a running app (the dashboard and compare mode share them).

Textual's strips hold themselves in their own caches, so every frame leaves cyclic garbage; with
the default thresholds it outlived the young generations, and full collections came several
times a second, each walking every object of the app (~100k: modules, widgets) for 50-100 ms,
mid-frame. An app freezes what exists once it is mounted, so a full collection walks only what
came since, and collects young garbage less often, so most of a frame's garbage dies young (a
young generation much larger than this makes each young collection itself take 10-25 ms).
Both are undone when the app unmounts.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (5_000, 5, 10)


class GcTuning:
    """Apply the app's collector settings on mount; put the process's back on unmount."""

    def __init__(self, thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
        self.thresholds = thresholds
        self._saved: tuple[int, int, int] | None = None  # the process's, while applied

    def apply(self) -> None:
        if self._saved is None:
            self._saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*self.thresholds)

    def restore(self) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            gc.unfreeze()
            self._saved = None
