"""GPT-2's fast forwards: every GPT-2-specific line of the workbench, on one block implementation.

Three paths call a block through the same pieces (`_qkv`, `_heads`, `_finish`: GPT-2's own
submodules, so LoRA adapters and `disable_adapter()` apply as in the model's forward):

- **Padding-free** (`read_hidden`, PPO's logprobs and values, reward scores). A PPO batch is
  left-padded prompts then responses of different lengths: 15-20% of a (B, P + T) forward is
  padding. Here the per-token layers (layer norms, the qkv, projection and MLP matmuls: nearly
  all the FLOPs) run on a flat (N, H) list of the tokens that matter; only attention sees a
  padded layout, each sequence left-aligned in a row of its own, where a plain causal mask is
  exact. Tokens after a sequence's last read position feed nothing and are dropped; the last
  block runs its projection, MLP and final norm at the read positions only.
- **Last block at a few positions** (`hidden_at`, reward training's packed pairs, which bring
  their own 4D mask). A score is read at one position per text; only the last block's keys and
  values are needed everywhere, so its attention output, MLP and final norm run at the read
  positions only: ~1/n_layer fewer FLOPs for the same numbers.
- **Decoder** (`Decoder`, sampling): a KV cache preallocated once for the whole response. At a
  few million parameters a decode step is mostly framework overhead (cache objects, 4D mask
  building), not matmuls.

Each gives the padded Hugging Face forward's numbers (tests/test_gpt2_backend.py compares
values and gradients in float64), and core.backends.forwards checks the padding-free path
against it once more on the run's own first batch before selecting it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.heads import at_least_fp32, backbone, position_ids_from
from ..rl import last_token_index


def plain_attention(config) -> bool:
    """A GPT-2 config whose attention is the textbook one (1/sqrt(d) scaling, no layer-index
    scaling, no fp32 upcast reordering, no cross-attention): what this module reimplements."""
    return (config.model_type == "gpt2" and getattr(config, "scale_attn_weights", True)
            and not getattr(config, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(config, "reorder_and_upcast_attn", False)
            and not getattr(config, "add_cross_attention", False))


def supported(model) -> bool:
    """GPT-2 (LoRA-wrapped too) with the attention reimplemented here."""
    return plain_attention(model.config) and hasattr(backbone(model), "h")


def decoder_supported(model) -> bool:
    """The decoder reads GPT2LMHeadModel's own `transformer` and `lm_head` (not a LoRA wrapper)."""
    return type(model).__name__ == "GPT2LMHeadModel" and plain_attention(model.config)


# ---------------------------------------------------------------- one block, in pieces
def _embed(model, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    tr = backbone(model)
    return tr.drop(tr.wte(ids) + tr.wpe(positions))  # (..., H), as GPT2Model starts


def _qkv(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., H) residual stream -> q, k, v, each (..., H)."""
    return block.attn.c_attn(block.ln_1(x)).split(x.shape[-1], dim=-1)


def _heads(t: torch.Tensor, nh: int) -> torch.Tensor:
    """(B, L, H) -> (B, nh, L, d)."""
    B, L, H = t.shape
    return t.view(B, L, nh, H // nh).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    """(B, nh, L, d) -> (B, L, H)."""
    B, nh, L, d = t.shape
    return t.transpose(1, 2).reshape(B, L, nh * d)


def _finish(block, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The rest of a block after attention: output projection, residual, MLP. a: attention output (..., H)."""
    x = x + block.attn.resid_dropout(block.attn.c_proj(a))
    return x + block.mlp(block.ln_2(x))


def _dropout(block, model) -> float:
    return block.attn.attn_dropout.p if model.training else 0.0


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v for (B, nh, L, d) rows, as two batched matmuls.

    On the CPU at PPO's row lengths (L ~ 25-30) sdpa's flash kernel is mostly blocking overhead
    (docs/performance.md); on a GPU the padding-free path uses sdpa (`_attend`)."""
    B, nh, L, d = q.shape
    mask = torch.full((L, L), float("-inf"), device=q.device, dtype=q.dtype).triu_(1)  # (L, L) 0 on and below the diagonal
    scores = torch.baddbmm(mask.expand(B * nh, L, L), q.reshape(B * nh, L, d),
                           k.reshape(B * nh, L, d).transpose(1, 2), alpha=d ** -0.5)  # (B * nh, L, L)
    return torch.bmm(scores.softmax(-1), v.reshape(B * nh, L, d)).view(B, nh, L, d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """Causal attention of (B, nh, L, d) rows: two matmuls on the CPU without dropout, else sdpa."""
    if q.device.type == "cpu" and p == 0:
        return causal_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)


# ---------------------------------------------------------------- padding-free
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


def make_layout(attention_mask: torch.Tensor, read: torch.Tensor) -> Layout:
    """attention_mask: (B, C) 1 at attended tokens; read: (B, C) bool, the positions whose final
    hidden state is wanted (attended ones). Positions count attended tokens, as in generation."""
    B, C = attention_mask.shape
    mask = attention_mask.bool()
    if (read & ~mask).any():
        raise ValueError("a read position must be an attended token")
    col = torch.arange(C, device=mask.device)
    keep = mask & (col <= last_token_index(read)[:, None])  # (B, C): later tokens feed no read output
    pos = mask.long().cumsum(1) - 1  # (B, C)
    tokens = keep.flatten().nonzero().squeeze(1)  # (N,)
    positions = pos.flatten()[tokens]
    L = int(positions.max()) + 1 if len(tokens) else 1
    slots = tokens // C * L + positions
    index_of = torch.full((B * C,), -1, dtype=torch.long, device=mask.device)
    index_of[tokens] = torch.arange(len(tokens), device=mask.device)
    read_flat = read.flatten().nonzero().squeeze(1)  # (M,)
    return Layout(tokens, positions, slots, index_of[read_flat], read_flat, B, L)


def response_layout(mask: torch.Tensor, P: int) -> Layout:
    """The layout reading the positions that predict a real response token of (B, P + T) rows."""
    read = torch.zeros_like(mask, dtype=torch.bool)
    read[:, P - 1:-1] = mask[:, P:].bool()
    return make_layout(mask, read)


def last_token_layout(mask: torch.Tensor) -> Layout:
    """The layout reading each row's last attended token (a reward model's score), in row order."""
    col = torch.arange(mask.shape[1], device=mask.device)
    return make_layout(mask, col == last_token_index(mask)[:, None])


def _flat_attention(block, x: torch.Tensor, lay: Layout, p: float) -> torch.Tensor:
    """Self-attention of (N, H) flat tokens, before the output projection: (N, H)."""
    N, H = x.shape
    qkv = block.attn.c_attn(block.ln_1(x))  # (N, 3H): _qkv's product, before its split
    grid = qkv.new_zeros(lay.B * lay.L, 3 * H).index_copy(0, lay.slots, qkv).view(lay.B, lay.L, 3 * H)  # pad slots 0
    q, k, v = (_heads(t, block.attn.num_heads) for t in grid.split(H, -1))  # each (B, nh, L, d)
    return _merge(_attend(q, k, v, p)).reshape(lay.B * lay.L, H)[lay.slots]  # (N, H)


def read_hidden(model, input_ids: torch.Tensor, lay: Layout) -> torch.Tensor:
    """The final hidden states (after ln_f) at the layout's read positions: (M, H)."""
    tr = backbone(model)
    x = _embed(model, input_ids.flatten()[lay.tokens], lay.positions)  # (N, H)
    for i, block in enumerate(tr.h):
        a = _flat_attention(block, x, lay, _dropout(block, model))  # (N, H)
        if i == len(tr.h) - 1:  # the last block goes on at the read positions only
            x, a = x[lay.reads], a[lay.reads]  # (M, H)
        x = _finish(block, x, a)
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


# ---------------------------------------------------------------- last block at a few positions
def hidden_at(model, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
              at: torch.Tensor) -> torch.Tensor:
    """(B, L) tokens with a 4D mask (B, 1, L, L) (bool, or additive with 0 = attend) -> the final
    hidden states at positions `at` (B, k): (B, k, H)."""
    tr = backbone(model)
    allowed = mask if mask.dtype == torch.bool else mask == 0  # (B, 1, L, L)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]
    x = _embed(model, input_ids, position_ids)  # (B, L, H)
    for i, block in enumerate(tr.h):
        nh, p = block.attn.num_heads, _dropout(block, model)
        q, k, v = (_heads(t, nh) for t in _qkv(block, x))  # each (B, nh, L, d)
        m = allowed
        if i == len(tr.h) - 1:  # queries, and everything after attention, at the read positions only
            q, m, x = q[rows, :, at].transpose(1, 2), allowed[rows, :, at].transpose(1, 2), x[rows, at]
        x = _finish(block, x, _merge(F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=p)))
    return tr.ln_f(x)


# ---------------------------------------------------------------- decoder
class Decoder:
    """GPT2LMHeadModel with a preallocated (layers, B, heads, P + T, head_dim) KV cache."""

    def __init__(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int):
        cfg = model.config
        B, P = prompt_ids.shape
        self.model, self.tr, self.head = model, model.transformer, model.lm_head
        self.nh, self.d = cfg.n_head, cfg.n_embd // cfg.n_head
        L, dev = P + max_new_tokens, prompt_ids.device
        self.k = torch.empty(cfg.n_layer, B, self.nh, L, self.d, dtype=self.tr.wte.weight.dtype, device=dev)
        self.v = torch.empty_like(self.k)
        self.mask = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(B, max_new_tokens, dtype=torch.bool)], 1)
        self.pos = position_ids_from(prompt_mask)
        self.P, self.len = P, 0

    def _run(self, ids: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        lo, hi = self.len, self.len + ids.shape[1]
        x = _embed(self.model, ids, self.pos)  # (B, S, H)
        for i, block in enumerate(self.tr.h):
            q, k, v = (_heads(t, self.nh) for t in _qkv(block, x))  # each (B, nh, S, d)
            self.k[i, :, :, lo:hi], self.v[i, :, :, lo:hi] = k, v
            y = F.scaled_dot_product_attention(q, self.k[i, :, :, :hi], self.v[i, :, :, :hi], attn_mask=allowed)
            x = _finish(block, x, _merge(y))
        self.len = hi
        return at_least_fp32(self.head(self.tr.ln_f(x[:, -1])))  # (B, V)

    def start(self, prompt_ids: torch.Tensor) -> torch.Tensor:  # (B, P) -> (B, V)
        P, dev = self.P, prompt_ids.device
        allowed = torch.ones(P, P, dtype=torch.bool, device=dev).tril()[None] & self.mask[:, None, :P]  # (B, P, P)
        allowed |= torch.eye(P, dtype=torch.bool, device=dev)  # pad queries: no NaN rows
        return self._run(prompt_ids, allowed[:, None])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, V)
        self.pos = self.pos[:, -1:] + 1
        return self._run(tokens[:, None], self.mask[:, None, None, :self.len + 1])
