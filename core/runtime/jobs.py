"""Background training jobs for the GUI: one child process per job, at a lower CPU priority.

Why a process and not a thread: a training step holds the GIL for much of its Python work and
keeps every core busy, so a job thread inside the app made each label click and tab switch wait
behind it (p95 0.4-0.8 s on 2 cores). A child process at `nice` NICE leaves the app's event loop
first in line for the CPU, and the job still gets every idle cycle.

`nice` alone is not enough where the kernel groups tasks by session (CONFIG_SCHED_AUTOGROUP, on
by default in most distributions): CFS first shares the CPU fairly between session groups, and
nice only orders tasks inside a group. The browser showing the app usually sits in another session,
so a job at nice 15 still took half the cores from it, and a Label click spent 0.3-0.5 s in
Chromium's own rendering (bench_ui's breakdown). So the job starts its own session and sets that
group's nice to AUTOGROUP_NICE as well (sched(7), "The autogroup feature").

The run directory is the whole interface (docs/architecture.md, "The run directory"): the parent
writes config.yaml and starts `python -m core.runtime.worker KIND RUN_DIR [--resume]`; the child
trains through `run_to_completion`, so status.json, metrics.jsonl and error.log are written exactly
as a CLI run writes them; stop is the STOP file, which the trainers check between phases and
minibatches. The child's stdout and stderr go to RUN_DIR/job.log. This module is the parent's
side and never imports a trainer; core/runtime/worker.py is the child's.
"""
from __future__ import annotations

import os
import dataclasses
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from ..config import PPOConfig, RewardConfig, save_config
from .runs import Run, list_runs, new_run_dir, process_gone, read_status, request_stop

NICE = 15  # weight 36 against the app's 1024 under CFS: the app wins every contended slice
AUTOGROUP_NICE = 19  # the job's session group: weight 15 against 1024 for every other session
# OpenMP workers spin this many iterations at a barrier before they sleep (libgomp's default is
# 300000); a GUI job shares the cores with the browser, where a spinning worker helps nobody.
# Alone the job is as fast: 1.53 vs 1.47 steps/s at the default (OMP_WAIT_POLICY=PASSIVE: 1.01;
# `python -m core.cli ppo steps=2000 batch_size=8 response_length=16 ppo_epochs=2`, 55 s each).
# Beside Chromium, `benchmarks/bench_ui.py --clicks 100` gave Label click p95 180 ms and 39 steps,
# against 186 ms and 37 steps at the default (`--app-env GOMP_SPINCOUNT=300000` sets it): within noise,
# one run each. The user's own setting wins.
GOMP_SPINCOUNT = "10000"
KINDS = ("ppo", "reward")
ROOT = Path(__file__).resolve().parents[2]  # so `-m core.runtime.worker` imports this very tree


@dataclass
class Job:
    kind: str
    path: Path
    proc: subprocess.Popen

    def alive(self) -> bool:
        return self.proc.poll() is None


class Jobs:
    """The training processes this app started; at most one per kind per workspace."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], Job] = {}

    @staticmethod
    def _key(workspace, kind: str) -> tuple[str, str]:
        return str(Path(workspace).resolve()), kind

    def start(self, workspace: str | Path, kind: str, cfg, path: str | Path, resume: bool = False) -> Job:
        """Write cfg to path/config.yaml and train it in a child process. RuntimeError when this
        workspace already runs a job of this kind."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        path = Path(path)
        with self._lock:
            cur = self._jobs.get(self._key(workspace, kind))
            if cur and cur.alive():
                raise RuntimeError(f"a {kind} run is already running in this workspace: {cur.path.name}. "
                                   "Stop it first.")
            other = running_elsewhere(workspace, kind, path)
            if other:  # a CLI run, or another app on the same workspace
                raise RuntimeError(f"a {kind} run is already running in this workspace: {other['name']} "
                                   f"(process {other['pid']}). Stop it first.")
            path.mkdir(parents=True, exist_ok=True)
            (path / "STOP").unlink(missing_ok=True)
            save_config(cfg, path / "config.yaml")
            cmd = [sys.executable, "-m", "core.runtime.worker", kind, str(path)] + (["--resume"] if resume else [])
            env = {"GOMP_SPINCOUNT": GOMP_SPINCOUNT, **os.environ,
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            with open(path / "job.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)  # its own scheduling group
            # Visible at once, with the child's pid so readers can tell a dead job from a live one.
            Run(path, kind).set_status(state="running", step=read_status(path).get("step", 0), pid=proc.pid)
            job = self._jobs[self._key(workspace, kind)] = Job(kind, path, proc)
        return job

    def active(self, workspace: str | Path, kind: str) -> Job | None:
        job = self._jobs.get(self._key(workspace, kind))
        return job if job and job.alive() else None

    def stop(self, workspace: str | Path, kind: str) -> bool:
        job = self.active(workspace, kind)
        if job:
            request_stop(job.path)
        return job is not None

    def wait(self, workspace: str | Path, kind: str, timeout: float | None = None) -> None:
        job = self._jobs.get(self._key(workspace, kind))
        if job:
            try:
                job.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass


JOBS = Jobs()


def running_elsewhere(workspace: str | Path, kind: str, besides: Path | None = None) -> dict | None:
    """A run of `kind` under the workspace whose status says running and whose process is alive."""
    for r in list_runs(workspace, kind):
        if (r.get("state") == "running" and isinstance(r.get("pid"), int) and not process_gone(r)
                and (besides is None or Path(r["path"]).resolve() != Path(besides).resolve())):
            return r
    return None


def current_run(workspace: str | Path, kind: str, chosen: str | None = None) -> str:
    """The run a view shows: the chosen directory, else this app's active job of `kind`, else
    the newest run of that kind in the workspace ('' when there is none)."""
    if chosen:
        return chosen
    active = JOBS.active(workspace, kind)
    if active is not None:
        return str(active.path)
    runs = list_runs(workspace, kind)
    return runs[0]["path"] if runs else ""


def lower_priority() -> None:
    """nice NICE, and AUTOGROUP_NICE for this process's session group when it leads that session
    (never the app's group: that would slow the app). Silently less where the OS has no autogroups."""
    os.nice(NICE)
    if os.getsid(0) == os.getpid():
        try:
            Path("/proc/self/autogroup").write_text(str(AUTOGROUP_NICE))
        except OSError:  # no autogroup support (or not Linux): nice alone still orders the app first
            pass


def start_ppo(workspace: str | Path, cfg: PPOConfig, resume: str | None = None) -> Job:
    """A PPO run in a background process. `resume`: the run directory to continue (it keeps its
    id and its config). The caller checks the config first (core.ppo.loop.check_config)."""
    path = Path(resume) if resume else Path(cfg.output_dir or new_run_dir(workspace, "ppo"))
    cfg.output_dir = str(path)
    return JOBS.start(workspace, "ppo", cfg, path, resume=resume is not None)


def start_reward(workspace: str | Path, cfg: RewardConfig) -> Job:
    """Check the config (ValueError at once, before any process starts), then train a reward
    model in a background process. RuntimeError when one is already running in this workspace."""
    from ..reward.preflight import preflight
    active = JOBS.active(workspace, "reward")
    if active is not None:
        raise RuntimeError(f"a reward run is already running: {active.path.name}. Stop it first.")
    cfg = dataclasses.replace(cfg, output_dir=cfg.output_dir or str(new_run_dir(workspace, "reward")))
    preflight(cfg)
    return JOBS.start(workspace, "reward", cfg, cfg.output_dir)
