"""core.backends.threads: two jobs side by side, each with half the intra-op threads (the PPO
update run that way against the sequential one: tests/test_ppo.py)."""
import threading
import time

import pytest
import torch

from core.backends import threads


def test_side_by_side_runs_the_second_job_on_another_thread_with_half_the_threads(two_threads):
    here = threading.get_ident()
    seen = {}
    first_done = threading.Event()

    def first():
        seen["first"] = (threading.get_ident(), torch.get_num_threads())
        first_done.set()
        return "a"

    def second():
        seen["second"] = (threading.get_ident(), torch.get_num_threads())
        first_done.wait(5)  # still running while the first looks
        return "b"

    assert threads.side_by_side(first, second) == ("a", "b")
    assert seen["first"] == (here, 1) and seen["second"][0] != here and seen["second"][1] == 1
    assert torch.get_num_threads() == 2  # restored
    assert threads.one_after_other(first, second) == ("a", "b")
    assert seen["first"] == (here, 2) and seen["second"] == (here, 2)


def test_side_by_side_keeps_the_callers_grad_mode_on_the_worker(two_threads):
    x = torch.ones(3, requires_grad=True)
    job = lambda: (x * 2).requires_grad  # noqa: E731
    with torch.no_grad():
        assert threads.side_by_side(job, job) == (False, False)
    assert threads.side_by_side(job, job) == (True, True)


def test_side_by_side_raises_only_after_both_jobs_finished(two_threads):
    done = []

    def slow(name):
        return lambda: time.sleep(0.2) or done.append(name)

    def failing(error):
        def f():
            raise error
        return f

    with pytest.raises(ValueError, match="second broke"):
        threads.side_by_side(slow("first"), failing(ValueError("second broke")))
    with pytest.raises(KeyError, match="first broke"):
        threads.side_by_side(failing(KeyError("first broke")), slow("second"))
    assert done == ["first", "second"] and torch.get_num_threads() == 2  # the slow job finished each time
    with pytest.raises(KeyError):  # both fail: the first's error wins
        threads.side_by_side(failing(KeyError()), failing(ValueError()))


def test_the_runner_is_side_by_side_only_where_it_can_pay(two_threads):
    assert threads.runner("cpu", 1) is threads.side_by_side
    assert threads.runner("cpu", 1, enabled=False) is threads.one_after_other
    assert threads.runner("cpu", 2) is threads.one_after_other  # collectives need one order
    assert threads.runner("cuda", 1) is threads.one_after_other  # a GPU runs its kernels async
    torch.set_num_threads(1)
    assert threads.runner("cpu", 1) is threads.one_after_other
