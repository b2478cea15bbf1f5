"""core.seq_packing and core.ppo_forwards' packed forwards: the same logits, values and gradients as padding."""
from types import SimpleNamespace

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, Lfm2Config, MistralConfig,
                          Qwen2Config)

import core.ppo_forwards as ppo
from core.models.generation import Samples
from core.models.heads import packing_refusal
from core.ppo import Models
from core.ppo_forwards import critic_values, packing_agrees, policy_logits
from core.seq_packing import pack_batch, packed_mask

from test_pair_packing import tiny_bloom
from tiny_models import ARCHS, tiny_config

P_, E = 9, 0  # pad id, EOS id


def test_pack_batch_by_hand():
    # three rows of a PPO batch: left-padded prompts (P = 3), responses of T = 3 (pad after EOS)
    ids = torch.tensor([[P_, 5, 6, 7, E, P_],     # prompt 5 6, response 7 EOS
                        [4, 5, 6, 7, 8, E],       # prompt 4 5 6, response 7 8 EOS
                        [P_, P_, 3, E, P_, P_]])  # prompt 3, response EOS
    mask = (ids != P_).long()
    pb = pack_batch(ids, mask, capacity=8)
    # lengths 4, 6, 2: the best packing is two rows of 6 (12 slots for 12 tokens): the longest
    # alone, then rows 0 and 2 together
    assert pb.input_ids.tolist() == [[4, 5, 6, 7, 8, E], [5, 6, 7, E, 3, E]]
    assert pb.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1]]
    assert pb.segment.tolist() == [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]]
    L = 6
    # each original column -> its token's flat index; padding columns -> the nearest real token
    assert pb.where[0].tolist() == [L + 0, L + 0, L + 1, L + 2, L + 3, L + 3]
    assert pb.where[1].tolist() == [0, 1, 2, 3, 4, 5]
    assert pb.where[2].tolist() == [L + 4, L + 4, L + 4, L + 5, L + 5, L + 5]
    ok = packed_mask(pb.segment, "sdpa")[:, 0]
    assert ok[1, 5].nonzero().flatten().tolist() == [4, 5]  # the second sequence never sees the first
    assert ok[1, 3].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert ok[0, 5].nonzero().flatten().tolist() == list(range(6))
    pad_row = packed_mask(torch.tensor([[0, 0, -1, -1]]), "sdpa")[0, 0]
    assert pad_row[2].nonzero().flatten().tolist() == [2] and pad_row[1].tolist() == [True, True, False, False]
    additive = packed_mask(pb.segment, "eager")
    assert (additive == 0).equal(ok[:, None])


def batch(tokenizer, seed=0):
    """A PPO-shaped batch: left-padded prompts, responses of different lengths, pad after EOS."""
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


def models(arch, tokenizer, impl):
    torch.manual_seed(0)
    cfg = tiny_config(arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    policy = AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
    cfg.num_labels = 1
    critic = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=impl)
    return Models(policy.eval(), critic.eval(), critic, tokenizer, tokenizer)  # eval: no dropout, as in PPO


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_forwards_equal_padded_ones(arch, impl, tiny_tokenizer):
    m = models(arch, tiny_tokenizer, impl)
    s = batch(tiny_tokenizer)
    real = s.response_mask.bool()
    assert packing_agrees(m, s)
    for name, f in [("logits", lambda pk: policy_logits(m, m.policy, s.input_ids, s.attention_mask, 4, 0.7, pk)),
                    ("values", lambda pk: critic_values(m, s.input_ids, s.attention_mask, 4, pk))]:
        outs, grads = [], []
        for packed in (False, True):
            m.policy.zero_grad()
            m.critic.zero_grad()
            out = f(packed)
            (out[real].float() ** 2).mean().backward()  # a loss over the response tokens only, as PPO's
            outs.append(out[real].detach())
            grads.append(torch.cat([p.grad.flatten() for p in [*m.policy.parameters(), *m.critic.parameters()]
                                    if p.grad is not None]))
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4, msg=name)
        assert torch.isfinite(f(True)).all()  # padding columns too: they are masked, never NaN


def test_a_model_that_reads_positions_from_the_mask_is_not_packed(tiny_tokenizer):
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(tiny_bloom(tiny_tokenizer))
    critic = AutoModelForSequenceClassification.from_config(tiny_bloom(tiny_tokenizer, 1))
    m = Models(policy, critic, critic, tiny_tokenizer, tiny_tokenizer)
    assert not packing_agrees(m, batch(tiny_tokenizer))



def lfm2(tokenizer, num_labels=None):
    """A hybrid model: a short convolution layer (which never reads the attention mask) + attention."""
    cfg = Lfm2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention"],
                     initializer_range=0.5, max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id,
                     bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def equal_lengths(tokenizer, B=6, P=4, T=6):
    """Step 1 of a run: same-length prompts, no response stopped yet, so every sequence is as long
    as the others and the batch's own packing would give each its own row."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, len(tokenizer), (B, P + T), generator=g)
    mask = torch.ones_like(ids)
    assert pack_batch(ids, mask).input_ids.shape[0] == B  # one sequence per row: a probe there proves nothing
    return Samples(ids, mask, mask[:, P:].clone(), torch.zeros(B, T), P)


def test_the_check_shares_rows_even_when_the_batch_would_not(tiny_tokenizer, monkeypatch):
    # a conv layer mixes neighbouring sequences of a row; with one sequence per row, packed and
    # padded would agree, so the check must build rows that hold several sequences
    m = Models(lfm2(tiny_tokenizer), models("gpt2", tiny_tokenizer, "sdpa").critic, None, tiny_tokenizer, tiny_tokenizer)
    assert "conv" in packing_refusal(m.policy)
    monkeypatch.setattr(ppo, "packing_refusal", lambda model: None)  # the check alone must catch it
    assert not packing_agrees(m, equal_lengths(tiny_tokenizer))


def test_models_packing_cannot_serve_are_refused_up_front(tiny_tokenizer):
    common = dict(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=tiny_tokenizer.pad_token_id)
    windowed = AutoModelForCausalLM.from_config(MistralConfig(sliding_window=16, **common))
    assert "sliding-window" in packing_refusal(windowed)
    # a window short batches never reach: the check on them would pass, so it is refused by config
    m = Models(windowed, models("gpt2", tiny_tokenizer, "sdpa").critic, None, tiny_tokenizer, tiny_tokenizer)
    assert not packing_agrees(m, batch(tiny_tokenizer))
    assert packing_refusal(AutoModelForCausalLM.from_config(MistralConfig(sliding_window=None, **common))) is None
    assert packing_refusal(AutoModelForCausalLM.from_config(Qwen2Config(**common))) is None  # window off by default
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert "flash_attention_2" in packing_refusal(flash)


def test_pack_batch_refuses_a_mask_with_holes():
    ids = torch.arange(8).reshape(2, 4)
    with pytest.raises(ValueError, match="contiguous"):
        pack_batch(ids, torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0]]))
