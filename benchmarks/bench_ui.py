"""UI responsiveness while PPO trains in the app: Label click and tab switch latency, and the lag
from a step written to metrics.jsonl to the PPO curve showing it.

    .venv/bin/python benchmarks/bench_ui.py [--policy DIR] [--steps N] [--clicks N] [--threads N] [--settle S]

The app runs as a subprocess (tests/browser.py's AppServer) on a temporary workspace holding a
reward run (the policy's weights with a fresh score head: its scores are arbitrary, which is all a
UI benchmark needs) and seeded preference pairs. Headless Chromium drives it:

0. after --settle seconds on the Label tab (default 5; the page loads Plotly while idle), the first
   visit of each tab, which builds its content;
1. baseline: Label clicks and tab switches with nothing training;
2. PPO started from the form; the PPO tab open: for each step, the browser's time when the score
   curve's data first holds it, minus the `time` the trainer wrote in metrics.jsonl;
3. the same Label clicks and tab switches while it trains.

Latencies are measured inside the page (performance.now() from the click until the DOM shows the
result), so Playwright's round trips are not counted. Goals: p95 click and switch < 200 ms, lag < 2 s.
A click is also split, with the Resource Timing API, into: click -> request sent (Gradio's front
end gathering inputs), the request's round trip (the server), and response -> shown (applying
outputs and painting). On 2 cores most of a click is the browser's own work, not the server's.
Prints a table, then one JSON line of figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from browser import AppServer, launch_chromium  # noqa: E402  (tests/browser.py)

from core.config import DEFAULT_MODEL  # noqa: E402

TABS = ["Label", "Reward model", "PPO", "Inspect"]
# an element only the tab shows, to know its content is on screen
# (the tabs mount their content when selected; for PPO, the last of its eight plots)
TAB_PROBE = {"Label": "#label-buttons", "Reward model": "text:Start training", "PPO": "#ppo-dashboard .js-plotly-plot",
             "Inspect": "#inspect-step"}

CLICK_JS = """async () => {
  const info = () => (document.querySelector('#pair-info').innerText.match(/#(\\d+)/) || [])[1];
  const before = info();
  performance.clearResourceTimings();  // the timers' requests would fill the buffer (250 entries)
  const t0 = performance.now();
  document.querySelector('#label-a').click();
  while (info() === before) {
    await new Promise(r => requestAnimationFrame(r));
    if (performance.now() - t0 > 20000) return [-1, 0, 0, 0];
  }
  const total = performance.now() - t0;
  // where the time went: the label request's own timing (Resource Timing API)
  const req = performance.getEntriesByType('resource')
    .filter(e => e.startTime >= t0 && /run\/predict|queue\/join/.test(e.name)).pop();
  if (!req) return [total, -1, -1, -1];
  return [total, req.startTime - t0, req.responseEnd - req.startTime, t0 + total - req.responseEnd];
}"""

SWITCH_JS = """async ([name, probe]) => {
  const tab = [...document.querySelectorAll('button[role=tab]')].find(b => b.innerText.trim() === name);
  const t0 = performance.now();
  tab.click();
  const shown = () => {
    if (probe.startsWith('text:'))
      return [...document.querySelectorAll('button')]
        .some(b => b.innerText.trim() === probe.slice(5) && b.offsetParent !== null);
    const el = document.querySelector(probe);
    return el && el.offsetParent !== null;
  };
  while (!shown()) {
    await new Promise(r => requestAnimationFrame(r));
    if (performance.now() - t0 > 20000) return -1;
  }
  await new Promise(r => requestAnimationFrame(r));  // the frame that paints it
  return performance.now() - t0;
}"""

# Record (wall clock) when each step first appears in the score curve's data.
WATCH_JS = """() => {
  window.__seen = {};
  window.__watch = setInterval(() => {
    const el = document.querySelector('#ppo-dashboard .js-plotly-plot');
    if (!el || !el.data || !el.data.length) return;
    const now = Date.now();
    for (const x of el.data[0].x) if (!(x in window.__seen)) window.__seen[x] = now;
  }, 20);
}"""


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def prepare(root: Path, policy: str, pairs: int) -> Path:
    """A workspace with a reward run (policy weights + fresh score head) and unlabelled pairs."""
    from core.models.loading import load_scalar_model, load_tokenizer
    from core.preferences import PreferenceStore
    ws = root / "ws"
    reward = ws / "runs" / "reward-bench"
    model = load_scalar_model(policy, trainable=False)
    model.save_pretrained(reward / "model", safe_serialization=True)
    load_tokenizer(policy).save_pretrained(reward / "model")
    (reward / "status.json").write_text(json.dumps({"kind": "reward", "state": "finished", "step": 1}))
    store = PreferenceStore(ws / "preferences.db")
    store.add_pairs([(f"prompt {i}", f"first answer {i}", f"second answer {i}") for i in range(pairs)], model="bench")
    store.close()
    return ws


def label_clicks(pg, n: int) -> list[float]:
    open_tab(pg, "Label")
    out = []
    for _ in range(n):
        parts = pg.evaluate(CLICK_JS)  # [total, before the request, request round trip, render after it]
        if parts[0] >= 0:
            out.append(parts)
        time.sleep(0.15)  # a person does not click faster than this
    return out


def tab_switches(pg, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        for name in ("Inspect", "Label", "PPO", "Reward model", "Label"):
            ms = pg.evaluate(SWITCH_JS, [name, TAB_PROBE[name]])
            if ms >= 0:
                out.append(ms)
            time.sleep(0.15)
    return out


def open_tab(pg, name: str) -> None:
    pg.evaluate(SWITCH_JS, [name, TAB_PROBE[name]])


def curve_lag(pg, run: Path, steps: int, timeout: float) -> list[float]:
    """Seconds from each metrics.jsonl row's `time` to the browser seeing that step in the curve."""
    pg.evaluate(WATCH_JS)
    t0 = time.time()
    lags: dict[int, float] = {}
    first = None
    while time.time() - t0 < timeout and len(lags) < steps:
        time.sleep(0.5)
        seen = pg.evaluate("window.__seen")
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        for r in rows:
            s = r["step"]
            if first is None:  # steps drawn before watching started have no honest lag
                first = max([int(float(k)) for k in seen] or [0])
            if s > first and str(s) in seen and s not in lags:
                lags[s] = seen[str(s)] / 1000 - r["time"]
    pg.evaluate("clearInterval(window.__watch)")  # a 20 ms poll left running would slow the next phases
    return [lags[s] for s in sorted(lags)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default=DEFAULT_MODEL, help="policy the PPO run trains (default: the embedded model)")
    ap.add_argument("--steps", type=int, default=20, help="steps to measure the curve lag over")
    ap.add_argument("--clicks", type=int, default=30, help="Label clicks per phase")
    ap.add_argument("--switch-rounds", type=int, default=6, help="rounds of 5 tab switches per phase")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds on the Label tab before the first visit of the others (a person reads the page; "
                         "the page loads Plotly in that idle time)")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP_NUM_THREADS of the app and its training process (0: torch's default, all cores)")
    ap.add_argument("--app-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment variable for the app process (repeatable), for experiments")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]  # the machine's other work colours every figure: reported with them
    root = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    ws = prepare(root, args.policy, pairs=2 * args.clicks + 10)
    extra = dict(kv.split("=", 1) for kv in args.app_env)
    threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    server = AppServer(ws, env={**threads, "RLHF_QUEUE_TARGET": "0", **extra},
                       args=["--model", args.policy])
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            pg = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            pg.set_default_timeout(60_000)
            pg.goto(server.url)
            box = pg.locator("#annotator-name input, #annotator-name textarea").first
            box.fill("bench")
            box.press("Enter")
            pg.wait_for_function("/Pair #\\d+/.test(document.querySelector('#pair-info').innerText)")

            # a tab's content is built on its first visit and kept: time that once, apart
            time.sleep(args.settle)
            first_visit = {name: pg.evaluate(SWITCH_JS, [name, TAB_PROBE[name]]) for name in TABS[1:] + TABS[:1]}
            idle_clicks = label_clicks(pg, args.clicks)
            idle_switch = tab_switches(pg, args.switch_rounds)

            open_tab(pg, "PPO")
            for label, value in (("steps", str(args.steps * 50)), ("batch size", str(args.batch_size)),
                                 ("response length", "16"), ("ppo epochs", "2")):
                pg.locator("#ppo-form").get_by_label(label, exact=True).fill(value)
            pg.locator("#ppo-form").get_by_label("ppo epochs", exact=True).press("Tab")
            time.sleep(0.5)
            pg.click("#ppo-start")
            pg.wait_for_function("document.querySelector('#ppo-status').innerText.includes('running')")
            run = ws / "runs" / pg.inner_text("#ppo-status").split("·")[1].strip()
            pg.wait_for_function("Number(document.querySelector('#ppo-progress').dataset.step) >= 1", timeout=300_000)
            lags = curve_lag(pg, run, args.steps, timeout=args.steps * 30 + 60)

            busy_clicks = label_clicks(pg, args.clicks)
            busy_switch = tab_switches(pg, args.switch_rounds)
            steps_during = json.loads((run / "status.json").read_text())["step"]
            open_tab(pg, "PPO")
            pg.click("#ppo-stop")
            pg.wait_for_function("!document.querySelector('#ppo-status').innerText.includes('running')",
                                 timeout=120_000)
            browser.close()
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)

    idle_parts, busy_parts = idle_clicks, busy_clicks
    idle_clicks, busy_clicks = [c[0] for c in idle_parts], [c[0] for c in busy_parts]
    rows = [("Label click, idle", idle_clicks, "ms"), ("Label click, PPO training", busy_clicks, "ms")]
    for when, parts in (("idle", idle_parts), ("training", busy_parts)):
        rows += [(f"  {what}, {when}", [c[i] for c in parts if c[i] >= 0], "ms")
                 for i, what in ((1, "click -> request"), (2, "request round trip"), (3, "response -> shown"))]
    rows += [("Tab switch, idle", idle_switch, "ms"), ("Tab switch, PPO training", busy_switch, "ms"),
             ("metrics.jsonl -> curve lag", [x * 1000 for x in lags], "ms")]
    print(f"\nUI latency while PPO trains ({args.policy}, batch {args.batch_size}, {steps_during} steps by the end; "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"first visit of each tab (builds its content; {args.settle:g} s after the page opened): " +
          ", ".join(f"{k} {v:.0f} ms" for k, v in first_visit.items()))
    print(f"{'measure':32} {'n':>4} {'p50':>8} {'p95':>8} {'max':>8}")
    for name, xs, unit in rows:
        print(f"{name:32} {len(xs):4d} {percentile(xs, .5):8.0f} {percentile(xs, .95):8.0f} "
              f"{max(xs) if xs else float('nan'):8.0f} {unit}")
    fig = {"label_click_p95_ms": round(percentile(busy_clicks, .95), 1),
           "label_click_idle_p95_ms": round(percentile(idle_clicks, .95), 1),
           "tab_switch_p95_ms": round(percentile(busy_switch, .95), 1),
           "tab_switch_idle_p95_ms": round(percentile(idle_switch, .95), 1),
           "curve_lag_p95_s": round(percentile(lags, .95), 3), "curve_lag_max_s": round(max(lags), 3) if lags else None,
           "lag_steps": len(lags), "clicks": len(busy_clicks), "switches": len(busy_switch),
           "first_visit_ms": {k: round(v) for k, v in first_visit.items()},
           "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count()}
    fig["goal_met"] = bool(fig["label_click_p95_ms"] < 200 and fig["tab_switch_p95_ms"] < 200 and lags
                           and fig["curve_lag_p95_s"] < 2)
    print(json.dumps(fig))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
