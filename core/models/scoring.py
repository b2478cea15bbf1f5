"""The one scoring convention of the workbench, shared by reward training and PPO.

A reward model reads   prompt tokens (with whatever the tokenizer adds in front, e.g. BOS)
                     + response tokens
                     + EOS
and its score is the head at the last attended position, which is that EOS. Prompt and response
are tokenized separately and concatenated, so the prompt's tokens never depend on the response (no
BPE merge across the boundary) and a too-long text is cut inside the response, never the prompt:
a reward for a response to a prompt it never saw would be meaningless.

Rows are padded on the right. Positions are still found from the attention mask (see
core.models.heads.sequence_scores), but right padding with a pad token distinct from EOS also makes a
plain `AutoModelForSequenceClassification(**batch)` forward pick the same position, so a saved
reward model scores the same in any transformers code.
"""
from __future__ import annotations

import torch

from .heads import sequence_scores


class PromptTooLongError(ValueError):
    """A prompt leaves no room for a response token and EOS within max_length."""


def tokenize_for_scoring(tokenizer, prompts: list[str], responses: list[str], max_length: int,
                         ) -> tuple[list[list[int]], int]:
    """Token ids of prompt + response + EOS per row (unpadded) and how many responses were truncated.

    Raises PromptTooLongError naming the offending rows when a prompt (plus EOS and at least one
    response token) does not fit in max_length.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; the score is read at the EOS that ends the response")
    if not prompts:
        return [], 0
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    too_long = [i for i, p in enumerate(p_ids) if len(p) + 2 > max_length]
    if too_long:
        longest = max(len(p_ids[i]) for i in too_long)
        raise PromptTooLongError(
            f"{len(too_long)} prompt(s) do not fit in max_length={max_length} tokens with a response and EOS "
            f"(longest prompt: {longest} tokens, e.g. {prompts[too_long[0]][:60]!r}); "
            f"raise max_length to at least {longest + 2} or shorten the prompts")
    seqs, n_truncated = [], 0
    for p, r in zip(p_ids, r_ids):
        room = max_length - len(p) - 1  # the final EOS always fits
        if len(r) > room:
            r, n_truncated = r[:room], n_truncated + 1
        seqs.append(p + r + [eos])
    return seqs, n_truncated


def pad_right(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest row of this batch only (dynamic padding): (B, L) ids and mask."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def format_for_scoring(tokenizer, prompts: list[str], responses: list[str], max_length: int,
                       device=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, n_truncated): right-padded prompt + response + EOS rows."""
    seqs, n_truncated = tokenize_for_scoring(tokenizer, prompts, responses, max_length)
    if not seqs:
        empty = torch.zeros((0, 0), dtype=torch.long, device=device)
        return empty, empty.clone(), 0
    ids, mask = pad_right(seqs, pad_id_of(tokenizer), device)
    return ids, mask, n_truncated


def scoring_max_length(model, default: int = 96) -> int:
    """The max_length a reward model was trained with (stored in its config), else `default`."""
    return int(getattr(model.config, "score_max_length", None) or default)


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list[str], responses: list[str], max_length: int | None = None,
                batch_size: int = 64, forward=None) -> torch.Tensor:
    """Raw scores (B,) of prompt/response pairs under a reward model, on CPU, in input order.

    Rows are scored in length-sorted batches so short rows are not padded to the longest one.
    `forward`: a core.backends forward of `model` whose `scores` to use (None: the model's own
    forward, models.heads.sequence_scores).
    """
    scores = forward.scores if forward is not None else (lambda ids, mask: sequence_scores(model, ids, mask))
    max_length = max_length or scoring_max_length(model)
    device = next(model.parameters()).device
    seqs, _ = tokenize_for_scoring(tokenizer, prompts, responses, max_length)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            ids, mask = pad_right([seqs[j] for j in idx], pad_id_of(tokenizer), device)
            out[idx] = scores(ids, mask).float().cpu()
    finally:
        model.train(was_training)
    return out
