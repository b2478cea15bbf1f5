"""core.backends.pair_packing: one row per preference pair scores exactly as two padded rows do."""
import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, BloomConfig, LlamaConfig,
                          MistralConfig)

from core.backends import select
from core.backends.forwards import PaddedForward
from core.backends.pair_packing import (CHOSEN, PAD, PREFIX, REJECTED, block_mask, pack_pairs, packed_scores,
                                        packing_works)
from core.models.heads import sequence_scores
from core.models.loading import disable_dropout
from core.models.scoring import pad_right

from core.config import RewardConfig
from core.reward.training import train_reward_model
from core.runtime.runs import read_status

from forward_checks import dtype_for, tolerance
from test_reward_training import synthetic_pairs, write_jsonl
from tiny_models import ARCHS, tiny_config

EOS, P = 0, 9


def test_pack_pairs_by_hand():
    # chosen: BOS 5 6 7 EOS; rejected: BOS 5 8 EOS -> shared prefix BOS 5 (p = 2)
    # second pair: the rejected is all prefix of the chosen (a truncated text can do that)
    b = pack_pairs([[EOS, 5, 6, 7, EOS], [EOS, 3, 4]], [[EOS, 5, 8, EOS], [EOS, 3]], pad_id=P)
    assert b.input_ids.tolist() == [[EOS, 5, 6, 7, EOS, 8, EOS], [EOS, 3, 4, P, P, P, P]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 2, 0, 0, 0, 0]]
    assert b.segment.tolist() == [[PREFIX, PREFIX, CHOSEN, CHOSEN, CHOSEN, REJECTED, REJECTED],
                                  [PREFIX, PREFIX, CHOSEN, PAD, PAD, PAD, PAD]]
    assert b.chosen_at.tolist() == [4, 2] and b.rejected_at.tolist() == [6, 1]

    ok = block_mask(b.segment, "sdpa")[:, 0]  # (B, L, L), True = attend
    # the rejected '8' (index 5) sees the prefix and itself, not the chosen 6 7 EOS
    assert ok[0, 5].nonzero().flatten().tolist() == [0, 1, 5]
    assert ok[0, 6].nonzero().flatten().tolist() == [0, 1, 5, 6]
    assert ok[0, 4].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]  # chosen: plain causal
    assert ok[1, 5].nonzero().flatten().tolist() == [5]  # a pad sees only itself (no empty softmax row)
    additive = block_mask(b.segment, "eager")
    assert (additive == 0).equal(ok[:, None]) and additive.min() == torch.finfo(torch.float32).min


def _pairs(tokenizer):
    prompts = ["this movie is", "the plot", "i hated"]
    chosen = [" a joy , really .", " works .", " nothing about it"]
    rejected = [" a chore .", " is thin and the acting is worse", " it"]
    enc = lambda p, r: tokenizer(p + r)["input_ids"] + [EOS]  # noqa: E731
    return [enc(p, c) for p, c in zip(prompts, chosen)], [enc(p, r) for p, r in zip(prompts, rejected)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_scores_equal_padded_scores(arch, impl, tiny_tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config(arch, len(tiny_tokenizer), EOS, tiny_tokenizer.pad_token_id)
    cfg.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=impl).eval().to(dtype_for(impl))
    atol, rtol = tolerance(model)
    chosen, rejected = _pairs(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    ids, mask = pad_right(chosen + rejected, pad)
    # GPT-2's forward reads the rows with its last-block shortcut (core.backends.gpt2.hidden_at);
    # the padded forward gives every other model's, and both must match the plain padded scores
    for fwd in (select(model), PaddedForward(model)):
        with torch.no_grad():
            plain = sequence_scores(model, ids, mask)
            packed = packed_scores(fwd, pack_pairs(chosen, rejected, pad))
        torch.testing.assert_close(packed, plain, atol=atol, rtol=rtol)
        assert packing_works(fwd, chosen, rejected, pad)

        # and the gradients agree too: training on packed rows is training on the plain ones
        grads = []
        for scores in (lambda: sequence_scores(model, ids, mask), lambda: packed_scores(fwd, pack_pairs(chosen, rejected, pad))):
            model.zero_grad()
            c, r = scores().chunk(2)
            torch.nn.functional.logsigmoid(c - r).mean().neg().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        torch.testing.assert_close(grads[1], grads[0], atol=atol, rtol=rtol)


def tiny_bloom(tokenizer, num_labels=None):
    # BLOOM builds its ALiBi position biases from the 2D attention mask: packed rows would be scored
    # wrongly by it, which is what the check must catch.
    torch.manual_seed(0)
    extra = {} if num_labels is None else {"num_labels": num_labels}
    return BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=4, eos_token_id=EOS,
                       bos_token_id=EOS, pad_token_id=tokenizer.pad_token_id, **extra)


def test_packing_works_says_no_for_a_model_that_reads_positions_from_the_mask(tiny_tokenizer):
    model = AutoModelForSequenceClassification.from_config(tiny_bloom(tiny_tokenizer, 1)).eval()
    chosen, rejected = _pairs(tiny_tokenizer)
    assert not packing_works(PaddedForward(model), chosen, rejected, tiny_tokenizer.pad_token_id)


def test_packing_works_says_no_for_a_sliding_window_model_even_on_pairs_inside_the_window(tiny_tokenizer):
    cfg = MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        sliding_window=64, pad_token_id=tiny_tokenizer.pad_token_id, num_labels=1)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    chosen, rejected = _pairs(tiny_tokenizer)
    assert max(map(len, chosen + rejected)) < 64  # packed == padded here, but not for longer pairs later
    assert not packing_works(PaddedForward(model), chosen, rejected, tiny_tokenizer.pad_token_id)


def test_dropout_is_off_everywhere_including_float_attention_rates():
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, attention_dropout=0.5, num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager").train()
    ids = torch.randint(1, 50, (2, 12))
    assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout on: two forwards differ
    disable_dropout(model)
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_training_falls_back_to_padding_where_packing_is_wrong(tmp_path, tiny_tokenizer):
    base = tmp_path / "bloom"
    AutoModelForCausalLM.from_config(tiny_bloom(tiny_tokenizer)).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    cfg = RewardConfig(base_model=str(base), data=write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(96)),
                       epochs=3, batch_size=16, learning_rate=3e-3, eval_every=0, val_fraction=0.25,
                       output_dir=str(tmp_path / "run"))
    st = read_status(train_reward_model(cfg))
    assert st["state"] == "finished" and st["packed_pairs"] is False
    assert st["val_accuracy"] >= 0.9  # padded rows, scored right
