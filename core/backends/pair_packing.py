"""Score a preference pair in ONE row: the shared prompt once, then chosen, then rejected.

Chosen and rejected texts start with the same prompt. Padding both to the batch's longest row
and running the prompt twice wastes ~20% of a reward-model step on the rt-polarity pairs
(benchmarks/bench_reward.py). Instead each pair becomes one row

    [ prefix | chosen rest | rejected rest | pad ... ]
    positions   0..p-1 | p..p+c-1 | p..p+r-1

with a block mask: causal everywhere, except that the rejected tokens do not see the chosen
ones. Every token then sees exactly what it would see in its own sequence at the same position,
so the scores are the plain ones up to float rounding (tests/test_reward_training.py checks it).

The prefix is the longest common prefix of the two token lists (not the tokenized prompt), so a
BPE merge across the prompt/response boundary cannot make the shared part wrong.

It needs a model whose attention takes a custom 4D mask and whose positions come from
position_ids (GPT-2, Llama, Qwen, Mistral, ... in transformers 5). `packing_works` checks a
model on real rows before training relies on it; the trainer falls back to padding otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.heads import at_least_fp32, packing_refusal, score_head, sequence_scores
from ..models.scoring import pad_right

PREFIX, CHOSEN, REJECTED, PAD = 0, 1, 2, 3  # segment of each position in a packed row


def shared_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def packed_length(chosen: list[int], rejected: list[int]) -> int:
    """Tokens of the packed row: what a batch's padding is set by."""
    return len(chosen) + len(rejected) - shared_prefix_len(chosen, rejected)


@dataclass
class PackedPairs:
    input_ids: torch.Tensor     # (B, L) prefix, chosen rest, rejected rest, then pad
    position_ids: torch.Tensor  # (B, L) each token's position in its own (unpacked) sequence
    segment: torch.Tensor       # (B, L) PREFIX / CHOSEN / REJECTED / PAD
    chosen_at: torch.Tensor     # (B,) index of chosen's last token (its EOS)
    rejected_at: torch.Tensor   # (B,) index of rejected's last token

    def to(self, device) -> "PackedPairs":
        return PackedPairs(*(t.to(device) for t in (self.input_ids, self.position_ids, self.segment,
                                                    self.chosen_at, self.rejected_at)))


def pack_pairs(chosen: list[list[int]], rejected: list[list[int]], pad_id: int) -> PackedPairs:
    B = len(chosen)
    L = max(packed_length(c, r) for c, r in zip(chosen, rejected))
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    pos = torch.zeros((B, L), dtype=torch.long)
    seg = torch.full((B, L), PAD, dtype=torch.long)
    c_at, r_at = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    for i, (c, r) in enumerate(zip(chosen, rejected)):
        p = shared_prefix_len(c, r)
        n = len(c) + len(r) - p
        ids[i, :n] = torch.tensor(c + r[p:], dtype=torch.long)
        pos[i, :n] = torch.tensor(list(range(len(c))) + list(range(p, len(r))), dtype=torch.long)
        seg[i, :n] = torch.tensor([PREFIX] * p + [CHOSEN] * (len(c) - p) + [REJECTED] * (len(r) - p))
        c_at[i] = len(c) - 1
        r_at[i] = n - 1 if len(r) > p else p - 1  # a rejected that is all prefix ends inside it
    return PackedPairs(ids, pos, seg, c_at, r_at)


def block_mask(segment: torch.Tensor, attn_implementation: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L) segments -> (B, 1, L, L) mask: causal, no rejected -> chosen, pads apart.

    A pad attends only to itself, so no softmax row is empty. sdpa takes a boolean mask (True =
    attend); eager adds the mask to the scores, so it gets 0 / the most negative float.
    """
    L = segment.shape[1]
    q, k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment.device).tril()
    ok = causal & ((k == PREFIX) | (q == k)) & (q != PAD) & (k != PAD)
    ok |= torch.eye(L, dtype=torch.bool, device=segment.device)
    ok = ok[:, None]  # (B, 1, L, L)
    if attn_implementation == "sdpa":
        return ok
    return torch.zeros(ok.shape, device=ok.device, dtype=dtype).masked_fill(~ok, torch.finfo(torch.float32).min)


def packed_scores(fwd, batch: PackedPairs) -> torch.Tensor:
    """(2B,) scores: the B chosen, then the B rejected, read at each text's last token. `fwd`: the
    reward model's forward (core.backends.forwards), whose hidden_at reads the positions."""
    model = fwd.model
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    at = torch.stack([batch.chosen_at, batch.rejected_at], 1)  # (B, 2)
    hidden = fwd.hidden_at(batch.input_ids, block_mask(batch.segment, impl, model.dtype), batch.position_ids, at)  # (B, 2, H)
    return at_least_fp32(score_head(model)(hidden.transpose(0, 1).flatten(0, 1)).squeeze(-1))  # (2B,)


@torch.no_grad()
def packing_works(fwd, chosen: list[list[int]], rejected: list[list[int]], pad_id: int,
                  device=None, atol: float = 1e-3) -> bool:
    """Do packed rows score as the plain padded rows do, for this model? (A model that reads
    positions from the 2D mask, or ignores 4D masks, would fail here instead of training wrong.)
    Models that packing cannot serve by construction (models.heads.packing_refusal) are not even tried."""
    model = fwd.model
    if packing_refusal(model):
        return False
    was_training = model.training
    model.eval()
    try:
        packed = packed_scores(fwd, pack_pairs(chosen, rejected, pad_id).to(device))
        plain = sequence_scores(model, *pad_right(chosen + rejected, pad_id, device))  # the padded reference
        return bool(torch.allclose(packed, plain, atol=atol, rtol=1e-3))
    except Exception:  # noqa: BLE001 - any failure of the packed forward means: do not pack
        return False
    finally:
        model.train(was_training)
