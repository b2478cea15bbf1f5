"""The Label tab: layout and wiring only; the handlers live in workbench/label_logic.py.

Every text that comes from a model or a file is shown in a read-only Textbox or an HTML table whose
cells are escaped, never as Markdown/HTML, so a response like `<img src=x onerror=...>` is
displayed, not run. Markdown here carries numbers only; toasts are escaped too.
"""
from __future__ import annotations

import html
import itertools
import traceback

import gradio as gr

from .. import label_logic as logic

# Keyboard shortcuts for the label buttons (passed to launch(js=...) by app.py). Keys typed into a
# text field are the user's text, not shortcuts; a held key fires once (e.repeat); a hidden tab's
# buttons have no offsetParent, so other tabs are left alone.
HOTKEYS_JS = """
() => {
  const keys = {"1": "label-a", "2": "label-b", "3": "label-tie", "4": "label-bad", "s": "label-skip", "u": "label-undo"};
  const typing = (t) => {
    if (!t || !t.tagName) return false;
    if (t.isContentEditable) return true;
    if (t.tagName === "TEXTAREA" || t.tagName === "SELECT") return !t.readOnly && !t.disabled;
    if (t.tagName !== "INPUT") return false;
    return !["checkbox", "radio", "button", "submit", "range", "file"].includes(t.type) && !t.readOnly && !t.disabled;
  };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || typing(e.target)) return;
    const id = keys[e.key.toLowerCase()];
    if (!id) return;
    let el = document.getElementById(id);
    if (el && el.tagName !== "BUTTON") el = el.querySelector("button");
    if (!el || el.offsetParent === null || el.disabled) return;
    e.preventDefault();
    el.click();
  });
}
"""

CSS = """
#pair-info { color: var(--body-text-color-subdued); font-size: var(--text-sm); min-height: 1.5em; }
#label-buttons button { min-width: 0; }
.label-table { max-height: 360px; overflow-y: auto; }
.label-table table { width: 100%; border-collapse: collapse; font-size: var(--text-sm); }
.label-table th, .label-table td { text-align: left; padding: 4px 8px; border: none !important;
  border-bottom: 1px solid var(--border-color-primary) !important; white-space: pre-wrap; word-break: break-word; }
.label-table th { font-weight: 600; }
"""

NO_REWARD_MODEL = ("none: oldest first", "")
BUTTONS = [("A is better [1]", "left", "label-a", "primary"), ("B is better [2]", "right", "label-b", "primary"),
           ("Tie [3]", "tie", "label-tie", "secondary"), ("Both bad [4]", "both_bad", "label-bad", "secondary"),
           ("Skip [s]", "skip", "label-skip", "secondary"), ("Undo [u]", None, "label-undo", "stop")]


def _error_text(e: Exception) -> str:
    if not isinstance(e, ValueError):  # not a user error: keep the traceback in the server log
        traceback.print_exc()
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


def _toast(msg: str, warning: bool = True) -> None:
    # Gradio renders toast text as HTML; messages can quote file names and paths, so escape them.
    (gr.Warning if warning else gr.Info)(html.escape(msg))


def _warn(e: Exception) -> str:
    """Show an error as a toast (never a crash) and return its text for a message box."""
    msg = _error_text(e)
    _toast(msg)
    return msg


def html_table(df) -> str:
    """A plain table; every cell is escaped, so texts from models and files stay text. Cheaper to
    send and to draw than a Dataframe component, which matters because it redraws on every label."""
    if df.empty:
        return ""
    return '<div class="label-table">' + df.to_html(index=False, escape=True, border=0) + "</div>"


def _skip(n: int):
    return tuple(gr.skip() for _ in range(n))


def build(ws) -> None:
    name_state = gr.BrowserState("", storage_key="rlhf-workbench-annotator", secret="rlhf-workbench")
    with gr.Row(equal_height=True):
        name = gr.Textbox(label="Your name", placeholder="who is labelling (remembered in this browser)",
                          max_lines=1, scale=1, elem_id="annotator-name")
        with gr.Column(scale=3):
            progress_md = gr.Markdown(elem_id="label-progress")
    info = gr.Markdown(elem_id="pair-info")
    prompt = gr.Textbox(label="Prompt", interactive=False, lines=1, max_lines=6, elem_id="label-prompt")
    with gr.Row(equal_height=True):
        left = gr.Textbox(label="A", interactive=False, lines=6, max_lines=30, elem_id="label-left")
        right = gr.Textbox(label="B", interactive=False, lines=6, max_lines=30, elem_id="label-right")
    with gr.Row(elem_id="label-buttons"):
        buttons = [(gr.Button(text, variant=variant, elem_id=eid), choice) for text, choice, eid, variant in BUTTONS]
    shown = gr.Textbox(visible=False)  # "<pair id>:<side shown left>" of the pair on screen
    notice = gr.Textbox(visible="hidden")  # "<n>:warning:..." from the unqueued label path, toasted after
    refresh = gr.Timer(1.0, active=False)  # redraws the tables shortly after labels (see the wiring)

    with gr.Accordion("Recent labels and agreement", open=True):
        agreement_md = gr.Markdown()
        agreement_table = gr.HTML(elem_id="agreement-table", visible=False)
        recent_table = gr.HTML(elem_id="recent-labels")

    with gr.Accordion("Generate pairs", open=False):
        with gr.Row():
            policy = gr.Dropdown(logic.policy_choices(ws), value=ws.model_path, allow_custom_value=True, scale=3,
                                 label="Policy: the default model, a checkpoint, or any model directory")
            source = gr.Radio(list(logic.PROMPT_SOURCES), value=logic.PROMPT_SOURCES[0], label="Prompts", scale=2)
        prompt_path = gr.Textbox(label="Prompt file (one prompt per line)", max_lines=1, visible=False)
        typed = gr.Textbox(label="Prompts, one per line", lines=3, visible=False)
        with gr.Row():
            n_pairs = gr.Number(16, precision=0, minimum=1, maximum=logic.MAX_PAIRS_PER_RUN, label="Pairs")
            temperature = gr.Slider(0.1, 2.0, 1.0, step=0.05, label="Temperature")
            max_new = gr.Slider(4, 256, 24, step=1, label="Max new tokens")
        gen_btn = gr.Button("Generate pairs", variant="primary")
        gen_msg = gr.Textbox(label="Result", interactive=False, max_lines=2)

    with gr.Accordion("Auto-label, import, export", open=False):
        with gr.Row(equal_height=True):
            auto_n = gr.Number(50, precision=0, minimum=1, label="Pairs to auto-label", scale=1)
            auto_btn = gr.Button("Auto-label N pairs (sim:vader)", scale=2)
        with gr.Row():
            upload = gr.File(label="Import pairs (.jsonl, .csv, .parquet)", file_types=[".jsonl", ".csv", ".parquet"],
                             type="filepath", elem_id="import-file")
            with gr.Column():
                fmt = gr.Radio(["JSONL", "Parquet"], value="JSONL", label="Export format")
                ties = gr.Checkbox(False, label="Include ties (each tie in both orders)")
                export_btn = gr.Button("Export labelled pairs")
                download = gr.File(label="Download", interactive=False, elem_id="export-file")
        files_msg = gr.Textbox(label="Result", interactive=False, max_lines=3, elem_id="files-msg")

    with gr.Accordion("Active ordering", open=False):
        with gr.Row(equal_height=True):
            rm = gr.Dropdown([NO_REWARD_MODEL], value="", scale=4,
                             label="Reward model: show the pairs it is least sure about first")
            rm_refresh = gr.Button("Refresh list", scale=1)
        rm_msg = gr.Textbox(label="Ordering", value="Pairs come oldest first.", interactive=False, max_lines=2)

    pair_out = [prompt, left, right, shown, info]
    stats_out = [progress_md, recent_table, agreement_md, agreement_table]

    def rm_choices():
        return gr.Dropdown(choices=[NO_REWARD_MODEL] + [(p, p) for p in logic.reward_model_choices(ws)])

    # ------------------------------------------------------------ handlers (thin: logic does the work)
    def on_stats(who):
        try:
            progress, recent, agree, by_pair = logic.stats(ws, logic.clean_name(who))
        except Exception as e:  # noqa: BLE001
            _warn(e)
            return _skip(len(stats_out))
        return progress, html_table(recent), agree, gr.HTML(html_table(by_pair), visible=not by_pair.empty)

    def on_load(stored_name):
        try:
            who = logic.clean_name(stored_name)
            logic.ensure_filler(ws)  # lazily, once per process: pairs get sampled before anyone waits
            view = logic.next_view(ws, who)
        except Exception as e:  # noqa: BLE001
            _warn(e)
            who, view = "", logic.empty_view("")
        # An empty stored name leaves the field alone: the user may be typing one right now.
        return (who or gr.skip(), *view, *on_stats(who), rm_choices())

    def on_name(value):
        try:
            return logic.clean_name(value)
        except ValueError as e:
            _warn(e)
            return gr.skip()

    # Label and undo run outside the queue: a queued event costs more CPU than the label itself,
    # and under load that doubles the click-to-next-pair time. Unqueued handlers cannot send toasts,
    # so a message goes into `notice` (numbered, so a repeat is still a change) and its change
    # event, queued, shows it. Without a message `notice` is left alone and nothing is queued.
    serial = itertools.count()

    def note(level: str, msg: str) -> str:
        return f"{next(serial)}:{level}:{msg}"

    nothing = _skip(len(pair_out) + 1)

    def make_label(choice):
        def on_label(who, on_screen, rm_path):
            try:
                view = logic.label(ws, who, on_screen, choice, rm_path)
            except Exception as e:  # noqa: BLE001
                return (*nothing, note("warning", _error_text(e)))
            return (*nothing, gr.skip()) if view is None else (*view, gr.Timer(active=True), gr.skip())
        return on_label

    def on_undo(who, on_screen, rm_path):
        try:
            view, msg = logic.undo(ws, who, on_screen, rm_path)
        except Exception as e:  # noqa: BLE001
            return (*nothing, note("warning", _error_text(e)))
        shown_now = nothing if view is None else (*view, gr.Timer(active=True))
        return (*shown_now, note("info", msg) if msg else gr.skip())

    def on_tick(who):
        return (*on_stats(who), gr.Timer(active=False))

    def on_notice(text):
        _, level, msg = (text or "").split(":", 2) if (text or "").count(":") >= 2 else ("", "", "")
        if msg:
            _toast(msg, warning=level == "warning")

    def on_source(src):
        return gr.Textbox(visible=src == "Prompt file"), gr.Textbox(visible=src == "Typed prompts")

    def on_generate(pol, src, path, text, n, temp, max_tokens, progress=gr.Progress()):
        def report(done, total):
            progress(done / total, desc=f"{done}/{total} pairs")
        try:
            msg = logic.generate_pairs(ws, pol, src, path, text, n, temp, max_tokens, progress=report)
        except Exception as e:  # noqa: BLE001
            return _warn(e)
        _toast(msg, warning=False)
        return msg

    def on_auto(n):
        try:
            msg = logic.auto_label(ws, n)
        except Exception as e:  # noqa: BLE001
            return _warn(e)
        _toast(msg, warning=False)
        return msg

    def on_import(path):
        try:
            msg = logic.import_upload(ws, path)
        except Exception as e:  # noqa: BLE001
            return _warn(e)
        _toast(msg, warning=False)
        return msg

    def on_export(kind, with_ties):
        try:
            path, msg = logic.export_file(ws, kind, with_ties)
        except Exception as e:  # noqa: BLE001
            return None, _warn(e)
        return path, msg

    def on_rm(who, rm_path, progress=gr.Progress()):
        def report(done, total):
            progress(done / total, desc=f"scored {done}/{total} pairs")
        try:
            return logic.activate_reward_model(ws, who, rm_path, progress=report)
        except Exception as e:  # noqa: BLE001
            return _warn(e)

    # ------------------------------------------------------------ wiring
    # On page load (and whenever the stored name changes) show this annotator's next pair.
    # (rm is an output only: as an input, its choices update would re-trigger this.) always_last: a
    # name entered while the first load is still pending must still load that annotator's pair.
    gr.on(None, on_load, [name_state], [name, *pair_out, *stats_out, rm], show_progress="hidden",
          trigger_mode="always_last")
    # Remember the name when the field is left or submitted (not per keystroke: each would be a request).
    gr.on([name.blur, name.submit], on_name, [name], [name_state], show_progress="hidden")

    # The label path: commit and show the next pair, nothing else (no generation, no tables). Under a
    # busy CPU every ms spent here is several ms of waiting, and a request costs more than the tables.
    # The tables follow through `refresh`: each label switches it on, its tick redraws them and
    # switches it off, so a burst of labels costs one refresh a second and the last label still shows.
    for button, choice in buttons:
        fn = on_undo if choice is None else make_label(choice)
        button.click(fn, [name, shown, rm], [*pair_out, refresh, notice], show_progress="hidden", queue=False)
    refresh.tick(on_tick, [name], [*stats_out, refresh], show_progress="hidden", queue=False)
    notice.change(on_notice, [notice], None, show_progress="hidden")

    source.change(on_source, [source], [prompt_path, typed], show_progress="hidden")
    gen_btn.click(on_generate, [policy, source, prompt_path, typed, n_pairs, temperature, max_new], [gen_msg]) \
           .then(on_stats, [name], stats_out, show_progress="hidden")
    auto_btn.click(on_auto, [auto_n], [files_msg]).then(on_stats, [name], stats_out, show_progress="hidden")
    upload.upload(on_import, [upload], [files_msg]).then(on_stats, [name], stats_out, show_progress="hidden")
    export_btn.click(on_export, [fmt, ties], [download, files_msg])
    rm_refresh.click(rm_choices, None, [rm], show_progress="hidden")
    rm.input(on_rm, [name, rm], [rm_msg])
