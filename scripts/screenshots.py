"""Regenerate the README screenshots (docs/screenshots/<tab>.png) from the running app.

    .venv/bin/python scripts/screenshots.py                      # demo workspace, app started here
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:7860/   # an app already running

Without --url it prepares a demo workspace (default: workspace/screenshots-demo, reused) so
every tab has something to show: pairs sampled from the policy, most of them labelled by the
simulated annotator; a reward model trained on them; a short PPO run against it. Then it starts
the app on that workspace and photographs each tab in headless Chromium.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from core.config import DEFAULT_MODEL, DEFAULT_PROMPTS  # noqa: E402

TABS = [("Label", "label"), ("Reward model", "reward"), ("PPO", "ppo"), ("Inspect", "inspect")]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def model_stamp(policy: str) -> str:
    """Identifies the policy's weights, so a demo made with an older model is rebuilt."""
    files = sorted(Path(policy).glob("*.safetensors"))
    return f"{Path(policy).resolve()}:" + ",".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def prepare(ws: Path, policy: str, pairs: int, ppo_steps: int) -> None:
    """Fill a demo workspace; each part is skipped when it is already there (for the same model)."""
    import json
    import shutil
    from core.config import PPOConfig, RewardConfig
    from core.models.generation import GenerationConfig
    from core.models.loading import load_policy, load_tokenizer
    from core.data.prompts import read_prompts, run_ppo
    from core.preferences import PreferenceStore, SentimentAnnotator, sample_pairs
    from core.reward.training import train_reward_model
    from core.runtime.runs import read_status

    marker = ws / "demo.json"
    if ws.exists() and (not marker.exists() or json.loads(marker.read_text()).get("model") != model_stamp(policy)):
        if not marker.exists() and any(ws.iterdir()):
            raise SystemExit(f"{ws} is not a demo workspace made by this script; pick another --workspace")
        log(f"{ws} was made with another model: rebuilding it")
        shutil.rmtree(ws)
    (ws / "runs").mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"model": model_stamp(policy)}))
    db = ws / "preferences.db"
    if not db.exists():
        log(f"sampling {pairs} pairs from {policy}")
        model, tok = load_policy(policy, trainable=False), load_tokenizer(policy)
        triples = sample_pairs(model, tok, read_prompts(DEFAULT_PROMPTS), pairs, GenerationConfig(max_new_tokens=24),
                               seed=0)
        with PreferenceStore(db) as store:
            store.add_pairs(triples, model=policy)
            SentimentAnnotator(seed=0).auto_label(store, pairs - 12)  # a few stay unlabelled for the Label tab
    reward = ws / "runs" / "reward-demo"
    if read_status(reward).get("state") != "finished":
        log("training the reward model")
        shutil.rmtree(reward, ignore_errors=True)  # an unfinished attempt would leave mixed records
        train_reward_model(RewardConfig(base_model=policy, data=str(db), epochs=2, batch_size=16,
                                        output_dir=str(reward), eval_every=5))
    ppo = ws / "runs" / "ppo-demo"
    if read_status(ppo).get("state") != "finished":
        log(f"running PPO for {ppo_steps} steps")
        shutil.rmtree(ppo, ignore_errors=True)
        run_ppo(PPOConfig(policy=policy, reward_model=str(reward / "model"), steps=ppo_steps, batch_size=16,
                          response_length=24, ppo_epochs=2, learning_rate=5e-5, save_every=ppo_steps,
                          output_dir=str(ppo)))


def shoot(url: str, out: Path, width: int = 1400) -> list[Path]:
    """One full-page PNG per tab; waits for each tab's content (plots drawn) before shooting."""
    from browser import launch_chromium
    from playwright.sync_api import sync_playwright
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_context(viewport={"width": width, "height": 1000}, device_scale_factor=1).new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        name_label_tab(page)
        for name, slug in TABS:
            page.get_by_role("tab", name=name, exact=True).click()
            if slug == "label":
                name_label_tab(page)
            if slug == "ppo":
                page.wait_for_function("document.querySelector('#ppo-dashboard .js-plotly-plot')?.data?.length > 0")
            if slug == "inspect":
                page.wait_for_function("document.querySelectorAll('#inspect-tokens span.tok').length > 0")
                page.click("#inspect-compare")
                page.wait_for_function("/mean RM score|Cannot compare/.test(document.body.innerText)")
            page.wait_for_timeout(2500)  # plotly's resize and the last timer tick settle
            path = out / f"{slug}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)
            log(f"saved {path}")
        browser.close()
    return saved


def name_label_tab(page, name: str = "demo") -> None:
    """Type an annotator name, so the Label tab shows a pair; after the page's load handlers ran
    (they fill the box from the browser's storage and would overwrite an early entry)."""
    box = page.locator("#annotator-name input, #annotator-name textarea").first
    if not box.count() or box.input_value() == name:
        return
    page.wait_for_function("(document.querySelector('#pair-info')?.innerText || '').trim().length > 0")
    box.fill(name)
    box.press("Enter")
    page.wait_for_function("/Pair #\\d+/.test(document.querySelector('#pair-info')?.innerText || '')")
    page.mouse.click(5, 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="photograph this running app instead of starting one")
    ap.add_argument("--workspace", default=str(REPO / "workspace" / "screenshots-demo"),
                    help="demo workspace, made if missing (under the git-ignored workspace/)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="policy for the demo (default: the embedded model)")
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--ppo-steps", type=int, default=40)
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    args = ap.parse_args()
    if args.url:
        shoot(args.url, Path(args.out))
        return
    from browser import AppServer
    ws = Path(args.workspace).resolve()
    prepare(ws, args.model, args.pairs, args.ppo_steps)
    log("starting the app")
    server = AppServer(ws, env={"RLHF_QUEUE_TARGET": "0"}, args=["--model", args.model])
    try:
        shoot(server.url, Path(args.out))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
