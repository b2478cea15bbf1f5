"""The app's tabs. Each `build(ws)` lays out and wires one tab; the live ones return a `Live`."""
from __future__ import annotations

from typing import NamedTuple

import gradio as gr


class Live(NamedTuple):
    """A tab that follows the disk: its 1 s refresh timer and that timer's event (fn, inputs,
    outputs, js, ...), so app.py can also fire the refresh the moment the tab is opened."""
    timer: gr.Timer
    refresh: dict

    @classmethod
    def every_second(cls, **event) -> "Live":
        timer = gr.Timer(1.0, active=False)  # app.py runs it while its tab is selected
        timer.tick(**event)
        return cls(timer, event)
