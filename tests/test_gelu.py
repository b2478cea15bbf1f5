import math

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from core.backends.gelu import SMALL, TanhGELU, _SigmoidGELU, swap_gelu, tanh_gelu


def tanh_formula(x: torch.Tensor) -> torch.Tensor:  # GPT-2's gelu_new, as written in the paper
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def test_the_sigmoid_form_is_the_tanh_gelu_with_its_gradient():
    # by hand at x = 1: 2u = 2 sqrt(2/pi) (1 + 0.044715) = 1.667124, s = sigmoid(2u) = 0.841192 = gelu(1)
    # (= 0.5 (1 + tanh(u))); d/dx = s + x s (1 - s) 2 sqrt(2/pi) (1 + 3 * 0.044715)
    #                              = 0.841192 + 0.133588 * 1.809834 = 1.082964
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    y = _SigmoidGELU.apply(x)
    y.backward()
    assert abs(y.item() - 0.841192) < 1e-6 and abs(x.grad.item() - 1.082964) < 1e-6
    x = (torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    assert torch.autograd.gradcheck(_SigmoidGELU.apply, (x,))
    torch.testing.assert_close(_SigmoidGELU.apply(x), tanh_formula(x))


def test_large_cpu_tensors_take_the_sigmoid_form_and_agree_with_aten():
    x = (torch.randn(SMALL + 1, generator=torch.Generator().manual_seed(0)) * 4).requires_grad_()
    g = torch.randn(SMALL + 1)
    y = tanh_gelu(x)
    assert y.grad_fn is not None and "SigmoidGELU" in type(y.grad_fn).__name__
    (gx,) = torch.autograd.grad(y, x, g)
    xa = x.detach().clone().requires_grad_()
    ya = F.gelu(xa, approximate="tanh")
    (ga,) = torch.autograd.grad(ya, xa, g)
    torch.testing.assert_close(y, ya, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gx, ga, atol=1e-5, rtol=1e-5)
    # both are within float32 rounding of the formula in float64
    exact = tanh_formula(x.detach().double())
    assert (y.double() - exact).abs().max() < 2e-6
    small = torch.randn(8, 16)
    assert torch.equal(tanh_gelu(small), F.gelu(small, approximate="tanh"))  # aten's kernel below SMALL


def test_swap_gelu_keeps_a_gpt2s_outputs():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64,
                                       activation_function="gelu_new")).eval()
    ids = torch.randint(0, 100, (8, 64))  # 8 * 64 * 256 MLP activations: above SMALL, the sigmoid form
    with torch.no_grad():
        before = model(ids).logits
        swap_gelu(model)
        assert sum(isinstance(m, TanhGELU) for m in model.modules()) == 2
        after = model(ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
