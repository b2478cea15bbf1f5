"""Batched sampling with a KV cache, returning what PPO needs: ids, masks and sampling logprobs.

Layout of a batch (B prompts, P = longest prompt, T = max_new_tokens):
    input_ids       (B, P + T)  prompts left-padded to P, then the sampled responses
    attention_mask  (B, P + T)  1 on real prompt tokens and on response tokens up to EOS
    response_mask   (B, T)      1 on response tokens up to and including EOS
    logprobs        (B, T)      log pi(token) under the sampling distribution (logits / temperature)

Logprobs are those of the temperature-scaled full distribution, also when top_k/top_p truncate
the sampling (as TRL does); with the defaults (top_k 0, top_p 1) they are exactly the
probabilities the tokens were drawn with, which is what the PPO ratio and the KL need.

A decoder turns the last sampled tokens into next-token logits. `GenericDecoder` is the model's
own forward with its KV cache; a core.backends forward may bring a faster one (`forward=`), which
gives the same logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import GenerationConfig
from ..rl import logprobs_from_logits
from .device import autocast
from .heads import at_least_fp32, position_ids_from


@dataclass
class Samples:
    input_ids: torch.Tensor       # (B, P + T) left-padded prompt, then response (pad after EOS)
    attention_mask: torch.Tensor  # (B, P + T)
    response_mask: torch.Tensor   # (B, T) 1 up to and including EOS
    logprobs: torch.Tensor        # (B, T) sampling-time log-probabilities, 0 at padding
    prompt_len: int               # P

    @property
    def responses(self) -> torch.Tensor:  # (B, T)
        return self.input_ids[:, self.prompt_len:]


class GenericDecoder:
    """Any causal LM: the model's own forward with past_key_values."""

    def __init__(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int):
        B = prompt_ids.shape[0]
        self.model = model
        self.mask = torch.cat([prompt_mask, prompt_mask.new_ones(B, max_new_tokens)], 1)
        self.pos = position_ids_from(prompt_mask)
        self.past, self.len = None, 0

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        self.len += ids.shape[1]
        out = self.model(input_ids=ids, attention_mask=self.mask[:, :self.len], position_ids=self.pos,
                         past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return scaled(out.logits[:, -1], 1.0)  # (B, V)

    def start(self, prompt_ids: torch.Tensor) -> torch.Tensor:  # (B, P) -> (B, V)
        return self._run(prompt_ids)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, V)
        self.pos = self.pos[:, -1:] + 1
        return self._run(tokens[:, None])


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k / nucleus truncation of (B, V) logits (both off by default)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
    return logits


def sample_from(probs: torch.Tensor, generator: torch.Generator | None = None,
                u: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row of (B, V) probabilities by inverse CDF: a single uniform per row.

    torch.multinomial draws V exponentials per row; this is a cumsum and a binary search.
    `u` (B,) supplies the uniforms (so a row samples the same whichever process holds it).
    """
    cdf = probs.cumsum(-1)
    if u is None:
        u = torch.rand(probs.shape[0], device=probs.device, generator=generator)
    u = u[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, u).clamp(max=probs.shape[-1] - 1).squeeze(1)


def context_length(model) -> int | None:
    """Positions the model can attend over (GPT-2: n_positions; most others: max_position_embeddings)."""
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], cfg: GenerationConfig | None = None,
             generator: torch.Generator | None = None, forward=None,
             uniforms: torch.Tensor | None = None) -> Samples:
    """Sample one response per prompt. Stops early once every row has produced EOS.

    `uniforms` (B, max_new_tokens), if given, are the random numbers the sampler uses; otherwise
    they come from `generator`. `forward`: a core.backends forward of `model` whose decoder to
    use (None: the model's own forward).
    """
    cfg = cfg or GenerationConfig()
    device = next(model.parameters()).device
    ids, mask = encode_prompts(tokenizer, prompts, device)
    B, P = ids.shape
    T = cfg.max_new_tokens
    context = context_length(model)
    if context and P + T > context:
        raise ValueError(f"the longest prompt ({P} tokens) plus {T} new tokens exceeds the model's context of "
                         f"{context} tokens: lower max new tokens to at most {max(context - P, 0)} or shorten the prompts")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out_ids = torch.full((B, T), pad, dtype=torch.long, device=device)
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    logprobs = torch.zeros(B, T, device=device, dtype=dtype)
    resp_mask = torch.zeros(B, T, dtype=torch.long, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    with autocast(device):
        decoder = forward.decoder(ids, mask, T) if forward else GenericDecoder(model, ids, mask, T)
        logits = decoder.start(ids)
        for t in range(T):
            logp = torch.log_softmax(scaled(logits, cfg.temperature), -1)  # (B, V), the full scaled distribution
            u = None if uniforms is None else uniforms[:, t].to(device)
            truncated = cfg.top_k or cfg.top_p < 1.0
            probs = torch.softmax(filter_logits(logp, cfg.top_k, cfg.top_p), -1) if truncated else logp.exp()
            tok = sample_from(probs, generator, u)
            logprobs[:, t] = logp.gather(1, tok[:, None]).squeeze(1) * alive
            tok = torch.where(alive, tok, pad)
            out_ids[:, t] = tok
            resp_mask[:, t] = alive
            if cfg.stop_at_eos:
                alive &= tok != eos
                if not alive.any():
                    break
            if t + 1 < T:
                logits = decoder.step(tok)
    model.train(was_training)
    return Samples(torch.cat([ids, out_ids], 1), torch.cat([mask, resp_mask], 1), resp_mask, logprobs, P)


def decode_responses(tokenizer, samples: Samples) -> list[str]:
    """Response texts, cut at EOS (the EOS itself not shown)."""
    texts = []
    for row, m in zip(samples.responses.tolist(), samples.response_mask.tolist()):
        n = sum(m)
        toks = [t for t in row[:n] if t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return texts


def sample_texts(model, tokenizer, prompts: list[str], cfg: GenerationConfig | None = None,
                 seed: int | None = None, batch_size: int = 64, forward=None) -> list[str]:
    """Convenience for the Label tab and benchmarks: prompts in, response strings out."""
    g = None
    if seed is not None:
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    texts = []
    for i in range(0, len(prompts), batch_size):
        texts += decode_responses(tokenizer, generate(model, tokenizer, prompts[i:i + batch_size], cfg, g, forward))
    return texts


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, in fp32 at least (bf16/fp16 logits are upcast; float64 stays). At
    temperature 1 (the default) no division: it would be a pass over every (position, vocab)
    entry each way, for an exact no-op."""
    logits = at_least_fp32(logits)
    return logits if temperature == 1.0 else logits / temperature


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                    temperature: float = 1.0) -> torch.Tensor:
    """Logits that predicted each response token, from one full forward pass: (B, P+T) -> (B, T, V).

    Only the response positions go through the LM head's output slice, and positions come from
    the mask exactly as in `generate`, so these logprobs reproduce the sampling-time ones.
    """
    T = input_ids.shape[1] - prompt_len
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from(attention_mask),
              use_cache=False)
    try:  # the LM head only where it predicts a response token (most models take logits_to_keep)
        logits = model(**kw, logits_to_keep=T + 1).logits
    except TypeError:
        logits = model(**kw).logits
    return scaled(logits[:, -(T + 1):-1], temperature)  # (B, T, V)


def response_logprobs(model, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0) -> torch.Tensor:
    """(B, T) log-probabilities of the response tokens under `model`."""
    logits = response_logits(model, input_ids, attention_mask, prompt_len, temperature)
    return logprobs_from_logits(logits, input_ids[:, prompt_len:])
