"""PPO for language models, one step top to bottom: rollout -> score -> advantages -> update.

Four models (seeds 000, 001): the policy (trained), the critic (trained; a value head read at
every position), the reference (frozen initial policy) and the reward model (frozen). Each has a
forward chosen once at setup (core.backends.select); this file never sees a batch layout, a
kernel or a thread. The loop around these functions (records, checkpoints, resume) is
core/ppo/loop.py.

Alignment (docs/architecture.md, "Conventions"): response position t carries the token sampled
there, its logprob under policy and reference, KL_t, r_t, and V_t = the critic's value of the
state that token was sampled from (the hidden state one position before it, like the logits).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import rl
from ..config import GenerationConfig, PPOConfig
from ..models.device import autocast
from ..models.generation import Samples, generate
from ..models.scoring import score_texts
from .models import Models


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

    @property
    def responses_ids(self) -> torch.Tensor:  # (B, T)
        return self.input_ids[:, self.prompt_len:]


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
    return generate(m.policy, m.tokenizer, prompts, gen, uniforms=uniforms, forward=m.policy_fwd)


# ---------------------------------------------------------------- 2. score
@dataclass
class FirstForwards:
    """The update's first forwards, run in the score phase: with one micro-batch per epoch, epoch
    0 reads these very rows through still unchanged weights, so the policy's and the critic's
    forwards (with their graphs) serve it and are not run twice. Used once, by `update`."""
    logprobs: torch.Tensor  # (B, T) policy, on its graph
    entropy: torch.Tensor   # (B, T) on the policy's graph
    values: torch.Tensor    # (B, T) critic, on its graph


@dataclass
class Scored:
    """What the frozen models and the critic say of a rollout of B episodes with T response tokens."""
    raw_scores: torch.Tensor    # (B,) the reward model's output
    ref_logprobs: torch.Tensor  # (B, T) frozen reference, 0 after a row's end
    values: torch.Tensor        # (B, T) critic, 0 after a row's end
    first: FirstForwards | None = None  # with one micro-batch per epoch (see FirstForwards)


def whole_batch_epochs(cfg: PPOConfig) -> bool:
    """Each epoch one micro-batch holding the whole batch (num_minibatches = grad_accum = 1)."""
    return cfg.num_minibatches == 1 and cfg.grad_accum == 1


def score(m: Models, prompts: list[str], responses: list[str], samples: Samples, cfg: PPOConfig) -> Scored:
    """The reference, the critic and the reward model read the rollout (the policy did as it
    sampled). The reward model reads prompt + response + EOS as text in its own tokenizer (one
    scoring convention, core/models/scoring.py). With whole-batch epochs the policy's and the
    critic's forwards for the update's first epoch run here too (FirstForwards), the policy's
    beside the reward model's. No collectives here."""
    ids, mask, P = samples.input_ids, samples.attention_mask, samples.prompt_len
    rmask = samples.response_mask.float()
    keep = whole_batch_epochs(cfg)

    def reference_and_policy():  # (B, T), and the policy's (B, T) logprobs and entropies or None
        with autocast(ids.device):
            with torch.no_grad():
                ref = m.reference_logprobs(ids, mask, P, cfg.temperature)
            if not keep:
                return ref, None
            with torch.enable_grad():
                return ref, m.policy_fwd.logprobs(ids, mask, P, cfg.temperature, with_entropy=True)

    def critic_and_reward() -> tuple[torch.Tensor, torch.Tensor]:  # (B, T), (B,)
        with autocast(ids.device):
            with torch.set_grad_enabled(keep):
                values = m.critic_fwd.values(ids, mask, P)
            with torch.no_grad():
                raw = score_texts(m.reward, m.reward_tokenizer, prompts, responses, forward=m.reward_fwd)
        return values, raw.float().to(ids.device)

    (ref, policy), (values, raw) = m.run_both(reference_and_policy, critic_and_reward)
    first = FirstForwards(policy[0], policy[1], values) if keep else None
    return Scored(raw, ref * rmask, values.detach() * rmask, first)


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
        s = rl.whiten(s, torch.ones_like(s), reduce=reduce)
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
                      scores, scored.raw_scores, prompts, responses)


# ---------------------------------------------------------------- 4. update
@dataclass
class MicroBatch:
    """Rows `idx` of the batch, trimmed of columns that are padding in all of them."""
    idx: torch.Tensor             # (b,) row indices
    input_ids: torch.Tensor       # (b, P + T')
    attention_mask: torch.Tensor  # (b, P + T')
    response_mask: torch.Tensor   # (b, T') float
    weight: torch.Tensor          # () its share of its minibatch's response tokens (on all processes)

    @property
    def T(self) -> int:
        return self.response_mask.shape[1]


def minibatches(exp: Experience, cfg: PPOConfig, perm: torch.Tensor, dist) -> list[list[MicroBatch]]:
    """One epoch's minibatches of the shuffled rows `perm`, each split into grad_accum micro-batches.
    Each micro-batch's token-mean loss is weighted by its share of the minibatch's response tokens
    on all processes, so the summed gradient is the token mean of the whole minibatch."""
    B, P = exp.input_ids.shape[0], exp.prompt_len
    mb_size = max(1, B // cfg.num_minibatches)
    out = []
    for start in range(0, B - mb_size + 1, mb_size):
        mb = perm[start:start + mb_size]
        mb_tokens = dist.sum(exp.response_mask[mb].sum().float()).clamp(min=1)
        micros = []
        for idx in mb.split(max(1, mb_size // cfg.grad_accum)):
            T = int(exp.response_mask[idx].sum(1).max().clamp(min=1))
            micros.append(MicroBatch(idx, exp.input_ids[idx, :P + T], exp.attention_mask[idx, :P + T],
                                     exp.response_mask[idx, :T].float(),
                                     exp.response_mask[idx].sum() / mb_tokens * dist.world))
        out.append(micros)
    return out


def policy_loss_on(m: Models, exp: Experience, mb: MicroBatch, adv: torch.Tensor, cfg: PPOConfig,
                   with_entropy: bool, first: FirstForwards | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate (- entropy bonus) on one micro-batch, and its stats. `first`: this
    micro-batch's forward already run (epoch 0 of whole-batch epochs)."""
    idx, T = mb.idx, mb.T
    if first is not None:
        logprobs, ent = first.logprobs[idx, :T], first.entropy[idx, :T]  # (b, T)
    else:
        logprobs, ent = m.policy_fwd.logprobs(mb.input_ids, mb.attention_mask, exp.prompt_len, cfg.temperature,
                                              with_entropy)  # (b, T), (b, T) or None
    loss, pg = rl.policy_loss(logprobs, exp.logprobs[idx, :T], adv[idx, :T], mb.response_mask, cfg.cliprange)
    stats = {"loss/policy": loss.detach(), "policy/approx_kl": pg["approx_kl"], "policy/clipfrac": pg["clipfrac"]}
    if ent is not None:
        entropy = rl.masked_mean(ent, mb.response_mask)
        stats["policy/entropy"] = entropy.detach()
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * entropy
    return loss, stats


def value_loss_on(m: Models, exp: Experience, mb: MicroBatch, cfg: PPOConfig,
                  first: FirstForwards | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped value loss on one micro-batch, and its stats. `first`: as in policy_loss_on."""
    idx, T = mb.idx, mb.T
    if first is not None:
        values = first.values[idx, :T]  # (b, T)
    else:
        values = m.critic_fwd.values(mb.input_ids, mb.attention_mask, exp.prompt_len)  # (b, T)
    loss, vf = rl.value_loss(values, exp.values[idx, :T], exp.returns[idx, :T], mb.response_mask, cfg.cliprange_value)
    return loss, {"loss/value": loss.detach(), "val/clipfrac": vf["clipfrac"], "val/mean": vf["mean"]}


def train_minibatch(opt, micros: list[MicroBatch], loss_on, coef: float, cfg: PPOConfig,
                    dist, step: int, name: str) -> list[dict]:
    """Backpropagate coef x loss_on(micro) x its weight for each micro-batch, then one clipped
    optimizer step (gradients averaged over processes). Returns the micro-batches' stats."""
    stats = []
    for mb in micros:
        with autocast(mb.input_ids.device):
            loss, s = loss_on(mb)
        check_finite(name, loss.detach(), step, dist)
        (coef * loss * mb.weight).backward()
        stats.append(s)
    params = [p for group in opt.param_groups for p in group["params"]]
    dist.sync_grads(params)
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return stats


def train_epochs(opt, epochs: list[tuple[int, list[list[MicroBatch]]]], loss_on, coef: float, cfg: PPOConfig,
                 dist, step: int, name: str, check_stop) -> list[dict]:
    """One model's update over (epoch, minibatches) pairs: train_minibatch on each minibatch in
    turn, loss_on(micro, epoch) giving the loss. Returns every micro-batch's stats."""
    stats = []
    for epoch, minibatches_ in epochs:
        for micros in minibatches_:
            stats += train_minibatch(opt, micros, lambda mb: loss_on(mb, epoch), coef, cfg, dist, step, name)
            check_stop()
    return stats


def update(m: Models, exp: Experience, adv: torch.Tensor, cfg: PPOConfig, optimizers: list, step: int,
           check_stop, dist, first: FirstForwards | None = None) -> dict:
    """ppo_epochs x num_minibatches x grad_accum over the batch, a fresh shuffle each epoch; stops
    after an epoch whose mean approx KL (over all processes) exceeds target_kl.

    optimizers: [policy's, critic's]. adv: (B, T) the advantages the loss uses (whitened or not, by
    the caller). The two models share no weights, so their updates go to m.run_both (side by side
    on a CPU): epoch by epoch with target_kl, whose verdict both follow; without it nothing ties
    them, and each runs all its epochs in one go. `first`: epoch 0's forwards from the score
    phase (Scored.first). Returns stats averaged over every micro-batch.
    """
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    B = exp.input_ids.shape[0]
    plan = [minibatches(exp, cfg, torch.randperm(B, generator=g).to(exp.input_ids.device), dist)
            for _ in range(cfg.ppo_epochs)]  # drawn up front: both models read the same rows in the same order
    reuse = lambda epoch: first if epoch == 0 else None  # noqa: E731  (epoch 0: one micro-batch, the whole batch)
    policy = lambda mb, epoch: policy_loss_on(m, exp, mb, adv, cfg, bool(cfg.entropy_coef) or epoch == 0,  # noqa: E731
                                              reuse(epoch))  # (entropy at epoch 0: for the record)
    value = lambda mb, epoch: value_loss_on(m, exp, mb, cfg, reuse(epoch))  # noqa: E731
    group = 1 if cfg.target_kl is not None else cfg.ppo_epochs
    pstats: list[dict] = []
    vstats: list[dict] = []
    epochs = 0
    for start in range(0, cfg.ppo_epochs, group):
        chunk = list(enumerate(plan))[start:start + group]
        p, v = m.run_both(
            lambda: train_epochs(optimizers[0], chunk, policy, 1.0, cfg, dist, step, "loss/policy", check_stop),
            lambda: train_epochs(optimizers[1], chunk, value, cfg.vf_coef, cfg, dist, step, "loss/value", check_stop))
        pstats, vstats, epochs = pstats + p, vstats + v, epochs + len(chunk)
        if cfg.target_kl is not None and float(dist.mean(torch.stack([s["policy/approx_kl"] for s in p]).mean())) > cfg.target_kl:
            break
    stats = pstats + vstats
    out: dict[str, float] = {}
    for k in dict.fromkeys(k for s in stats for k in s):  # first-seen order, as on every process
        out[k] = float(torch.stack([s[k] for s in stats if k in s]).mean())
    bonus = cfg.entropy_coef * out["policy/entropy"] if cfg.entropy_coef else 0.0  # then in every micro-batch
    out["loss/total"] = out["loss/policy"] - bonus + cfg.vf_coef * out["loss/value"]
    out["policy/epochs"] = float(epochs)
    return out
