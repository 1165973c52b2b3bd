"""Production traffic: a public request trace replayed row by row, each request sent at its row's
arrival with its row's own prompt and output lengths.

Three formats, told apart by the file's first line or named outright:

- `azure`: CSV `TIMESTAMP,ContextTokens,GeneratedTokens` (Azure LLM inference traces, 2023 and
  2024), absolute times like `2023-11-16 18:15:46.6805900`, read exactly to the nanosecond;
- `burstgpt`: CSV with `Timestamp` (seconds), `Request tokens` and `Response tokens` among its
  columns; a failed request has 0 response tokens;
- `mooncake`: JSON Lines with `timestamp` (ms), `input_length`, `output_length` and `hash_ids`,
  the ids of the prompt's blocks of `MOONCAKE_BLOCK` tokens: two requests that name the same
  blocks are sent the same tokens there, so a server with a prefix cache finds what it found
  in production.

Time zero is the file's first row. The window is [start_s, start_s + duration_s) of trace time,
and a request's send offset is its row's time from the window's start times the scale: the
`time_scale` given, or the one that makes the window's mean rate `rate`. Rows must come in time
order, so the file is read as a stream that stops at the window's end: the window of a week-long
trace never holds the week in memory. The file is read twice: once when the run is prepared
(`scan`: how many rows the window sends, how many were clipped to the model's context, the scale,
and where in the file the window starts), and once while sending (`replay`), from there: a window
late in a long trace starts on time.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

from engine.errors import ConfigError

NS = 1_000_000_000
FORMATS = ("azure", "burstgpt", "mooncake")
MOONCAKE_BLOCK = 512  # tokens per hash id of a Mooncake trace

# The columns (CSV) or keys (JSON Lines) a format's rows are read from: time, prompt, output.
_FIELDS = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
    "mooncake": ("timestamp", "input_length", "output_length"),
}
# An Azure time: its whole second, then the fraction (up to 9 digits) and an optional UTC offset.
_AZURE_SECOND = re.compile(r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)")
_AZURE_REST = re.compile(r"(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?")


Blocks = tuple[int, ...]  # ids of a prompt's blocks of MOONCAKE_BLOCK tokens, first to last (Mooncake's hash_ids)
_Row = tuple[int, int, int, int, int, Blocks]  # line, byte offset, time in ns, prompt, output, blocks


@dataclass(frozen=True)
class TrafficOption:
    """One option of a replay: the key under `[arrivals]` of a workload file, and `record`'s flag."""

    key: str
    default: str | float | bool
    help: str
    at_least: float | None = None
    above: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--traffic-" + self.key.removesuffix("_s").replace("_", "-")


TRAFFIC_OPTIONS = (
    TrafficOption(
        "format", "auto", "the trace's format (default: auto, told by its first line)", choices=("auto", *FORMATS)
    ),
    TrafficOption("start_s", 0.0, "seconds into the trace, from its first row, where the replay starts", at_least=0),
    TrafficOption("duration_s", 0.0, "seconds of the trace to replay (default: 0, to its end)", at_least=0),
    TrafficOption(
        "time_scale", 1.0, "multiplies every offset: 0.5 replays twice as fast, 2 half as fast (default: 1)", above=0
    ),
    TrafficOption(
        "rate",
        0.0,
        "scales time so that the window's mean rate is this many requests/s (instead of time_scale)",
        above=0,
    ),
    TrafficOption(
        "keep_failed",
        False,
        "send rows with no output tokens (BurstGPT's failed requests) for one token, instead of skipping them",
    ),
)


@dataclass(frozen=True)
class TrafficScan:
    """What the window of a trace sends, counted before the run (and written in its trace header)."""

    context_tokens: int | None  # prompt + output of every row is cut to this (None: rows are sent as they are)
    rows: int  # requests the window sends
    failed: int  # rows of the window with no output tokens: skipped, or sent for one token with keep_failed
    clipped: int  # rows cut to fit the context
    empty_prompts: int  # rows with no prompt tokens, sent with one (an engine takes no empty prompt)
    window_s: float  # trace seconds the window covers: its duration, or up to its last row where the file ends first
    scale: float  # replay seconds per trace second
    first_line: int  # the file's lines of the first and last rows sent
    last_line: int
    resume: _Resume = field(repr=False)  # where sending starts reading: not part of the header

    @property
    def replay_s(self) -> float:
        """How long sending the window takes."""
        return self.window_s * self.scale


@dataclass(frozen=True)
class TrafficSpec:
    """A trace to replay: the file, its format and the options (`TRAFFIC_OPTIONS`), and once `scan`
    has read it, what its window sends."""

    file: str  # as the workload gives it
    path: str  # where it is read: relative paths are relative to the workload file
    format: str  # one of FORMATS, detected when the workload asked for auto
    start_s: float
    duration_s: float  # 0 = to the end of the file
    time_scale: float
    rate: float  # 0 = the trace's own rate (times time_scale)
    keep_failed: bool
    scan: TrafficScan | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the trace header."""
        d = dataclasses.asdict(self)
        if d["scan"] is not None:
            del d["scan"]["resume"]
        return d


@dataclass(frozen=True)
class _Resume:
    """Where the window's first row is in the file, and the file's time zero (its first row's time)."""

    byte: int
    line: int
    zero_ns: int


def traffic_spec(file: str, path: Path, options: dict[str, Any]) -> TrafficSpec:
    """A replay of the trace at `path` with `options` (keys of TRAFFIC_OPTIONS, already checked);
    the file's first line is read now, so a file that cannot be read or told apart fails here."""
    given: dict[str, Any] = {option.key: options.get(option.key, option.default) for option in TRAFFIC_OPTIONS}
    given["format"] = detect_format(path, str(given["format"]))
    return TrafficSpec(file=file, path=str(path), **given)


def detect_format(path: Path, given: str = "auto") -> str:
    """`given` if it names a format, else the one the file's first line is the header (or first row) of."""
    if given != "auto":
        _open(path).close()  # a file that cannot be read says so now
        return given
    with _open(path) as f:
        first = _decode(path, 1, f.readline())
    if not first:
        raise ConfigError(f"traffic file {path} is empty")
    if first.lstrip().startswith("{"):
        return "mooncake"
    names = {name.strip().lower() for name in next(csv.reader([first]), [])}
    for fmt in ("azure", "burstgpt"):
        if {name.lower() for name in _FIELDS[fmt]} <= names:
            return fmt
    raise ConfigError(
        f"traffic file {path} line 1: {first.strip()[:80]!r} is the header of none of the trace formats; "
        f"name one with format ({', '.join(FORMATS)})"
    )


def scan(spec: TrafficSpec, context_tokens: int | None) -> TrafficSpec:
    """`spec` with its window counted: rows clipped to `context_tokens` (prompt + output, the most a
    request may hold; None: not clipped), and the scale the rate asks for."""
    counts = _Counts()
    rows = first_line = last_line = last_offset_ns = 0
    for line, offset_ns, *_ in _window(spec, context_tokens, counts, None):
        rows += 1
        first_line = first_line or line
        last_line, last_offset_ns = line, offset_ns
    if not rows or counts.resume is None:
        what = f"{counts.failed} failed rows skipped, " if counts.failed else ""
        raise ConfigError(
            f"traffic file {spec.path} sends no requests from {spec.start_s:g} s"
            + (f" for {spec.duration_s:g} s" if spec.duration_s else "")
            + f" ({what}{counts.before} rows before the window)"
        )
    window_ns = round(spec.duration_s * NS) if counts.past_end else last_offset_ns
    scale = spec.time_scale
    if spec.rate:
        if not window_ns:
            raise ConfigError(f"traffic file {spec.path}: the window's rows all arrive at once, so it has no rate")
        scale = rows * NS / (window_ns * spec.rate)
    found = TrafficScan(
        context_tokens=context_tokens,
        rows=rows,
        failed=counts.failed,
        clipped=counts.clipped,
        empty_prompts=counts.empty_prompts,
        window_s=window_ns / NS,
        scale=scale,
        first_line=first_line,
        last_line=last_line,
        resume=counts.resume,
    )
    return dataclasses.replace(spec, scan=found)


def replay(spec: TrafficSpec) -> Iterator[tuple[float, int, int, Blocks]]:
    """(send offset in seconds, prompt tokens, output tokens, prompt blocks) of each request of the
    window, in order. An unscanned spec is scanned first, without clipping."""
    found = spec.scan if spec.scan is not None else scan(spec, None).scan
    assert found is not None
    for _, offset_ns, prompt, output, blocks in _window(spec, found.context_tokens, _Counts(), found.resume):
        yield offset_ns * found.scale / NS, prompt, output, blocks


def fit(prompt: int, output: int, context: int) -> tuple[int, int]:
    """A row's lengths cut to `context` tokens in all, each in proportion to its share (the prompt's
    rounded down), neither below one: so a clipped row keeps its shape."""
    if prompt + output <= context:
        return prompt, output
    cut = max(1, prompt * context // (prompt + output))
    return cut, context - cut


def summary_line(spec: TrafficSpec) -> str:
    """A replay's window in words, for the run's last line."""
    found = spec.scan
    if found is None:
        return f"{spec.file} ({spec.format})"
    if found.context_tokens is None:
        clipped = "none clipped (the target gives no context length)"
    else:
        clipped = f"{found.clipped} clipped to the {found.context_tokens}-token context"
    failed = f"{found.failed} failed rows {'sent for one token' if spec.keep_failed else 'skipped'}"
    return f"{spec.file} ({spec.format}): {found.rows} requests in the window, {clipped}, {failed}"


@dataclass
class _Counts:
    before: int = 0  # rows before the window's start
    failed: int = 0
    clipped: int = 0
    empty_prompts: int = 0
    past_end: bool = False  # the file has a row at or after the window's end
    resume: _Resume | None = None  # where the window's rows begin


def _window(
    spec: TrafficSpec, context: int | None, counts: _Counts, resume: _Resume | None
) -> Iterator[tuple[int, int, int, int, Blocks]]:
    """(line, offset from the window's start in ns, prompt, output, blocks) of each row the window sends;
    from the top of the file, or from where `scan` found the window starts."""
    start_ns = round(spec.start_s * NS)
    end_ns = start_ns + round(spec.duration_s * NS) if spec.duration_s else None
    zero_ns = None if resume is None else resume.zero_ns
    last_ns, last_line = zero_ns or 0, 0
    for line, byte, t_ns, prompt, output, blocks in _ROWS[spec.format](Path(spec.path), resume=resume):
        if zero_ns is None:
            zero_ns = t_ns
        elif t_ns < last_ns:
            raise ConfigError(
                f"traffic file {spec.path} line {line}: arrives before line {last_line}; a trace is "
                "replayed as a stream and its rows must be in time order"
            )
        last_ns, last_line = t_ns, line
        offset_ns = t_ns - zero_ns
        if offset_ns < start_ns:
            counts.before += 1
            continue
        if end_ns is not None and offset_ns >= end_ns:
            counts.past_end = True
            return
        if counts.resume is None:
            counts.resume = _Resume(byte, line, zero_ns)
        if not output:
            counts.failed += 1
            if not spec.keep_failed:
                continue
            output = 1
        if not prompt:
            counts.empty_prompts += 1
            prompt = 1
        if context is not None and prompt + output > context:
            counts.clipped += 1
            prompt, output = fit(prompt, output, context)
        yield line, offset_ns - start_ns, prompt, output, blocks


def _open(path: Path) -> IO[bytes]:
    # Bytes, not text: a line's byte offset is where sending resumes, and a bad byte names its line.
    try:
        return path.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot read traffic file {path}: {exc.strerror or exc}") from None


def _decode(path: Path, line: int, raw: bytes) -> str:
    try:
        # utf-8-sig: a file saved with a byte-order mark still has its header as the first line.
        return raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"traffic file {path} line {line}: not UTF-8 text") from None


def _lines(path: Path, f: IO[bytes], line: int, resume: _Resume | None) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset, text) of each line that is not blank, from line `line` where `f`
    stands, or from `resume`."""
    if resume is not None:
        f.seek(resume.byte)
        line = resume.line
    byte = f.tell()
    try:
        for raw in f:
            text = _decode(path, line, raw)
            if text.strip():
                yield line, byte, text
            line += 1
            byte += len(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read traffic file {path}: {exc.strerror or exc}") from None


def _fields(text: str) -> list[str]:
    # The traces quote nothing; a line that does quote is read by the csv module.
    return next(csv.reader([text])) if '"' in text else text.rstrip("\r\n").split(",")


def _csv_rows(path: Path, fmt: str, resume: _Resume | None) -> Iterator[_Row]:
    columns = _FIELDS[fmt]
    to_ns: Callable[[str, str], int] = _azure_ns if fmt == "azure" else functools.partial(_decimal_ns, unit_ns=NS)
    with _open(path) as f:
        first = _decode(path, 1, f.readline())
        if not first:
            raise ConfigError(f"traffic file {path} is empty")
        line = 1
        try:
            header = _fields(first)
            names = [name.strip().lower() for name in header]
            missing = [c for c in columns if c.lower() not in names]
            if missing:
                raise _Bad(f"no column {missing[0]!r} for the {fmt} format (header: {first.strip()})")
            ti, pi, oi = (names.index(c.lower()) for c in columns)
            for line, byte, text in _lines(path, f, 2, resume):
                row = _fields(text)
                if len(row) != len(header):
                    raise _Bad(f"{len(row)} fields where the header has {len(header)}")
                t_ns, prompt, output = (
                    to_ns(row[ti], columns[0]),
                    _tokens(row[pi], columns[1]),
                    _tokens(row[oi], columns[2]),
                )
                yield line, byte, t_ns, prompt, output, ()
        except (_Bad, csv.Error) as exc:
            raise ConfigError(f"traffic file {path} line {line}: {exc}") from None


def _jsonl_rows(path: Path, fmt: str, resume: _Resume | None) -> Iterator[_Row]:
    keys = _FIELDS[fmt]
    with _open(path) as f:
        for line, byte, text in _lines(path, f, 1, resume):
            try:
                try:
                    row = json.loads(text, parse_float=Decimal)  # times read exactly, as in the text
                except json.JSONDecodeError:
                    raise _Bad("not JSON") from None
                if not isinstance(row, dict):
                    raise _Bad("not a JSON object")
                missing = [key for key in keys if key not in row]
                if missing:
                    raise _Bad(f"no key {missing[0]!r} for the {fmt} format")
                t_ns = _decimal_ns(row[keys[0]], keys[0], unit_ns=NS // 1000)
                blocks = _blocks(row.get("hash_ids", []))
                yield line, byte, t_ns, _count(row[keys[1]], keys[1]), _count(row[keys[2]], keys[2]), blocks
            except _Bad as exc:
                raise ConfigError(f"traffic file {path} line {line}: {exc}") from None


_ROWS = {
    "azure": functools.partial(_csv_rows, fmt="azure"),
    "burstgpt": functools.partial(_csv_rows, fmt="burstgpt"),
    "mooncake": functools.partial(_jsonl_rows, fmt="mooncake"),
}


def _blocks(value: object) -> Blocks:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise _Bad(f"hash_ids is {value!r}, not a list of block ids (whole numbers >= 0)")
    return tuple(value)


class _Bad(Exception):
    """A row that cannot be read: the reader adds the file and the line."""


@functools.lru_cache(maxsize=256)
def _whole_seconds(clock: str) -> int | None:
    """`YYYY-MM-DD HH:MM:SS` in seconds since 0001-01-01, or None if it is no such time. Cached: a
    trace's rows come a few to a few hundred per second, so most rows' seconds were just read."""
    m = _AZURE_SECOND.fullmatch(clock)
    if m is None:
        return None
    year, month, day, h, mi, s = map(int, m.groups())
    try:
        days = datetime.date(year, month, day).toordinal()
    except ValueError:
        return None
    if h > 23 or mi > 59 or s > 59:
        return None
    return days * 86_400 + h * 3600 + mi * 60 + s


def _azure_ns(text: str, column: str) -> int:
    """An Azure timestamp in ns since 0001-01-01 UTC, exactly: the fraction's digits are the ns's."""
    text = text.strip()
    seconds = _whole_seconds(text[:19])
    m = _AZURE_REST.fullmatch(text, 19)
    if seconds is None or m is None:
        raise _Bad(f"{column} {text!r} is not a time like 2023-11-16 18:15:46.6805900")
    fraction, zone = m.groups()
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds * NS + int((fraction or "0").ljust(9, "0"))


def _decimal_ns(value: object, name: str, unit_ns: int) -> int:
    """A time given as a decimal number of units (s, ms) in whole ns, read from its digits, not a float."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise _Bad(f"{name} is {value!r}, not a number")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise _Bad(f"{name} is {value!r}, not a number") from None
    if not number.is_finite() or number < 0:
        raise _Bad(f"{name} is {value!r}, not a time (a finite number >= 0)")
    return int(number * unit_ns)


def _tokens(text: str, column: str) -> int:
    digits = text.strip()
    if not (digits.isascii() and digits.isdecimal()):
        raise _Bad(f"{column} is {text!r}, not a whole number of tokens")
    return int(digits)


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Bad(f"{key} is {value!r}, not a whole number of tokens")
    return value
