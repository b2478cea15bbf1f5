"""PPO for language models, one step top to bottom: rollout -> score -> advantages -> update.

Four models (seeds 000, 001): the policy (trained), the critic (trained; a value head read at
every position), the reference (frozen initial policy) and the reward model (frozen). The loop
around these functions (records, checkpoints, resume) lives in core/ppo_run.py; the models'
forwards on a batch (padding-free, packed or padded) in core/ppo_forwards.py.

Alignment (DESIGN.md, "Conventions"): response position t carries the token sampled there, its
logprob under policy and reference, KL_t, r_t, and V_t = the critic's value of the state that
token was sampled from (the hidden state one position before it, like the logits).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import overlap, rl, varlen
from .config import GenerationConfig, PPOConfig
from .generation import Samples, decode_responses, generate
from .models import autocast, block_parts
from .ppo_epochs import EpochGate, Micro, minibatch_plan, train_chain
from .ppo_forwards import critic_values, packing_agrees, policy_logprobs, shared_plan
from .scoring import score_texts


@dataclass
class Experience:
    """One rollout batch, everything the update needs. B episodes, P prompt + T response tokens."""
    input_ids: torch.Tensor       # (B, P + T) left-padded prompt + response (pad after EOS)
    attention_mask: torch.Tensor  # (B, P + T)
    response_mask: torch.Tensor   # (B, T) 1 up to and including EOS
    prompt_len: int               # P
    logprobs: torch.Tensor        # (B, T) policy at sampling time (the "old" policy)
    ref_logprobs: torch.Tensor    # (B, T) frozen reference
    values: torch.Tensor          # (B, T) critic before the update
    kl: torch.Tensor              # (B, T) per-token KL estimate
    rewards: torch.Tensor         # (B, T) -beta * KL_t, + score on the last token
    advantages: torch.Tensor      # (B, T) GAE, un-whitened (A + V = returns)
    returns: torch.Tensor         # (B, T)
    scores: torch.Tensor          # (B,) the score put on the last token (after norm/whiten/clip)
    raw_scores: torch.Tensor      # (B,) the reward model's output
    prompts: list[str]
    responses: list[str]
    values_graph: torch.Tensor | None = None  # (B, T) `values` still attached to the critic's graph: the
                                              # first epoch's value loss when one micro-batch is the batch
    policy_graph: tuple[torch.Tensor, torch.Tensor | None] | None = None  # ((B, T) logprobs, (B, T)
    # entropies) on the policy's graph: the first epoch's policy loss, likewise (see score())

    @property
    def responses_ids(self) -> torch.Tensor:  # (B, T)
        return self.input_ids[:, self.prompt_len:]


@dataclass
class Models:
    policy: torch.nn.Module
    critic: torch.nn.Module
    reward: torch.nn.Module
    tokenizer: object
    reward_tokenizer: object
    reference: torch.nn.Module | None = None  # None: LoRA policy, reference = adapter disabled
    packed: bool | None = None  # padding-free forwards (core.seq_packing); None = not checked yet
    overlap: bool = False  # run the policy's and the critic's work side by side (core/overlap.py)


def all_block_parts(m: Models) -> list[torch.nn.Module]:
    """The transformer blocks' parts of all four models (where core.overlap checks whether a
    side left alone can take every thread)."""
    return [p for x in (m.policy, m.reference, m.critic, m.reward) if x is not None for p in block_parts(x)]


class NonFiniteError(FloatingPointError):
    pass


def check_finite(name: str, x: torch.Tensor, step: int, dist=None) -> None:
    """Raise NonFiniteError for NaN/Inf in x. With `dist` (several processes) every process raises
    at the same point when one of them has it, so none waits in a collective the others left."""
    bad = not bool(torch.isfinite(x).all())
    if dist is not None and dist.world > 1:
        if dist.any(bad):
            raise NonFiniteError(f"{name} is NaN or Inf at step {step}" + ("" if bad else " (on another process)"))
    elif bad:
        raise NonFiniteError(f"{name} is NaN or Inf at step {step}")


# ---------------------------------------------------------------- 1. rollout
def rollout(m: Models, prompts: list[str], cfg: PPOConfig, uniforms: torch.Tensor | None = None) -> Samples:
    gen = GenerationConfig(max_new_tokens=cfg.response_length, temperature=cfg.temperature,
                           stop_at_eos=cfg.stop_token == "eos")
    return generate(m.policy, m.tokenizer, prompts, gen, uniforms=uniforms)


# ---------------------------------------------------------------- 2. score
@dataclass
class Scored:
    """What the four models say of a rollout of B episodes with T response tokens."""
    raw_scores: torch.Tensor          # (B,) the reward model's output
    ref_logprobs: torch.Tensor        # (B, T) frozen reference, 0 after a row's end
    values: torch.Tensor              # (B, T) critic, 0 after a row's end
    values_graph: torch.Tensor | None  # (B, T) `values` still attached to the critic's graph, or None
    policy_graph: tuple[torch.Tensor, torch.Tensor | None] | None  # ((B, T) logprobs, (B, T) entropies)
                                                                   # on the policy's graph, or None


def score(m: Models, prompts: list[str], responses: list[str], samples: Samples, cfg: PPOConfig) -> Scored:
    """The reward model, the reference and the critic read the rollout (the policy did as it
    sampled, and may again here: below). No collectives here.

    The reward model reads prompt + response + EOS as text in its own tokenizer (one scoring
    convention, core/scoring.py). With one micro-batch per epoch the first epoch's losses read
    these very rows through still unchanged weights, so the critic's forward keeps its graph for
    the first value loss instead of running twice; and when the two sides run at once (core/
    overlap.py) the policy's first-epoch forward runs here too, beside the reward model's, where
    the two threads' loads balance (its backward waits for the advantages, in the update).
    """
    ids, mask, P = samples.input_ids, samples.attention_mask, samples.prompt_len
    rmask = samples.response_mask.float()
    if m.packed is None:
        m.packed = all(map(varlen.supported, (m.policy, m.critic))) or packing_agrees(m, samples)
    packed = shared_plan(m, ids, mask, P)
    whole = cfg.num_minibatches == 1 and cfg.grad_accum == 1
    early_policy = whole and m.overlap

    def reward():
        with torch.no_grad():
            return score_texts(m.reward, m.reward_tokenizer, prompts, responses).float().to(ids.device)  # (B,)

    def critic_side():  # autocast, like grad mode, is per thread: set inside each side
        with torch.set_grad_enabled(whole), autocast(ids.device):
            values = critic_values(m, ids, mask, P, packed)  # (B, T)
        return values, reward() if early_policy else None

    def policy_side():
        with torch.no_grad(), autocast(ids.device):
            if m.reference is None:  # LoRA: the reference is the same weights with the adapter off
                with m.policy.disable_adapter():
                    ref = policy_logprobs(m, m.policy, ids, mask, P, cfg.temperature, packed)[0]
            else:
                ref = policy_logprobs(m, m.reference, ids, mask, P, cfg.temperature, packed)[0]
        if not early_policy:
            return ref, None
        with torch.enable_grad(), autocast(ids.device):  # (B, T) logprobs and entropies
            return ref, policy_logprobs(m, m.policy, ids, mask, P, cfg.temperature, packed,
                                        entropy=bool(cfg.entropy_coef))

    raw = None if early_policy else reward()  # else on the critic's side, beside the policy's forward
    (values, raw_beside), (ref, policy_graph) = overlap.pair(critic_side, policy_side, m.overlap, all_block_parts(m))
    return Scored(raw_beside if early_policy else raw, ref * rmask, values.detach() * rmask,
                  values if values.requires_grad else None, policy_graph)


@torch.no_grad()
def shape_scores(m: Models, raw: torch.Tensor, samples: Samples, cfg: PPOConfig, reduce=None) -> torch.Tensor:
    """The score put on each episode's last token, (B,): the missing-EOS penalty, standardisation
    with the RM's stored training mean/std, optional batch whitening (seed 003), clipping (seed
    001). `reduce` sums tensors over processes so whitening uses global batch statistics."""
    s = raw.clone()
    if cfg.missing_eos_penalty:
        eos = m.tokenizer.eos_token_id
        has_eos = (samples.responses == eos).logical_and(samples.response_mask.bool()).any(1)
        s = s - cfg.missing_eos_penalty * (~has_eos).float()
    if cfg.score_norm:
        mean = getattr(m.reward.config, "score_mean", None)
        std = getattr(m.reward.config, "score_std", None)
        if mean is not None and std:
            s = (s - mean) / std
    if cfg.whiten_scores:
        stats = torch.stack([s.sum(), (s * s).sum(), torch.tensor(float(len(s)), device=s.device)])
        n_sum, sq, n = (reduce(stats) if reduce else stats).tolist()
        mean = n_sum / n
        var = max(sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
        s = (s - mean) / (var ** 0.5 + 1e-8)
    if cfg.score_clip is not None:
        s = s.clamp(-cfg.score_clip, cfg.score_clip)
    return s


# ---------------------------------------------------------------- 3. advantages
@torch.no_grad()
def make_experience(m: Models, samples: Samples, prompts: list[str], responses: list[str], scored: Scored,
                    kl_coef: float, cfg: PPOConfig, reduce=None) -> Experience:
    """Per-token rewards (KL penalty, the shaped score on the last token) and GAE. `reduce`: as in
    shape_scores (a collective: every process calls this in the same order)."""
    rmask = samples.response_mask.float()
    scores = shape_scores(m, scored.raw_scores, samples, cfg, reduce)
    rewards, kl = rl.token_rewards(scores, samples.logprobs, scored.ref_logprobs, rmask, kl_coef,
                                   cfg.kl_estimator)  # clipping already done in shape_scores
    advantages, returns = rl.gae(rewards, scored.values, rmask, cfg.gamma, cfg.lam)
    return Experience(samples.input_ids, samples.attention_mask, samples.response_mask, samples.prompt_len,
                      samples.logprobs, scored.ref_logprobs, scored.values, kl, rewards, advantages, returns,
                      scores, scored.raw_scores, prompts, responses, scored.values_graph, scored.policy_graph)


# ---------------------------------------------------------------- 4. update
def policy_part(m: Models, exp: Experience, idx: torch.Tensor, adv: torch.Tensor, cfg: PPOConfig,
                log_entropy: bool, rows, weight: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate (- entropy bonus) on rows `idx`, backpropagated x `weight`; `rows` =
    trimmed(m, exp, idx). Returns the (detached) loss and its stats."""
    ids, mask, rmask, T, packed = rows
    P = exp.prompt_len
    with autocast(ids.device):
        if exp.policy_graph is not None and len(idx) == len(exp.input_ids):  # the whole batch, policy unchanged
            (logprobs, ent), exp.policy_graph = exp.policy_graph, None  # used once: the step changes it
            logprobs, ent = logprobs[idx, :T], None if ent is None else ent[idx, :T]  # (b, T)
        else:
            want = True if cfg.entropy_coef else (False if log_entropy else None)  # False: for the record only
            logprobs, ent = policy_logprobs(m, m.policy, ids, mask, P, cfg.temperature, packed, entropy=want)  # (b, T)
        loss, pg = rl.policy_loss(logprobs, exp.logprobs[idx, :T], adv[idx, :T], rmask, cfg.cliprange)
        stats = {"loss/policy": loss.detach(), "policy/approx_kl": pg["approx_kl"], "policy/clipfrac": pg["clipfrac"]}
        if ent is not None:
            entropy = rl.masked_mean(ent, rmask)
            if cfg.entropy_coef:
                loss = loss - cfg.entropy_coef * entropy
            stats["policy/entropy"] = entropy.detach()
    (loss * weight).backward()
    return loss.detach(), stats


def value_part(m: Models, exp: Experience, idx: torch.Tensor, cfg: PPOConfig, rows,
               weight: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Clipped value loss on rows `idx`, backpropagated x vf_coef x `weight`; `rows` =
    trimmed(m, exp, idx). Returns the (detached) loss and its stats."""
    ids, mask, rmask, T, packed = rows
    with autocast(ids.device):
        if exp.values_graph is not None and len(idx) == len(exp.input_ids):  # the whole batch, critic unchanged
            values, exp.values_graph = exp.values_graph[idx, :T], None  # used once: the next step changes it
        else:
            values = critic_values(m, ids, mask, exp.prompt_len, packed)  # (b, T)
        loss, vf = rl.value_loss(values, exp.values[idx, :T], exp.returns[idx, :T], rmask, cfg.cliprange_value)
    (cfg.vf_coef * loss * weight).backward()
    return loss.detach(), {"loss/value": loss.detach(), "val/clipfrac": vf["clipfrac"], "val/mean": vf["mean"]}


def update(m: Models, exp: Experience, adv: torch.Tensor, cfg: PPOConfig, optimizers: list, step: int,
           check_stop, dist) -> dict:
    """ppo_epochs x num_minibatches x grad_accum over the batch, fresh shuffles each epoch.

    optimizers: [policy's, critic's]. adv: (B, T) the advantages the loss uses (whitened or not, by
    the caller). `dist` sums over processes and all-reduces gradients (no-ops in one process).
    The two models share no weights, so each runs its epochs as a chain of its own: side by side
    on a CPU in one process (core/overlap.py: neither waits for the other between epochs, but
    the critic for target_kl's verdict), else minibatch by minibatch in turn. Returns stats averaged over every micro-batch that has them.
    """
    plan = minibatch_plan(m, exp, cfg, step, dist)
    gate = EpochGate(cfg.target_kl, dist)
    pstats: list[tuple[int, dict]] = []
    vstats: list[tuple[int, dict]] = []

    def policy(e: int, mic: Micro) -> dict:
        loss, stats = policy_part(m, exp, mic.idx, adv, cfg, e == 0, mic.rows, mic.weight)
        check_finite("loss/policy", loss, step, dist)
        return stats

    def value(e: int, mic: Micro) -> dict:
        loss, stats = value_part(m, exp, mic.idx, cfg, mic.rows, mic.weight)
        check_finite("loss/value", loss, step, dist)
        return stats

    decide = lambda e: gate.decide(e, [s["policy/approx_kl"] for ep, s in pstats if ep == e - 1])  # noqa: E731
    overlap.chains(train_chain(plan, value, optimizers[1], cfg, check_stop, dist, gate.follow, vstats),
                   train_chain(plan, policy, optimizers[0], cfg, check_stop, dist, decide, pstats),
                   m.overlap and dist.world == 1, on_error=gate.close,
                   modules=block_parts(m.policy) + block_parts(m.critic))
    out: dict[str, float] = {}
    for k in dict.fromkeys(k for _, s in pstats + vstats for k in s):  # first-seen order, as on every process
        out[k] = float(torch.stack([s[k] for _, s in pstats + vstats if k in s]).mean())
    bonus = cfg.entropy_coef * out["policy/entropy"] if cfg.entropy_coef else 0.0  # then in every micro-batch
    out["loss/total"] = out["loss/policy"] - bonus + cfg.vf_coef * out["loss/value"]
    out["policy/epochs"] = float(max(e for e, _ in pstats) + 1)
    return out


# ---------------------------------------------------------------- summaries of a step
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
    """The first k samples of a step for tokens.jsonl (DESIGN.md / PPO issue: a contract)."""
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


__all__ = ["Experience", "Models", "Scored", "rollout", "score", "shape_scores", "make_experience", "update", "decode_responses",
           "experience_metrics", "token_records", "check_finite", "NonFiniteError"]
