"""Two independent jobs side by side on a CPU: two threads, each with half the intra-op threads.

Why: on a small model a PPO update is a stream of small operators (layer norms, GELU, attention
over 25-token rows, index gathers, optimizer loops) between matmuls. Run one after the other,
each with every core, the cores spend much of each operator waiting at its fork/join barrier,
and the Python between operators runs on one core while the others idle. The policy's and the
critic's forward, backward and optimizer step share no tensor that either writes, so they can
run at once, each with half the cores per operator (docs/performance.md has the gain).

`runner(device, processes, enabled)` picks, once at setup, how the algorithm runs a pair of
jobs: `side_by_side` on a CPU with two or more threads in one process, else `one_after_other`.
Collectives (several processes) must come in one order on every process, so there the jobs run
in turn on the calling thread. Torch keeps grad mode and autocast per thread: a job sets what it
needs itself.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

A = TypeVar("A")
B = TypeVar("B")
_pool: ThreadPoolExecutor | None = None


def one_after_other(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """(first(), second()), in that order, here."""
    a = first()
    return a, second()


def side_by_side(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """(first(), second()): `second` on a worker thread while `first` runs here, each with half the
    intra-op threads. An exception from either is raised after both have finished (first's first)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(1, thread_name_prefix="side-by-side")
    threads = torch.get_num_threads()
    half = max(1, threads // 2)
    grad = torch.is_grad_enabled()

    def job() -> B:
        torch.set_num_threads(half)  # per thread in OpenMP: set in the worker too
        with torch.set_grad_enabled(grad):
            return second()

    torch.set_num_threads(half)
    try:
        fut = _pool.submit(job)
        try:
            a = first()
        finally:
            error = fut.exception()  # waits; an error here yields to first's own
        if error is not None:
            raise error
        return a, fut.result()
    finally:
        torch.set_num_threads(threads)


def runner(device: torch.device | str, processes: int, enabled: bool = True):
    """How to run two independent jobs here: side_by_side where it pays (a CPU, two or more
    threads, one process, `enabled`), else one_after_other."""
    cpu = torch.device(device).type == "cpu"
    return side_by_side if enabled and cpu and processes == 1 and torch.get_num_threads() >= 2 else one_after_other
