"""Linear layers through oneDNN on the CPU: the same fp32 products through the other GEMM library
torch ships.

Why: torch's CPU matmuls go to MKL, which runs its AVX2 code on AMD processors; there oneDNN ran
the PPO products 1.8-2x as fast. On an Intel Xeon with AVX-512 and AMX it ran them at 0.5-0.85x
of MKL's rate (docs/performance.md). So core.backends.kernels measures both on the machine that
runs, and points the layers here only where oneDNN wins. The results are fp32 either way
(different blocking, same precision); no bf16 or TF32 anywhere.

How: `linear` is F.linear with its forward and both backward products (dX = dY W, dW = dY^T X)
done by torch.ops.mkldnn._linear_pointwise, the op torch's own compiler emits for CPU linears.
oneDNN builds (JIT-compiles) one kernel per shape, ~2-5 ms each and 0.4-2 MB kept in memory,
so it only ever sees a few row counts (`padded_rows`, `bucket_rows`): PPO's token counts change
every step and would otherwise build new kernels every step. `use_onednn` points a model's
nn.Linear and GPT-2 Conv1D layers at it. Anything else, a GPU, other dtypes or CPU autocast,
goes to F.linear, as does everything when oneDNN is missing or fails its first check.
No double backward (nothing here needs one).
"""
from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from transformers.pytorch_utils import Conv1D


def _row_step(m: int) -> int:
    return 16 if m <= 128 else 32 if m <= 512 else 64 if m <= 2048 else 128


def padded_rows(m: int) -> int:
    """Rows a product of m rows runs with when padded: m rounded up to a multiple of 16 (m <= 128),
    32 (<= 512), 64 (<= 2048) or 128. At PPO's ~300-500 tokens that is under 10% more rows, and
    a handful of shapes for all the token counts a run sees."""
    q = _row_step(m)
    return -(-m // q) * q


def bucket_rows(m: int) -> int:
    """The rows of m that go through oneDNN when the rest is split off: m rounded down likewise."""
    return m // _row_step(m) * _row_step(m)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A weight as oneDNN's fast kernels take it: row- or column-major. Other strides (a slice of a
    weight's columns, say) send a product to a reference kernel that ran 100-1000x slower (seconds
    per product: a reward model's training went from 90 to 6 pairs/s), so those are copied.
    Activations are made row-major (`.contiguous()`), since their rows get sliced."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")  # both dense (`_dense`)


def _product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) @ w (N, K)^T + b, (M, N), with oneDNN seeing only bucketed row counts. A narrow
    input is padded with zero rows (a copy of x); a wide one (K > N: the LM head's backward) has its
    bucketed rows done by oneDNN and the few left by F.linear (a copy of the narrower output)."""
    m, k = x.shape
    if k <= w.shape[0]:
        mp = padded_rows(m)
        y = _onednn(F.pad(x, (0, 0, 0, mp - m)) if mp != m else x, w, b)
        return y if mp == m else y[:m]
    mq = bucket_rows(m)
    if mq == 0:
        return F.linear(x, w, b)
    y = _onednn(x[:mq], w, b)
    return y if mq == m else torch.cat([y, F.linear(x[mq:], w, b)])


def _grad_weight(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g (M, N), x (M, K) -> g^T x (N, K): bucketed rows through oneDNN, the rest added by torch."""
    mq = bucket_rows(g.shape[0])
    if mq == 0:
        return g.t() @ x
    dw = _onednn(g[:mq].t(), x[:mq].t(), None)
    return dw if mq == g.shape[0] else dw.addmm_(g[mq:].t(), x[mq:])


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):  # x (..., K), w (N, K), b (N,) or None
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _product(x.reshape(-1, x.shape[-1]).contiguous(), w, b).view(*x.shape[:-1], w.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        g = gy.reshape(-1, w.shape[0]).contiguous()  # (M, N)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _product(g, w.t(), None).view(x.shape)  # dY W: (M, K)
        if ctx.needs_input_grad[1]:
            dw = _grad_weight(g, x.reshape(-1, x.shape[-1]).contiguous())  # dY^T X: (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


def _fits(x: torch.Tensor, w: torch.Tensor) -> bool:
    """CPU fp32, no autocast, and not a sliver: with under 16 outputs or inputs (a value head) a
    oneDNN call costs ~0.1-0.3 ms of overhead for a few kFLOPs, ~10x F.linear's."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and x.numel() > 0 and min(w.shape) >= 16 and not torch.is_autocast_enabled("cpu") and available())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias): x (..., K), weight (N, K) -> (..., N), through oneDNN where it fits."""
    if not _fits(x, weight):
        return F.linear(x, weight, bias)
    weight = _dense(weight)  # (a copy is part of the graph: its gradient flows back to the view)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _Linear.apply(x, weight, bias)
    return _product(x.reshape(-1, x.shape[-1]).contiguous(), weight, bias).view(*x.shape[:-1], weight.shape[0])


@functools.cache
def available() -> bool:
    """oneDNN present and giving F.linear's numbers on a first product (checked once per process;
    a failure warns and leaves every layer on F.linear)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=g) for s in ((37, 48), (40, 48), (40,)))
        y = _product(x, w, b)
        if torch.allclose(y, F.linear(x, w, b), rtol=1e-4, atol=1e-4):
            return True
        warnings.warn("oneDNN's linear disagreed with F.linear; using F.linear", RuntimeWarning)
    except (RuntimeError, AttributeError) as e:  # op missing from this torch build, or refused
        warnings.warn(f"oneDNN's linear unavailable ({e}); using F.linear", RuntimeWarning)
    return False


class Linear(torch.nn.Linear):
    """nn.Linear whose forward is `linear` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class GPT2Conv1D(Conv1D):
    """GPT-2's Conv1D (weight stored (in, out): y = x W + b) whose forward is `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight.t(), self.bias)


def use_onednn(model: torch.nn.Module) -> torch.nn.Module:
    """Point the model's plain nn.Linear and Conv1D layers at `linear` (in place: the modules keep
    their parameters, ties, hooks and state-dict keys; only their class changes). Subclasses are
    left alone: they may compute something else. A no-op when oneDNN is not available()."""
    if available():
        for mod in model.modules():
            if type(mod) is torch.nn.Linear:
                mod.__class__ = Linear
            elif type(mod) is Conv1D:
                mod.__class__ = GPT2Conv1D
    return model
