"""Reusable pieces for browser tests: the app in a subprocess and a Chromium page through Playwright.

Use from a test module (pytest puts tests/ on sys.path):
    from browser import AppServer, app_server, browser, page   # noqa: F401  (fixtures)

- `AppServer(workspace, env=...)` starts `python -m workbench.app` on a free port, waits for HTTP
  200 and can be killed (SIGKILL, like a crash) or stopped; the benchmark uses it too.
- `app_server` fixture: a factory, app_server(workspace, **env) -> AppServer; every server started
  through it is killed at the end of the test.
- `browser` (per session) and `page` (per test) drive Debian's Chromium: Playwright cannot fetch
  its own browser here (`make chromium` installs /usr/bin/chromium).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python -m workbench.app --port <free> --workspace <dir>` as a child process.

    env: extra environment variables (e.g. RLHF_QUEUE_TARGET="0" keeps the pair filler off, so a
    test sees only the pairs it seeded and the CPU stays quiet).
    """

    def __init__(self, workspace: str | Path, env: dict[str, str] | None = None, timeout: float = 120.0,
                 args: list[str] | None = None):
        self.workspace = Path(workspace)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.workspace.parent / f"app-{self.port}.log"
        self.workspace.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.app", "--port", str(self.port), "--workspace", str(self.workspace),
             *(args or [])], cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.kill()
        raise TimeoutError(f"app not up after {timeout:.0f}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or power cut."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


@pytest.fixture
def app_server():
    servers: list[AppServer] = []

    def start(workspace, **env) -> AppServer:
        server = AppServer(workspace, env={k: str(v) for k, v in env.items()})
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture(scope="module")  # per module: a second live sync_playwright in one process is refused
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: run `make chromium`")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()
