"""GPT-2's tanh GELU written with a sigmoid, for the CPU.

    gelu(x) = 0.5 x (1 + tanh(u)) = x sigmoid(2u),   u = sqrt(2/pi) (x + 0.044715 x^3)

(0.5 (1 + tanh(u)) = sigmoid(2u) exactly.) Why: this torch build's CPU tanh has no fast vector
path on AVX2 (~4 ns per element, against ~1 for sigmoid), and aten's tanh-GELU forward and backward
both go through it. On a PPO update's (470, 1024) MLP activations, one thread, forward + backward
take 4.2 ms with aten's kernels and 2.6 ms here; a PPO step gained ~0-2% (docs/performance.md).
core.backends.kernels measures both on the machine that runs before swapping it in.
On CUDA, and for a decode step's small tensors, aten's one fused kernel is used: there one
kernel beats five.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

C1 = 2 * math.sqrt(2 / math.pi)  # 2u = x (C1 + C2 x^2)
C2 = C1 * 0.044715


class _SigmoidGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(torch.addcmul(x.new_tensor(C1), x, x, value=C2).mul_(x))  # sigmoid(2u)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    @once_differentiable  # s is treated as a constant below: no second derivatives
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        # d/dx x s(2u) = s + x s (1 - s) d(2u)/dx,   d(2u)/dx = C1 + 3 C2 x^2
        x, s = ctx.saved_tensors
        d = torch.addcmul(x.new_tensor(C1), x, x, value=3 * C2).mul_(x).mul_(1 - s).add_(1).mul_(s)
        return g * d


SMALL = 1 << 16  # below this many elements (a decode step's 16 x 1024) aten's one kernel is faster


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu" or x.numel() < SMALL:
        return F.gelu(x, approximate="tanh")
    return _SigmoidGELU.apply(x)


class TanhGELU(torch.nn.Module):
    """Drop-in for GPT-2's `gelu_new` and torch.nn.GELU(approximate="tanh")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanh_gelu(x)


def swap_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """Replace GPT-2's `gelu_new` modules (tanh GELU from five elementwise ops) by TanhGELU, in place."""
    from transformers.activations import NewGELUActivation
    for sub in list(model.modules()):
        for name, child in list(sub.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(sub, name, TanhGELU())
    return model
