"""The playback keys both apps have, each written once (the actions are tui/playback.py's, or the
app's own). An app lists them in the order its footer shows them, with its own keys between."""

from __future__ import annotations

from textual.binding import Binding

STEP_GROUP = Binding.Group("Step", compact=True)
SPEED_GROUP = Binding.Group("Speed", compact=True)
MARK_GROUP = Binding.Group("Mark", compact=True)

PLAY = [
    Binding("q", "quit", "Quit"),
    Binding("question_mark", "help", "Help", key_display="?"),
    Binding("space", "toggle_play", "Play/Pause"),
]
SPEED = [
    Binding("minus", "slower", "Slower", key_display="-", group=SPEED_GROUP),
    Binding("plus,equals_sign", "faster", "Faster", key_display="+", group=SPEED_GROUP),
]
JUMP = [Binding("home", "jump_start", "Start"), Binding("end", "jump_end", "End")]


def step(back: str, on: str) -> list[Binding]:
    return [
        Binding("left", "step(-1)", back, key_display="←", group=STEP_GROUP),
        Binding("right", "step(1)", on, key_display="→", group=STEP_GROUP),
    ]


def mark(add: str) -> list[Binding]:
    return [
        Binding("left_square_bracket", "mark(-1)", "Prev mark", key_display="[", group=MARK_GROUP),
        Binding("right_square_bracket", "mark(1)", "Next mark", key_display="]", group=MARK_GROUP),
        Binding("m", "add_mark", add, group=MARK_GROUP),
    ]
