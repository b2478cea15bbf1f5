"""The PPO models' forwards on a batch of rollouts: padding-free, packed, or padded.

GPT-2 models take core.varlen (per-token layers on the real tokens only). Other models take
packed rows (core.seq_packing) where the first batch shows they give the padded numbers, else
the padded batch. One plan per set of rows serves the policy, reference and critic forwards.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import rl, varlen
from .generation import Samples, response_logits, scaled
from .models import packing_refusal, score_head, token_scores
from .seq_packing import PackedBatch, pack_batch, packed_hidden, unpack

if TYPE_CHECKING:
    from .ppo import Models

PACK_IF_BELOW = 0.9  # pack a batch when that leaves under 90% of its padded slots (else the gathers cost more)


Packing = bool | PackedBatch | varlen.Layout | None
# None: as the run decided; True / False: force packed rows / padding; a PackedBatch or a Layout: use it


def _packing(m: Models, ids: torch.Tensor, mask: torch.Tensor, packed: Packing):
    """The packed batch to use, or None for the padded forward. `packed` overrides the model check
    and the gain test (the equivalence tests compare both paths on the same batch)."""
    if isinstance(packed, PackedBatch):
        return packed
    if not (m.packed if packed is None else packed):
        return None
    pb = pack_batch(ids, mask)
    return pb if packed or pb.input_ids.numel() < PACK_IF_BELOW * ids.numel() else None


def response_layout(mask: torch.Tensor, P: int) -> varlen.Layout:
    """The padding-free layout reading the positions that predict a real response token."""
    read = torch.zeros_like(mask, dtype=torch.bool)
    read[:, P - 1:-1] = mask[:, P:].bool()
    return varlen.make_layout(mask, read)


def _plan(m: Models, model, ids: torch.Tensor, mask: torch.Tensor, P: int, packed: Packing):
    """How `model` runs these rows: a varlen.Layout (GPT-2, unless `packed` forces a path), a
    PackedBatch, or None (padded)."""
    if (packed is None or isinstance(packed, varlen.Layout)) and varlen.supported(model):
        return packed or response_layout(mask, P)
    return _packing(m, ids, mask, None if isinstance(packed, varlen.Layout) else packed)


def shared_plan(m: Models, ids: torch.Tensor, mask: torch.Tensor, P: int) -> Packing:
    """One plan for the policy's, reference's and critic's forwards on the same rows, made once."""
    if any(map(varlen.supported, (m.policy, m.critic))):
        return response_layout(mask, P)  # a model that cannot take it falls back in _plan
    return _packing(m, ids, mask, None) or False


def policy_logits(m: Models, model, ids: torch.Tensor, mask: torch.Tensor, P: int, temperature: float,
                  packed: Packing = None) -> torch.Tensor:
    """(B, P + T) -> (B, T, V): the logits that predicted each response token (0 after a row's end
    on the padding-free path; the losses mask those)."""
    plan = _plan(m, model, ids, mask, P, packed)
    cols = slice(P - 1, ids.shape[1] - 1)
    if isinstance(plan, varlen.Layout):
        return varlen.to_grid(_read_logits(model, ids, plan, temperature), plan, ids.shape[1], cols)
    if plan is None:
        return response_logits(model, ids, mask, P, temperature)
    hidden = unpack(packed_hidden(model, plan), plan, cols)  # (B, T, H)
    return scaled(model.get_output_embeddings()(hidden), temperature)


def _read_logits(model, ids: torch.Tensor, lay: varlen.Layout, temperature: float) -> torch.Tensor:  # (M, V)
    return scaled(model.get_output_embeddings()(varlen.read_hidden(model, ids, lay)), temperature)


def policy_logprobs(m: Models, model, ids: torch.Tensor, mask: torch.Tensor, P: int, temperature: float,
                    packed: Packing = None, entropy: bool | None = None):
    """(B, P + T) -> (B, T) logprobs of the response tokens, and their next-token distributions'
    (B, T) entropies if `entropy` is not None (False: for the record, outside the autograd graph).
    On the padding-free path the (M, V) logits of the real positions never become a (B, T, V)
    grid: no padded rows in the softmaxes, no grid to fill and scatter."""
    plan = _plan(m, model, ids, mask, P, packed)
    if not isinstance(plan, varlen.Layout):
        logits = policy_logits(m, model, ids, mask, P, temperature, plan if plan is not None else False)
        lp = rl.logprobs_from_logits(logits, ids[:, P:])
        return lp, None if entropy is None else _entropy(logits, entropy)
    logits = _read_logits(model, ids, plan, temperature)  # (M, V)
    C, cols = ids.shape[1], slice(P - 1, ids.shape[1] - 1)
    lp = rl.logprobs_from_logits(logits, ids.flatten()[plan.read_flat + 1])  # (M,): the token each position predicts
    ent = None if entropy is None else varlen.to_grid(_entropy(logits, entropy), plan, C, cols)
    return varlen.to_grid(lp, plan, C, cols), ent


def _entropy(logits: torch.Tensor, grad: bool) -> torch.Tensor:
    """Entropies of (..., V) logits; without `grad` the softmax stays out of the backward graph."""
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        z = logits if grad else logits.detach()
        return rl.entropy_from_logits(z, torch.ones(z.shape[:-1], device=z.device))


def critic_values(m: Models, ids: torch.Tensor, mask: torch.Tensor, P: int, packed: Packing = None) -> torch.Tensor:
    """(B, P + T) -> (B, T): V of the state each response token was sampled from."""
    plan = _plan(m, m.critic, ids, mask, P, packed)
    cols = slice(P - 1, ids.shape[1] - 1)
    if isinstance(plan, varlen.Layout):
        values = score_head(m.critic)(varlen.read_hidden(m.critic, ids, plan)).squeeze(-1).float()  # (M,)
        return varlen.to_grid(values, plan, ids.shape[1], cols)
    if plan is None:
        return token_scores(m.critic, ids, mask)[:, cols]
    return score_head(m.critic)(unpack(packed_hidden(m.critic, plan), plan, cols)).squeeze(-1).float()


@torch.no_grad()
def packing_agrees(m: Models, samples: Samples, atol: float = 1e-3) -> bool:
    """Do the packed forwards give the padded ones' sampled-token logprobs and values on this
    batch (fp32)? A model that reads positions from the 2D mask (BLOOM's ALiBi), ignores 4D masks,
    or scales its logits outside the LM head would disagree here, and the run then pads. Rows
    hold up to twice the longest sequence, so sequences share rows even when the batch's own
    packing would give each its own row (then both paths compute the same thing and prove nothing)."""
    if any(packing_refusal(model) for model in (m.policy, m.critic)):
        return False
    ids, mask, P = samples.input_ids, samples.attention_mask, samples.prompt_len
    real = samples.response_mask.bool()
    try:
        shared = pack_batch(ids, mask, capacity=2 * int(mask.sum(1).max()), fewest_slots=False)
        for f in (lambda pk: rl.logprobs_from_logits(policy_logits(m, m.policy, ids, mask, P, 1.0, packed=pk),
                                                     samples.responses),
                  lambda pk: critic_values(m, ids, mask, P, packed=pk)):
            if not torch.allclose(f(shared)[real], f(False)[real], atol=atol, rtol=1e-3):
                return False
        return True
    except Exception:  # noqa: BLE001 - any failure of the packed forward means: do not pack
        return False
