import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from core import onednn
from core.models.loading import load_policy

needs_onednn = pytest.mark.skipif(not onednn.enabled(), reason="oneDNN not available in this torch build")


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
    grads = torch.autograd.grad(y, (x, w, b), gy)
    x2, w2, b2 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y2 = F.linear(x2, w2, b2)
    grads2 = torch.autograd.grad(y2, (x2, w2, b2), gy.double())
    # fp32 against a float64 reference: the padded rows change nothing
    torch.testing.assert_close(y.double(), y2, rtol=1e-5, atol=1e-5)
    for a, e in zip(grads, grads2):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_a_transposed_weight_and_no_grad_work_too():
    g = torch.Generator().manual_seed(1)
    x, wc = torch.randn(50, 24, generator=g), torch.randn(24, 40, generator=g)  # Conv1D layout (in, out)
    with torch.no_grad():
        y = onednn.linear(x, wc.t())
    assert y.grad_fn is None
    torch.testing.assert_close(y, x @ wc, rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_a_switched_off_onednn_take_f_linear(monkeypatch):
    x, w = torch.randn(5, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(onednn.linear(x, w), F.linear(x, w))  # float64: exactly F.linear
    head = torch.randn(1, 32, requires_grad=True)  # a value head: one output, F.linear's
    y = onednn.linear(torch.randn(7, 32), head)
    assert "_Linear" not in type(y.grad_fn).__name__
    monkeypatch.setenv("RLHF_ONEDNN", "0")
    onednn.enabled.cache_clear()
    try:
        assert not onednn.enabled()
        xf, wf = x.float().requires_grad_(), w.float()
        y = onednn.linear(xf, wf)
        assert "_Linear" not in type(y.grad_fn).__name__ and torch.equal(y, F.linear(xf, wf))
        model = onednn.use_onednn(torch.nn.Sequential(torch.nn.Linear(8, 3)))
        assert type(model[0]) is torch.nn.Linear  # nothing swapped
    finally:
        monkeypatch.delenv("RLHF_ONEDNN")
        onednn.enabled.cache_clear()


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
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)
    out.loss.backward()
    ref.loss.backward()
    for (n, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


@needs_onednn
def test_the_cpu_loaders_give_onednn_layers():
    model = load_policy(device=torch.device("cpu"), trainable=False)
    kinds = {type(m) for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    assert kinds == {onednn.Linear, onednn.GPT2Conv1D}


@needs_onednn
def test_onednn_only_sees_row_or_column_major_matrices(monkeypatch):
    """Other strides (e.g. core.last_layer's slice of the qkv weight's columns) run oneDNN's
    reference kernel, seconds per product: every operand must reach it dense."""
    from core.last_layer import hidden_at
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
    h = hidden_at(model, ids, mask, pos, torch.tensor([[19], [10], [5]]))  # the last block's shortcut
    (h.sum() + model(ids, labels=ids).loss).backward()
    assert len(seen) > 20 and all(p.grad is not None for p in model.parameters())
    x, w = torch.randn(40, 24), torch.randn(24, 96)
    torch.testing.assert_close(onednn.linear(x, w[:, 32:].t()), x @ w[:, 32:], rtol=1e-5, atol=1e-5)
