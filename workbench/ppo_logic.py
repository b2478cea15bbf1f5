"""Handlers of the PPO tab: plain values in, plain values (strings, DataFrames, figures) out.

The page holds no state worth keeping: which run to show is resolved from disk on every tick
(this app's active job, else the newest PPO run under <workspace>/runs, or a directory the user
typed), so a reload, a second browser or a CLI run all show the same thing. The timer is cheap
when nothing changed: `signature` stats three files, and jsonl files are read incrementally.
"""
from __future__ import annotations

import html
import json
import os
import threading
import time
from pathlib import Path

import pandas as pd

from core.config import DEFAULT_PROMPTS, PPOConfig, load_config
from core.ppo.loop import check_config
from core.runtime import jobs
from core.runtime.checkpoint import latest_checkpoint
from core.runtime.jobs import JOBS
from core.runtime.runs import list_runs, process_gone, read_status, request_stop, state_of

from . import hacking, ppo_plots
from .forms import values_to_config, yaml_or_error
from .progress import progress_bar

FORM_EXCLUDE = ("policy", "reward_model", "prompts", "output_dir")  # laid out by hand in tabs/ppo.py
SAMPLE_COLUMNS = ["sample", "prompt", "response", "RM score", "score used", "gold"]
RUN_COLUMNS = ["run", "state", "step", "RM score", "gold", "KL", "started"]


# ---------------------------------------------------------------- incremental jsonl reading
class JsonlTail:
    """The complete lines of a growing jsonl file, reading only bytes added since the last call.

    A file that shrank or whose last-read line changed (resume rewrites metrics.jsonl without the
    steps past its checkpoint) is read again from the start.
    """

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        self.version = 0  # bumped whenever `rows` changes, never reset: caches key on it
        self._reset()

    def _reset(self) -> None:
        self.offset, self.rows, self.key, self.last_line = 0, [], None, b""
        self.version += 1

    def read(self) -> list[dict]:
        with self.lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                if self.rows:
                    self._reset()
                return self.rows
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
            if key == self.key:
                return self.rows
            with open(self.path, "rb") as fh:
                fh.seek(self.offset - len(self.last_line))
                if st.st_size < self.offset or fh.read(len(self.last_line)) != self.last_line:
                    self._reset()
                fh.seek(self.offset)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a half-written last line waits for the next call
            if end:
                lines = data[:end].splitlines()
                # a new list, not an append: callers may still hold the old one
                self.rows = self.rows + [r for r in map(_loads, lines) if r is not None]
                self.offset += end
                self.last_line = lines[-1] + b"\n"
                self.version += 1
            self.key = key
            return self.rows


def _loads(line: bytes) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:
        return None


_tails: dict[str, JsonlTail] = {}
_tails_lock = threading.Lock()
_frames: dict[str, tuple[int, pd.DataFrame]] = {}


def tail(run_path: str, name: str) -> JsonlTail:
    key = str(Path(run_path, name))
    with _tails_lock:
        if key not in _tails:
            _tails[key] = JsonlTail(Path(key))
        return _tails[key]


def metrics_df(run_path: str) -> pd.DataFrame:
    """metrics.jsonl as a DataFrame, rebuilt only when new lines arrived."""
    if not run_path:
        return ppo_plots.metrics_frame([])
    t = tail(run_path, "metrics.jsonl")
    rows = t.read()
    cached = _frames.get(run_path)
    if cached is None or cached[0] != t.version:
        cached = (t.version, ppo_plots.metrics_frame(rows))
        _frames[run_path] = cached
    return cached[1]


_by_step: dict[str, tuple[int, dict]] = {}


def _token_index(run_path: str) -> dict[int, list[dict]]:
    """tokens.jsonl records grouped by step (sorted by sample), rebuilt only when lines arrive."""
    if not run_path:
        return {}
    t = tail(run_path, "tokens.jsonl")
    rows = t.read()
    cached = _by_step.get(run_path)
    if cached is None or cached[0] != t.version:
        index: dict[int, list[dict]] = {}
        for r in rows:
            if r.get("step") is not None:
                index.setdefault(int(r["step"]), []).append(r)
        for recs in index.values():
            recs.sort(key=lambda r: r.get("sample", 0))
        cached = _by_step[run_path] = (t.version, dict(sorted(index.items())))
    return cached[1]


def step_records(run_path: str, step: int | None) -> list[dict]:
    """The tokens.jsonl records of one step (the newest step when `step` is None)."""
    index = _token_index(run_path)
    if not index:
        return []
    return index.get(max(index) if step is None else int(step), [])


def token_steps(run_path: str) -> list[int]:
    return list(_token_index(run_path))


# ---------------------------------------------------------------- choices for the form
def ppo_runs(ws) -> list[dict]:
    return list_runs(ws.root, "ppo")


def reward_model_choices(ws) -> list[tuple[str, str]]:
    """(label, model dir) of reward runs that saved a model, newest first."""
    out = []
    for r in list_runs(ws.root, "reward"):
        model = Path(r["path"]) / "model"
        if (model / "config.json").exists():
            acc = r.get("val_accuracy")
            out.append((f"{r['name']}" + (f" (val acc {acc:.2f})" if acc is not None else ""), str(model)))
    return out


def policy_choices(ws) -> list[tuple[str, str]]:
    """The embedded (app default) model, then the final policies of past PPO runs."""
    out = [(f"{Path(ws.model_path).name} (default)", str(ws.model_path))]
    for r in ppo_runs(ws):
        if (Path(r["path"]) / "model" / "config.json").exists():
            out.append((f"{r['name']} final policy", str(Path(r["path"]) / "model")))
    return out


def resumable_choices(ws) -> list[tuple[str, str]]:
    """Stopped, failed, interrupted or finished PPO runs that have a checkpoint and a config to continue from."""
    out = []
    for r in ppo_runs(ws):
        r["state"] = state_of(r)
        if r["state"] in ("stopped", "failed", "interrupted", "finished") and (Path(r["path"]) / "config.yaml").exists():
            ckpt = latest_checkpoint(r["path"])
            if ckpt is not None:
                out.append((f"{r['name']} ({r['state']} at step {r.get('step', '?')}, checkpoint {ckpt.name})",
                            r["path"]))
    return out


def exists(path: str | None) -> bool:
    return bool(path) and Path(path).exists()


def run_choices(ws) -> list[tuple[str, str]]:
    return [(f"{r['name']} ({state_of(r)}, step {r.get('step', 0)})", r["path"]) for r in ppo_runs(ws)]


def default_config(ws) -> PPOConfig:
    rms = reward_model_choices(ws)
    return PPOConfig(policy=str(ws.model_path), reward_model=rms[0][1] if rms else "", prompts=DEFAULT_PROMPTS)


# ---------------------------------------------------------------- start / stop / resume
def form_names(names: list[str]) -> list[str]:
    return ["policy", "reward_model", "prompts", *names]


def config_yaml(names: list[str], values) -> str:
    return yaml_or_error(PPOConfig, form_names(names), values)


def start(ws, names: list[str], values) -> tuple[bool, str, str]:
    """(ok, message, run path). `values` are policy, reward model, prompts, then the form's fields."""
    try:
        cfg = values_to_config(PPOConfig, form_names(names), values)
        cfg.output_dir = ""  # GUI runs live under <workspace>/runs, where every view finds them
        check_config(cfg)
        run = jobs.start_ppo(ws.root, cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # RuntimeError: a run is already going (JOBS)
        return False, f"Cannot start: {e}", ""
    return True, f"Started PPO run `{run.path.name}`.", str(run.path)


def resume(ws, run_path: str, add_steps=0) -> tuple[bool, str, str]:
    """Continue a stopped, failed or finished run from its latest checkpoint, with its own
    config.yaml; `add_steps` raises its step count (how a finished run goes on)."""
    if not run_path:
        return False, "Pick a run with a checkpoint to resume.", ""
    try:
        add = int(add_steps or 0)
        if add < 0:
            raise ValueError("more steps must be 0 or a positive number")
        if latest_checkpoint(run_path) is None:
            raise ValueError(f"{Path(run_path).name} has no checkpoint to resume from")
        cfg = load_config(PPOConfig, Path(run_path) / "config.yaml")
        cfg.steps += add
        if read_status(run_path).get("step", 0) >= cfg.steps:
            raise ValueError(f"{Path(run_path).name} already reached its {cfg.steps} steps: "
                             "set 'more steps' to continue it")
        check_config(cfg)
        run = jobs.start_ppo(ws.root, cfg, resume=run_path)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        return False, f"Cannot resume: {e}", ""
    return (True, f"Resumed `{run.path.name}` from {latest_checkpoint(run_path).name}, "
                  f"to step {cfg.steps}.", str(run.path))


def stop(ws, run_path: str) -> str:
    """Stop this app's PPO job, or write the STOP file of the run shown (a CLI run)."""
    if JOBS.stop(ws.root, "ppo"):
        return "Stop requested: the run stops within the current step and keeps a checkpoint."
    if run_path and state_of(read_status(run_path)) == "running":
        request_stop(run_path)
        return f"Stop requested for `{Path(run_path).name}`."
    return "No PPO run is running."


# ---------------------------------------------------------------- what to show
def current_run(ws, chosen: str | None) -> str:
    """The chosen run directory, else this app's active PPO job, else the newest PPO run."""
    return jobs.current_run(ws.root, "ppo", chosen)


def _stamp(p: Path) -> str:
    try:
        st = os.stat(p)
        return f"{st.st_mtime_ns}:{st.st_size}"
    except FileNotFoundError:
        return "-"


def signature(run_path: str) -> dict:
    """One stat per file; a part that did not change lets the tick skip that part's redraw."""
    p = Path(run_path) if run_path else None
    return {"path": run_path,  # a process that died leaves status.json as it was: its state is part of it
            "status": f"{_stamp(p / 'status.json')}:{state_of(read_status(p))}" if p else "",
            "metrics": _stamp(p / "metrics.jsonl") if p else "",
            "tokens": _stamp(p / "tokens.jsonl") if p else ""}


def runs_signature(ws) -> str:
    """Changes when a run appears, changes state or saves a model (the dropdowns' choices)."""
    parts = []
    for r in list_runs(ws.root):
        parts.append(f"{r['name']}:{state_of(r)}:{(Path(r['path']) / 'model').exists()}")
    return "|".join(parts)


def status_line(run_path: str) -> str:
    """One line of plain text: state, run, step/total, speed, error."""
    if not run_path:
        return "No PPO run yet: pick a reward model and press Start."
    st = read_status(run_path)
    if not st:
        return f"{run_path}: no status.json (not a run directory?)"
    step, total = st.get("step", 0), st.get("total_steps") or 0
    parts = [state_of(st), Path(run_path).name, f"step {step}/{total or '?'}"]
    if process_gone(st):
        parts.append(f"its process {st['pid']} has exited without finishing; resume it from its last checkpoint")
    df = metrics_df(run_path)
    if not df.empty and "eps" in df.columns and df["eps"].notna().any():
        parts.append(f"{df['eps'].dropna().iloc[-1]:.1f} episodes/s")
    if parts[0] == "running" and step == 0:
        parts.append("loading models…")
    if st.get("error"):
        parts.append(f"error: {st['error']}")
    return " · ".join(parts)


def status_html(run_path: str) -> str:
    """The status line and a progress bar (step/total of status.json), escaped. data-step on the bar
    is the newest step the curves were drawn with (tests and the benchmark read it)."""
    st = read_status(run_path) if run_path else {}
    step, total = int(st.get("step") or 0), int(st.get("total_steps") or 0)
    df = metrics_df(run_path)
    plotted = int(df["step"].max()) if not df.empty and df["step"].notna().any() else 0
    line = html.escape(status_line(run_path))
    if st.get("state"):  # the state in bold, as the first word
        head, _, rest = line.partition(" · ")
        line = f"<b>{head}</b> · {rest}"
    return (f'<div style="margin:4px 0 6px">{line}</div>'
            + progress_bar(step, total, st.get("state"), "ppo-progress", data_step=plotted))


_dashboards: dict[str, tuple[int, object, str]] = {}


def _dashboard(run_path: str) -> tuple:
    """(version, figure, its JSON), built once per new metrics line however many pages watch."""
    version = tail(run_path, "metrics.jsonl").version if run_path else -1
    cached = _dashboards.get(run_path)
    if cached is None or cached[0] != version:
        fig = ppo_plots.dashboard_figure(metrics_df(run_path))
        cached = _dashboards[run_path] = (version, fig, fig.to_json())
    return cached


def dashboard(run_path: str):
    """The run's curves as one plotly figure of subplots."""
    return _dashboard(run_path)[1]


def dashboard_json(run_path: str) -> str:
    return _dashboard(run_path)[2]


def hacking_message(run_path: str) -> str:
    df = metrics_df(run_path)
    if df.empty:
        return ""
    if "objective/gold" not in df.columns or not df["objective/gold"].notna().any():
        return "No gold judge in this run (gold_judge: null), so over-optimisation cannot be checked."
    col = lambda c: df[c].tolist() if c in df.columns else [None] * len(df)  # noqa: E731
    verdict = hacking.detect(col("step"), col("objective/score"), col("objective/gold"), col("objective/kl"))
    return ("⚠️ " if verdict.hacking else "") + verdict.message


def samples_table(run_path: str) -> pd.DataFrame:
    """The newest step's logged samples with their RM score, the score PPO used and gold."""
    rows = [{"sample": r.get("sample"), "prompt": r.get("prompt"), "response": r.get("response"),
             "RM score": _round(r.get("raw_score")), "score used": _round(r.get("score")),
             "gold": _round(r.get("gold"))}
            for r in step_records(run_path, None)]
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def samples_html(run_path: str) -> str:
    """samples_table as an escaped HTML table: model text is shown as text, never markup, and a
    plain table costs the browser far less to redraw every step than an interactive grid."""
    df = samples_table(run_path)
    recs = step_records(run_path, None)
    caption = f"Sample responses of step {recs[0]['step']}" if recs else "Sample responses (none yet)"
    cell = lambda v: "–" if v is None or (isinstance(v, float) and v != v) else html.escape(str(v))  # noqa: E731
    head = "".join(f'<th style="text-align:left">{html.escape(c)}</th>' for c in df.columns)
    body = "".join("<tr>" + "".join(f'<td style="white-space:pre-wrap">{cell(v)}</td>' for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return (f'<div style="font-weight:600;margin:6px 0">{html.escape(caption)}</div>'
            f'<table class="ppo-samples" style="width:100%;border-collapse:collapse;font-size:14px">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _round(v, nd: int = 3):
    return None if v is None else round(float(v), nd)


def runs_table(ws) -> pd.DataFrame:
    rows = []
    for r in ppo_runs(ws):
        df = metrics_df(r["path"])
        last = {} if df.empty else df.iloc[-1].to_dict()
        started = r.get("started")
        rows.append({"run": r["name"], "state": state_of(r),
                     "step": f"{r.get('step', 0)}/{r.get('total_steps', '?')}",
                     "RM score": _round(last.get("objective/score")), "gold": _round(last.get("objective/gold")),
                     "KL": _round(last.get("objective/kl")),
                     "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else ""})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)
