"""tickscope's trace: the event schema, a crash-safe msgpack writer, readers, frames and exports.

Imports nothing from the rest of tickscope; the engine and the load generator record through
`Recorder`, everything else reads files. The names built on polars are imported on first use, so that
recording (on a GPU server, say) needs only msgpack and numpy.
"""

import importlib
from typing import TYPE_CHECKING

from tracer.errors import TraceFormatError
from tracer.events import (
    FORMAT_VERSION,
    BatchEvent,
    Event,
    ExpertsEvent,
    MarkEvent,
    RequestEvent,
    SessionHeader,
    StageEvent,
    TickEvent,
)
from tracer.exports import EXPORTS, export, export_csv, export_parquet, export_perfetto  # polars on first use
from tracer.marks import add_mark, read_marks, sidecar_path
from tracer.reader import TraceReader, open_trace
from tracer.recorder import ListRecorder, NullRecorder, Recorder
from tracer.tail import TraceTail, follow
from tracer.writer import TraceWriter

if TYPE_CHECKING:  # imported on first use at run time (`__getattr__`); named here for the type checker
    from tracer.frames import Trace, from_events, load
    from tracer.summary import summarize, summary_table

_ON_POLARS = {
    "Trace": "tracer.frames",
    "from_events": "tracer.frames",
    "load": "tracer.frames",
    "summarize": "tracer.summary",
    "summary_table": "tracer.summary",
}


def __getattr__(name: str) -> object:
    if name in _ON_POLARS:
        return getattr(importlib.import_module(_ON_POLARS[name]), name)
    raise AttributeError(f"module 'tracer' has no attribute '{name}'")


__all__ = [
    "BatchEvent",
    "EXPORTS",
    "Event",
    "ExpertsEvent",
    "FORMAT_VERSION",
    "ListRecorder",
    "MarkEvent",
    "NullRecorder",
    "Recorder",
    "RequestEvent",
    "SessionHeader",
    "StageEvent",
    "TickEvent",
    "Trace",
    "TraceFormatError",
    "TraceReader",
    "TraceTail",
    "TraceWriter",
    "add_mark",
    "export",
    "export_csv",
    "export_parquet",
    "export_perfetto",
    "follow",
    "from_events",
    "load",
    "open_trace",
    "read_marks",
    "sidecar_path",
    "summarize",
    "summary_table",
]
