"""The one error a malformed trace produces."""

from __future__ import annotations

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
