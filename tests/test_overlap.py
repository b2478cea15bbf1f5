"""core.overlap: two jobs side by side, each with half the intra-op threads; and the PPO update run
that way gives the update run one job after the other."""
import threading
import time

import pytest
import torch

from core import overlap


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_pair_runs_the_background_job_on_another_thread_with_half_the_threads(two_threads):
    here = threading.get_ident()
    seen = {}

    def job(name):
        def f():
            seen[name] = (threading.get_ident(), torch.get_num_threads())
            return name
        return f

    assert overlap.pair(job("bg"), job("fg"), True) == ("bg", "fg")
    assert seen["fg"] == (here, 1) and seen["bg"][0] != here and seen["bg"][1] == 1
    assert torch.get_num_threads() == 2  # restored
    assert overlap.pair(job("bg"), job("fg"), False) == ("bg", "fg")
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

    def slow_fg():
        time.sleep(0.2)
        done.append("fg")

    def failing_bg():
        raise ValueError("background broke")

    with pytest.raises(ValueError, match="background broke"):
        overlap.pair(failing_bg, slow_fg, True)
    assert done == ["fg"] and torch.get_num_threads() == 2

    def slow_bg():
        time.sleep(0.2)
        done.append("bg")

    def failing_fg():
        raise KeyError("foreground broke")

    with pytest.raises(KeyError, match="foreground broke"):
        overlap.pair(slow_bg, failing_fg, True)
    assert done == ["fg", "bg"] and torch.get_num_threads() == 2
    with pytest.raises(KeyError):  # both fail: the foreground's error wins
        overlap.pair(failing_bg, failing_fg, True)


def test_worthwhile_only_on_a_cpu_with_two_threads(two_threads):
    assert overlap.worthwhile("cpu")
    assert not overlap.worthwhile("cuda")
    torch.set_num_threads(1)
    assert not overlap.worthwhile("cpu")


def test_the_overlapped_update_is_the_sequential_update(ppo_dirs, tmp_path, two_threads):
    # make_experience (reference | critic) and update (policy | critic, both optimizer steps) side by
    # side give the experience and the trained weights of the one-after-the-other run
    import core.ppo as ppo
    from core.config import PPOConfig
    from core.ppo_run import prompt_batch, setup, whiten_global
    from core.runs import Run
    cfg = PPOConfig(policy=str(ppo_dirs / "policy"), reward_model=str(ppo_dirs / "rm"),
                    prompts=str(ppo_dirs / "prompts.txt"), batch_size=4, response_length=6, ppo_epochs=2,
                    num_minibatches=2, learning_rate=1e-3, critic_learning_rate=1e-3, output_dir=str(tmp_path / "run"))
    tr, _ = setup(cfg, Run(tmp_path / "run", "ppo"), None)
    m = tr.models
    assert m.overlap  # on by default on a CPU with two threads
    prompts = prompt_batch(tr.prompts, 0, cfg.batch_size, cfg.seed)
    samples = ppo.rollout(m, prompts, cfg, torch.rand(cfg.batch_size, cfg.response_length,
                                                    generator=torch.Generator().manual_seed(0)))
    responses = ppo.decode_responses(m.tokenizer, samples)
    scores, raw = ppo.score(m, prompts, responses, samples, cfg)
    start = [{k: v.clone() for k, v in x.state_dict().items()} for x in (m.policy, m.critic)]
    flat = lambda x: torch.cat([p.detach().flatten().clone() for p in x.parameters()])  # noqa: E731
    initial = [flat(m.policy), flat(m.critic)]
    results = []
    for side_by_side in (True, False):
        m.overlap = side_by_side
        for x, sd in zip((m.policy, m.critic), start):
            x.load_state_dict(sd)
        opts = [torch.optim.AdamW(m.policy.parameters(), lr=1e-3), torch.optim.AdamW(m.critic.parameters(), lr=1e-3)]
        exp = ppo.make_experience(m, samples, prompts, responses, scores, raw, 0.1, cfg)
        adv = whiten_global(exp.advantages, exp.response_mask.float(), tr.dist)
        stats = ppo.update(m, exp, adv, cfg, opts, 1, lambda: None, tr.dist)
        weights = [flat(m.policy), flat(m.critic)]
        results.append((exp, stats, weights))
    (e1, s1, w1), (e2, s2, w2) = results
    torch.testing.assert_close(e1.ref_logprobs, e2.ref_logprobs)
    torch.testing.assert_close(e1.values, e2.values)
    for a, b, w0 in zip(w1, w2, initial):
        assert (a - w0).abs().max() > 1e-4  # it trained
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert s1.keys() == s2.keys()
    for k in s1:
        # a clip fraction counts ties decided by rounding (the first minibatch's ratio is 1, its
        # values are the old ones): one token may flip with the threads' summation order
        tol = 1 / e1.response_mask.sum().item() if "clipfrac" in k else 1e-6
        assert s1[k] == pytest.approx(s2[k], rel=1e-4, abs=tol), k
