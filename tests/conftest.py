"""Shared fixtures: tiny random models built from a config, never downloaded."""
import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# RLHF_TEST_THREADS runs the suite at another intra-op thread count (tests that need two set it)
torch.set_num_threads(int(os.environ.get("RLHF_TEST_THREADS") or min(2, os.cpu_count() or 1)))

TEXT = ["a charming and funny movie", "the acting is dull and the plot is thin",
        "one of the best films of the year", "i hated every minute of it", "a slow , tedious mess"]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<pad>", padding_side="left")
    return fast


PPO_PROMPTS = ["a charming", "the acting is", "i hated", "one of the best", "a slow", "the plot"]


@pytest.fixture(scope="session")
def ppo_dirs(tmp_path_factory, tiny_tokenizer):
    """A tiny random policy, a tiny random reward model (seq-classification) and a prompt file."""
    from transformers import AutoModelForSequenceClassification
    from tiny_models import tiny_model
    root = tmp_path_factory.mktemp("ppo")
    tiny_model("gpt2", tiny_tokenizer, 0).save_pretrained(root / "policy")
    rm_config = tiny_model("gpt2", tiny_tokenizer, 1).config
    rm_config.num_labels = 1
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(rm_config).save_pretrained(root / "rm")
    for name in ("policy", "rm"):
        tiny_tokenizer.save_pretrained(root / name)
    (root / "prompts.txt").write_text("\n".join(PPO_PROMPTS) + "\n")
    return root


@pytest.fixture
def two_threads():
    """Two intra-op threads for the test, whatever the machine (core.backends.threads halves them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
