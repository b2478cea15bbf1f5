"""Loading the four models of RLHF: policy, frozen reference, critic and reward model.

Everything is a plain Hugging Face model: the policy an AutoModelForCausalLM, the reward model
and the critic an AutoModelForSequenceClassification with num_labels=1. The critic uses the same
class as the reward model (DeepSpeed-Chat initialises it from the reward model), but reads the
score head at every position instead of only the last one. So whatever we save loads with plain
transformers, and any causal LM transformers loads, we can train. Loaders load and move to the device, nothing more: the CPU
kernels are applied by core.backends.optimize, once, by whoever sets a run up.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from ..config import DEFAULT_MODEL
from .device import pick_device


def check_model_dir(path: str) -> None:
    """A clear error for a path that is neither a model directory nor plausibly a hub id."""
    p = Path(path)
    if p.exists() and not (p / "config.json").exists():
        raise ValueError(f"{path} is not a Hugging Face model directory (no config.json)")
    if not p.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise ValueError(f"model directory {path} does not exist")


def load_tokenizer(path: str = DEFAULT_MODEL):
    """Tokenizer with a pad token and left padding (generation pads prompts on the left).

    Models without a pad token get their EOS as pad. That is safe here because nothing in the
    workbench finds positions by comparing with pad_token_id: masks carry that information.
    """
    check_model_dir(path)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise ValueError(f"{path}: the tokenizer has no EOS token; set one before using it for RLHF")
    tok.padding_side = "left"
    return tok


def load_policy(path: str = DEFAULT_MODEL, device: torch.device | None = None, trainable: bool = True):
    check_model_dir(path)
    config = AutoConfig.from_pretrained(path)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{path} is an encoder-decoder model; the workbench trains causal LMs")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except ValueError as e:
        raise ValueError(f"{path} is not a causal language model: {e}") from None
    model.to(device or pick_device())
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    model.train(trainable)
    model.requires_grad_(trainable)
    return model


def load_reference(path: str = DEFAULT_MODEL, device: torch.device | None = None):
    """A frozen copy of the initial policy."""
    return load_policy(path, device, trainable=False).eval()


def load_scalar_model(path: str, device: torch.device | None = None, trainable: bool = False,
                      pad_token_id: int | None = None):
    """A reward model or critic: AutoModelForSequenceClassification with one output.

    From a causal LM directory the score head is freshly initialised; from a reward model it is
    loaded. Positions are found from attention masks, so pad_token_id only has to exist.
    """
    check_model_dir(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id if pad_token_id is not None else model.config.eos_token_id
    model.to(device or pick_device())
    model.train(trainable)
    model.requires_grad_(trainable)
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere: nn.Dropout modules and the float rates attention modules keep
    (Llama-style attention reads `self.attention_dropout` in training mode)."""
    for sub in model.modules():
        if isinstance(sub, torch.nn.Dropout):
            sub.p = 0.0
        for name in ("attention_dropout", "attn_dropout", "dropout"):
            if isinstance(getattr(sub, name, None), float):
                setattr(sub, name, 0.0)
