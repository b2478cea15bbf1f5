"""The child process of a background job: `python -m core.runtime.worker KIND RUN_DIR [--resume]`.

It trains the run directory's config.yaml at a low CPU priority (core/runtime/jobs.py says why)
and records the outcome in status.json, as a CLI run does. It ends with the app that started it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from ..config import PPOConfig, RewardConfig, load_config
from ..ppo.loop import ppo_body
from ..reward.training import train_reward_model
from .jobs import lower_priority
from .runs import Run, run_to_completion


def main(argv: list[str]) -> int:
    """Train the run directory's config.yaml; its outcome goes to status.json."""
    kind, path, resume = argv[0], Path(argv[1]), "--resume" in argv[2:]
    lower_priority()
    if kind == "ppo":
        cfg = load_config(PPOConfig, path / "config.yaml")
        body = lambda r: ppo_body(cfg, r, str(path) if resume else None)  # noqa: E731
    elif kind == "reward":
        cfg = load_config(RewardConfig, path / "config.yaml")
        body = lambda r: train_reward_model(cfg, r)  # noqa: E731
    else:
        print(f"unknown job kind {kind!r}", file=sys.stderr)
        return 2
    run = Run(path, kind)
    threading.Thread(target=_stop_when_orphaned, args=(run, os.getppid()), daemon=True).start()
    state = run_to_completion(run, body, clear_stop=False)
    return 0 if state in ("finished", "stopped") else 1


def _stop_when_orphaned(run: Run, parent: int, every_s: float = 1.0) -> None:
    """A job ends with the app that started it, as a thread in it would: when the parent is gone
    (we were re-parented), ask for a stop, answered within one minibatch with a checkpoint."""
    while not run.should_stop():
        if os.getppid() != parent:
            run.request_stop()
            return
        time.sleep(every_s)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
