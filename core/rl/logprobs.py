"""Log-probabilities of chosen tokens."""
from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token]: logits (..., V), tokens (...) -> (...).

    logsumexp + gather instead of a full log_softmax: one (..., V) temporary fewer, which matters
    for the (B, T, V) logits of a PPO minibatch.
    """
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
