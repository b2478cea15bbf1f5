import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from core.backends import gpt2, onednn

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN not available in this torch build")


def within_fp32_bound(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b=None) -> None:
    """got ~ x @ w.T (+ b), computed in fp32 from fp32 operands, against the float64 product: each
    element sums K products, so |error| <= K u sum_k |x_k w_k| (+ u |b| + u |result|), u = 2^-24
    (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1). Any summation order, blocking
    or thread count stays inside it; a wrong element does not."""
    x, w = x.detach().double(), w.detach().double()
    exact = x @ w.T + (0 if b is None else b.detach().double())
    u, K = 2.0 ** -24, x.shape[-1]
    bound = (K + 2) * u * (x.abs() @ w.abs().T + (0 if b is None else b.detach().double().abs())) + 1e-30
    err = (got.double() - exact).abs()
    assert (err <= bound).all(), f"max error {err.max():.3g} over its bound {bound[err > bound].min():.3g}"


def test_padded_and_bucket_rows_by_hand():
    # multiples of 16 up to 128, of 32 up to 512, of 64 up to 2048, then of 128
    ms = (1, 16, 17, 128, 129, 390, 512, 513, 2048, 2049)
    assert [onednn.padded_rows(m) for m in ms] == [16, 16, 32, 128, 160, 416, 512, 576, 2048, 2176]
    assert [onednn.bucket_rows(m) for m in ms] == [0, 16, 16, 128, 128, 384, 512, 512, 2048, 2048]


@needs_onednn
@pytest.mark.parametrize("rows", [1, 5, 16, 37, 130])
@pytest.mark.parametrize("wide", [False, True])  # 24 -> 40 pads its input; 40 -> 24 splits off the tail
def test_linear_and_its_gradients_are_f_linears(rows, wide):
    g = torch.Generator().manual_seed(rows)
    k, n = (40, 24) if wide else (24, 40)
    x = torch.randn(rows, 3, k, generator=g, requires_grad=True)  # 3D input: rows * 3 products
    w = torch.randn(n, k, generator=g, requires_grad=True)
    b = torch.randn(n, generator=g, requires_grad=True)
    gy = torch.randn(rows, 3, n, generator=g)
    y = onednn.linear(x, w, b)
    assert y.shape == (rows, 3, n) and "_Linear" in type(y.grad_fn).__name__  # took the oneDNN path
    dx, dw, db = torch.autograd.grad(y, (x, w, b), gy)
    # each product within fp32's bound for its size: the padded rows and the split tail change nothing
    x2, g2 = x.reshape(-1, k), gy.reshape(-1, n)
    within_fp32_bound(y.reshape(-1, n), x2, w, b)       # Y = X W^T + b: sums of k
    within_fp32_bound(dx.reshape(-1, k), g2, w.T)       # dX = dY W: sums of n
    within_fp32_bound(dw, g2.T, x2.T)                   # dW = dY^T X: sums of 3 * rows
    within_fp32_bound(db[None], torch.ones(1, 3 * rows), g2.T)


@needs_onednn
def test_a_transposed_weight_and_no_grad_work_too():
    g = torch.Generator().manual_seed(1)
    x, wc = torch.randn(50, 24, generator=g), torch.randn(24, 40, generator=g)  # Conv1D layout (in, out)
    with torch.no_grad():
        y = onednn.linear(x, wc.t())
    assert y.grad_fn is None
    within_fp32_bound(y, x, wc.t())


def test_other_dtypes_and_value_heads_take_f_linear():
    x, w = torch.randn(5, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(onednn.linear(x, w), F.linear(x, w))  # float64: exactly F.linear
    head = torch.randn(1, 32, requires_grad=True)  # a value head: one output, F.linear's
    y = onednn.linear(torch.randn(7, 32), head)
    assert "_Linear" not in type(y.grad_fn).__name__


@needs_onednn
def test_use_onednn_keeps_a_gpt2s_parameters_ties_outputs_and_gradients():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32)
    plain = GPT2LMHeadModel(cfg).eval()
    fast = GPT2LMHeadModel(cfg).eval()
    fast.load_state_dict(plain.state_dict())
    params = {n: id(p) for n, p in fast.named_parameters()}
    onednn.use_onednn(fast)
    assert type(fast.transformer.h[0].attn.c_attn) is onednn.GPT2Conv1D
    assert isinstance(fast.transformer.h[0].mlp.c_fc, Conv1D) and type(fast.lm_head) is onednn.Linear
    assert {n: id(p) for n, p in fast.named_parameters()} == params  # the same tensors, ties kept
    assert fast.lm_head.weight is fast.transformer.wte.weight
    assert list(fast.state_dict()) == list(plain.state_dict())
    ids = torch.randint(0, 64, (6, 20))
    out, ref = fast(ids, labels=ids), plain(ids, labels=ids)
    # through 2 blocks of 32-wide products (sums of <= 128 terms, |terms| <~ 1) the two GEMM
    # libraries' fp32 roundings differ by ~128 x 6e-8 per product: ~1e-5 after the stack
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=5e-5)
    out.loss.backward()
    ref.loss.backward()
    for (n, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)


@needs_onednn
def test_onednn_only_sees_row_or_column_major_matrices(monkeypatch):
    """Other strides (e.g. a slice of the qkv weight's columns) run oneDNN's reference kernel,
    seconds per product: every operand must reach it dense."""
    seen = []
    real = onednn._onednn

    def check(x, w, b):
        for t in (x, w):
            assert t.is_contiguous() or t.t().is_contiguous(), (t.shape, t.stride())
        seen.append(x.shape)
        return real(x, w, b)

    monkeypatch.setattr(onednn, "_onednn", check)
    torch.manual_seed(0)
    model = onednn.use_onednn(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64,
                                                         n_positions=32)))
    ids = torch.randint(0, 64, (3, 20))
    mask = torch.ones(3, 1, 20, 20).tril()
    pos = torch.arange(20).expand(3, 20)
    h = gpt2.hidden_at(model, ids, mask.bool(), pos, torch.tensor([[19], [10], [5]]))  # the last block's shortcut
    (h.sum() + model(ids, labels=ids).loss).backward()
    assert len(seen) > 20 and all(p.grad is not None for p in model.parameters())
    x, w = torch.randn(40, 24), torch.randn(24, 96)
    within_fp32_bound(onednn.linear(x, w[:, 32:].t()), x, w[:, 32:].t())
