"""Decoders: step functions that turn the last sampled tokens into next-token logits.

`generic` drives any Hugging Face causal LM through its own forward with a KV cache. For GPT-2
(the embedded model's architecture) `GPT2Decoder` calls the model's own submodules with a KV
cache preallocated once for the whole response: at a few million parameters a decode step is
mostly framework overhead (cache objects, 4-D mask building, generic dispatch), not matmuls, so
skipping that overhead is where the speed is. Both produce the same logits (tests check it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import plain_gpt2_attention


def position_ids_from(mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only attended tokens, so left padding does not shift a prompt."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class GenericDecoder:
    """Any causal LM: the model's own forward with past_key_values."""

    def __init__(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int):
        B, P = prompt_ids.shape
        self.model = model
        self.mask = torch.cat([prompt_mask, prompt_mask.new_ones(B, max_new_tokens)], 1)
        self.pos = position_ids_from(prompt_mask)
        self.past, self.len = None, 0

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        self.len += ids.shape[1]
        out = self.model(input_ids=ids, attention_mask=self.mask[:, :self.len], position_ids=self.pos,
                         past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1].float()  # (B, V)

    def start(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        return self._run(prompt_ids)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, V)
        self.pos = self.pos[:, -1:] + 1
        return self._run(tokens[:, None])


def gpt2_supported(model) -> bool:
    return type(model).__name__ == "GPT2LMHeadModel" and plain_gpt2_attention(model.config)


class GPT2Decoder:
    """GPT-2 with a preallocated (layers, B, heads, P + T, head_dim) KV cache."""

    def __init__(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int):
        cfg = model.config
        B, P = prompt_ids.shape
        self.tr, self.head = model.transformer, model.lm_head
        self.H, self.C = cfg.n_head, cfg.n_embd
        self.D = self.C // self.H
        L = P + max_new_tokens
        dtype = self.tr.wte.weight.dtype
        dev = prompt_ids.device
        self.k = torch.empty(cfg.n_layer, B, self.H, L, self.D, dtype=dtype, device=dev)
        self.v = torch.empty_like(self.k)
        self.mask = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(B, max_new_tokens, dtype=torch.bool)], 1)
        self.pos = position_ids_from(prompt_mask)
        self.P, self.len = P, 0

    def _run(self, ids: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, S = ids.shape
        x = self.tr.wte(ids) + self.tr.wpe(self.pos)
        lo, hi = self.len, self.len + S
        for i, blk in enumerate(self.tr.h):
            q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(self.C, dim=2)
            q = q.view(B, S, self.H, self.D).transpose(1, 2)
            self.k[i, :, :, lo:hi] = k.view(B, S, self.H, self.D).transpose(1, 2)
            self.v[i, :, :, lo:hi] = v.view(B, S, self.H, self.D).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, self.k[i, :, :, :hi], self.v[i, :, :, :hi], attn_mask=attn_mask)
            x = x + blk.attn.c_proj(y.transpose(1, 2).reshape(B, S, self.C))
            x = x + blk.mlp(blk.ln_2(x))
        self.len = hi
        return self.head(self.tr.ln_f(x[:, -1])).float()  # (B, V)

    def start(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        P = self.P
        causal = torch.ones(P, P, dtype=torch.bool, device=prompt_ids.device).tril()
        allowed = causal[None] & self.mask[:, None, :P]  # (B, P, P)
        allowed |= torch.eye(P, dtype=torch.bool, device=prompt_ids.device)  # pad queries: no NaN rows
        return self._run(prompt_ids, allowed[:, None])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, V)
        self.pos = self.pos[:, -1:] + 1
        return self._run(tokens[:, None], self.mask[:, None, None, :self.len + 1])


def make_decoder(model, prompt_ids, prompt_mask, max_new_tokens: int, fast: bool = True):
    cls = GPT2Decoder if fast and gpt2_supported(model) else GenericDecoder
    return cls(model, prompt_ids, prompt_mask, max_new_tokens)

