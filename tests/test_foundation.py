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


def test_only_the_selected_tabs_timer_runs(tmp_path):
    """In the app itself: the page opens on Label with every tab timer off (each tick costs the
    browser work in front of the Label clicks), and selecting a tab switches its timer on and
    every other one off."""
    import gradio as gr

    from workbench.app import build_app
    from workbench.context import Workspace
    app = build_app(Workspace(tmp_path / "ws"))
    tabs = {b.label: b for b in app.blocks.values() if isinstance(b, gr.Tab)}
    assert set(tabs) == {"Label", "Reward model", "PPO", "Inspect"}
    selects = {name: fn for fn in app.fns.values() for block_id, event in fn.targets
               for name, tab in tabs.items() if event == "select" and block_id == tab._id}
    assert set(selects) == set(tabs)
    tab_timers = {o._id for o in selects["PPO"].outputs}
    assert len(tab_timers) == 3  # Reward, PPO, Inspect; the Label tab's own refresh timer is not one
    assert all(not app.blocks[t].active for t in tab_timers)  # off until their tab is selected
    for name, fn in selects.items():
        on = {o._id for o, update in zip(fn.outputs, fn.fn()) if update.active}
        assert {o._id for o in fn.outputs} == tab_timers
        assert len(on) == (name != "Label")  # the selected tab's timer only (Label has none)
        if on:  # ... and it is the timer whose tick redraws that tab
            timer = on.pop()
            tick = next(f for f in app.fns.values() if (timer, "tick") in f.targets)
            assert any(inside(o, tabs[name]) for o in tick.outputs), name


def inside(block, container) -> bool:
    while block is not None:
        if block is container:
            return True
        block = getattr(block, "parent", None)
    return False
