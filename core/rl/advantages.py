"""Generalised advantage estimation (seed 002)."""
from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns for a batch of ragged responses.

    rewards, values, mask: (B, T); mask is 1 on response tokens. Backwards from the end:
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
    where V_{t+1} and A_{t+1} count as 0 after the last valid token (the episode ends there:
    nothing follows EOS). returns = A + V. Both are 0 at padding.
    """
    mask = mask.to(values.dtype)
    B, T = values.shape
    adv = torch.zeros_like(values)  # (B, T)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)  # (B,)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv[:, t] = (delta + gamma * lam * next_adv) * m
        # A padded position passes nothing back: the token before it was the last one.
        next_value = values[:, t] * m
        next_adv = adv[:, t]
    returns = (adv + values) * mask
    return adv, returns
