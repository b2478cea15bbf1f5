"""The PPO loop around core/ppo/step.py: setup, records, checkpoints, resume, processes.

`run_ppo(cfg)` is the CLI entry (also under `accelerate launch`); the GUI runs `ppo_body` in a
background process (core.runtime.jobs.start_ppo). Everything goes to the run directory
(docs/architecture.md): config.yaml, status.json, metrics.jsonl, tokens.jsonl, checkpoints/, model/.

Distributed: each process takes a contiguous slice of the global batch, and draws its sampling
uniforms from the same per-step generator as one process would, so a row samples the same tokens
whichever rank holds it. Gradients are all-reduced by hand (the update calls submodules directly,
which DDP's forward hooks would not see) and losses are normalised by the global token count, so
N processes take the same optimizer steps as one process on the whole batch.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import backends, rl
from ..config import PPOConfig, save_config
from ..data.prompts import prompt_batch, read_prompts
from ..models.device import pick_device
from ..models.generation import decode_responses
from ..runtime.checkpoint import latest_checkpoint, load_checkpoint, run_dir_of, save_checkpoint
from ..runtime.distributed import Dist
from ..runtime.runs import Run, StopRequested, new_run_dir, read_jsonl, run_to_completion
from .models import Models, load_models, make_optimizers, prepare
from .records import experience_metrics, token_records
from .step import check_finite, make_experience, rollout, score, update


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """Multiplier of the base learning rates at `step` (1-based). A pure function of the step, so a
    resumed run continues the schedule exactly from the checkpoint's step."""
    if schedule == "linear":
        return 1.0 - (step - 1) / max(steps, 1)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown lr_schedule {schedule!r}: use constant or linear")


def set_learning_rates(optimizers: list, cfg: PPOConfig, step: int) -> float:
    f = lr_factor(cfg.lr_schedule, step, cfg.steps)
    for opt, base in zip(optimizers, (cfg.learning_rate, cfg.critic_learning_rate)):
        for g in opt.param_groups:
            g["lr"] = base * f
    return cfg.learning_rate * f


def check_config(cfg: PPOConfig, world: int = 1) -> None:
    """Refuse what would only fail (or silently drop rows) later in the run, with a clear message."""
    if not cfg.reward_model:
        raise ValueError("No reward model: train one in the Reward model tab (or pick a reward model directory).")
    if not Path(cfg.reward_model).exists():
        raise ValueError(f"reward model {cfg.reward_model} does not exist")
    if not Path(cfg.prompts).is_file():
        raise ValueError(f"prompt file {cfg.prompts} does not exist")
    for name in ("steps", "batch_size", "response_length", "ppo_epochs", "num_minibatches", "grad_accum"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    if cfg.temperature <= 0:
        raise ValueError("temperature must be positive")
    lr_factor(cfg.lr_schedule, 1, cfg.steps)  # an unknown schedule name fails here, not at step 1
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} processes")
    per_process = cfg.batch_size // world
    if per_process % cfg.num_minibatches:  # the rest would never be trained on
        raise ValueError(f"batch_size {cfg.batch_size} does not split into {cfg.num_minibatches} equal minibatches"
                         + (f" per process ({world} processes)" if world > 1 else ""))


@dataclass
class Trainer:
    """What one PPO run holds between steps."""
    cfg: PPOConfig
    models: Models
    optimizers: list
    kl_ctl: object
    prompts: list[str]
    dist: Dist
    gold: object = None  # text -> float, the gold judge (VADER) or None


def setup(cfg: PPOConfig, run: Run, resume: str | None) -> tuple[Trainer, int]:
    """Models, optimizers and KL controller, restored from the latest checkpoint on resume."""
    dist = Dist()
    device = pick_device() if dist.world == 1 else dist.device
    torch.manual_seed(cfg.seed + dist.rank)
    check_config(cfg, dist.world)
    prompts = read_prompts(cfg.prompts)
    ckpt = latest_checkpoint(resume) if resume else None
    if resume and ckpt is None:
        raise ValueError(f"{resume} has no checkpoint to resume from")
    m = load_models(cfg, device, policy_from=ckpt and str(ckpt / "policy"), critic_from=ckpt and str(ckpt / "critic"))
    prepare(m, prompt_batch(prompts, 0, cfg.batch_size, cfg.seed), cfg, device, dist.world)
    optimizers = make_optimizers(m, cfg)
    backends.keep_heap(device, cfg.cpu_kernels)
    kl_ctl = (rl.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target is not None
              else rl.FixedKLController(cfg.kl_coef))
    start = 0
    if ckpt is not None:
        start = load_checkpoint(ckpt, optimizers, kl_ctl)
        if run.is_main:  # drop records past the checkpoint, so the step sequence has no duplicate
            for name in ("metrics.jsonl", "tokens.jsonl"):
                rows = [r for r in read_jsonl(run.path / name) if r.get("step", 0) <= start]
                (run.path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    gold = None
    if cfg.gold_judge == "vader":
        from ..preferences.annotator import SentimentAnnotator
        gold = SentimentAnnotator().score
    return Trainer(cfg, m, optimizers, kl_ctl, prompts, dist, gold), start


def ppo_step(tr: Trainer, step: int, check_stop) -> tuple[dict, list[dict]]:
    """One PPO step on this process's slice of the batch: rollout -> score -> advantages -> update.
    Returns the step's metrics (averaged over processes) and its tokens.jsonl records."""
    cfg, m, dist = tr.cfg, tr.models, tr.dist
    b = cfg.batch_size // dist.world
    lo, hi = dist.rank * b, (dist.rank + 1) * b
    t0 = time.time()
    prompts = prompt_batch(tr.prompts, step - 1, cfg.batch_size, cfg.seed)[lo:hi]
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    uniforms = torch.rand(cfg.batch_size, cfg.response_length, generator=g)[lo:hi]
    samples = rollout(m, prompts, cfg, uniforms)
    check_finite("logprobs", samples.logprobs, step, dist)
    responses = decode_responses(m.tokenizer, samples)
    check_stop()
    t1 = time.time()
    scored = score(m, prompts, responses, samples, cfg)
    check_finite("score", scored.raw_scores, step, dist)
    check_finite("ref_logprobs", scored.ref_logprobs, step, dist)
    check_finite("values", scored.values, step, dist)
    check_stop()
    t2 = time.time()
    exp = make_experience(m, samples, prompts, responses, scored, tr.kl_ctl.value, cfg, reduce=dist.sum)
    rmask = exp.response_mask.float()
    adv = rl.whiten(exp.advantages, rmask, reduce=dist.reduce) if cfg.whiten_advantages else exp.advantages
    stats = update(m, exp, adv, cfg, tr.optimizers, step, check_stop, dist, scored.first)
    t3 = time.time()
    metrics = {**experience_metrics(exp, tr.kl_ctl.value), **stats}
    golds = [tr.gold(r) for r in responses] if tr.gold else None
    if golds:
        metrics["objective/gold"] = sum(golds) / len(golds)
    keys = sorted(metrics)  # one order on every process, whatever order the dict was built in
    means = dict(zip(keys, dist.mean(torch.tensor([metrics[k] for k in keys], dtype=torch.float64)).tolist()))
    metrics = {k: means[k] for k in metrics}
    metrics.update({"time/rollout": t1 - t0, "time/score": t2 - t1, "time/update": t3 - t2,
                    "time/step": t3 - t0, "eps": cfg.batch_size / (t3 - t0)})
    records = token_records(exp, m.tokenizer, step, cfg.log_samples, tr.kl_ctl.value, golds)
    return metrics, records


def ppo_body(cfg: PPOConfig, run: Run, resume: str | None = None) -> None:
    tr, start = setup(cfg, run, resume)
    if run.is_main:
        save_config(cfg, run.path / "config.yaml")
    m = tr.models
    run.set_status(step=start, total_steps=cfg.steps, processes=tr.dist.world, forwards=m.forward_names(),
                   packed_sequences=m.policy_fwd.name != "padded", cpu_kernels=list(m.kernels))
    done = saved = start
    checkpoint = lambda step: save_checkpoint(run, step, tr.models, tr.optimizers, tr.kl_ctl, cfg)  # noqa: E731
    stop_asked = lambda: tr.dist.any(run.should_stop())  # noqa: E731  (agreed on by every process)

    def check_stop() -> None:
        if stop_asked():
            raise StopRequested()
    try:
        for step in range(start + 1, cfg.steps + 1):
            if stop_asked():
                break
            lr = set_learning_rates(tr.optimizers, cfg, step)
            metrics, records = ppo_step(tr, step, check_stop)
            metrics["lr"] = lr
            tr.kl_ctl.update(metrics["objective/kl"], cfg.batch_size)
            run.log_metrics(step, metrics)
            run.log_tokens(records)
            run.set_status(step=step)
            done = step
            if step % cfg.save_every == 0 or step == cfg.steps:
                checkpoint(step)
                saved = step
    except StopRequested:
        # Stopped inside a step: its records are dropped, but the weights have already moved,
        # so save them under the last whole step (resume re-runs the interrupted step).
        if done > start:
            checkpoint(done)
        raise
    if done != saved:  # stopped between checkpoints: keep the last whole step
        checkpoint(done)
    if run.is_main and not run.should_stop():
        policy = tr.models.policy.merge_and_unload() if cfg.lora_rank else tr.models.policy
        policy.save_pretrained(run.path / "model", safe_serialization=True)
        tr.models.tokenizer.save_pretrained(run.path / "model")


def run_ppo(cfg: PPOConfig, resume: str | None = None) -> str:
    """Foreground run for the CLI; returns the final state. ValueError for a config that cannot run."""
    dist = Dist()
    if not (cfg.output_dir or resume) and dist.world > 1:  # each rank would invent a different directory
        raise ValueError("output_dir is required under accelerate launch")
    check_config(cfg, dist.world)  # a bad config is an error now, not a failed run directory
    # where the GUI looks (./workspace/runs, its default workspace), so a CLI run shows up there too
    out = cfg.output_dir or str(run_dir_of(resume) if resume else new_run_dir("workspace", "ppo"))
    cfg.output_dir = out
    run = Run(out, "ppo", is_main=dist.is_main)
    state = run_to_completion(run, lambda r: ppo_body(cfg, r, resume))
    if dist.is_main:
        st = run._status
        print(f"PPO run {out}: {state} at step {st.get('step')}" + (f" ({st['error']})" if st.get("error") else ""))
    return state
