"""What the dashboard knows about a recording, as plain arrays: no Textual in here.

One module a job: `blocks` (what sources hand over), `columns` (growable arrays), `requests` (the
request table), `series` (chart buckets), `figures` (one tick's expert and stage figures), `config`
(the header in a few words), and `dashboard` (the state that holds them, queried as of a tick).
"""

from tui.state.blocks import Detail, FrameData, RequestBlock, frame_from_events, request_block
from tui.state.columns import Columns
from tui.state.config import config_summary
from tui.state.dashboard import DashboardState, series_fields
from tui.state.figures import ExpertStats, StageStats, expert_stats, stage_stats
from tui.state.requests import LATENCY_WINDOW_S, LatencyStats, RequestLife, RequestRow, RequestTable
from tui.state.series import Series, bucket_bounds, cursor_bucket, downsample, peak_of

__all__ = [
    "Columns",
    "DashboardState",
    "Detail",
    "ExpertStats",
    "FrameData",
    "LATENCY_WINDOW_S",
    "LatencyStats",
    "RequestBlock",
    "RequestLife",
    "RequestRow",
    "RequestTable",
    "Series",
    "StageStats",
    "bucket_bounds",
    "config_summary",
    "cursor_bucket",
    "downsample",
    "expert_stats",
    "frame_from_events",
    "peak_of",
    "request_block",
    "series_fields",
    "stage_stats",
]
