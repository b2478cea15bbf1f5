"""Masked reductions: every statistic over response tokens ignores padding."""
from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x where mask is 1. An all-masked input (or row, with `dim`) gives 0, not NaN."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked entries; Bessel-corrected like TRL and DeepSpeed-Chat's whitening."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           reduce=None) -> torch.Tensor:
    """(x - mean) / std over the masked entries (seed 003: advantage / score whitening).

    With shift_mean=False the mean is added back, so only the scale changes (TRL does this for
    rewards, where the sign of the mean carries meaning). Padding positions come out as 0.
    `reduce`, when several processes hold parts of the batch, sums a tensor over all of them, so
    the mean and variance are those of the whole batch.
    """
    if reduce is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        m = mask.to(x.dtype)
        total, squares, n = reduce(torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]))
        mean = total / n.clamp(min=1)
        var = (squares / n.clamp(min=1) - mean ** 2) * n / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)
