"""The PPO update's epoch loop: shuffles, micro-batches, and one chain of epochs per model.

core.ppo.update runs the policy's and the critic's epochs as two chains over one plan: the models
share no weights, so on a CPU each chain runs free on its own thread (core/overlap.py) and
neither waits for the other between epochs; on a GPU, or with several processes (whose
collectives must come in one order), they take turns minibatch by minibatch. The one thing that
ties them is early stopping: the critic runs the epochs the policy's approx KL allowed (with
target_kl set, it waits at each epoch's end for that verdict).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .config import PPOConfig
from .ppo_forwards import shared_plan

if TYPE_CHECKING:
    from .ppo import Experience, Models


def trimmed(m: Models, exp: Experience, idx: torch.Tensor):
    """The rows `idx` without trailing columns that are padding in all of them, and their packing
    (made once here for both the policy and the critic forward; False = pad)."""
    P = exp.prompt_len
    T = int(exp.response_mask[idx].sum(1).max().clamp(min=1))
    ids, mask = exp.input_ids[idx, :P + T], exp.attention_mask[idx, :P + T]
    return ids, mask, exp.response_mask[idx, :T].float(), T, shared_plan(m, ids, mask, P)


@dataclass
class Micro:
    """One micro-batch of the update: b rows of the batch."""
    idx: torch.Tensor     # (b,) row indices
    weight: torch.Tensor  # () its share of its minibatch's response tokens (on all processes)
    rows: tuple           # trimmed(m, exp, idx)


def minibatch_plan(m: Models, exp: Experience, cfg: PPOConfig, step: int, dist) -> list[list[list[Micro]]]:
    """epochs x minibatches x micro-batches, a fresh shuffle each epoch, all drawn up front so the
    policy and the critic read the same rows in the same order, each at its own pace."""
    B = exp.input_ids.shape[0]
    mb_size = max(1, B // cfg.num_minibatches)
    micro = max(1, mb_size // cfg.grad_accum)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    plan = []
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B, generator=g).to(exp.input_ids.device)
        epoch = []
        for start in range(0, B - mb_size + 1, mb_size):
            mb = perm[start:start + mb_size]
            # Weight each micro-batch's token-mean loss by its share of the minibatch's tokens on
            # all processes: the summed gradient is then the token mean of the whole minibatch.
            mb_tokens = dist.sum(exp.response_mask[mb].sum().float()).clamp(min=1)
            epoch.append([Micro(idx, exp.response_mask[idx].sum() / mb_tokens * dist.world, trimmed(m, exp, idx))
                          for idx in mb.split(micro)])
        plan.append(epoch)
    return plan


class EpochGate:
    """Whether epoch e > 0 runs: the policy decides after each epoch (its mean approx KL against
    target_kl, over all processes) and the critic follows, waiting for the verdict when the two
    run side by side. Without target_kl every epoch runs and nobody waits."""

    def __init__(self, target_kl: float | None, dist):
        self.target_kl, self.dist = target_kl, dist
        self.verdicts: dict[int, bool] = {}
        self.closed = False
        self.cond = threading.Condition()

    def decide(self, epoch: int, kls: list[torch.Tensor]) -> bool:  # kls: the last epoch's approx KLs
        go = self.target_kl is None or float(self.dist.mean(torch.stack(kls).mean())) <= self.target_kl
        with self.cond:
            self.verdicts[epoch] = go
            self.cond.notify_all()
        return go

    def follow(self, epoch: int) -> bool:
        if self.target_kl is None:
            return True
        with self.cond:
            self.cond.wait_for(lambda: epoch in self.verdicts or self.closed)
            return self.verdicts.get(epoch, False)

    def close(self) -> None:  # a chain failed: a critic waiting for a verdict stops
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def train_chain(plan: list, part, opt, cfg: PPOConfig, check_stop, dist, go_on, stats: list):
    """One model's PPO epochs over `plan`: a generator that yields after each optimizer step
    (and checks for a stop request when resumed). part(epoch, micro) backpropagates a micro-batch
    and returns its stats; go_on(epoch) says whether epoch > 0 runs; each micro-batch's (epoch,
    stats) go to `stats`."""
    params = opt_params(opt)
    for e, epoch in enumerate(plan):
        if e and not go_on(e):
            return
        for minibatch in epoch:
            for mic in minibatch:
                stats.append((e, part(e, mic)))
            dist.sync_grads(params)
            optimizer_step(opt, params, cfg.max_grad_norm)
            yield  # before the stop check: a chain closed here (the other failed) leaves without one
            check_stop()


def optimizer_step(opt, params: list, max_grad_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)


def opt_params(opt) -> list:
    return [p for group in opt.param_groups for p in group["params"]]
