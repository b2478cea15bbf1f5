"""build_app() -> gr.Blocks, and main(), which parses the flags and launches it."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from an offline tool

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from core.config import DEFAULT_MODEL  # noqa: E402

from .context import Workspace  # noqa: E402
from .tabs import inspect as inspect_tab, label, ppo, reward  # noqa: E402

CSS = """
.token-view span { padding: 1px 0; border-radius: 3px; font-family: monospace; }
""" + label.CSS


def build_app(ws: Workspace) -> gr.Blocks:
    with gr.Blocks(title="RLHF Workbench") as app:
        gr.Markdown("# RLHF Workbench\n" + ws.header())
        tabs, lives = {}, {}
        with gr.Tabs():
            with gr.Tab("Label", id="label") as tabs["label"]:
                label.build(ws)
            with gr.Tab("Reward model", id="reward") as tabs["reward"]:
                lives["reward"] = reward.build(ws)
            with gr.Tab("PPO", id="ppo") as tabs["ppo"]:
                lives["ppo"] = ppo.build(ws)
            with gr.Tab("Inspect", id="inspect") as tabs["inspect"]:
                lives["inspect"] = inspect_tab.build(ws)
        run_timers_of_selected_tab(tabs, lives)
    return app


# Send the timer switch only after the browser has painted the newly selected tab.
AFTER_PAINT_JS = "() => new Promise(done => requestAnimationFrame(() => setTimeout(() => done([]), 0)))"


def run_timers_of_selected_tab(tabs: dict, lives: dict) -> None:
    """Only the selected tab's refresh timer ticks (the page opens on Label: all start inactive),
    and a tab refreshes the moment it is opened rather than at its timer's first tick, 1 s later.

    Why: every event costs a round of Gradio's front-end bookkeeping even when the server answers
    "nothing new" (6.31 searches the component tree for, and snapshots the value of, every component
    that was ever an output), and three hidden tabs ticking every second put that work in front of
    the Label tab's clicks: turning them off took click p95 while PPO trains from 324 to 184-210 ms
    (bench_ui, 2 cores)."""
    order = list(lives)
    for tab_id, tab in tabs.items():
        opened = tab.select(lambda tab_id=tab_id: [gr.Timer(active=k == tab_id) for k in order], None,
                            [lives[k].timer for k in order], queue=False, show_progress="hidden",
                            js=AFTER_PAINT_JS)
        if tab_id in lives:
            opened.then(**lives[tab_id].refresh)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="rlhf-workbench", description="Start the RLHF Workbench GUI.")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ap.add_argument("--workspace", default="workspace", help="directory for runs and the preference store")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="default policy for sampling pairs")
    ap.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    auth = None
    if args.auth:
        if ":" not in args.auth or args.auth.startswith(":") or args.auth.endswith(":"):
            sys.exit("--auth must be USER:PASS")
        auth = tuple(args.auth.split(":", 1))
    if not is_loopback(args.host) and auth is None:
        sys.exit(f"refusing to bind to {args.host} without --auth USER:PASS: anyone on the network "
                 "could run training jobs and read your data. Add --auth, or bind to 127.0.0.1.")
    # Keep the web server responsive while models run in this process: torch gets all cores but
    # one, and the GIL is handed over more often (default 5 ms) so request threads are not starved.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    sys.setswitchinterval(0.0005)
    ws = Workspace(args.workspace, args.model)
    app = build_app(ws)
    app.queue(default_concurrency_limit=8)
    app.launch(server_name=args.host, server_port=args.port, auth=auth, ssr_mode=False,
               css=CSS, js=label.HOTKEYS_JS, head=ppo.PLOTLY_HEAD, footer_links=[], show_error=True)


if __name__ == "__main__":
    main()
