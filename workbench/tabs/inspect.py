"""The Inspect tab: one PPO step token by token, and reference vs current policy side by side.

Layout and wiring only; handlers are in workbench/inspect_logic.py. The step slider follows the
newest logged step while the run trains, until the user moves it (moving it back to the newest
step follows again). A 1 s timer checks one file's size and time; it redraws nothing otherwise.
"""
from __future__ import annotations

import gradio as gr

from .. import inspect_logic as logic, ppo_logic
from ..tokens import QUANTITIES
from . import Live
from .ppo import live_plot

AUTO = ("(running or newest run)", "")
# Sent with every tick: whether this tab is on screen. A hidden tab neither follows nor redraws.
ON_SCREEN_JS = "(a, b, c, d, _) => [a, b, c, d, !!(document.querySelector('#inspect-tokens')?.offsetParent)]"


def build(ws) -> Live:
    """Lay out the tab and wire it; returns its live refresh."""
    gr.Markdown("Every token of a logged sample with its reward r_t = −β·KL_t (+ the score on the last token), "
                "value V_t, advantage A_t and return G_t. Hover a token for its numbers.")
    chosen = gr.State("")     # run picked by the user ('' = running or newest)
    shown = gr.State("")      # the run directory the views show
    newest = gr.State(0)      # newest step with samples
    follow = gr.State(True)   # the slider tracks the newest step
    sig = gr.State("")        # tokens.jsonl stamp at the last update

    with gr.Row():
        run_pick = gr.Dropdown([AUTO, *ppo_logic.run_choices(ws)], value="", label="Run", scale=3,
                               allow_custom_value=True, info="Or type any run directory.")
        refresh_btn = gr.Button("Refresh list", scale=1)
    with gr.Row():
        step = gr.Slider(1, 2, value=1, step=1, label="Step", scale=3, elem_id="inspect-step",
                         info="Follows the newest step while training, until you move it.")
        sample = gr.Dropdown([], value=None, label="Sample", scale=2, elem_id="inspect-sample")
        quantity = gr.Radio(list(QUANTITIES), value="advantage", label="Colour tokens by", scale=2)
    token_view = gr.HTML(elem_id="inspect-tokens")
    with gr.Row():  # live plots: redrawn in place as the step follows a run (see tabs/ppo.py)
        reward_plot = live_plot("inspect-reward-plot")
        values_plot = live_plot("inspect-values-plot")
    heatmap = live_plot("inspect-heatmap")
    on_screen = gr.Checkbox(True, visible=False)
    with gr.Accordion("Compare reference and current policy", open=True):
        gr.Markdown("Samples this step's prompts from the reference (the run's initial policy) and from the "
                    "current policy (latest checkpoint, or the final model) with the same seed, and scores both "
                    "with the run's reward model.")
        compare_btn = gr.Button("Sample and compare", elem_id="inspect-compare")
        compare_msg = gr.Markdown()
        compare_table = gr.Dataframe(logic.empty_compare(), interactive=False, wrap=True, show_label=False,
                                     column_widths=["14%", "31%", "12%", "31%", "12%"])

    # -- wiring
    def render(path, step_value, sample_value, qty):
        choices, picked, body, fig_r, fig_v, fig_h = logic.view(path, step_value, sample_value, qty)
        return gr.update(choices=choices, value=picked), body, fig_r.to_json(), fig_v.to_json(), fig_h.to_json()

    def tick(pick, last_sig, is_following, cur_path, visible):
        if not visible:
            return (gr.skip(),) * 4
        path = ppo_logic.current_run(ws, pick)
        s = logic.tokens_signature(path)
        if s == last_sig:
            return (gr.skip(),) * 4
        steps = logic.steps(path)
        top = steps[-1] if steps else 0
        if not top:  # no samples yet: leave the slider alone (its minimum is 1)
            slider = gr.skip()
        elif is_following or path != cur_path:
            slider = gr.update(maximum=max(top, 2), value=top)
        else:
            slider = gr.update(maximum=max(top, 2))
        return s, path, top, slider

    def released(value, top):
        return int(value) >= int(top)  # moved back to the end: follow again

    view_outputs = [sample, token_view, reward_plot, values_plot, heatmap]
    view_inputs = [shown, step, sample, quantity]
    live = Live.every_second(fn=tick, inputs=[chosen, sig, follow, shown, on_screen],
                             outputs=[sig, shown, newest, step], js=ON_SCREEN_JS, show_progress="hidden")
    step.input(released, inputs=[step, newest], outputs=follow)  # the user moved it (drag or typed)
    # .change fires for the timer's updates as well as the user's; .input only for the user's
    step.change(render, inputs=view_inputs, outputs=view_outputs, show_progress="hidden")
    shown.change(render, inputs=view_inputs, outputs=view_outputs, show_progress="hidden")
    sample.input(render, inputs=view_inputs, outputs=view_outputs, show_progress="hidden")
    quantity.change(render, inputs=view_inputs, outputs=view_outputs, show_progress="hidden")
    run_pick.input(lambda v: (v or "", True), inputs=run_pick, outputs=[chosen, follow])
    refresh_btn.click(lambda: gr.update(choices=[AUTO, *ppo_logic.run_choices(ws)]), outputs=run_pick)
    compare_btn.click(logic.compare, inputs=[shown, step], outputs=[compare_msg, compare_table])
    return live
