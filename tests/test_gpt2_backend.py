"""core.backends.gpt2: GPT-2's padding-free forward, last-block shortcut and decoder give the
model's own padded forward's numbers (float64: see forward_checks), and other models never take them."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config

from core.backends import gpt2, select
from core.backends.forwards import GPT2Forward, PaddedForward
from core.backends.pair_packing import block_mask, pack_pairs
from core.config import DEFAULT_MODEL, GenerationConfig
from core.models.generation import GenericDecoder, generate
from core.models.heads import backbone
from core.models.loading import disable_dropout, load_policy, load_scalar_model, load_tokenizer
from core.models.scoring import format_for_scoring, score_texts

from forward_checks import ATOL, RTOL, assert_same, batch, dtype_for, tiny_pair, tolerance


def test_layout_by_hand():
    # P = 3: row 0 = pad, prompt 2 tokens, response of 2 then pad; row 1 = prompt 3, response 3
    mask = torch.tensor([[0, 1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1, 1]])
    lay = gpt2.response_layout(mask, 3)
    # reads: the columns that predict a real response token (2 and 3 in row 0; 2, 3, 4 in row 1)
    assert lay.read_flat.tolist() == [2, 3, 6 + 2, 6 + 3, 6 + 4]
    # kept: real tokens up to the last read; each row's final token (col 4, col 5) feeds no read
    assert lay.tokens.tolist() == [1, 2, 3, 6, 7, 8, 9, 10]
    assert lay.positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]  # left padding does not shift positions
    assert lay.L == 5 and lay.B == 2
    assert lay.slots.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]  # (row, position) in a (2, 5) grid
    assert lay.reads.tolist() == [1, 2, 5, 6, 7]  # the read tokens among the kept ones
    grid = gpt2.to_grid(torch.arange(1.0, 6.0), lay, 6, slice(2, 5))
    assert grid.tolist() == [[1, 2, 0], [3, 4, 5]]
    with pytest.raises(ValueError, match="attended"):
        gpt2.make_layout(mask, torch.ones_like(mask, dtype=torch.bool))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_padding_free_forwards_equal_padded_ones(impl, tiny_tokenizer):
    policy, critic = tiny_pair("gpt2", tiny_tokenizer, impl)
    assert gpt2.supported(policy) and gpt2.supported(critic)
    assert_same(GPT2Forward, PaddedForward, policy, critic, batch(tiny_tokenizer))


def test_lora_policy_and_its_disabled_adapter(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model
    policy, critic = tiny_pair("gpt2", tiny_tokenizer)
    s = batch(tiny_tokenizer)
    args = (s.input_ids, s.attention_mask, 4, 1.0)
    plain = PaddedForward(policy).logits(*args).detach()
    policy = get_peft_model(policy, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)).eval()
    assert gpt2.supported(policy)
    assert_same(GPT2Forward, PaddedForward, policy, critic, s)
    real = s.response_mask.bool()
    with policy.disable_adapter():  # the LoRA run's reference: the same weights, adapter off
        off = GPT2Forward(policy).logits(*args)
    torch.testing.assert_close(off[real], plain[real], atol=ATOL, rtol=RTOL)
    on = GPT2Forward(policy).logits(*args)
    assert (on[real] - plain[real]).abs().max() > 1e-3  # the adapter is applied on the padding-free path


def test_other_architectures_and_gpt2_variants_take_the_model_forward(tiny_tokenizer):
    policy, _ = tiny_pair("llama", tiny_tokenizer)
    assert not gpt2.supported(policy) and select(policy).name != "gpt2"
    layer_scaled = AutoModelForCausalLM.from_config(GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=len(tiny_tokenizer), scale_attn_by_inverse_layer_idx=True))
    assert not gpt2.supported(layer_scaled) and select(layer_scaled).name != "gpt2"


def test_embedded_model_reproduces_its_sampling_logprobs():
    # the padding-free forward of the shipped model on a real rollout gives back the logprobs the
    # sampler drew with (PPO's first-epoch ratio is then 1, as it must be); float64 end to end
    model, tok = load_policy(DEFAULT_MODEL, torch.device("cpu")).double(), load_tokenizer()
    prompts = ["this movie is", "the acting was", "a slow , tender", "i expected more from"] * 2
    fwd = select(model)
    s = generate(model, tok, prompts, GenerationConfig(max_new_tokens=12), generator=torch.Generator().manual_seed(3),
                 forward=fwd)
    assert s.response_mask.sum(1).min() < s.response_mask.shape[1]  # some rows stopped early
    with torch.no_grad():
        lp = fwd.logprobs(s.input_ids, s.attention_mask, s.prompt_len, 1.0)[0]
    real = s.response_mask.bool()
    torch.testing.assert_close(lp[real], s.logprobs[real], atol=ATOL, rtol=RTOL)


def test_scores_take_the_padding_free_forward_with_the_same_numbers(tiny_tokenizer):
    _, critic = tiny_pair("gpt2", tiny_tokenizer)
    prompts = ["a charming", "the plot is thin and", "i hated"]
    responses = ["movie", "dull , dull , dull", ""]
    ids, mask, _ = format_for_scoring(tiny_tokenizer, prompts, responses, 64)
    assert mask.sum(1).unique().numel() == 3  # rows of different lengths: padding to skip
    with torch.no_grad():
        plain = PaddedForward(critic).scores(ids, mask)
        torch.testing.assert_close(GPT2Forward(critic).scores(ids, mask), plain, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(score_texts(critic, tiny_tokenizer, prompts, responses, forward=select(critic)),
                               plain.float(), atol=1e-6, rtol=1e-6)  # score_texts returns fp32


def test_causal_attention_is_sdpas_causal_attention_with_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    go = torch.randn(3, 2, 7, 8, dtype=torch.float64)
    ours = gpt2.causal_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b)
    # query 0 sees key 0 only: its output is v[..., 0, :]
    torch.testing.assert_close(ours[:, :, 0], v[:, :, 0])


# ---------------------------------------------------------------- last block at a few positions
def full_hidden_at(model, ids, mask, pos, at):
    hidden = backbone(model)(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    return hidden[torch.arange(len(hidden))[:, None], at]


def packed_rows(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = lambda n: [torch.randint(2, vocab, (n,), generator=g).tolist() for _ in range(3)]  # noqa: E731
    chosen, rejected = texts(9), texts(6)
    for c, r in zip(chosen, rejected):
        r[:3] = c[:3]  # a shared prompt
    return pack_pairs(chosen, rejected, pad_id=1)


def shortcut_equals_full_forward(model, impl):
    b = packed_rows(model.config.vocab_size)
    mask = block_mask(b.segment, impl, model.dtype)
    at = torch.stack([b.chosen_at, b.rejected_at], 1)  # (B, 2)
    outs, grads = [], []
    for f in (gpt2.hidden_at, full_hidden_at):
        model.zero_grad()
        h = f(model, b.input_ids, mask, b.position_ids, at)
        (h * torch.linspace(-1, 1, h.shape[-1], dtype=h.dtype)).sum().backward()
        outs.append(h.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    atol, rtol = tolerance(model)
    torch.testing.assert_close(outs[0], outs[1], atol=atol, rtol=rtol)
    torch.testing.assert_close(grads[0], grads[1], atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_shortcut_equals_full_forward_on_a_tiny_gpt2(impl):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=3, n_head=4, n_positions=64, num_labels=1, pad_token_id=1)
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=impl).to(dtype_for(impl))
    disable_dropout(model)
    shortcut_equals_full_forward(model, impl)


def test_shortcut_equals_full_forward_on_the_embedded_model():
    model = load_scalar_model(DEFAULT_MODEL, torch.device("cpu"), trainable=True).double()
    disable_dropout(model)
    assert type(select(model)) is GPT2Forward
    shortcut_equals_full_forward(model, model.config._attn_implementation)


def test_the_shortcut_applies_an_adapter_on_the_attention():
    # the shortcut calls the layers as modules, so an adapter on c_attn is part of its numbers
    from peft import LoraConfig, inject_adapter_in_model
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, num_labels=1)
    model = AutoModelForSequenceClassification.from_config(cfg).double()
    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False), model)
    disable_dropout(model)
    shortcut_equals_full_forward(model, model.config._attn_implementation)


# ---------------------------------------------------------------- decoder
def test_the_decoder_gives_the_models_own_logits(tiny_tokenizer):
    policy, _ = tiny_pair("gpt2", tiny_tokenizer)
    s = batch(tiny_tokenizer)
    ids, mask = s.input_ids[:, :4], s.attention_mask[:, :4]
    ours, theirs = gpt2.Decoder(policy, ids, mask, 3), GenericDecoder(policy, ids, mask, 3)
    with torch.no_grad():
        torch.testing.assert_close(ours.start(ids), theirs.start(ids), atol=ATOL, rtol=RTOL)
        for t in range(2):
            tok = s.input_ids[:, 4 + t]
            torch.testing.assert_close(ours.step(tok), theirs.step(tok), atol=ATOL, rtol=RTOL)
