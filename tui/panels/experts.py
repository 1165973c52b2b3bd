"""The experts × layers heatmap: where each tick's tokens went."""

from __future__ import annotations

from tui.panels.spec import PanelSpec, one_widget
from tui.widgets.heatmap import ExpertHeatmap

HELP = """\
**experts × layers** — tokens routed to each expert (columns) of each MoE layer (rows) in the
current tick; each character holds two layers (upper half = upper layer), expert numbers above the
columns. Dark grey is an expert that got nothing; the scale under a roomy map runs from one token
to the busiest cell. *active* is the share of (layer, expert) cells that got a token; *max/mean* the
load imbalance (1.0 = perfect), *balance* its inverse mean/max as vLLM logs it; *hot* names the
busiest experts overall, *hot by layer* each layer's busiest. Over a span (`a`) the map is the
span's mean load, while *active*, *max/mean* and *balance* are means over the span's (tick, layer)
cells, the same figures `tickscope summary` and compare give under those names; *dead* counts
experts that got no token in any tick of it, and the subtitle says how many of the span's ticks
were held. Small batches leave most experts idle: that is where MoE efficiency goes."""

PANEL = PanelSpec("experts", "experts × layers", HELP, one_widget(ExpertHeatmap))
