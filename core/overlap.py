"""The policy's and the critic's work side by side on a CPU: two threads, each with half the cores.

Why: on a small model a PPO update is a stream of small operators (layer norms, GELU, attention
over 25-token rows, index gathers, optimizer loops) between matmuls. Run one after the other,
each with every core, the cores spend much of each operator waiting at its fork/join barrier,
and the Python between operators runs on one core while the others idle. The policy's and the
critic's forward, backward and optimizer step share no tensor that either writes, so they can
run at once, each with half the cores per operator. On the 2-core benchmark machine that made
the update 9-13% faster (per-step and update-only A/B runs in one process; session 10's note).

`chains` runs the PPO update this way: each model's epochs are a generator of its own, and the
two run free, neither waiting for the other between epochs (but for target_kl's verdict). The
two sides of a pair seldom end together; the one left running then takes every thread
(`_Survivor`). On the 2-core machine the update got 3.5-5% faster than pairing each micro-batch
and each optimizer step (update-only A/B on one batch in one process, 24 alternated pairs, twice;
session 13).

Torch keeps grad mode per thread, so the background job runs under the caller's grad mode.
Collectives (several processes) stay on the calling thread, in the same order on every process:
callers run them before or after a pair, never inside the background job (`chains` takes turns
on the calling thread without `overlap`).
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import torch

A = TypeVar("A")
B = TypeVar("B")
_pool: ThreadPoolExecutor | None = None


def worthwhile(device: torch.device | str) -> bool:
    """Overlap pays on a CPU with at least two intra-op threads (a GPU runs its kernels async)."""
    return torch.device(device).type == "cpu" and torch.get_num_threads() >= 2


class _Survivor:
    """Once one job of a pair has ended, the other takes every thread at its next call of a hooked
    module (forward, or backward through that module's output): the two seldom end together, and
    the survivor's tail runs on all the cores. OpenMP thread counts are per thread, so the switch
    happens in the survivor's own thread, from inside its work."""

    def __init__(self, threads: int, modules: Iterable[torch.nn.Module]):
        self.threads, self.ended, self.mine = threads, threading.Event(), threading.local()
        self.handles = [mod.register_forward_hook(self._hook) for mod in modules]

    def run(self, job: Callable[[], A]) -> A:
        self.mine.alone = False
        try:
            return job()
        finally:
            self.mine.alone = None
            self.ended.set()

    def take_all(self, *_) -> None:
        if self.ended.is_set() and getattr(self.mine, "alone", None) is False:
            torch.set_num_threads(self.threads)
            self.mine.alone = True

    def _hook(self, mod, inp, out) -> None:
        self.take_all()
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self.take_all)  # returns None: the gradient passes unchanged

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def pair(background: Callable[[], A], foreground: Callable[[], B], overlap: bool,
         modules: Iterable[torch.nn.Module] = ()) -> tuple[A, B]:
    """(background(), foreground()). With `overlap`, background runs on a worker thread while
    foreground runs here, each with half the intra-op threads, and the one still running when the
    other ends takes them all at its next call of one of `modules` (see _Survivor); else
    foreground first, then background (so the two autograd graphs never live at once). An
    exception from either is raised after both have finished (foreground's first)."""
    if not overlap:
        fg = foreground()
        return background(), fg
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(1, thread_name_prefix="overlap")
    threads = torch.get_num_threads()
    half = max(1, threads // 2)
    grad = torch.is_grad_enabled()
    survivor = _Survivor(threads, modules)

    def job():
        torch.set_num_threads(half)  # per thread in OpenMP: set in the worker too
        with torch.set_grad_enabled(grad):
            return survivor.run(background)

    torch.set_num_threads(half)
    try:
        fut = _pool.submit(job)
        try:
            fg = survivor.run(foreground)
        finally:
            bg_error = fut.exception()  # waits; an error here yields to foreground's own
        if bg_error is not None:
            raise bg_error
        return fut.result(), fg
    finally:
        survivor.remove()
        torch.set_num_threads(threads)


def chains(background: Iterator, foreground: Iterator, overlap: bool, on_error: Callable[[], None] = lambda: None,
           modules: Iterable[torch.nn.Module] = ()) -> None:
    """Run two generators to their ends. With `overlap` each runs free on its own thread (a
    `pair`, with `modules` hooked as there), never waiting for the other. When one raises,
    `on_error()` runs (to release anything the other may wait on), the other stops at its next
    yield, and the error is raised after both have ended. Without `overlap`: in lockstep here, a
    step of foreground, a step of background, ... (each process meets the collectives inside
    them in one order)."""
    if not overlap:
        for _ in itertools.zip_longest(foreground, background):
            pass
        return
    failed = threading.Event()

    def drain(it: Iterator) -> None:
        try:
            for _ in it:
                if failed.is_set():
                    break
        except BaseException:
            failed.set()
            on_error()
            raise
        finally:
            getattr(it, "close", lambda: None)()  # a generator left mid-way lets go of what it holds
    try:
        pair(lambda: drain(background), lambda: drain(foreground), True, modules)
    except BaseException:  # e.g. KeyboardInterrupt while waiting for the background: stop it too
        if not failed.is_set():
            failed.set()
            on_error()
        raise
