"""Padding-free forwards for PPO: a batch's sequences packed end to end into a few long rows.

A PPO batch is left-padded prompts followed by responses that stop at different lengths, so a
(B, P + T) forward spends ~20% of its tokens on padding (prompts of 2-8 tokens, responses of
1-24 on the embedded model). Here each sequence's real tokens are laid end to end in rows of
up to PACK_TOKENS tokens, with positions restarting at 0 for each sequence and a block-diagonal
causal mask, so every token sees exactly what it saw in the padded batch. `unpack` then gathers
hidden states back into the (B, P + T) layout the losses use.

Same contract as core.backends.pair_packing: the model must take a custom 4D mask and read positions from
position_ids; models.heads.packing_refusal turns away flash-attention, sliding windows and
non-attention layers, and core.backends.forwards checks the rest on the run's first batch and pads
where they disagree. GPT-2 models take core.backends.gpt2 instead, which needs no shared rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.heads import backbone

PACK_TOKENS = 128  # the longest row considered (a longer sequence sets the row length itself)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor     # (R, L) sequences end to end, then pad
    position_ids: torch.Tensor  # (R, L) restarting at 0 for each sequence
    segment: torch.Tensor       # (R, L) which sequence of its row a token belongs to; -1 = pad
    where: torch.Tensor         # (B, C) flat index into R * L of each original column; columns
                                # outside a sequence's tokens point at its nearest real token


def _first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of sequence indices: longest first, each into the first row it fits in."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max(capacity, lengths[i]) - lengths[i])
    return rows


def _best_rows(lengths: list[int], max_capacity: int) -> list[list[int]]:
    """The first-fit packing with the fewest slots (rows x longest row) over candidate capacities:
    total / R for every row count R, within [longest sequence, max_capacity]. (A fixed capacity
    can leave one short last row, padded to the others' length.)"""
    longest, total = max(lengths), sum(lengths)
    caps = {c for c in (-(-total // r) for r in range(1, len(lengths) + 1)) if longest <= c <= max_capacity}
    best, best_key = None, None
    for cap in sorted(caps | {longest}):
        rows = _first_fit(lengths, cap)
        L = max(sum(lengths[i] for i in r) for r in rows)
        key = (len(rows) * L, L)  # fewest slots, then the shorter rows (attention grows with L^2)
        if best_key is None or key < best_key:
            best, best_key = rows, key
    return best


def pack_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int = PACK_TOKENS,
               fewest_slots: bool = True) -> PackedBatch:
    """(B, C) ids and mask whose 1s are contiguous in each row (left pad, prompt, response, pad).
    fewest_slots: pick the capacity up to `capacity` that wastes least; else first-fit at `capacity`."""
    B, C = input_ids.shape
    mask = attention_mask.bool().cpu()
    first = torch.where(mask.any(1), mask.float().argmax(1), torch.zeros(B, dtype=torch.long))  # (B,)
    lengths = mask.sum(1).clamp(min=1)  # (B,) an all-pad row still gets one slot, so it maps somewhere
    if ((torch.diff(mask.long(), dim=1, prepend=torch.zeros(B, 1, dtype=torch.long)) == 1).sum(1) > 1).any():
        raise ValueError("pack_batch needs each row's real tokens in one contiguous run")
    rows = (_best_rows if fewest_slots else _first_fit)(lengths.tolist(), capacity)
    L = max(int(lengths[r].sum()) for r in rows)
    ids_cpu = input_ids.cpu()
    ids = torch.zeros((len(rows), L), dtype=input_ids.dtype)
    pos = torch.zeros((len(rows), L), dtype=torch.long)
    seg = torch.full((len(rows), L), -1, dtype=torch.long)
    where = torch.zeros((B, C), dtype=torch.long)
    cols = torch.arange(C)
    for r, members in enumerate(rows):
        off = 0
        for k, i in enumerate(members):
            n, f = int(lengths[i]), int(first[i])
            ids[r, off:off + n] = ids_cpu[i, f:f + n]
            pos[r, off:off + n] = torch.arange(n)
            seg[r, off:off + n] = k
            where[i] = r * L + off + (cols - f).clamp(0, n - 1)
            off += n
    dev = input_ids.device
    return PackedBatch(ids.to(dev), pos.to(dev), seg.to(dev), where.to(dev))


def packed_mask(segment: torch.Tensor, attn_implementation: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(R, L) segments -> (R, 1, L, L): causal within a sequence, nothing across; a pad sees itself."""
    L = segment.shape[1]
    q, k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment.device).tril()
    ok = (causal & (q == k) & (k >= 0)) | torch.eye(L, dtype=torch.bool, device=segment.device)
    ok = ok[:, None]
    if attn_implementation == "sdpa":
        return ok
    return torch.zeros(ok.shape, device=ok.device, dtype=dtype).masked_fill(~ok, torch.finfo(torch.float32).min)


def packed_hidden(model, pb: PackedBatch) -> torch.Tensor:
    """The model's last hidden states, (R, L, H), of a packed batch."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    return backbone(model)(input_ids=pb.input_ids, attention_mask=packed_mask(pb.segment, impl, model.dtype),
                           position_ids=pb.position_ids, use_cache=False).last_hidden_state


def unpack(hidden: torch.Tensor, pb: PackedBatch, cols: slice) -> torch.Tensor:
    """(R, L, H) -> (B, len(cols), H): the hidden state at original columns `cols` of each row."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    idx = pb.where[:, cols]
    return flat[idx.reshape(-1)].reshape(*idx.shape, hidden.shape[-1])
