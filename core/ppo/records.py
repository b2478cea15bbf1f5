"""What a PPO step leaves in the run directory besides its losses: the step's summary metrics
and the per-token records of a few samples (tokens.jsonl, a contract: docs/architecture.md)."""
from __future__ import annotations

import torch

from .. import rl
from .step import Experience


@torch.no_grad()
def experience_metrics(exp: Experience, kl_coef: float) -> dict:
    rmask = exp.response_mask.float()
    kl_seq = exp.kl.sum(1)  # (B,)
    resid = rl.masked_var(exp.returns - exp.values, rmask)
    ev = 1.0 - resid / rl.masked_var(exp.returns, rmask).clamp(min=1e-8)
    return {
        "objective/score": float(exp.raw_scores.mean()),
        "objective/score_used": float(exp.scores.mean()),
        "objective/kl": float(kl_seq.mean()),
        "objective/kl_coef": float(kl_coef),
        "objective/rlhf_reward": float((exp.scores - kl_coef * kl_seq).mean()),
        "objective/entropy": float((-exp.logprobs * rmask).sum(1).mean()),
        "val/explained_variance": float(ev),
        "val/returns_mean": float(rl.masked_mean(exp.returns, rmask)),
        "tokens/response_len": float(rmask.sum(1).mean()),
    }


def token_records(exp: Experience, tokenizer, step: int, k: int, kl_coef: float, gold: list | None) -> list[dict]:
    """The first k samples of a step for tokens.jsonl."""
    out = []
    for i in range(min(k, exp.input_ids.shape[0])):
        n = int(exp.response_mask[i].sum())
        ids = exp.responses_ids[i, :n].tolist()
        row = lambda x: [round(float(v), 6) for v in x[i, :n]]  # noqa: E731
        out.append({
            "step": step, "sample": i, "prompt": exp.prompts[i], "response": exp.responses[i],
            "tokens": [tokenizer.decode([t]) for t in ids],
            "logprob": row(exp.logprobs), "ref_logprob": row(exp.ref_logprobs), "kl": row(exp.kl),
            "reward": row(exp.rewards), "value": row(exp.values), "advantage": row(exp.advantages),
            "return": row(exp.returns), "score": float(exp.scores[i]), "raw_score": float(exp.raw_scores[i]),
            "gold": None if gold is None else float(gold[i]), "kl_coef": float(kl_coef),
        })
    return out


