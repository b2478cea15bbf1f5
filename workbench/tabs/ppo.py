"""The PPO tab: configure and start a run, watch its curves live, stop and resume it.

Layout and wiring only; handlers are in workbench/ppo_logic.py. The page keeps no training state:
a 1 s timer resolves the run to show from disk (the active job, else the newest run, else the
directory the user chose) and redraws only the parts whose files changed, so a reload or a
second browser reconnects to the running job and a CLI run shows up the same way.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import plotly

from core.config import PPOConfig

from .. import ppo_logic as logic
from ..forms import Form, build_form
from . import Live

# Sent with every tick: whether this tab is on screen. A hidden tab skips its redraws (the browser
# would still redraw hidden plots) and catches up within a tick of being shown.
ON_SCREEN_JS = "(chosen, last, rm, _) => [chosen, last, rm, !!(document.querySelector('#ppo-dashboard')?.offsetParent)]"
AUTO = ("(running or newest run)", "")

# The live curves: one plotly figure of subplots, drawn by our own few lines of JS into a div that
# persists, so each update is one incremental Plotly.react. (gr.Plot remounts its plot on every
# new value and redraws it twice, ~4x the browser time: too slow to follow a run within 2 s on a
# busy CPU.) Plotly.js comes from the plotly Python package, served as a static file: no network.
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
PLOTLY_URL = f"gradio_api/file={PLOTLY_JS}"
# In the page's <head> (app.py): Plotly is 3.5 MB of JS whose evaluation holds the main thread for
# 1-2 s on a slow CPU. Loaded by the live plots themselves, that cost fell on the first opening of
# the PPO or Inspect tab; loaded here, it runs once the page has been idle for a while instead.
PLOTLY_HEAD = f"""<script>
window.loadPlotly = () => {{
  if (window.Plotly || document.getElementById('plotly-js')) return;
  const s = document.createElement('script');
  s.id = 'plotly-js'; s.src = '{PLOTLY_URL}'; s.async = true;
  document.head.appendChild(s);
}};
(() => {{
  const idleLoad = () => setTimeout(() => (window.requestIdleCallback || setTimeout)(window.loadPlotly, {{timeout: 5000}}), 1500);
  // Gradio may insert this after the page's load event: then start the countdown now
  document.readyState === 'complete' ? idleLoad() : window.addEventListener('load', idleLoad);
}})();
</script>"""
LIVE_PLOT_JS = """
const draw = () => {
  const P = element.__plotly || (element.__plotly = window.Plotly);  // keep one Plotly per div
  const div = element.querySelector('.live-plot');
  if (!P || !div || !props.value) return;
  const fig = JSON.parse(props.value);
  P.react(div, fig.data, fig.layout, {responsive: true, displaylogo: false});
};
window.loadPlotly && window.loadPlotly();  // opened before the idle preload: load it now
// plotly.min.js may still be loading: retry for up to 30 s
const whenReady = (tries) => window.Plotly ? draw() : tries > 0 && setTimeout(() => whenReady(tries - 1), 200);
whenReady(150);
watch('value', () => whenReady(150));
"""


def live_plot(elem_id: str) -> gr.HTML:
    """A plot that takes a figure's JSON as its value (see LIVE_PLOT_JS; app.py puts PLOTLY_HEAD
    in the page)."""
    gr.set_static_paths([PLOTLY_JS])
    return gr.HTML("", html_template='<div class="live-plot" style="width:100%;min-height:200px"></div>',
                   js_on_load=LIVE_PLOT_JS, elem_id=elem_id)


def build(ws) -> Live:
    """Lay out the tab and wire it; returns its live refresh."""
    cfg = logic.default_config(ws)
    gr.Markdown("Optimise the policy against the reward model with PPO: sample responses, score them, "
                "subtract a KL penalty to the reference per token, and update policy and critic. "
                "The curves follow the run directory live, whether the run was started here or from the CLI.")
    shown = gr.State("")   # the run directory chosen by the user ('' = running or newest)
    sigs = gr.State({})    # what the last redraw was built from (logic.signature + run list)

    with gr.Row():
        with gr.Column(scale=3, elem_id="ppo-form"):
            with gr.Row():
                policy = gr.Dropdown(logic.policy_choices(ws), value=cfg.policy, label="policy",
                                     allow_custom_value=True,
                                     info=_help("policy") + " Also: final policies of past runs.")
                reward_model = gr.Dropdown(logic.reward_model_choices(ws), value=cfg.reward_model or None,
                                           label="reward model", allow_custom_value=True, info=_help("reward_model"))
            prompts = gr.Textbox(cfg.prompts, label="prompts", info=_help("prompts"), max_lines=1)
            # Basic fields in a wrapping row (a compact grid), advanced ones folded: two forms, one config.
            advanced = tuple(n for n, f in PPOConfig.__dataclass_fields__.items() if f.metadata.get("advanced"))
            basic = tuple(n for n in PPOConfig.__dataclass_fields__ if n not in advanced)
            with gr.Row(equal_height=True):
                form_basic = build_form(PPOConfig, cfg, exclude=logic.FORM_EXCLUDE + advanced)
            with gr.Row():
                form_adv = build_form(PPOConfig, cfg, exclude=basic, advanced_label="Advanced hyperparameters")
            form = Form(PPOConfig, form_basic.names + form_adv.names, form_basic.components + form_adv.components)
        with gr.Column(scale=2):
            yaml_view = gr.Code(logic.config_yaml(form.names, [cfg.policy, cfg.reward_model, cfg.prompts,
                                                               *[getattr(cfg, n) for n in form.names]]),
                                language="yaml", interactive=False, max_lines=18,
                                label="Equivalent config.yaml (rlhf-workbench ppo --config ...)")
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id="ppo-start")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="ppo-stop")
            with gr.Row():
                resume_pick = gr.Dropdown(logic.resumable_choices(ws), value=None, label="Resume a run",
                                          info="Continues from its latest checkpoint with its own config.", scale=3)
                more_steps = gr.Number(0, label="more steps", precision=0, minimum=0, scale=1,
                                       info="added to its step count (continues a finished run)")
                resume_btn = gr.Button("Resume", scale=1, elem_id="ppo-resume")
            message = gr.Markdown(elem_id="ppo-message")
    inputs = [policy, reward_model, prompts, *form.components]

    status = gr.HTML(logic.status_html(""), elem_id="ppo-status")
    with gr.Row():
        run_pick = gr.Dropdown([AUTO, *logic.run_choices(ws)], value="", label="Show run", scale=3,
                               allow_custom_value=True)
        run_dir = gr.Textbox(label="…or any run directory", placeholder="/path/to/run (Enter to show)", scale=3)
        refresh_btn = gr.Button("Refresh lists", scale=1)
    hacking = gr.Markdown(elem_id="ppo-hacking")
    curves = live_plot("ppo-dashboard")
    on_screen = gr.Checkbox(True, visible=False)
    samples = gr.HTML(logic.samples_html(""), elem_id="ppo-samples")
    with gr.Accordion("All PPO runs", open=False):
        runs = gr.Dataframe(logic.runs_table(ws), interactive=False, show_label=False)

    # -- wiring
    for comp in inputs:  # the YAML always shows what Start would run
        comp.change(lambda *v: logic.config_yaml(form.names, v), inputs=inputs, outputs=yaml_view,
                    show_progress="hidden")

    def on_start(*values):
        ok, msg, _ = logic.start(ws, form.names, values)
        if not ok:
            gr.Warning(msg)
            return msg, gr.skip(), gr.skip()
        return msg, "", ""  # show the new run: the running one

    def on_resume(path, more):
        ok, msg, _ = logic.resume(ws, path, more)
        if not ok:
            gr.Warning(msg)
            return msg, gr.skip(), gr.skip()
        return msg, "", ""

    def on_stop(chosen):
        return logic.stop(ws, logic.current_run(ws, chosen))

    def lists(rm=None):
        """Fresh dropdown choices; an empty or vanished reward model becomes the newest one (a reward
        model trained after this page was built is picked up without a reload)."""
        rms = logic.reward_model_choices(ws)
        rm_update = gr.update(choices=rms, value=rms[0][1]) if rms and not logic.exists(rm) else gr.update(choices=rms)
        return (gr.update(choices=[AUTO, *logic.run_choices(ws)]), gr.update(choices=logic.resumable_choices(ws)),
                rm_update, gr.update(choices=logic.policy_choices(ws)), logic.runs_table(ws))

    outputs = [sigs, status, hacking, curves, samples, run_pick, resume_pick, reward_model, policy, runs]

    def tick(chosen, last, rm, visible):
        last = last or {}
        path = logic.current_run(ws, chosen)
        sig = {**logic.signature(path), "runs": logic.runs_signature(ws)}
        if not visible or all(sig[k] == last.get(k) for k in sig):
            return (gr.skip(),) * len(outputs)
        new_path = sig["path"] != last.get("path")
        changed = lambda part: new_path or sig[part] != last.get(part)  # noqa: E731
        skip = gr.skip()
        head = logic.status_html(path) if changed("status") or changed("metrics") else skip
        curves_now = logic.dashboard_json(path) if changed("metrics") else skip
        sig["hacking"] = logic.hacking_message(path) if changed("metrics") else last.get("hacking")
        warning = sig["hacking"] if sig["hacking"] != last.get("hacking") else skip  # unchanged text: no redraw
        table = logic.samples_html(path) if changed("tokens") else skip
        listed = lists(rm) if sig["runs"] != last.get("runs") else (skip,) * 5
        return (sig, head, warning, curves_now, table, *listed)

    start_btn.click(on_start, inputs=inputs, outputs=[message, shown, run_pick])
    resume_btn.click(on_resume, inputs=[resume_pick, more_steps], outputs=[message, shown, run_pick])
    stop_btn.click(on_stop, inputs=shown, outputs=message)
    run_pick.input(lambda v: v or "", inputs=run_pick, outputs=shown)
    run_dir.submit(lambda v: (v or "").strip(), inputs=run_dir, outputs=shown)
    refresh_btn.click(lists, inputs=reward_model, outputs=[run_pick, resume_pick, reward_model, policy, runs])
    return Live.every_second(fn=tick, inputs=[shown, sigs, reward_model, on_screen], outputs=outputs,
                             js=ON_SCREEN_JS, show_progress="hidden")


def _help(name: str) -> str:
    return PPOConfig.__dataclass_fields__[name].metadata.get("help", "")
