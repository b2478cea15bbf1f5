"""core.overlap: two jobs side by side, each with half the intra-op threads (the PPO update run that
way: tests/test_ppo.py)."""
import threading
import time

import pytest
import torch

from core import overlap


def test_pair_runs_the_background_job_on_another_thread_with_half_the_threads(two_threads):
    here = threading.get_ident()
    seen = {}
    fg_done = threading.Event()

    def fg():
        seen["fg"] = (threading.get_ident(), torch.get_num_threads())
        fg_done.set()
        return "fg"

    def bg():
        seen["bg"] = (threading.get_ident(), torch.get_num_threads())
        fg_done.wait(5)  # still running while the foreground looks
        return "bg"

    assert overlap.pair(bg, fg, True) == ("bg", "fg")
    assert seen["fg"] == (here, 1) and seen["bg"][0] != here and seen["bg"][1] == 1
    assert torch.get_num_threads() == 2  # restored
    assert overlap.pair(bg, fg, False) == ("bg", "fg")
    assert seen["fg"] == (here, 2) and seen["bg"] == (here, 2)


def test_pair_keeps_the_callers_grad_mode_in_the_background(two_threads):
    x = torch.ones(3, requires_grad=True)
    with torch.no_grad():
        bg, fg = overlap.pair(lambda: (x * 2).requires_grad, lambda: (x * 2).requires_grad, True)
    assert (bg, fg) == (False, False)
    bg, fg = overlap.pair(lambda: (x * 2).requires_grad, lambda: (x * 2).requires_grad, True)
    assert (bg, fg) == (True, True)


def test_pair_raises_only_after_both_jobs_finished(two_threads):
    done = []

    def slow(name):
        return lambda: time.sleep(0.2) or done.append(name)

    def failing(error):
        def f():
            raise error
        return f

    with pytest.raises(ValueError, match="background broke"):
        overlap.pair(failing(ValueError("background broke")), slow("fg"), True)
    with pytest.raises(KeyError, match="foreground broke"):
        overlap.pair(slow("bg"), failing(KeyError("foreground broke")), True)
    assert done == ["fg", "bg"] and torch.get_num_threads() == 2  # the slow job finished each time
    with pytest.raises(KeyError):  # both fail: the foreground's error wins
        overlap.pair(failing(ValueError()), failing(KeyError()), True)


def test_worthwhile_only_on_a_cpu_with_two_threads(two_threads):
    assert overlap.worthwhile("cpu")
    assert not overlap.worthwhile("cuda")
    torch.set_num_threads(1)
    assert not overlap.worthwhile("cpu")
