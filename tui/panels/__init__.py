"""Every panel, in layout order: one module a panel, and this registry.

`PANELS` lays out the dashboard's grid and each compare side's column, gives compare's `p` the
panels it cycles through, and the help screen its paragraphs. Every panel's widget is a `Panel`
(tui/widgets/panel.py): it draws with `show(frame)`, and asks for a frame when it appears (a hidden
panel is not drawn). A new panel is a module here (its widget, or its parts in a `PanelGroup`; its
help; its CSS as the widget's DEFAULT_CSS if it needs any) and a line in PANELS.
"""

from __future__ import annotations

from tui.panels import experts, load, requests, stages, timeline
from tui.panels.spec import PanelSpec

PANELS: tuple[PanelSpec, ...] = (timeline.PANEL, experts.PANEL, load.PANEL, requests.PANEL, stages.PANEL)
