"""Handlers of the reward tab: plain values in, plain values (strings, DataFrames, figures) out.

They call core and read run directories; gradio stays in tabs/reward.py. Which run the tab shows
is a directory path, so a run started from the CLI (any directory) is shown the same way.
"""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pandas as pd

from core.config import RewardConfig
from core.models.device import pick_device
from core.models.loading import load_scalar_model, load_tokenizer
from core.models.scoring import score_texts
from core.runtime import jobs
from core.runtime.jobs import JOBS
from core.runtime.runs import list_runs, process_gone, read_metrics, read_status, request_stop, state_of

from . import plots
from .forms import values_to_config
from .progress import progress_bar

RUN_COLUMNS = ["run", "state", "step", "val accuracy", "pairs", "started"]


def default_config(ws) -> RewardConfig:
    """The form's starting values: the workspace's preference store as data when it exists."""
    return RewardConfig(data=str(ws.db_path) if Path(ws.db_path).exists() else "")


# ---------------------------------------------------------------- start / stop
def start(ws, names: list[str], values) -> tuple[str, str]:
    """(message, run path or ''). Every failure becomes a message: the form stays as it was."""
    try:
        cfg = values_to_config(RewardConfig, names, values)
        run = jobs.start_reward(ws.root, cfg)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        return f"**Cannot start:** {e}", ""
    return f"Started reward run `{run.path.name}`.", str(run.path)


def stop(ws, run_path: str) -> str:
    """Stop this app's reward job, or (a CLI run) write the STOP file of the run shown."""
    if JOBS.stop(ws.root, "reward"):
        return "Stop requested; the run stops after the current step."
    if run_path and state_of(read_status(run_path)) == "running":
        request_stop(run_path)
        return f"Stop requested for `{Path(run_path).name}`."
    return "No reward run is running."


# ---------------------------------------------------------------- run listing
def reward_runs(ws) -> list[dict]:
    return list_runs(ws.root, "reward")


def runs_table(ws) -> pd.DataFrame:
    rows = []
    for r in reward_runs(ws):
        acc = r.get("val_accuracy")
        started = r.get("started")
        rows.append({"run": r["name"], "state": state_of(r),
                     "step": f"{r.get('step', 0)}/{r.get('total_steps', '?')}",
                     "val accuracy": None if acc is None else round(acc, 3),
                     "pairs": r.get("pairs_train"),
                     "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else ""})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def run_choices(ws, with_model: bool = False) -> list[tuple[str, str]]:
    """(label, path) for dropdowns, newest first; with_model: only runs that saved a model."""
    out = []
    for r in reward_runs(ws):
        if with_model and not (Path(r["path"]) / "model" / "config.json").exists():
            continue
        out.append((f"{r['name']} ({r.get('state', '?')})", r["path"]))
    return out


def current_run(ws, chosen: str | None) -> str:
    """The run to display: the chosen one, else this app's active reward job, else the newest."""
    return jobs.current_run(ws.root, "reward", chosen)


# ---------------------------------------------------------------- polling
def run_signature(run_path: str) -> str:
    """Changes whenever a file the plots read changes; the timer skips redraws when it does not."""
    if not run_path:
        return ""
    parts = []
    for name in ("status.json", "metrics.jsonl", "val_scores.json"):
        p = Path(run_path) / name
        parts.append(f"{p.stat().st_mtime_ns}:{p.stat().st_size}" if p.exists() else "-")
    # a process that died leaves status.json as it was: its shown state is part of the signature
    return run_path + "|" + "|".join(parts) + "|" + state_of(read_status(run_path))


def status_bar(run_path: str) -> str:
    """The progress bar under the status line (step/total of status.json)."""
    st = read_status(run_path) if run_path else {}
    return progress_bar(st.get("step", 0), st.get("total_steps") or 0, state_of(st) if st else None, "reward-progress")


def status_line(run_path: str) -> str:
    if not run_path:
        return "No reward run yet."
    st = read_status(run_path)
    if not st:
        return f"`{Path(run_path).name}`: no status.json (not a run directory?)"
    step, total = st.get("step", 0), st.get("total_steps") or 0
    parts = [f"**{state_of(st)}**", f"`{Path(run_path).name}`"]
    if total:
        parts.append(f"step {step}/{total} ({100 * step / total:.0f}%)")
    if process_gone(st):
        parts.append(f"its process {st['pid']} exited without finishing; start the run again")
    if st.get("message") and state_of(st) == "running":
        parts.append(st["message"])
    if st.get("pairs_per_s"):
        parts.append(f"{st['pairs_per_s']:.1f} pairs/s")
    if st.get("val_accuracy") is not None:
        parts.append(f"val accuracy {st['val_accuracy']:.3f}")
    if st.get("truncated"):
        parts.append(f"{st['truncated']} responses truncated to max_length")
    if st.get("error"):
        parts.append(f"error: {st['error']}")
    return " · ".join(parts)


def read_val_scores(run_path: str) -> tuple[list[float], list[float]]:
    try:
        data = json.loads((Path(run_path) / "val_scores.json").read_text())
        return list(data.get("chosen", [])), list(data.get("rejected", []))
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return [], []


def figures(run_path: str) -> tuple:
    """(loss, accuracy, margin, histogram) figures of a run directory."""
    df = plots.metrics_frame(read_metrics(run_path) if run_path else [])
    chosen, rejected = read_val_scores(run_path) if run_path else ([], [])
    return (plots.reward_loss_figure(df), plots.reward_accuracy_figure(df), plots.reward_margin_figure(df),
            plots.score_histogram(chosen, rejected))


# ---------------------------------------------------------------- try it
_models: dict[str, tuple] = {}
_models_lock = threading.Lock()


def _reward_model(run_path: str):
    """(model, tokenizer) of a run's model/, cached; reloaded when the files change."""
    model_dir = Path(run_path) / "model"
    if not (model_dir / "config.json").exists():
        raise ValueError(f"{Path(run_path).name} has no saved model yet (it is saved when training finishes)")
    stamp = (model_dir / "config.json").stat().st_mtime_ns
    with _models_lock:
        cached = _models.get(str(model_dir))
        if cached is None or cached[0] != stamp:
            model = load_scalar_model(str(model_dir), pick_device(), trainable=False).eval()
            _models.clear()  # keep one model: the tab compares within a run, rarely across
            _models[str(model_dir)] = cached = (stamp, model, load_tokenizer(str(model_dir)))
    return cached[1], cached[2]


def try_it(run_path: str, prompt: str, response_a: str, response_b: str = "") -> str:
    """Score one response, or compare two: P(A preferred to B) = sigmoid(r_A - r_B)."""
    if not run_path:
        return "Pick a reward run with a saved model."
    if not (response_a or "").strip():
        return "Enter a response to score."
    try:
        model, tok = _reward_model(run_path)
        responses = [response_a] + ([response_b] if (response_b or "").strip() else [])
        scores = score_texts(model, tok, [prompt or ""] * len(responses), responses).tolist()
    except ValueError as e:
        return f"**Cannot score:** {e}"
    mean, std = getattr(model.config, "score_mean", None), getattr(model.config, "score_std", None)

    def fmt(s: float) -> str:
        z = f" (standardised {(s - mean) / std:+.2f})" if mean is not None and std else ""
        return f"{s:+.3f}{z}"

    if len(scores) == 1:
        return f"**Score r(A)** = {fmt(scores[0])}"
    p = 1 / (1 + math.exp(-max(-50.0, min(50.0, scores[0] - scores[1]))))  # no overflow
    return (f"r(A) = {fmt(scores[0])} · r(B) = {fmt(scores[1])}\n\n"
            f"**P(A ≻ B) = σ(r_A − r_B) = {p:.3f}**")
