"""Reading a model's outputs: the transformer under its head, the score head, values and rewards.

The reward model and the critic are one class, AutoModelForSequenceClassification with one
output. The reward model's score is its head at the last attended position of a text; the
critic's value of a state is the same head read at every position. These are the reference
forwards, the model's own `forward` on padded rows; core.backends has faster ones that give the
same numbers.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..rl import last_token_index


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    """The transformer under a task head (GPT2's `transformer`, Llama's `model`, ...)."""
    return getattr(model, model.base_model_prefix)


def score_head(model: PreTrainedModel) -> torch.nn.Module:
    """The linear head of a sequence-classification model (`score` for decoder-only models)."""
    for name in ("score", "classifier"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} has no score head")


def has_lm_head(model) -> bool:
    """A causal LM (logits over the vocabulary), as opposed to a scalar-head model."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    return head is not None


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 outputs upcast to fp32 for the losses; fp32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def position_ids_from(mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only attended tokens, so left padding does not shift a sequence."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def token_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head applied at every position: (B, L) -> (B, L). Critic values per token."""
    hidden = backbone(model)(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids_from(attention_mask), use_cache=False).last_hidden_state
    return at_least_fp32(score_head(model)(hidden).squeeze(-1))  # (B, L)


def sequence_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward: the head at the last attended position of each row. (B, L) -> (B,).

    Found from the attention mask rather than pad_token_id, so it is right for either padding
    side and for models whose pad token equals EOS (where EOS ends every scored text).
    """
    scores = token_scores(model, input_ids, attention_mask)  # (B, L)
    return scores.gather(1, last_token_index(attention_mask).clamp(min=0)[:, None]).squeeze(1)


def packing_refusal(model: PreTrainedModel) -> str | None:
    """Why this model cannot run packed rows (core.backends.seq_packing, pair_packing), or None.

    Packing hands the model a custom 4D mask and restarted position_ids. That is exact only for
    full attention through sdpa or eager: flash-attention reads a 4D float mask as a padding mask
    (on CUDA an out-of-range index, which kills the context), a sliding window lives in the mask
    transformers builds and would be dropped, and conv / SSM / linear-attention layers ignore
    masks and mix neighbouring sequences. A check on one batch cannot see these reliably (short
    sequences fit any window), so they are refused up front."""
    cfg = model.config
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} (packing needs sdpa or eager)"
    kinds = set(getattr(cfg, "layer_types", None) or [])
    if kinds - {"full_attention"}:
        return f"layer types {sorted(kinds)} (packing needs full attention in every layer)"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) is not False:
        return f"sliding-window attention (window {cfg.sliding_window})"
    return None
