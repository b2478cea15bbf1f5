"""core.backends.forwards: packed rows give the padded forward's numbers, and `select` picks a
forward per model once, checking it on real data and falling back to padding where it disagrees."""
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Lfm2Config, MistralConfig, Qwen2Config

from core.backends import Probe, forwards, select
from core.backends.forwards import GPT2Forward, PackedForward, PaddedForward
from core.backends.seq_packing import pack_batch, packed_mask
from core.models.generation import Samples
from core.models.heads import packing_refusal

from forward_checks import assert_same, batch, tiny_pair
from test_pair_packing import tiny_bloom
from tiny_models import ARCHS

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


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_forwards_equal_padded_ones(arch, impl, tiny_tokenizer):
    policy, critic = tiny_pair(arch, tiny_tokenizer, impl)
    s = batch(tiny_tokenizer)
    assert forwards.agrees(PackedForward(policy), Probe(s.input_ids, s.attention_mask, 4))
    assert_same(lambda m: PackedForward(m, always=True), PaddedForward, policy, critic, s)
    values = PackedForward(critic, always=True).values(s.input_ids, s.attention_mask, 4)
    assert torch.isfinite(values).all()  # padding columns too: they are masked, never NaN


def test_select_takes_the_fastest_forward_the_model_allows(tiny_tokenizer):
    s = batch(tiny_tokenizer)
    probe = Probe(s.input_ids, s.attention_mask, 4)
    for arch, kind in (("gpt2", GPT2Forward), ("llama", PackedForward), ("qwen2", PackedForward)):
        policy, critic = tiny_pair(arch, tiny_tokenizer)
        assert type(select(policy, probe)) is kind and type(select(critic, probe)) is kind, arch
    assert type(select(policy, probe, prefer="padded")) is PaddedForward


def test_a_model_that_reads_positions_from_the_mask_is_padded(tiny_tokenizer):
    torch.manual_seed(0)
    s = batch(tiny_tokenizer)
    probe = Probe(s.input_ids, s.attention_mask, 4)
    policy = AutoModelForCausalLM.from_config(tiny_bloom(tiny_tokenizer)).eval()
    critic = AutoModelForSequenceClassification.from_config(tiny_bloom(tiny_tokenizer, 1)).eval()
    for model in (policy, critic):
        assert forwards.candidate(model).name == "packed"  # nothing in its config says no
        fwd = select(model, probe)  # but its numbers on the probe do
        assert fwd.name == "padded" and "disagreed" in fwd.reason


def lfm2(tokenizer):
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


def test_the_check_shares_rows_even_when_the_batch_would_not(tiny_tokenizer):
    # a conv layer mixes neighbouring sequences of a row; with one sequence per row, packed and
    # padded would agree, so the check must build rows that hold several sequences
    model = lfm2(tiny_tokenizer)
    assert "conv" in packing_refusal(model)
    assert select(model).name == "padded"  # refused by its config, before any check
    s = equal_lengths(tiny_tokenizer)
    assert not forwards.agrees(PackedForward(model), Probe(s.input_ids, s.attention_mask, 4))  # the check alone catches it


def test_models_packing_cannot_serve_are_refused_up_front(tiny_tokenizer):
    common = dict(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=tiny_tokenizer.pad_token_id)
    windowed = AutoModelForCausalLM.from_config(MistralConfig(sliding_window=16, **common))
    assert "sliding-window" in packing_refusal(windowed)
    # a window short batches never reach: the check on them would pass, so it is refused by config
    fwd = select(windowed, Probe(*(lambda s: (s.input_ids, s.attention_mask, 4))(batch(tiny_tokenizer))))
    assert fwd.name == "padded" and "sliding-window" in fwd.reason
    assert packing_refusal(AutoModelForCausalLM.from_config(MistralConfig(sliding_window=None, **common))) is None
    assert packing_refusal(AutoModelForCausalLM.from_config(Qwen2Config(**common))) is None  # window off by default
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert "flash_attention_2" in packing_refusal(flash)


def test_pack_batch_refuses_a_mask_with_holes():
    ids = torch.arange(8).reshape(2, 4)
    with pytest.raises(ValueError, match="contiguous"):
        pack_batch(ids, torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0]]))
