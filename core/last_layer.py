"""Hidden states at a few positions, with the last block run only where they are read.

A reward model reads one position per text (its last token), but a plain forward runs every
block at every position. Only the last block's *keys and values* are needed everywhere; its
query, attention output, MLP and the final norm matter only at the scored positions. Running
just those is exact (the same arithmetic, fewer rows) and skips ~1/n_layer of the FLOPs: on the
6-block embedded model a reward-training forward + backward took 10-12% less time (session 8).

The shortcut needs the block's internals, so it serves GPT-2 (the embedded model's family) and
every other model takes the plain forward. `hidden_at` returns the same values either way; the
tests compare scores and gradients of both paths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from . import onednn
from .models import backbone, plain_gpt2_attention


def _gpt2_shortcut_ok(model) -> bool:
    """GPT-2 with the attention the shortcut reimplements, and a plain Conv1D qkv projection (the
    shortcut reads its weight; an adapter wrapped around it would be skipped)."""
    return (plain_gpt2_attention(model.config) and len(backbone(model).h) > 0
            and type(backbone(model).h[-1].attn.c_attn) in (Conv1D, onednn.GPT2Conv1D))


def _gpt2_hidden_at(model, input_ids, mask, position_ids, at) -> torch.Tensor:
    tr = backbone(model)
    h = tr.drop(tr.wte(input_ids) + tr.wpe(position_ids))  # (B, L, H), as GPT2Model starts
    for block in tr.h[:-1]:
        h = block(h, attention_mask=mask, position_ids=position_ids)
    last, B, H = tr.h[-1], h.shape[0], h.shape[-1]
    attn, nh = last.attn, last.attn.num_heads
    rows = torch.arange(B, device=h.device)[:, None]
    x = last.ln_1(h)  # (B, L, H)
    w, b = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: y = x @ w + b, w (H, 3H) = [q | k | v]
    kv = onednn.linear(x, w[:, H:].t(), b[H:]).view(B, -1, 2, nh, H // nh)  # (B, L, 2, nh, d)
    k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, nh, L, d)
    q = onednn.linear(x[rows, at], w[:, :H].t(), b[:H]).view(B, -1, nh, H // nh).transpose(1, 2)  # (B, nh, k, d)
    sel_mask = mask[rows, :, at].transpose(1, 2)  # (B, 1, k, L): the scored rows of the mask
    if sel_mask.dtype != torch.bool:  # eager's additive mask (0 = attend); sdpa wants bool or q's dtype
        sel_mask = sel_mask == 0
    p = attn.attn_dropout.p if model.training else 0.0
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=sel_mask, dropout_p=p)  # (B, nh, k, d)
    a = attn.resid_dropout(attn.c_proj(a.transpose(1, 2).reshape(B, -1, H)))
    y = h[rows, at] + a  # (B, k, H)
    y = y + last.mlp(last.ln_2(y))
    return tr.ln_f(y)


def hidden_at(model, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
              at: torch.Tensor) -> torch.Tensor:
    """(B, L) tokens with a 4D mask (B, 1, L, L) in the model's attention format -> the final
    hidden states at positions `at` (B, k): (B, k, H)."""
    if _gpt2_shortcut_ok(model):
        return _gpt2_hidden_at(model, input_ids, mask, position_ids, at)
    hidden = backbone(model)(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                             use_cache=False).last_hidden_state  # (B, L, H)
    return hidden[torch.arange(len(hidden), device=hidden.device)[:, None], at]
