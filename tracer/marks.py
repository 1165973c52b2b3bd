"""User notes kept beside a trace, in `TRACE.marks.json`, so the trace itself stays append-only.

A mark added while watching a recording (the dashboard's `m`) goes into this sidecar; `tracer.load`
merges the sidecar's marks with the trace's own `MarkEvent`s. The sidecar is small JSON that a
person can read and edit:

    {"version": 1, "marks": [{"t_ns": 1234, "tick": 57, "text": "queue starts to grow"}]}

`t_ns` is on the recording's monotonic clock, as in every event. A sidecar that came from
someone else is read as untrusted: size-limited, type-checked, and a bad one is reported as a
problem and ignored rather than stopping the trace from opening.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TypeGuard

from tracer.events import MarkEvent

SIDECAR_SUFFIX = ".marks.json"
SIDECAR_VERSION = 1
MAX_SIDECAR_BYTES = 4 << 20  # thousands of notes; far past what anyone types by hand
MAX_MARK_TEXT = 1000  # characters kept of one note


def sidecar_path(trace_path: str | os.PathLike[str]) -> Path:
    """Where the marks of `trace_path` live."""
    p = Path(trace_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_marks(trace_path: str | os.PathLike[str]) -> tuple[list[MarkEvent], list[str]]:
    """The sidecar's marks, and what was wrong with it (empty when there is none or all is well)."""
    path = sidecar_path(trace_path)
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            return [], [f"{path.name}: larger than {MAX_SIDECAR_BYTES} bytes: marks ignored"]
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [], [f"{path.name}: unreadable ({exc}): marks ignored"]
    if not isinstance(data, dict) or not isinstance(data.get("marks"), list):
        return [], [f"{path.name}: not a marks file: marks ignored"]
    marks: list[MarkEvent] = []
    problems: list[str] = []
    for i, item in enumerate(data["marks"]):
        mark = _mark(item)
        if mark is None:
            problems.append(f"{path.name}: mark {i} malformed: skipped")
        else:
            marks.append(mark)
    return marks, problems


def _plain_int(v: object) -> TypeGuard[int]:
    # bool is an int in Python; a note at tick `true` is a broken file, not tick 1.
    return isinstance(v, int) and not isinstance(v, bool)


def _mark(item: object) -> MarkEvent | None:
    if not isinstance(item, dict):
        return None
    t_ns, tick, text = item.get("t_ns"), item.get("tick"), item.get("text")
    if not (_plain_int(t_ns) and _plain_int(tick)):
        return None
    if not isinstance(text, str):
        return None
    return MarkEvent(t_ns=t_ns, tick=tick, text=text[:MAX_MARK_TEXT])


def add_mark(trace_path: str | os.PathLike[str], mark: MarkEvent) -> Path:
    """Append `mark` to the sidecar of `trace_path` (created if missing); returns its path.

    Written to a temporary file and renamed over the old one, so a crash never leaves half a
    sidecar. A sidecar that cannot be read is not overwritten: that would lose someone's notes.
    Nor is one grown past MAX_SIDECAR_BYTES, which readers would ignore whole (ValueError).
    """
    path = sidecar_path(trace_path)
    marks, problems = read_marks(trace_path)
    if problems and not marks and path.exists():
        raise ValueError(f"{path} exists but cannot be read; not overwriting it")
    marks.append(MarkEvent(t_ns=mark.t_ns, tick=mark.tick, text=mark.text[:MAX_MARK_TEXT]))
    body = {
        "version": SIDECAR_VERSION,
        "marks": [{"t_ns": m.t_ns, "tick": m.tick, "text": m.text} for m in marks],
    }
    data = json.dumps(body, ensure_ascii=False, indent=1).encode("utf-8")
    if len(data) > MAX_SIDECAR_BYTES:
        raise ValueError(f"{path} would grow past {MAX_SIDECAR_BYTES} bytes, more than readers accept; mark not saved")
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
