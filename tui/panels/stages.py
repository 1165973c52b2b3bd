"""The current tick's pipeline stages × time: compute cells, warmup, drain and bubbles."""

from __future__ import annotations

from tui.panels.spec import PanelSpec, one_widget
from tui.widgets.stages import StageGantt

HELP = """\
**pipeline stages** — the current tick's layers split into stages (rows) and its batch into
micro-batches (coloured cells): *modelled* on one device per stage from cells that ran in turn on
one device, or *measured* as they ran in one process per stage (`record --distributed`); the
subtitle says which, and the line under the rows the time scale. ╌ blue is warmup, ╌ red drain,
░ bubbles inside the pipeline. Shown when the trace has stages."""

PANEL = PanelSpec("stages", "pipeline stages", HELP, one_widget(StageGantt), needs_stages=True)
