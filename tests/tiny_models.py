"""Tiny random causal LMs of several architectures, built from a config (no download)."""
import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config)


def tiny_config(arch: str, vocab: int, eos: int, pad: int):
    common = dict(vocab_size=vocab, eos_token_id=eos, bos_token_id=eos, pad_token_id=pad)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=128, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=128, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=128, rotary_pct=0.5, **common)
    raise ValueError(arch)


ARCHS = ["gpt2", "llama", "qwen2", "gpt_neox"]


def tiny_model(arch: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    cfg = tiny_config(arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    return AutoModelForCausalLM.from_config(cfg).eval()
