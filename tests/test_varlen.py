"""core.varlen: GPT-2's padding-free forwards give the padded forward's logits, values and gradients."""
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

import core.ppo_forwards as forwards
from core import varlen
from core.config import GenerationConfig
from core.models.generation import generate
from core.models.loading import load_policy, load_tokenizer
from core.ppo import Models
from core.ppo_forwards import critic_values, policy_logits, policy_logprobs, response_layout
from core.rl import logprobs_from_logits

from test_seq_packing import batch, models


def test_layout_by_hand():
    # P = 3: row 0 = pad, prompt 2 tokens, response of 2 then pad; row 1 = prompt 3, response 3
    mask = torch.tensor([[0, 1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1, 1]])
    lay = response_layout(mask, 3)
    # reads: the columns that predict a real response token (2 and 3 in row 0; 2, 3, 4 in row 1)
    assert lay.read_flat.tolist() == [2, 3, 6 + 2, 6 + 3, 6 + 4]
    # kept: real tokens up to the last read; each row's final token (col 4, col 5) feeds no read
    assert lay.tokens.tolist() == [1, 2, 3, 6, 7, 8, 9, 10]
    assert lay.positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]  # left padding does not shift positions
    assert lay.L == 5 and lay.B == 2
    assert lay.slots.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]  # (row, position) in a (2, 5) grid
    assert lay.reads.tolist() == [1, 2, 5, 6, 7]  # the read tokens among the kept ones
    grid = varlen.to_grid(torch.arange(1.0, 6.0), lay, 6, slice(2, 5))
    assert grid.tolist() == [[1, 2, 0], [3, 4, 5]]
    with pytest.raises(ValueError, match="attended"):
        varlen.make_layout(mask, torch.ones_like(mask, dtype=torch.bool))


def forwards_agree(m, s, temperature=0.7):
    """Logits, values and the gradients of a response-token loss: varlen path vs padded path."""
    real = s.response_mask.bool()
    P = s.prompt_len
    lay = response_layout(s.attention_mask, P)
    for name, f in [("logits", lambda pk: policy_logits(m, m.policy, s.input_ids, s.attention_mask, P, temperature, pk)),
                    ("values", lambda pk: critic_values(m, s.input_ids, s.attention_mask, P, pk)),
                    # logprobs and entropies straight from the (M, V) logits of the read positions
                    ("logprobs", lambda pk: torch.stack(policy_logprobs(
                        m, m.policy, s.input_ids, s.attention_mask, P, temperature, pk, entropy=True), -1))]:
        outs, grads = [], []
        for plan in (False, lay):
            m.policy.zero_grad()
            m.critic.zero_grad()
            out = f(plan)
            (out[real].float() ** 2).mean().backward()
            outs.append(out[real].detach())
            grads.append(torch.cat([p.grad.flatten() for p in [*m.policy.parameters(), *m.critic.parameters()]
                                    if p.grad is not None]))
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_varlen_forwards_equal_padded_ones(impl, tiny_tokenizer):
    m = models("gpt2", tiny_tokenizer, impl)
    assert varlen.supported(m.policy) and varlen.supported(m.critic)
    s = batch(tiny_tokenizer)
    assert isinstance(forwards._plan(m, m.policy, s.input_ids, s.attention_mask, 4, None), varlen.Layout)
    forwards_agree(m, s)


def test_lora_policy_and_its_disabled_adapter(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model
    m = models("gpt2", tiny_tokenizer, "sdpa")
    s = batch(tiny_tokenizer)
    plain = policy_logits(m, m.policy, s.input_ids, s.attention_mask, 4, 1.0, False).detach()
    m.policy = get_peft_model(m.policy, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)).eval()
    assert varlen.supported(m.policy)
    forwards_agree(m, s)
    real = s.response_mask.bool()
    with m.policy.disable_adapter():  # the LoRA run's reference: the same weights, adapter off
        off = policy_logits(m, m.policy, s.input_ids, s.attention_mask, 4, 1.0)
    torch.testing.assert_close(off[real], plain[real], atol=1e-5, rtol=1e-4)
    on = policy_logits(m, m.policy, s.input_ids, s.attention_mask, 4, 1.0)
    assert (on[real] - plain[real]).abs().max() > 1e-3  # the adapter is applied on the varlen path


def test_other_architectures_and_gpt2_variants_take_the_model_forward(tiny_tokenizer):
    m = models("llama", tiny_tokenizer, "sdpa")
    s = batch(tiny_tokenizer)
    assert not varlen.supported(m.policy)
    lay = response_layout(s.attention_mask, 4)
    assert not isinstance(forwards._plan(m, m.policy, s.input_ids, s.attention_mask, 4, lay), varlen.Layout)
    layer_scaled = AutoModelForCausalLM.from_config(GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=len(tiny_tokenizer), scale_attn_by_inverse_layer_idx=True))
    assert not varlen.supported(layer_scaled)


def test_embedded_model_reproduces_its_sampling_logprobs():
    # the padding-free forward of the shipped model on a real rollout gives back the logprobs the
    # sampler drew with (PPO's first-epoch ratio is then 1, as it must be)
    model, tok = load_policy(), load_tokenizer()
    prompts = ["this movie is", "the acting was", "a slow , tender", "i expected more from"] * 2
    s = generate(model, tok, prompts, GenerationConfig(max_new_tokens=12), generator=torch.Generator().manual_seed(3))
    m = Models(model, None, None, tok, tok)
    assert s.response_mask.sum(1).min() < s.response_mask.shape[1]  # some rows stopped early
    with torch.no_grad():
        logits = policy_logits(m, model, s.input_ids, s.attention_mask, s.prompt_len, 1.0)
    lp = logprobs_from_logits(logits, s.responses)
    real = s.response_mask.bool()
    torch.testing.assert_close(lp[real], s.logprobs[real], atol=1e-4, rtol=1e-4)


def test_score_texts_takes_the_padding_free_forward_with_the_same_scores(tiny_tokenizer):
    from core.models.heads import sequence_scores
    from core.models.scoring import format_for_scoring, last_token_scores, score_texts
    critic = models("gpt2", tiny_tokenizer, "sdpa").critic
    prompts = ["a charming", "the plot is thin and", "i hated"]
    responses = ["movie", "dull , dull , dull", ""]
    ids, mask, _ = format_for_scoring(tiny_tokenizer, prompts, responses, 64)
    assert mask.sum(1).unique().numel() == 3  # rows of different lengths: padding to skip
    with torch.no_grad():
        plain = sequence_scores(critic, ids, mask)
        torch.testing.assert_close(last_token_scores(critic, ids, mask), plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(score_texts(critic, tiny_tokenizer, prompts, responses), plain, atol=1e-5, rtol=1e-4)


def test_causal_attention_is_sdpas_causal_attention_with_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    go = torch.randn(3, 2, 7, 8, dtype=torch.float64)
    ours = varlen.causal_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b)
    # query 0 sees key 0 only: its output is v[..., 0, :]
    torch.testing.assert_close(ours[:, :, 0], v[:, :, 0])
