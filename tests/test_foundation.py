"""The foundation as a user meets it: the embedded model and prompts, and the GUI's flags."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import DEFAULT_MODEL, DEFAULT_PROMPTS
from workbench.app import is_loopback, parse_args

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_model_loads_in_plain_transformers_with_pad_and_eos():
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL)
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    assert tok.eos_token_id is not None and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert sum(f.stat().st_size for f in Path(DEFAULT_MODEL).iterdir()) < 25e6
    ids = tok(["this movie is"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_default_prompts_are_200_short_review_openings():
    lines = [ln for ln in Path(DEFAULT_PROMPTS).read_text().splitlines() if ln.strip()]
    assert len(lines) >= 200 and len(set(lines)) == len(lines)
    assert all(2 <= len(ln.split()) <= 6 for ln in lines)


def test_gui_flags_default_to_loopback():
    a = parse_args([])
    assert (a.host, a.port, a.workspace, a.auth) == ("127.0.0.1", 7860, "workspace", None)
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "example.org"))


@pytest.mark.parametrize("argv, message", [
    (["--host", "0.0.0.0"], "refusing to bind to 0.0.0.0 without --auth"),
    (["--host", "0.0.0.0", "--auth", "nopassword"], "--auth must be USER:PASS"),
])
def test_gui_refuses_an_open_bind_with_a_message(argv, message, tmp_path):
    r = subprocess.run([sys.executable, "-m", "workbench.app", "--workspace", str(tmp_path / "ws"), *argv],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode != 0 and message in r.stderr
    assert not (tmp_path / "ws").exists()  # refused before anything was created


def test_only_the_selected_tabs_timer_runs():
    """Hidden tabs' timers are off (each tick costs the browser work in front of the Label clicks):
    selecting a tab switches its timer on and every other one off."""
    import gradio as gr

    from workbench.app import run_timers_of_selected_tab
    with gr.Blocks() as app:
        tabs, timers = {}, {}
        with gr.Tabs():
            for name in ("label", "reward", "ppo"):
                with gr.Tab(name) as tabs[name]:
                    if name != "label":
                        timers[name] = gr.Timer(1.0, active=False)
        run_timers_of_selected_tab(tabs, timers)
    by_tab = {}
    for fn in app.fns.values():
        for block_id, event in fn.targets:
            name = next((n for n, t in tabs.items() if t._id == block_id), None)
            if event == "select" and name:
                by_tab[name] = ([o._id for o in fn.outputs], fn.fn())
    assert set(by_tab) == {"label", "reward", "ppo"}
    for name, (outputs, updates) in by_tab.items():
        active = {o: u.active for o, u in zip(outputs, updates)}
        assert active == {t._id: n == name for n, t in timers.items()}, name
