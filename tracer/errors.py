"""The errors of the tracer: a malformed trace, and a trace that could not be written."""

from __future__ import annotations

import errno
import os


class TraceFormatError(Exception):
    """A file is not a tickscope trace, or a part of it is malformed.

    The message is one line naming what is wrong and where (file, byte offset), so a command line
    can print it as is.
    """

    def __init__(self, what: str, path: str | os.PathLike[str] | None = None, offset: int | None = None):
        self.what = what
        self.path = os.fspath(path) if path is not None else None
        self.offset = offset
        where = ""
        if self.path is not None:
            where = f"{self.path}: "
        at = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{where}{what}{at}")


class TraceWriteError(OSError):
    """The trace file could not be written (a full disk, say): what happened and what the file kept.

    The message is one line for a command line to print as is, e.g. "out.msgpack: disk full at byte
    65,311: the trace holds ticks 0–257 and 88 requests; the rest of the run was not recorded". An
    OSError, so code that handles I/O errors handles this one.
    """

    def __init__(self, path: str, cause: OSError, at: int, holding: str) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), path)
        self.path, self.at, self.holding = path, at, holding
        self.what = _what(cause)  # "disk full", ...
        self.message = (
            f"{path}: {self.what} at byte {at:,}: the trace holds {holding}; the rest of the run was not recorded"
        )

    def __str__(self) -> str:
        return self.message


def _what(cause: OSError) -> str:
    if cause.errno == errno.ENOSPC:
        return "disk full"
    if cause.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return f"cannot write the trace ({cause.strerror or cause})"
