"""Helpers for comparing a fast forward with the padded reference in float64.

Why float64: the paths sum the same terms in different orders (other row layouts, other
kernels), and in fp32 that alone moves a gradient element by ~1e-5 on some CPUs. In float64 the
same reorderings move results by ~1e-16 x (terms summed) x magnitude: with a few hundred terms
and magnitudes near 1, under 1e-12. ATOL/RTOL leave a factor of 100 over that, and any wrong
arithmetic (a missing mask, a shifted position) shows up at 1e-3 or more.
"""
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from core.models.generation import Samples
from tiny_models import tiny_config

ATOL, RTOL = 1e-10, 1e-8
# transformers' eager attention builds its own masks with finfo(dtype).min and gives NaN rows in
# float64 for some models (Llama), so eager runs in fp32: there each output and gradient element
# of these 32-wide, 2-layer models sums at most a few hundred terms of magnitude <= ~1, so a
# reordering moves it by at most ~300 x 6e-8 = 2e-5; FP32_ATOL leaves a factor of 5 over that.
FP32_ATOL, FP32_RTOL = 1e-4, 1e-4


# Rotary models (Llama, Qwen2, GPT-NeoX) compute their cos/sin tables in fp32 whatever the
# model's dtype, from a matmul whose rounding depends on the batch's shape: they get the fp32 bound.


def dtype_for(impl: str) -> torch.dtype:
    return torch.float64 if impl == "sdpa" else torch.float32


def tolerance(model) -> tuple[float, float]:
    """(atol, rtol) for comparing two forwards of `model`, from its arithmetic (above)."""
    rotary = any("rotary" in name for name, _ in model.named_modules())
    return (ATOL, RTOL) if model.dtype == torch.float64 and not rotary else (FP32_ATOL, FP32_RTOL)


def batch(tokenizer, seed=0):
    """A PPO-shaped batch: left-padded prompts (P = 4), responses of different lengths, pad after EOS."""
    g = torch.Generator().manual_seed(seed)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    B, P, T = 5, 4, 6
    ids = torch.full((B, P + T), pad)
    for i, (p, t) in enumerate([(4, 6), (2, 3), (3, 1), (1, 6), (2, 5)]):
        ids[i, P - p:P] = torch.randint(2, len(tokenizer), (p,), generator=g)
        ids[i, P:P + t] = torch.randint(2, len(tokenizer), (t,), generator=g)
        if t < T:
            ids[i, P + t - 1] = eos
    mask = (ids != pad).long()
    return Samples(ids, mask, mask[:, P:].clone(), torch.zeros(B, T), P)


def tiny_pair(arch, tokenizer, impl="sdpa", dtype=None):
    """(policy, critic): a tiny random causal LM and a scalar-head model of the same config, eval mode."""
    torch.manual_seed(0)
    cfg = tiny_config(arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    policy = AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
    cfg.num_labels = 1
    critic = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=impl)
    dtype = dtype or dtype_for(impl)
    return policy.eval().to(dtype), critic.eval().to(dtype)


def assert_same(fast, ref, policy, critic, s, temperature=0.7):
    """Logprobs, entropies, values and the gradients of a loss over response tokens: fast == ref."""
    P, real = s.prompt_len, s.response_mask.bool()
    atol, rtol = tolerance(policy)
    ids, mask = s.input_ids, s.attention_mask
    cases = [("logprobs", policy, lambda f: torch.stack(f.logprobs(ids, mask, P, temperature, True), -1)),
             ("logits", policy, lambda f: f.logits(ids, mask, P, temperature)),
             ("values", critic, lambda f: f.values(ids, mask, P))]
    for name, model, run in cases:
        outs, grads = [], []
        for f in (fast(model), ref(model)):
            model.zero_grad()
            out = run(f)[real]
            (out ** 2).mean().backward()  # a loss over the response tokens only, as PPO's
            outs.append(out.detach())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        torch.testing.assert_close(outs[0], outs[1], atol=atol, rtol=rtol, msg=name)
        torch.testing.assert_close(grads[0], grads[1], atol=atol, rtol=rtol, msg=name)
