"""Padding-free GPT-2 forwards for PPO: every per-token layer runs on the tokens that matter only.

A PPO batch is left-padded prompts followed by responses that end at different lengths, so
15-20% of a (B, P + T) forward is padding. core.seq_packing removes padding for any model by
laying sequences end to end in shared rows, but PPO's sequences are of similar length (25-30
tokens on the embedded model), rarely share a row, and packing saves ~6% of slots there.

Here, for GPT-2 (the embedded model's family), the layers that work token by token (layer norms
and the qkv, projection and MLP matmuls: nearly all the FLOPs) run on a flat (N, H) list of
tokens. Only attention sees a padded layout: each sequence left-aligned in a row of its own,
where a plain causal mask is exact (a real query never sees the pad slots to its right).

The tokens that matter are the real ones up to the last position whose output is read. PPO reads
the outputs that predict response tokens, so each sequence's last token (usually its EOS) feeds
no read output and is dropped. The last block computes keys and values at every kept token but
its projection, MLP and final norm only at the read positions (as core.last_layer does).

The same arithmetic on fewer rows: the tests compare logits, values and gradients with the
model's own padded forward. Other architectures take core.ppo_forwards' packed or padded forwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .models import backbone, plain_gpt2_attention
from .rl import last_token_index


@dataclass
class Layout:
    """Where each kept token of a (B, C) batch goes. N kept tokens, M read positions."""
    tokens: torch.Tensor     # (N,) flat index into (B * C) of each kept token, row by row
    positions: torch.Tensor  # (N,) its position id (attended tokens before it in its row)
    slots: torch.Tensor      # (N,) flat index into (B * L) of its attention slot: (row, position)
    reads: torch.Tensor      # (M,) index into the N kept tokens of each read position
    read_flat: torch.Tensor  # (M,) flat index into (B * C) of each read position, row by row
    B: int
    L: int                   # the longest kept run: attention rows are this long


def supported(model) -> bool:
    """GPT-2 with the textbook attention these forwards reimplement (LoRA-wrapped too: the layers
    are called as modules, so adapters and disable_adapter() apply as in the model's forward)."""
    return plain_gpt2_attention(model.config) and hasattr(backbone(model), "h")


def make_layout(attention_mask: torch.Tensor, read: torch.Tensor) -> Layout:
    """attention_mask: (B, C) 1 at attended tokens; read: (B, C) bool, the positions whose final
    hidden state is wanted (attended ones). Positions count attended tokens, as in generation."""
    B, C = attention_mask.shape
    mask = attention_mask.bool()
    if (read & ~mask).any():
        raise ValueError("a read position must be an attended token")
    col = torch.arange(C, device=mask.device)
    last_read = last_token_index(read)  # (B,)
    keep = mask & (col <= last_read[:, None])  # (B, C): later tokens feed no read output
    pos = mask.long().cumsum(1) - 1  # (B, C)
    tokens = keep.flatten().nonzero().squeeze(1)  # (N,)
    positions = pos.flatten()[tokens]
    L = int(positions.max()) + 1 if len(tokens) else 1
    slots = tokens // C * L + positions
    index_of = torch.full((B * C,), -1, dtype=torch.long, device=mask.device)
    index_of[tokens] = torch.arange(len(tokens), device=mask.device)
    read_flat = read.flatten().nonzero().squeeze(1)  # (M,)
    return Layout(tokens, positions, slots, index_of[read_flat], read_flat, B, L)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v for (B, nh, L, d) rows, as two batched matmuls.

    Why not F.scaled_dot_product_attention: at PPO's row lengths (L ~ 25-30) its CPU flash kernel
    is mostly blocking overhead. Forward + backward at (16, 8, 28, 32): 3.1 ms for sdpa against
    1.6 ms here (2 threads); ~3% of a PPO step on the 2-core machine (per-step A/B in one run).
    """
    B, nh, L, d = q.shape
    mask = torch.full((L, L), float("-inf"), device=q.device, dtype=q.dtype).triu_(1)  # (L, L) 0 on and below the diagonal
    scores = torch.baddbmm(mask.expand(B * nh, L, L), q.reshape(B * nh, L, d),
                           k.reshape(B * nh, L, d).transpose(1, 2), alpha=d ** -0.5)  # (B * nh, L, L)
    return torch.bmm(scores.softmax(-1), v.reshape(B * nh, L, d)).view(B, nh, L, d)


def _attention(attn, x: torch.Tensor, lay: Layout, training: bool) -> torch.Tensor:
    """GPT-2 self-attention of (N, H) normed inputs, before the output projection: (N, H)."""
    N, H = x.shape
    nh = attn.num_heads
    qkv = attn.c_attn(x)  # (N, 3H)
    grid = qkv.new_zeros(lay.B * lay.L, 3 * H).index_copy(0, lay.slots, qkv)  # (B * L, 3H), pad slots 0
    q, k, v = grid.view(lay.B, lay.L, 3, nh, H // nh).permute(2, 0, 3, 1, 4)  # each (B, nh, L, d)
    p = attn.attn_dropout.p if training else 0.0
    y = causal_attention(q, k, v) if p == 0 else F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
    return y.transpose(1, 2).reshape(lay.B * lay.L, H)[lay.slots]  # (N, H)


def read_hidden(model, input_ids: torch.Tensor, lay: Layout) -> torch.Tensor:
    """The final hidden states (after ln_f) at the layout's read positions: (M, H)."""
    tr = backbone(model)
    x = tr.drop(tr.wte(input_ids.flatten()[lay.tokens]) + tr.wpe(lay.positions))  # (N, H)
    for i, block in enumerate(tr.h):
        a = _attention(block.attn, block.ln_1(x), lay, model.training)  # (N, H)
        if i == len(tr.h) - 1:  # the last block goes on at the read positions only
            x, a = x[lay.reads], a[lay.reads]  # (M, H)
        x = x + block.attn.resid_dropout(block.attn.c_proj(a))
        x = x + block.mlp(block.ln_2(x))
    return tr.ln_f(x)


def to_grid(values: torch.Tensor, lay: Layout, C: int, cols: slice) -> torch.Tensor:
    """(M, ...) values at the read positions -> (B, len(cols), ...) in the batch's columns `cols`
    (columns not read hold 0). Every read position must fall inside `cols`."""
    start, stop = cols.start or 0, C if cols.stop is None else cols.stop
    if stop < 0:
        stop += C
    row, col = lay.read_flat // C, lay.read_flat % C - start
    width = stop - start
    out = values.new_zeros(lay.B * width, *values.shape[1:]).index_copy(0, row * width + col, values)
    return out.view(lay.B, width, *values.shape[1:])
