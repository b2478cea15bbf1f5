"""Prompt files: one prompt per line, read for PPO's rollouts and the Label tab's pairs."""
from __future__ import annotations

from pathlib import Path

import torch


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a prompt file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"prompt file {p} does not exist")
    prompts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts (one per line)")
    return prompts


def prompt_batch(prompts: list[str], step: int, batch_size: int, seed: int) -> list[str]:
    """The global batch for a step: consecutive slices of seeded shuffles, one shuffle per pass."""
    out, i = [], step * batch_size
    while len(out) < batch_size:
        epoch, pos = divmod(i, len(prompts))
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        take = min(batch_size - len(out), len(prompts) - pos)
        out += [prompts[j] for j in order[pos:pos + take].tolist()]
        i += take
    return out
