"""core.rl against small examples worked out by hand (arithmetic in the comments)."""
import math

import pytest
import torch

from core.rl import (AdaptiveKLController, FixedKLController, entropy_from_logits, gae, kl_estimate,
                     logprobs_from_logits, masked_mean, pairwise_loss, policy_loss, token_rewards, value_loss, whiten)

T = torch.tensor


def close(a, b, tol=1e-5):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol), (a, b)


# ---------------------------------------------------------------- GAE
def test_gae_seed_002_worked_example():
    # Seed 002: rewards [0,0,0,1], values [.2,.3,.5,.8], gamma = lam = 1.
    # t=3: delta = 1 - .8 = .2                A = .2
    # t=2: delta = 0 + .8 - .5 = .3           A = .3 + .2 = .5
    # t=1: delta = 0 + .5 - .3 = .2           A = .2 + .5 = .7
    # t=0: delta = 0 + .3 - .2 = .1           A = .1 + .7 = .8
    adv, ret = gae(T([[0., 0, 0, 1]]), T([[.2, .3, .5, .8]]), T([[1, 1, 1, 1]]), 1.0, 1.0)
    close(adv, [[.8, .7, .5, .2]])
    close(ret, [[1., 1, 1, 1]])  # A + V


def test_gae_discounted_and_ragged():
    # Row 0 has 2 valid tokens of 3; gamma = .5, lam = .5.
    # t=1 (last): delta = 1 - .4 = .6; A = .6
    # t=0: delta = 0 + .5*.4 - .2 = 0; A = 0 + .25*.6 = .15
    # Position 2 is padding: its reward and value must not leak back.
    adv, ret = gae(T([[0., 1, 9]]), T([[.2, .4, 7.]]), T([[1, 1, 0]]), 0.5, 0.5)
    close(adv, [[.15, .6, 0]])
    close(ret, [[.35, 1.0, 0]])


def test_gae_length_one_and_all_masked_rows():
    adv, ret = gae(T([[2., 0], [5., 5]]), T([[.5, 3], [1., 1]]), T([[1, 0], [0, 0]]), 1.0, 0.95)
    close(adv, [[1.5, 0], [0, 0]])  # single token: A = r - V = 2 - .5
    close(ret, [[2.0, 0], [0, 0]])


def reference_gae(r, v, n, gamma, lam):
    """A plain reversed loop over one row of n valid tokens."""
    adv, last = [0.0] * len(r), 0.0
    for t in reversed(range(n)):
        nv = v[t + 1] if t + 1 < n else 0.0
        last = r[t] + gamma * nv - v[t] + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_matches_plain_loop_on_random_ragged_batches():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        B, Tn = 5, 7
        r, v = torch.randn(B, Tn, generator=g), torch.randn(B, Tn, generator=g)
        lens = torch.randint(0, Tn + 1, (B,), generator=g)
        mask = (torch.arange(Tn) < lens[:, None]).float()
        gamma, lam = float(torch.rand(1, generator=g)), float(torch.rand(1, generator=g))
        adv, ret = gae(r, v, mask, gamma, lam)
        for b in range(B):
            close(adv[b], reference_gae(r[b].tolist(), v[b].tolist(), int(lens[b]), gamma, lam), 1e-4)
        close(ret, (adv + v) * mask, 1e-5)


# ---------------------------------------------------------------- rewards and KL
def test_kl_estimators_by_hand():
    lp, ref = T([-1.0, -2.0]), T([-1.5, -1.0])  # d = [.5, -1]
    close(kl_estimate(lp, ref, "k1"), [.5, -1])
    close(kl_estimate(lp, ref, "k2"), [.125, .5])  # d^2/2
    # k3 = e^-d - 1 + d: e^-.5 - 1 + .5 = .6065307 - .5 = .1065307; e^1 - 1 - 1 = .7182818
    close(kl_estimate(lp, ref, "k3"), [math.exp(-.5) - .5, math.e - 2])
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(lp, ref, "k4")


def test_token_rewards_score_on_last_valid_token():
    # Row 0: 3 valid tokens (the third is EOS), row 1: 1 valid token, row 2: none.
    lp = T([[-1., -1, -1, -1], [-2., -2, -2, -2], [-1., -1, -1, -1]])
    ref = T([[-1.5, -1, -0.5, -1], [-1., -2, -2, -2], [-3., -3, -3, -3]])
    mask = T([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # d row0 = [.5, 0, -.5, (pad)], row1 = [-1, ...]; beta = .1
    # rewards row0 = [-.05, 0, .05 + 2, 0]; row1 = [.1 + (-3), 0, 0, 0]; row2 = all 0
    rewards, kl = token_rewards(T([2., -3, 7]), lp, ref, mask, kl_coef=0.1)
    close(kl, [[.5, 0, -.5, 0], [-1, 0, 0, 0], [0, 0, 0, 0]])
    close(rewards, [[-.05, 0, 2.05, 0], [-2.9, 0, 0, 0], [0, 0, 0, 0]])
    # invariant: sum(r) = score - beta * sum(kl)
    close(rewards[:2].sum(1), T([2., -3]) - 0.1 * kl[:2].sum(1))


def test_token_rewards_score_clip_and_k3():
    lp, ref, mask = T([[-1., -1]]), T([[-1., -2]]), T([[1, 1]])
    # d = [0, 1]; k3 = [0, e^-1 - 1 + 1] = [0, .3678794]; score 9 clipped to 5
    rewards, kl = token_rewards(T([9.]), lp, ref, mask, kl_coef=1.0, kl_estimator="k3", score_clip=5.0)
    close(kl, [[0, math.exp(-1)]])
    close(rewards, [[0, 5 - math.exp(-1)]])


# ---------------------------------------------------------------- masked stats
def test_masked_mean_and_whiten_by_hand():
    x, m = T([[1., 2, 100], [3., 4, 100]]), T([[1, 1, 0], [1, 1, 0]])
    close(masked_mean(x, m), 2.5)  # (1+2+3+4)/4
    close(masked_mean(x, m, dim=1), [1.5, 3.5])
    close(masked_mean(x, torch.zeros_like(m)), 0.0)  # all masked: 0, not NaN
    # values 1..4: mean 2.5, unbiased var = (2.25+.25+.25+2.25)/3 = 5/3, std = 1.2909944
    s = math.sqrt(5 / 3)
    close(whiten(x, m), [[-1.5 / s, -.5 / s, 0], [.5 / s, 1.5 / s, 0]])
    close(whiten(x, m, shift_mean=False), [[-1.5 / s + 2.5, -.5 / s + 2.5, 0], [.5 / s + 2.5, 1.5 / s + 2.5, 0]])


# ---------------------------------------------------------------- PPO losses
def test_policy_loss_clipping_by_hand():
    # ratios e^d: d = [ln 1.5, ln .5, 0]; advantages [1, 1, -2]; eps .2
    # tok0: A>0, ratio 1.5 -> max(-1.5, -1.2) = -1.2 (clipped)
    # tok1: A>0, ratio .5  -> max(-.5, -.8)  = -.5  (not clipped: pessimistic side)
    # tok2: ratio 1        -> 2
    # loss = (-1.2 - .5 + 2) / 3 = .1; clipfrac = 1/3
    old = T([[0., 0, 0]])
    lp = T([[math.log(1.5), math.log(.5), 0.]])
    loss, st = policy_loss(lp, old, T([[1., 1, -2]]), T([[1, 1, 1]]), 0.2)
    close(loss, .1)
    close(st["clipfrac"], 1 / 3)
    # approx_kl = mean(d^2 / 2) = (ln1.5^2 + ln.5^2) / 6
    close(st["approx_kl"], (math.log(1.5) ** 2 + math.log(.5) ** 2) / 6)


def test_policy_loss_ignores_padding_and_has_gradient():
    lp = T([[0.1, 5.0]], requires_grad=True)
    loss, _ = policy_loss(lp, T([[0., 0]]), T([[1., 100]]), T([[1, 0]]), 0.2)
    close(loss, -math.exp(0.1))  # ratio 1.105 < 1.2: unclipped
    loss.backward()
    close(lp.grad, [[-math.exp(0.1), 0]])


def test_value_loss_by_hand():
    # V = [1, 0], V_old = [0, 0], G = [2, 1], eps .2
    # tok0: (1-2)^2 = 1; clipped V = .2 -> (.2-2)^2 = 3.24; max 3.24 (clipped counts)
    # tok1: (0-1)^2 = 1; clipped V = 0 -> 1; max 1
    # loss = .5 * (3.24 + 1) / 2 = 1.06; clipfrac = 1/2
    loss, st = value_loss(T([[1., 0]]), T([[0., 0]]), T([[2., 1]]), T([[1, 1]]), 0.2)
    close(loss, 1.06)
    close(st["clipfrac"], .5)


def test_value_clipfrac_ignores_values_inside_the_clip_range():
    # V_old + (V - V_old) is V only up to rounding; inside the range no token is clipped, whatever
    # the rounding says. In fp32 V_old + (V - V_old) rounds one ulp away from V here, farther from G
    v, old, g = torch.tensor([[-1.9906578063964844]]), torch.tensor([[0.009966026060283184]]), torch.tensor([[1.7061951160430908]])
    assert (old + (v - old) - g) ** 2 > (v - g) ** 2  # the rounding a plain comparison is fooled by
    loss, st = value_loss(v, old, g, torch.ones(1, 1), clip_range=5.0)
    close(st["clipfrac"], 0.0)
    close(loss, 0.5 * (v - g).item() ** 2)


def test_losses_and_whiten_on_all_masked_rows_and_length_one_responses():
    # row 0: one valid token (length-1 response); row 1: no valid token at all (all masked)
    m = T([[1, 0], [0, 0]])
    # policy: d = ln 2 on the one token, A = 1: ratio 2 > 1.2 -> clipped, loss = -1.2 (padding ignored)
    loss, st = policy_loss(T([[math.log(2), 9.]]), T([[0., 0]]), T([[1., 50]]), m, 0.2)
    close(loss, -1.2)
    close(st["clipfrac"], 1.0)
    # value: V 1, V_old 0, G 0 -> max((1-0)^2, (.2-0)^2) = 1 -> .5
    loss, st = value_loss(T([[1., 7]]), T([[0., 0]]), T([[0., 3]]), m, 0.2)
    close(loss, .5)
    close(st["clipfrac"], 0.0)  # |V - V_old| = 1 > .2, but the unclipped term is the larger one
    # a batch with nothing valid: finite zeros, no NaN
    z = torch.zeros(2, 2)
    assert policy_loss(z, z, z, z, 0.2)[0].item() == 0 and value_loss(z, z, z, z, 0.2)[0].item() == 0
    close(whiten(T([[5., 1]]), T([[1, 0]])), [[0., 0]])  # one value: mean 5, var 0 -> 0, finite
    close(whiten(T([[5., 1]]), T([[0, 0]])), [[0., 0]])
    close(entropy_from_logits(T([[[1., 2.], [0., 0.]]]), T([[0, 0]])), [[0., 0.]])


def test_logprobs_from_logits_by_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4]; token 1: ln 3/4; token 0: ln 1/4. Rows (2, 2, V=2).
    z = T([[[0., math.log(3)], [0., math.log(3)]]], requires_grad=True)
    lp = logprobs_from_logits(z, T([[1, 0]]))
    close(lp, [[math.log(0.75), math.log(0.25)]])
    # d log p_k / d z = onehot(k) - p: [-1/4, 1/4] for token 1, [3/4, -3/4] for token 0
    lp.sum().backward()
    close(z.grad, [[[-0.25, 0.25], [0.75, -0.75]]])


def test_entropy_from_logits_by_hand():
    # uniform over 4 -> ln 4; one-hot-ish (huge logit) -> ~0; masked position -> 0
    logits = T([[[0., 0, 0, 0], [100., 0, 0, 0], [1., 2, 3, 4]]])
    ent = entropy_from_logits(logits, T([[1, 1, 0]]))
    close(ent, [[math.log(4), 0, 0]], 1e-4)
    # p = [.5, .5, 0...]: H = ln 2
    close(entropy_from_logits(T([[[0., 0, -1e9]]]), T([[1]])), [[math.log(2)]])


def test_pairwise_loss_by_hand():
    # diffs [2, -1]: loss = mean(-log sig(2), -log sig(-1)) = (.126928 + 1.313262) / 2 = .720095
    c, r = T([3., 0]), T([1., 1])
    loss, st = pairwise_loss(c, r)
    close(loss, (math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2)
    close(st["accuracy"], .5)
    close(st["margin"], .5)
    # margin [1, 0]: -log sig(1) = .313262 ; centering .01 * mean((4)^2, (1)^2) = .01 * 8.5 = .085
    loss_m, _ = pairwise_loss(c, r, margin=T([1., 0]), center_coef=0.01)
    close(loss_m, (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2 + 0.085)


# ---------------------------------------------------------------- KL controllers
def test_fixed_kl_controller_never_moves():
    c = FixedKLController(0.2)
    c.update(100.0, 64)
    assert c.value == 0.2


def test_adaptive_kl_controller_by_hand():
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    c.update(9.0, 64)  # err = 9/6 - 1 = .5 -> clipped .2; beta = .2 * (1 + .2 * 64/10000) = .200256
    close(c.value, 0.200256, 1e-9)
    c.update(5.4, 100)  # err = -.1; beta *= 1 - .1 * .01 = .999
    close(c.value, 0.200256 * 0.999, 1e-9)
    c2 = AdaptiveKLController(1.0, 6.0, 10)
    c2.load_state_dict(c.state_dict())
    assert c2.value == c.value
