"""core.models.generation: sampling-time logprobs equal a fresh forward pass, on four architectures."""
import pytest
import torch

from core.config import GenerationConfig
from core.backends import gpt2, select
from core.models.generation import decode_responses, filter_logits, generate, response_logprobs, sample_from

from tiny_models import ARCHS, tiny_model

PROMPTS = ["a charming", "the acting is dull and the plot", "one", "i hated every minute"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_match_full_forward(arch, temperature, tiny_tokenizer):
    model = tiny_model(arch, tiny_tokenizer)
    g = torch.Generator().manual_seed(0)
    s = generate(model, tiny_tokenizer, PROMPTS, GenerationConfig(max_new_tokens=12, temperature=temperature), g)
    B, T = s.response_mask.shape
    assert s.input_ids.shape == (B, s.prompt_len + T) and s.logprobs.shape == (B, T)
    with torch.no_grad():
        fresh = response_logprobs(model, s.input_ids, s.attention_mask, s.prompt_len, temperature)
    m = s.response_mask.bool()
    assert m.any()
    torch.testing.assert_close(s.logprobs[m], fresh[m], atol=1e-4, rtol=1e-4)
    assert (s.logprobs[~m] == 0).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_asking_past_the_context_is_a_clear_error(arch, tiny_tokenizer):
    model = tiny_model(arch, tiny_tokenizer)
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    P = max(len(ids) for ids in tiny_tokenizer(PROMPTS)["input_ids"])
    with pytest.raises(ValueError, match=f"context of {context} tokens: lower max new tokens to at most {context - P}"):
        generate(model, tiny_tokenizer, PROMPTS, GenerationConfig(max_new_tokens=context - P + 1))
    assert generate(model, tiny_tokenizer, PROMPTS, GenerationConfig(max_new_tokens=context - P)).responses.shape[1] >= 1


def test_eos_ends_a_response_and_is_included(tiny_tokenizer):
    model = tiny_model("gpt2", tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    # Raise EOS's logit by 5 (p ~ 1/3 per step) so rows end early and at different steps.
    model.lm_head.register_forward_hook(lambda mod, inp, out: out.index_add(
        -1, torch.tensor([eos]), torch.full(out.shape[:-1] + (1,), 5.0)))
    s = generate(model, tiny_tokenizer, PROMPTS * 4, GenerationConfig(max_new_tokens=10), torch.Generator().manual_seed(1))
    for row, m in zip(s.responses.tolist(), s.response_mask.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)  # contiguous from the start
        if eos in row[:n]:
            assert row.index(eos) == n - 1  # EOS is the last valid token
            assert all(t == tiny_tokenizer.pad_token_id for t in row[n:])
    lengths = s.response_mask.sum(1)
    assert any(eos in r for r in s.responses.tolist()) and lengths.min() < lengths.max()
    assert all("<|endoftext|>" not in t for t in decode_responses(tiny_tokenizer, s))


def test_sampler_matches_distribution():
    probs = torch.tensor([[0.1, 0.2, 0.7]]).expand(20000, 3)
    draws = sample_from(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.015, rtol=0)


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    # top_p .7: .5 < .7 so keep .3 too (mass .8 >= .7), drop the rest
    assert torch.isinf(filter_logits(logits, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert not torch.isinf(filter_logits(logits, 0, 1.0)).any()


def test_same_seed_same_samples(tiny_tokenizer):
    model = tiny_model("llama", tiny_tokenizer)
    a = generate(model, tiny_tokenizer, PROMPTS, GenerationConfig(max_new_tokens=8), torch.Generator().manual_seed(3))
    b = generate(model, tiny_tokenizer, PROMPTS, GenerationConfig(max_new_tokens=8), torch.Generator().manual_seed(3))
    assert torch.equal(a.input_ids, b.input_ids)


def test_fast_gpt2_decoder_equals_generic_path(tiny_tokenizer):
    # float64, so the two decoders' different summation orders (~1e-16) cannot flip a sample
    model = tiny_model("gpt2", tiny_tokenizer).double()
    assert gpt2.decoder_supported(model)  # so the selected forward's decoder really is gpt2.Decoder
    cfg = GenerationConfig(max_new_tokens=10)
    fast = generate(model, tiny_tokenizer, PROMPTS, cfg, torch.Generator().manual_seed(5), forward=select(model))
    slow = generate(model, tiny_tokenizer, PROMPTS, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(fast.input_ids, slow.input_ids)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-10, rtol=1e-10)
