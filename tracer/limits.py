"""Bounds on everything a trace can ask a reader to allocate.

A trace may come from a stranger, so every length is checked against these before anything is
read or decoded. They are generous for honest traces (FORMAT.md lists them) and keep memory
bounded for hostile ones.
"""

MAX_FRAME_BYTES = 16 << 20  # one frame's payload
# A reader seeking to a tick decodes the whole frame holding it: frames this small keep that a few
# milliseconds (the dashboard does it between two screen refreshes).
TARGET_FRAME_BYTES = 256 << 10  # the writer starts a new frame past this many payload bytes
MAX_EVENTS_PER_FRAME = 1024  # the writer's batch; readers accept up to MAX_CONTAINER_LEN
MAX_CONTAINER_LEN = 1 << 16  # any msgpack array or map
MAX_STR_LEN = 1 << 16  # any msgpack string (config values, reasons, marks)
MAX_TEXT_CHARS = MAX_STR_LEN // 4  # the writer cuts event text here: UTF-8 takes up to 4 bytes a char
MAX_BIN_LEN = 8 << 20  # any packed array
MAX_ARRAY_DIM = MAX_BIN_LEN  # any dimension of a packed array (so only the bytes limit binds)
