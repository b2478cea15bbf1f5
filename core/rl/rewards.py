"""Per-token rewards: a KL penalty on every response token, the score on the last (seeds 000, 001)."""
from __future__ import annotations

import torch


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from sampled tokens, with d = logp - ref_logp.

    k1 = d (unbiased, high variance, can be negative), k2 = d^2 / 2 (low variance, biased),
    k3 = (e^-d - 1) + d (unbiased and never negative). Names after Schulman's "Approximating KL
    divergence" note, which TRL and OpenRLHF also follow.
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {estimator!r}: use 'k1', 'k2' or 'k3'")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last 1 in each row of a (B, T) mask; -1 for an all-zero row."""
    T = mask.shape[1]
    pos = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, -1).max(dim=1).values


def token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float, kl_estimator: str = "k1",
                  score_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = -kl_coef * KL_t on every response token, plus the score on the LAST valid token.

    score: (B,); logprobs, ref_logprobs, mask: (B, T). The last valid token is the EOS token
    itself when the response has one: the score belongs to the action that ended the episode,
    not to the padding after it (TRL issue #3750 was that off-by-one). Returns (rewards, kl),
    both (B, T) and 0 at padding. Rows with no response token get no score.
    """
    mask = mask.to(logprobs.dtype)
    kl = kl_estimate(logprobs, ref_logprobs, kl_estimator) * mask  # (B, T)
    rewards = -kl_coef * kl
    if score_clip is not None:
        score = score.clamp(-score_clip, score_clip)
    last = last_token_index(mask)  # (B,)
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] += score[rows].to(rewards.dtype)
    return rewards, kl
