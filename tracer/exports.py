"""Writing a trace out for other tools: Perfetto / chrome://tracing JSON, Parquet, CSV.

EXPORTS lists the formats; `tickscope export --to` offers, describes and dispatches exactly those.
Importing this module does not import polars (the command line builds its options from EXPORTS):
the trace is loaded when an export runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from tracer.atomic import atomic_path
from tracer.events import KINDS

if TYPE_CHECKING:
    import polars as pl

    from tracer.frames import Trace

_FRAMES = tuple(kind.frame for kind in KINDS)  # the Trace's DataFrame of each event kind
_SCHED, _STAGES_MEASURED, _STAGES_MODELLED, _REQUESTS = 1, 2, 3, 4
PathLike = Union[str, "os.PathLike[str]"]


def _as_trace(trace_or_path: Trace | PathLike) -> Trace:
    from tracer.frames import Trace, load

    return trace_or_path if isinstance(trace_or_path, Trace) else load(trace_or_path)


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def perfetto_events(trace: Trace) -> list[dict[str, Any]]:
    """Chrome Trace Event Format events, in microseconds since the session start.

    Slices (`X`) nest per track: ticks and collection waits each get their own scheduler track and
    every stage its own track, since cells of one stage never overlap. Requests are async slices
    (`b`/`e`) from arrival to finish with the first token as an async instant (`n`).
    """
    out: list[dict[str, Any]] = []

    def meta(pid: int, name: str, tids: dict[int, str]) -> None:
        out.append({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}})
        for tid, tname in tids.items():
            out.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": tname}})

    meta(_SCHED, "scheduler", {1: "ticks", 2: "collection window"})
    for row in trace.ticks.iter_rows(named=True):
        out.append(
            {
                "ph": "X",
                "pid": _SCHED,
                "tid": 1,
                "name": f"tick {row['tick']}",
                "cat": "tick",
                "ts": _us(row["start_s"]),
                "dur": _us(row["end_s"] - row["start_s"]),
                "args": {k: row[k] for k in ("seqs", "prefill_tokens", "decode_tokens", "forward_s")},
            }
        )
        if row["wait_s"] > 0:
            out.append(
                {
                    "ph": "X",
                    "pid": _SCHED,
                    "tid": 2,
                    "name": "wait",
                    "cat": "wait",
                    "ts": _us(row["start_s"] - row["wait_s"]),
                    "dur": _us(row["wait_s"]),
                }
            )
        ts = _us(row["start_s"])
        for counter in ("seqs", "queue_depth", "kv_used"):
            out.append({"ph": "C", "pid": _SCHED, "name": counter, "ts": ts, "args": {counter: row[counter]}})

    stages = trace.stages
    if stages.height:
        last_stage = stages.get_column("stage").max()
        assert isinstance(last_stage, int)  # an integer column with rows
        n_stages = last_stage + 1
        meta(_STAGES_MEASURED, "stages (measured)", {s: f"stage {s}" for s in range(n_stages)})
        if stages.get_column("modelled").any():
            meta(
                _STAGES_MODELLED, "stages (modelled, one device per stage)", {s: f"stage {s}" for s in range(n_stages)}
            )
        for row in stages.drop_nulls("tick_start_s").iter_rows(named=True):
            base = row["tick_start_s"]
            name = f"tick {row['tick']} mb {row['micro_batch']}"
            pids = [("measured", _STAGES_MEASURED)] + ([("modelled", _STAGES_MODELLED)] if row["modelled"] else [])
            for which, pid in pids:
                start, end = row[f"{which}_start_s"], row[f"{which}_end_s"]
                out.append(
                    {
                        "ph": "X",
                        "pid": pid,
                        "tid": row["stage"],
                        "name": name,
                        "cat": "stage",
                        "ts": _us(base + start),
                        "dur": _us(end - start),
                    }
                )

    meta(_REQUESTS, "requests", {})
    for row in trace.requests.iter_rows(named=True):
        if row["arrival_s"] is None or row["finish_s"] is None:
            continue
        common = {
            "pid": _REQUESTS,
            "tid": 0,
            "cat": "request",
            "id": row["request"],
            "name": f"request {row['request']}",
        }
        out.append({**common, "ph": "b", "ts": _us(row["arrival_s"]), "args": {"prompt_tokens": row["prompt_tokens"]}})
        if row["first_token_s"] is not None:
            out.append({**common, "ph": "n", "ts": _us(row["first_token_s"]), "args": {"event": "first token"}})
        out.append(
            {
                **common,
                "ph": "e",
                "ts": _us(row["finish_s"]),
                "args": {"status": row["status"], "output_tokens": row["output_tokens"]},
            }
        )

    for row in trace.marks.iter_rows(named=True):
        out.append({"ph": "i", "s": "g", "pid": _SCHED, "tid": 1, "name": row["text"], "ts": _us(row["t_s"])})
    return out


def export_perfetto(trace_or_path: Trace | str | os.PathLike[str], out_json: str | os.PathLike[str]) -> Path:
    """Write a JSON file that Perfetto UI and chrome://tracing open."""
    trace = _as_trace(trace_or_path)
    doc = {
        "traceEvents": perfetto_events(trace),
        "displayTimeUnit": "ms",
        "otherData": {
            "tool": "tickscope",
            "t0_wall_ns": trace.header.t0_wall_ns,
            "format_version": list(trace.header.format_version),
        },
    }
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"), default=str)
    return out


def _write_frames(trace: Trace, out_dir: str | os.PathLike[str], ext: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in _FRAMES:
        df: pl.DataFrame = getattr(trace, name)
        path = out / f"{name}.{ext}"
        with atomic_path(path) as temporary:
            if ext == "parquet":
                df.write_parquet(temporary)
            else:
                df.write_csv(temporary)
        paths.append(path)
    session = out / "session.json"  # the header, so the exported tables keep their context
    with atomic_path(session) as temporary:
        temporary.write_text(
            json.dumps(
                {
                    "t0_mono_ns": trace.header.t0_mono_ns,
                    "t0_wall_ns": trace.header.t0_wall_ns,
                    "format_version": list(trace.header.format_version),
                    "config": trace.header.config,
                    "dropped": trace.dropped,
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
    return paths + [session]


def export_parquet(trace: Trace | str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[Path]:
    """One Parquet file per frame kind (ticks, requests, experts, stages, marks) plus session.json."""
    return _write_frames(_as_trace(trace), out_dir, "parquet")


def export_csv(trace: Trace | str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[Path]:
    """One CSV file per frame kind plus session.json."""
    return _write_frames(_as_trace(trace), out_dir, "csv")


@dataclass(frozen=True)
class ExportFormat:
    """One format `tickscope export --to NAME` writes."""

    name: str
    write: Callable[[Trace | PathLike, PathLike], Path | list[Path]]  # (trace or its path, where to write)
    output: Literal["file", "directory"]  # what `write` makes at the path it is given
    description: str  # one line, for --help


EXPORTS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("perfetto", export_perfetto, "file", "one JSON file, for Perfetto UI and chrome://tracing"),
        ExportFormat("parquet", export_parquet, "directory", "a directory of Parquet files, one per frame"),
        ExportFormat("csv", export_csv, "directory", "a directory of CSV files, one per frame"),
    )
}


def export(trace_or_path: Trace | PathLike, to: str, out: PathLike) -> Path | list[Path]:
    """Write a trace (or the trace file at a path) as the format EXPORTS names `to`, at `out`."""
    if to not in EXPORTS:
        raise ValueError(f"unknown export format {to!r} ({', '.join(EXPORTS)})")
    return EXPORTS[to].write(trace_or_path, out)
