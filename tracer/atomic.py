"""Writing a file so that its final name only ever holds the whole of it.

Exports, reports and plots are written under a temporary name in the same directory, flushed to
disk, then renamed over the final name: a process killed mid-write (or a disk that fills) leaves at
most a stray `.NAME.tmp-PID.EXT` beside an older complete file, never half a file under NAME.
(Traces are the exception, by design: append-only, readable at any length, followed live by name.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` to write to; when the block ends without error it is fsynced
    and renamed to `path` (replacing it), otherwise removed. The temporary name keeps the extension,
    for writers that choose the format by it (matplotlib)."""
    final = Path(path)
    temporary = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
