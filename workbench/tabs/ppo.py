"""The ppo tab."""
from __future__ import annotations

import gradio as gr


def build(ws) -> None:
    gr.Markdown("Coming soon.")
