"""Numbers read from a user's data file: arrival times to replay, lengths to sample.

One reader for the three shapes such data usually has: a CSV with a header row, JSON Lines with
one object per line, or plain text with one number per line. Errors name the file and the line.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from engine.errors import ConfigError

MAX_ROWS = 10_000_000  # a replay or length file beyond this is a mistake, not a workload


def read_text(path: Path, what: str) -> str:
    """A workload's `what` file ("data", "prompt") as UTF-8 text; a ConfigError naming it if it cannot be."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file {path} is not UTF-8 text") from None


def read_column(path: Path, column: str) -> list[float]:
    """The values of `column` in a .csv or .jsonl file, or every line of any other text file."""
    text = read_text(path, "data")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        values = _from_csv(path, text, column)
    elif suffix in (".jsonl", ".ndjson"):
        values = _from_jsonl(path, text, column)
    else:
        values = [
            _number(path, n, line)
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if not values:
        raise ConfigError(f"data file {path} holds no values")
    if len(values) > MAX_ROWS:
        raise ConfigError(f"data file {path} holds more than {MAX_ROWS} values")
    return values


def _from_csv(path: Path, text: str, column: str) -> list[float]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or column not in reader.fieldnames:
        header = reader.fieldnames
        raise ConfigError(f"data file {path} has no column '{column}' (header: {header})")
    # Data rows start on line 2, after the header.
    return [_number(path, n, row[column]) for n, row in enumerate(reader, 2)]


def _from_jsonl(path: Path, text: str, column: str) -> list[float]:
    values = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"data file {path} line {n}: not JSON") from None
        if not isinstance(row, dict) or column not in row:
            raise ConfigError(f"data file {path} line {n}: no key '{column}'")
        values.append(_number(path, n, row[column]))
    return values


def _number(path: Path, line: int, raw: object) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"data file {path} line {line}: {raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"data file {path} line {line}: {raw!r} must be a finite number >= 0")
    return value
