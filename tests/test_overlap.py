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


def test_chains_in_lockstep_take_turns_and_side_by_side_run_free(two_threads):
    log = []

    def gen(name, n, wait=None, release=None):
        for i in range(n):
            if wait is not None and i == 1:
                assert wait.wait(5), f"{name} waited in vain: the other side did not run ahead"
            log.append((name, i, threading.get_ident()))
            if release is not None and i == 2:
                release.set()
            yield

    here = threading.get_ident()
    overlap.chains(gen("bg", 2), gen("fg", 4), False)  # lockstep: fg first; the longer one drains
    assert [(n, i) for n, i, _ in log] == [("fg", 0), ("bg", 0), ("fg", 1), ("bg", 1), ("fg", 2), ("fg", 3)]
    assert {t for *_, t in log} == {here}
    # side by side: the foreground's second step waits until the background has done three,
    # which lockstep could never give (it would stop there with the assertion)
    log.clear()
    ahead = threading.Event()
    overlap.chains(gen("bg", 4, release=ahead), gen("fg", 3, wait=ahead), True)
    fg_steps = [i for n, i, _ in log if n == "fg"]
    assert fg_steps == [0, 1, 2] and sorted(i for n, i, _ in log if n == "bg") == [0, 1, 2, 3]
    assert {t for n, _, t in log if n == "fg"} == {here} and here not in {t for n, _, t in log if n == "bg"}
    assert torch.get_num_threads() == 2


def test_chains_stop_the_other_side_when_one_fails(two_threads):
    steps, released = [], []

    def long():  # would run 20 s
        for _ in range(2000):
            steps.append(1)
            time.sleep(0.01)
            yield

    def failing():
        yield
        raise ValueError("background broke")

    with pytest.raises(ValueError, match="background broke"):
        overlap.chains(failing(), long(), True, on_error=lambda: released.append(True))
    assert released == [True] and 0 < len(steps) < 2000  # the long side stopped at a yield
    assert torch.get_num_threads() == 2


def test_the_side_left_running_takes_every_thread_at_its_next_hooked_call(two_threads):
    # through the module's forward hook, and through the hook on its output in the backward
    for path in ("forward", "backward"):
        lin = torch.nn.Linear(2, 2)
        seen = []
        go, bg_over = threading.Event(), threading.Event()

        def short():  # ends when told to
            assert go.wait(5)
            yield
            bg_over.set()

        def long():
            y = lin(torch.ones(1, 2, requires_grad=True))  # both running: no switch
            seen.append(torch.get_num_threads())  # half each
            go.set()
            assert bg_over.wait(5)
            seen.append(torch.get_num_threads())  # no hooked call since: still half
            deadline = time.monotonic() + 5  # the short side's end is recorded just after bg_over
            while torch.get_num_threads() == 1 and time.monotonic() < deadline:
                if path == "forward":
                    lin(torch.ones(1, 2))
                else:
                    y.sum().backward(retain_graph=True)
                time.sleep(0.001)
            seen.append(torch.get_num_threads())
            yield

        overlap.chains(short(), long(), True, modules=[lin])
        assert seen == [1, 1, 2], path
        assert torch.get_num_threads() == 2 and not lin._forward_hooks  # restored, hooks removed
