"""The policy's and the critic's work side by side on a CPU: two threads, each with half the cores.

Why: on a small model a PPO update is a stream of small operators (layer norms, GELU, attention
over 25-token rows, index gathers, optimizer loops) between matmuls. Run one after the other,
each with every core, the cores spend much of each operator waiting at its fork/join barrier,
and the Python between operators runs on one core while the others idle. The policy's and the
critic's forward, backward and optimizer step share no tensor that either writes, so they can
run at once, each with half the cores per operator. On the 2-core benchmark machine that made
the update 9-13% faster (per-step and update-only A/B runs in one process; session 10's note).

Torch keeps grad mode per thread, so the background job runs under the caller's grad mode.
Collectives (several processes) stay on the calling thread, in the same order on every process:
callers run them before or after a pair, never inside the background job.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

A = TypeVar("A")
B = TypeVar("B")
_pool: ThreadPoolExecutor | None = None


def worthwhile(device: torch.device | str) -> bool:
    """Overlap pays on a CPU with at least two intra-op threads (a GPU runs its kernels async)."""
    return torch.device(device).type == "cpu" and torch.get_num_threads() >= 2


def pair(background: Callable[[], A], foreground: Callable[[], B], overlap: bool) -> tuple[A, B]:
    """(background(), foreground()). With `overlap`, background runs on a worker thread while
    foreground runs here, each with half the intra-op threads; else foreground first, then
    background (so the two autograd graphs never live at once). An exception from either is
    raised after both have finished (foreground's first)."""
    if not overlap:
        fg = foreground()
        return background(), fg
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(1, thread_name_prefix="overlap")
    threads = torch.get_num_threads()
    half = max(1, threads // 2)
    grad = torch.is_grad_enabled()

    def job():
        torch.set_num_threads(half)  # per thread in OpenMP: set in the worker too
        with torch.set_grad_enabled(grad):
            return background()

    torch.set_num_threads(half)
    try:
        fut = _pool.submit(job)
        try:
            fg = foreground()
        finally:
            bg_error = fut.exception()  # waits; an error here yields to foreground's own
        if bg_error is not None:
            raise bg_error
        return fut.result(), fg
    finally:
        torch.set_num_threads(threads)
