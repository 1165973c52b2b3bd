"""tickscope's trace: the event schema, a crash-safe msgpack writer, readers, frames and exports.

Imports nothing from the rest of tickscope; the engine and the load generator record through
`Recorder`, everything else reads files.
"""

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
from tracer.exports import export_csv, export_parquet, export_perfetto
from tracer.frames import Trace, from_events, load
from tracer.marks import add_mark, read_marks, sidecar_path
from tracer.reader import TraceReader, open_trace
from tracer.recorder import ListRecorder, NullRecorder, Recorder
from tracer.summary import summarize, summary_table
from tracer.tail import TraceTail, follow
from tracer.writer import TraceWriter

__all__ = [
    "BatchEvent", "Event", "ExpertsEvent", "FORMAT_VERSION", "ListRecorder", "MarkEvent",
    "NullRecorder", "Recorder", "RequestEvent", "SessionHeader", "StageEvent", "TickEvent",
    "Trace", "TraceFormatError", "TraceReader", "TraceTail", "TraceWriter", "add_mark",
    "export_csv", "export_parquet", "export_perfetto", "follow", "from_events", "load",
    "open_trace", "read_marks", "sidecar_path", "summarize", "summary_table",
]
