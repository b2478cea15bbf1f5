"""PPO and reward-model losses (seeds 000, 001, 004). Stats come back as detached tensors so a
training loop can log them without a device sync per minibatch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .masked import masked_mean


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate: mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    All inputs (B, T). The max of the negated terms is the min of the objective: the update may
    not profit from moving the ratio past 1 +- eps in the advantage's direction.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio * log_ratio, mask),  # k2 of old vs new policy
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range: float = 0.2) -> tuple[torch.Tensor, dict]:
    """0.5 * max((V - G)^2, (clip(V, V_old - eps, V_old + eps) - G)^2), masked mean. (B, T) inputs.

    clipfrac: the share of tokens whose clipped term is the larger one. Inside the clip range the
    two terms are the same number (V_old + (V - V_old) is V up to rounding), so only tokens whose
    value left the range count: a comparison of two roundings of one number would decide the rest.
    """
    moved = values - old_values
    clipped_values = old_values + torch.clamp(moved, -clip_range, clip_range)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(((err_clipped > err) & (moved.abs() > clip_range)).to(values.dtype), mask),
            "mean": masked_mean(values, mask),
        }
    return loss, stats


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution. logits (B, T, V) -> (B, T), 0 at padding.

    H = -sum p log p with log p = log_softmax(z): finite for finite logits (no log(0) taken), and
    one fused kernel where logsumexp(z) - sum softmax(z) * z made four more passes over (B, T, V).
    """
    logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)  # (B, T)
    return ent * mask.to(ent.dtype)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                  center_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Bradley-Terry loss -log sigmoid(r_c - r_r - margin) + center_coef * mean((r_c + r_r)^2).

    chosen, rejected, margin: (B,). The centering term (TRL's `center_rewards_coefficient`, which
    its docs suggest setting to 0.01) pins the reward scale's free offset near zero.
    """
    diff = chosen - rejected
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    with torch.no_grad():
        stats = {"accuracy": (diff > 0).float().mean(), "margin": diff.mean()}
    return loss, stats
