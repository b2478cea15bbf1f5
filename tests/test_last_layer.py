"""core.last_layer: the GPT-2 shortcut (last block only at the read positions) equals the full forward."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification, GPT2Config

from core.config import DEFAULT_MODEL
from core.last_layer import _gpt2_shortcut_ok, hidden_at
from core.models.heads import backbone
from core.models.loading import disable_dropout, load_scalar_model
from core.pair_packing import block_mask, pack_pairs


def full_hidden_at(model, ids, mask, pos, at):
    hidden = backbone(model)(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    return hidden[torch.arange(len(hidden))[:, None], at]


def rows(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = lambda n: [torch.randint(2, vocab, (n,), generator=g).tolist() for _ in range(3)]  # noqa: E731
    chosen, rejected = texts(9), texts(6)
    for c, r in zip(chosen, rejected):
        r[:3] = c[:3]  # a shared prompt
    return pack_pairs(chosen, rejected, pad_id=1)


def compare(model, impl):
    b = rows(model.config.vocab_size)
    mask = block_mask(b.segment, impl)
    at = torch.stack([b.chosen_at, b.rejected_at], 1)  # (B, 2)
    outs, grads = [], []
    for f in (hidden_at, full_hidden_at):
        model.zero_grad()
        h = f(model, b.input_ids, mask, b.position_ids, at)
        (h * torch.linspace(-1, 1, h.shape[-1])).sum().backward()
        outs.append(h.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_shortcut_equals_full_forward_on_a_tiny_gpt2(impl):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=3, n_head=4, n_positions=64, num_labels=1, pad_token_id=1)
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=impl)
    disable_dropout(model)
    assert _gpt2_shortcut_ok(model)
    compare(model, impl)


def test_shortcut_equals_full_forward_on_the_embedded_model():
    model = load_scalar_model(DEFAULT_MODEL, torch.device("cpu"), trainable=True)  # fast GELU swapped in
    disable_dropout(model)
    assert _gpt2_shortcut_ok(model)
    compare(model, model.config._attn_implementation)


def test_gpt2_variants_the_shortcut_does_not_model_take_the_full_forward():
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, num_labels=1, scale_attn_by_inverse_layer_idx=True)
    model = AutoModelForSequenceClassification.from_config(cfg)
    disable_dropout(model)
    assert not _gpt2_shortcut_ok(model)
    compare(model, model.config._attn_implementation)  # still right: it is the full forward


def test_a_gpt2_with_an_adapter_on_its_attention_takes_the_full_forward():
    from peft import LoraConfig, inject_adapter_in_model
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, num_labels=1)
    model = AutoModelForSequenceClassification.from_config(cfg)
    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False), model)
    disable_dropout(model)
    assert not _gpt2_shortcut_ok(model)  # the shortcut would read c_attn's base weight and miss the adapter
    compare(model, model.config._attn_implementation)
