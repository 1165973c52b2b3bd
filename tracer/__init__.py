"""tickscope's trace: the event schema, a crash-safe msgpack writer, readers, frames and exports.

Imports nothing from the rest of tickscope; the engine and the load generator record through
`Recorder`, everything else reads files.
"""

from tracer.errors import TraceFormatError
from tracer.events import (
    FORMAT_VERSION,
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
from tracer.reader import TraceReader, open_trace
from tracer.recorder import ListRecorder, NullRecorder, Recorder
from tracer.summary import summarize, summary_table
from tracer.tail import TraceTail, follow
from tracer.writer import TraceWriter

__all__ = [
    "FORMAT_VERSION", "Event", "ExpertsEvent", "ListRecorder", "MarkEvent", "NullRecorder",
    "Recorder", "RequestEvent", "SessionHeader", "StageEvent", "TickEvent", "Trace",
    "TraceFormatError", "TraceReader", "TraceTail", "TraceWriter", "export_csv", "export_parquet",
    "export_perfetto", "follow", "from_events", "load", "open_trace", "summarize", "summary_table",
]
