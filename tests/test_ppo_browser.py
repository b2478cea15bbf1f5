"""The PPO and Inspect tabs in a real browser: start a run from the form, watch the step counter
and curves advance, reload and find the same run still going, stop it, inspect a step; and a
logged `<script>` response shown as text."""
import json
import time

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from browser import AppServer, browser, page  # noqa: F401  (fixtures)

from tiny_models import tiny_model

pytestmark = pytest.mark.browser

EVIL = "<script>window.__pwned = 1</script>"


@pytest.fixture
def workspace(tmp_path, tiny_tokenizer):
    """A tiny random policy (outside the workspace) and a reward run with a tiny reward model."""
    tiny_model("gpt2", tiny_tokenizer, 0).save_pretrained(tmp_path / "policy")
    tiny_tokenizer.save_pretrained(tmp_path / "policy")
    cfg = tiny_model("gpt2", tiny_tokenizer, 1).config
    cfg.num_labels = 1
    torch.manual_seed(1)
    reward_run = tmp_path / "ws" / "runs" / "reward-tiny"
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(reward_run / "model")
    tiny_tokenizer.save_pretrained(reward_run / "model")
    (reward_run / "status.json").write_text(json.dumps({"kind": "reward", "state": "finished", "step": 1}))
    return tmp_path / "ws", tmp_path / "policy"


@pytest.fixture
def server(workspace):
    ws, policy = workspace
    # one thread: the app trains and serves on a 2-core machine shared with other work
    srv = AppServer(ws, env={"OMP_NUM_THREADS": "1", "RLHF_QUEUE_TARGET": "0"}, args=["--model", str(policy)])
    yield srv
    srv.kill()


def plotted_step(pg) -> int:
    """The newest step the curves were drawn with, and the last x of the score curve in the DOM."""
    return pg.evaluate("""() => {
        const el = document.querySelector('#ppo-dashboard .js-plotly-plot');
        const xs = el && el.data && el.data.length ? el.data[0].x : [];
        return xs.length ? Math.max(...xs) : 0; }""")


def progress_step(pg) -> int:
    return int(pg.get_attribute("#ppo-progress", "data-step") or 0)


def wait_until(pred, timeout=60.0, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def open_tab(pg, name):
    pg.get_by_role("tab", name=name, exact=True).click()


def test_start_watch_reload_stop_and_inspect(server, page):  # noqa: F811
    page.goto(server.url)
    open_tab(page, "PPO")
    for label, value in (("steps", "3000"), ("batch size", "2"), ("response length", "4"), ("ppo epochs", "1")):
        page.locator("#ppo-form").get_by_label(label, exact=True).fill(value)
    page.locator("#ppo-form").get_by_label("ppo epochs", exact=True).press("Tab")
    page.wait_for_function("document.querySelector('#ppo-start') !== null")
    page.click("#ppo-start")
    page.wait_for_function("document.querySelector('#ppo-status').innerText.includes('running')", timeout=60_000)
    run_name = page.inner_text("#ppo-status").split("·")[1].strip()
    assert run_name.startswith("ppo-")

    first = wait_until(lambda: plotted_step(page) >= 2 and plotted_step(page), what="the first curve points")
    wait_until(lambda: plotted_step(page) > first + 2, what="the curves to advance")
    assert progress_step(page) >= first + 2 and "/3000" in page.inner_text("#ppo-status")

    page.reload()  # the page holds no state: it finds the running job again
    open_tab(page, "PPO")
    page.wait_for_function("name => document.querySelector('#ppo-status').innerText.includes(name)", arg=run_name)
    before = wait_until(lambda: plotted_step(page), what="curves after the reload")
    assert "running" in page.inner_text("#ppo-status")
    wait_until(lambda: plotted_step(page) > before, what="the same run to continue after the reload")

    page.click("#ppo-stop")
    page.wait_for_function("document.querySelector('#ppo-status').innerText.includes('stopped')", timeout=60_000)
    assert run_name in page.inner_text("#ppo-status")
    stopped_at = progress_step(page)
    assert 3 <= stopped_at < 3000
    page.wait_for_function("document.querySelectorAll('#ppo-samples tbody tr').length >= 1")

    open_tab(page, "Inspect")
    page.wait_for_function("document.querySelectorAll('#inspect-tokens span.tok').length >= 1", timeout=30_000)
    assert int(float(page.input_value("#inspect-step input[type=number]"))) == stopped_at  # followed the newest
    page.wait_for_function("document.querySelector('#inspect-heatmap .js-plotly-plot') !== null")
    assert page.evaluate("document.querySelectorAll('script[src*=\"plotly.min.js\"]').length") == 1  # loaded once
    box = page.locator("#inspect-step input[type=number]")
    box.fill("2")
    box.press("Enter")
    page.wait_for_function("""() => { const el = document.querySelector('#inspect-reward-plot .js-plotly-plot');
        return el && el.layout && el.layout.title.text.includes('step 2,'); }""")
    title = page.locator("#inspect-tokens span.tok").first.get_attribute("title")
    assert "A_t =" in title and "KL_t =" in title


def test_logged_script_is_text_in_both_tabs(workspace, page):  # noqa: F811
    ws, policy = workspace
    run = ws / "runs" / "ppo-hostile"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"kind": "ppo", "state": "finished", "step": 1, "total_steps": 1}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "time": time.time(), "objective/score": 0.5}) + "\n")
    rec = {"step": 1, "sample": 0, "prompt": "<i>p</i>", "response": EVIL, "tokens": ["<script>", "window.__pwned = 1",
           "</script>"], "advantage": [0.1, -0.2, 0.3], "reward": [0.0, 0.0, 1.0], "kl": [0.0] * 3,
           "value": [0.0] * 3, "return": [0.1, -0.2, 0.3], "logprob": [-1.0] * 3, "ref_logprob": [-1.0] * 3,
           "kl_coef": 0.1, "score": 1.0, "raw_score": 1.0, "gold": 0.0}
    (run / "tokens.jsonl").write_text(json.dumps(rec) + "\n")
    srv = AppServer(ws, env={"OMP_NUM_THREADS": "1", "RLHF_QUEUE_TARGET": "0"}, args=["--model", str(policy)])
    try:
        page.goto(srv.url)
        open_tab(page, "Inspect")
        page.wait_for_function("document.querySelectorAll('#inspect-tokens span.tok').length === 3")
        texts = page.eval_on_selector_all("#inspect-tokens span.tok", "els => els.map(e => e.textContent)")
        assert texts == ["<script>", "window.__pwned = 1", "</script>"]
        assert EVIL in page.inner_text("#inspect-tokens")  # the header's response, as text
        assert "<i>p</i>" in page.inner_text("#inspect-tokens")
        assert page.eval_on_selector_all("#inspect-tokens script, #inspect-tokens i", "els => els.length") == 0
        open_tab(page, "PPO")
        page.wait_for_function("t => document.querySelector('#ppo-samples').innerText.includes(t)", arg=EVIL)
        assert page.evaluate("window.__pwned") is None
    finally:
        srv.kill()
