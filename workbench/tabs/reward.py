"""The reward tab: train a Bradley-Terry reward model, watch it learn, try it on your own text.

Layout and wiring only; the handlers are in workbench/reward_logic.py. Everything shown is read
from the run directory, polled once a second, so runs started from the CLI appear here too.
"""
from __future__ import annotations

import gradio as gr

from core.config import RewardConfig, to_yaml

from .. import reward_logic as logic
from ..forms import build_form
from . import Live


def build(ws) -> Live:
    """Lay out the tab and wire it; returns its live refresh."""
    gr.Markdown("Train a reward model on labelled pairs: r(prompt, response) is read at the EOS after the "
                "response and trained so that r(chosen) > r(rejected) (Bradley-Terry loss).")
    shown_run = gr.State("")    # the run directory the plots show ('' = active or newest)
    signature = gr.State("")    # its files' mtimes at the last redraw

    with gr.Row():
        with gr.Column(scale=3):
            form = build_form(RewardConfig, logic.default_config(ws))
        with gr.Column(scale=2):
            yaml_view = gr.Code(to_yaml(logic.default_config(ws)), language="yaml",
                                label="Equivalent config.yaml (rlhf-workbench train-rm --config ...)",
                                interactive=False)
            with gr.Row():
                start_btn = gr.Button("Start training", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
            message = gr.Markdown()
    form.bind_yaml(yaml_view)

    status = gr.Markdown("No reward run yet.")
    bar = gr.HTML(logic.status_bar(""))
    with gr.Row():
        run_pick = gr.Dropdown(choices=logic.run_choices(ws), value=None, label="Show run",
                               info="Empty = the running or newest run. A run directory path also works.",
                               allow_custom_value=True, scale=4)
        refresh_btn = gr.Button("Refresh list", scale=1)
    with gr.Row():
        loss_plot, acc_plot = gr.Plot(label="loss"), gr.Plot(label="accuracy")
    with gr.Row():
        margin_plot, hist_plot = gr.Plot(label="margin"), gr.Plot(label="validation scores")
    runs = gr.Dataframe(logic.runs_table(ws), label="Reward runs", interactive=False)

    with gr.Accordion("Try it", open=True):
        gr.Markdown("Score a response, or give two to get P(A ≻ B) = σ(r_A − r_B).")
        with gr.Row():
            try_run = gr.Dropdown(choices=logic.run_choices(ws, with_model=True), label="Reward model (run)", scale=2)
            try_refresh = gr.Button("Refresh", scale=0)
        try_prompt = gr.Textbox(label="Prompt", value="this movie is")
        with gr.Row():
            try_a = gr.Textbox(label="Response A", value=" a delight from start to finish.")
            try_b = gr.Textbox(label="Response B (optional)", value=" a dull, tedious mess.")
        try_btn = gr.Button("Score")
        try_out = gr.Markdown()

    # -- wiring
    def on_start(*values):
        msg, path = logic.start(ws, form.names, values)
        return msg, path or gr.skip(), gr.update(choices=logic.run_choices(ws), value=path or None)

    def on_pick(choice):
        return choice or ""

    def tick(chosen, last_sig):
        path = logic.current_run(ws, chosen)
        sig = logic.run_signature(path)
        if sig == last_sig:  # nothing changed on disk: skip re-sending four figures
            return (gr.skip(),) * 8
        return (sig, logic.status_line(path), logic.status_bar(path), *logic.figures(path), logic.runs_table(ws))

    def refresh():
        return gr.update(choices=logic.run_choices(ws)), logic.runs_table(ws)

    start_btn.click(on_start, inputs=form.components, outputs=[message, shown_run, run_pick])
    stop_btn.click(lambda chosen: logic.stop(ws, logic.current_run(ws, chosen)), inputs=shown_run, outputs=message)
    run_pick.change(on_pick, inputs=run_pick, outputs=shown_run)
    refresh_btn.click(refresh, outputs=[run_pick, runs])
    live = Live.every_second(fn=tick, inputs=[shown_run, signature],
                             outputs=[signature, status, bar, loss_plot, acc_plot, margin_plot, hist_plot, runs],
                             show_progress="hidden")
    try_refresh.click(lambda: gr.update(choices=logic.run_choices(ws, with_model=True)), outputs=try_run)
    try_btn.click(logic.try_it, inputs=[try_run, try_prompt, try_a, try_b], outputs=try_out)
    return live
