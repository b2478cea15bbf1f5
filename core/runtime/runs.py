"""Run directories (docs/architecture.md, "The run directory": a contract).

A trainer gets a `Run`: it appends metrics and token records, updates status.json and asks
`run.should_stop()` between phases and minibatches. The GUI and the CLI both go through here,
and the GUI reads only the files, so a CLI run (even under `accelerate launch`) shows up the same.
Stop is a flag in memory plus a STOP file, so any process can stop any run.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

STATES = ("running", "stopped", "finished", "failed")


class StopRequested(Exception):
    """Raised inside a trainer to unwind cleanly when a stop was asked for."""


def _clean(x):
    """JSON has no NaN/Inf; write them as null so every reader can parse every line."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_clean(data), indent=1))
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """Every complete line; a half-written last line (a writer mid-append) is skipped."""
    if not path.exists():
        return []
    rows = []
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class Run:
    """The writer side of one run directory. `is_main` is False on non-zero accelerate ranks,
    which then write nothing."""

    def __init__(self, path: str | Path, kind: str, is_main: bool = True):
        self.path, self.kind, self.is_main = Path(path), kind, is_main
        self._stop = threading.Event()
        self._status = {"kind": kind, "state": "running", "step": 0, "error": None}
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    # -- records
    def log_metrics(self, step: int, metrics: dict) -> None:
        if self.is_main:
            row = {"step": step, "time": time.time(), **metrics}
            with open(self.path / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(_clean(row)) + "\n")

    def log_tokens(self, records: list[dict]) -> None:
        if self.is_main and records:
            with open(self.path / "tokens.jsonl", "a") as fh:
                fh.write("".join(json.dumps(_clean(r)) + "\n" for r in records))

    def set_status(self, **fields) -> None:
        self._status.update(fields, updated=time.time())
        if self.is_main:
            write_json_atomic(self.path / "status.json", self._status)

    # -- stopping
    def request_stop(self) -> None:
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set() or (self.path / "STOP").exists()

    def check_stop(self) -> None:
        if self.should_stop():
            raise StopRequested()


def run_to_completion(run: Run, body: Callable[[Run], None], clear_stop: bool = True) -> str:
    """Run `body(run)` and leave status.json in a final state: finished, stopped or failed.

    A failure keeps its message in status.json and the traceback in error.log. `clear_stop=False`
    when the starter already cleared STOP (core.runtime.jobs), so a stop asked for while the process was
    still importing is kept.
    """
    if run.is_main and clear_stop:
        (run.path / "STOP").unlink(missing_ok=True)  # a stale STOP from an earlier stop must not end a resume
    run.set_status(state="running", error=None, pid=os.getpid(), started=time.time())
    try:
        body(run)
        run.set_status(state="stopped" if run.should_stop() else "finished")
    except StopRequested:
        run.set_status(state="stopped")
    except KeyboardInterrupt:
        run.set_status(state="stopped", error="interrupted")
        raise
    except Exception as e:  # noqa: BLE001 - the run's record must say what went wrong
        run.set_status(state="failed", error=f"{type(e).__name__}: {e}")
        if run.is_main:
            (run.path / "error.log").write_text(traceback.format_exc())
    return run._status["state"]


def new_run_dir(workspace: str | Path, kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(workspace) / "runs" / f"{kind}-{stamp}-{secrets.token_hex(2)}"


# ---------------------------------------------------------------- readers (GUI, tests, CLI)
def read_status(path: str | Path) -> dict:
    p = Path(path) / "status.json"
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def read_metrics(path: str | Path) -> list[dict]:
    return read_jsonl(Path(path) / "metrics.jsonl")


def read_tokens(path: str | Path, step: int | None = None) -> list[dict]:
    rows = read_jsonl(Path(path) / "tokens.jsonl")
    return rows if step is None else [r for r in rows if r.get("step") == step]


def list_runs(workspace: str | Path, kind: str | None = None) -> list[dict]:
    """Run directories under <workspace>/runs, newest first, each with its status."""
    root = Path(workspace) / "runs"
    out = []
    for d in sorted(root.glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True) if root.exists() else []:
        st = read_status(d)
        if st and (kind is None or st.get("kind") == kind):
            out.append({"path": str(d), "name": d.name, **st})
    return out


def process_gone(st: dict) -> bool:
    """A "running" status whose process no longer exists on this machine (killed, crashed, app
    restarted): it will never finish, so readers show it as interrupted and it can be resumed."""
    pid = st.get("pid")
    if st.get("state") != "running" or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    try:  # a child that died before its parent reaped it is a zombie: gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def state_of(st: dict) -> str:
    """The state a reader shows: status.json's, except "interrupted" for a "running" run whose
    process is gone (see process_gone)."""
    return "interrupted" if process_gone(st) else st.get("state", "?")


def request_stop(path: str | Path) -> None:
    """Ask any run to stop, whichever process runs it."""
    Path(path, "STOP").touch()
