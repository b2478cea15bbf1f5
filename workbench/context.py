"""The state one app process shares between tabs: the workspace directory and loaded models.

Models load lazily and once (a lock keeps two tabs from loading the same one twice); everything
durable lives on disk under the workspace, so a page reload loses nothing.
"""
from __future__ import annotations

import threading
from pathlib import Path

from core.backends import choose, optimize
from core.config import DEFAULT_MODEL
from core.models.device import describe_device, pick_device
from core.models.loading import load_policy, load_tokenizer


class Workspace:
    def __init__(self, root: str | Path = "workspace", model: str = DEFAULT_MODEL):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "runs").mkdir(exist_ok=True)
        self.model_path = model
        self.device = pick_device()
        self._lock = threading.Lock()
        self._policies: dict[str, tuple] = {}

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def db_path(self) -> Path:
        return self.root / "preferences.db"

    def policy(self, path: str | None = None):
        """(model, tokenizer) for sampling, cached per path; frozen (no grads)."""
        path = path or self.model_path
        with self._lock:
            if path not in self._policies:
                model = load_policy(path, self.device, trainable=False)
                optimize(model, self.device)  # the CPU kernels this machine runs faster ('auto')
                self._policies[path] = (model, load_tokenizer(path))
            return self._policies[path]

    def header(self) -> str:
        return f"**Model** `{Path(self.model_path).name}` · **device** {describe_device(self.device, choose('auto', self.device))} · **workspace** `{self.root}`"
