"""Bradley-Terry reward-model training (seeds 000, 004): -log sigmoid(r(x, y_c) - r(x, y_r)).

The reward model is AutoModelForSequenceClassification(num_labels=1) initialised from a causal LM;
its score is read at the EOS ending prompt + response (core.models.scoring, shared with PPO).
Each pair is one packed row (core.backends.pair_packing) when the model's forward scores such
rows as it scores two padded ones on the run's first pairs, else two padded rows.

Two entry points share one body:
  CLI  train_reward_model(cfg)        makes the Run at cfg.output_dir and wraps it in run_to_completion;
                                      errors are re-raised so the command exits non-zero
  GUI  core.runtime.jobs.start_reward checks the config synchronously (errors reach the user at once),
                                      then runs train_reward_model(cfg, run) in a child process
Everything goes through accelerate.Accelerator, so `accelerate launch -m core.cli train-rm ...` works;
only the main process writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from .. import backends
from ..backends.pair_packing import PackedPairs, pack_pairs, packed_length, packed_scores, packing_works
from ..config import RewardConfig, save_config
from ..data.reward_pairs import Pairs, prepare_data
from ..models.device import autocast
from ..models.loading import disable_dropout, load_scalar_model
from ..models.scoring import pad_right
from ..rl import pairwise_loss
from ..runtime.distributed import distributed_on_cpu
from ..runtime.runs import Run, StopRequested, new_run_dir, read_status, run_to_completion, write_json_atomic
from .preflight import check_base_model, load_reward_tokenizer

EVAL_BATCH = 64          # pairs per no-grad forward when validating
SCORE_STATS_PAIRS = 512  # training pairs re-scored at the end for score_mean/std (1,024 scores: ~2% error on std)


class _Scorer(torch.nn.Module):
    """Wraps the HF model so DDP (accelerate) sees one forward of tensors -> (2B,) scores, chosen
    then rejected: packed rows (core.backends.pair_packing) when `packed`, else padded rows, both
    through the model's forward `fwd` (core.backends.select)."""

    def __init__(self, model, fwd, packed: bool):
        super().__init__()
        self.model, self.packed = model, packed
        self.fwd = fwd  # not a module attribute of its own: it holds `model`

    def forward(self, input_ids, mask_or_segment, position_ids=None, chosen_at=None, rejected_at=None):
        if position_ids is None:
            return self.fwd.scores(input_ids, mask_or_segment)
        return packed_scores(self.fwd, PackedPairs(input_ids, position_ids, mask_or_segment, chosen_at, rejected_at))


# ---------------------------------------------------------------- training
def _probe(seqs: list[list[int]], pad: int, device) -> backends.Probe:
    """Texts of the run's own data, as a probe for core.backends.select (no prompt columns: a
    reward model reads whole texts)."""
    ids, mask = pad_right(seqs, pad, device)
    return backends.Probe(ids, mask, 1)


def _row_length(data: Pairs, packed: bool) -> list[int]:
    """What sets a batch's padding: the packed row, or the longer text of the pair."""
    size = packed_length if packed else lambda c, r: max(len(c), len(r))
    return [size(c, r) for c, r in zip(data.chosen, data.rejected)]


def _batches(train: Pairs, batch_size: int, rng: random.Random, packed: bool) -> list[list[int]]:
    """One epoch of shuffled batches, length-grouped within windows of 8 batches.

    Sorting each window by length puts rows of similar length together, so dynamic padding wastes
    little, while the shuffle before and after keeps the order random.
    """
    idx = list(range(len(train)))
    rng.shuffle(idx)
    length = _row_length(train, packed)
    out = []
    window = 8 * batch_size
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w:w + window], key=length.__getitem__)
        out += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def _pair_batch(data: Pairs, idx: list[int], pad: int, device, packed: bool):
    """(the scorer's inputs, margins): ONE forward scores both sides, as packed rows (one per
    pair) or as chosen rows then rejected rows padded together."""
    chosen, rejected = [data.chosen[i] for i in idx], [data.rejected[i] for i in idx]
    if packed:
        b = pack_pairs(chosen, rejected, pad).to(device)
        inputs = (b.input_ids, b.segment, b.position_ids, b.chosen_at, b.rejected_at)
    else:
        inputs = pad_right(chosen + rejected, pad, device)
    margin = None if data.margin is None else torch.tensor([data.margin[i] for i in idx], device=device)
    return inputs, margin


@torch.no_grad()
def _score_pairs(scorer, data: Pairs, pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) scores of every pair, in order; batches sorted by length."""
    packed = getattr(scorer, "module", scorer).packed  # under DDP, the wrapped _Scorer's
    length = _row_length(data, packed)
    order = sorted(range(len(data)), key=length.__getitem__)
    c_all, r_all = torch.empty(len(data)), torch.empty(len(data))
    scorer.eval()
    for i in range(0, len(order), EVAL_BATCH):
        idx = order[i:i + EVAL_BATCH]
        inputs, _ = _pair_batch(data, idx, pad, device, packed)
        with autocast(device):
            c, r = scorer(*inputs).float().cpu().chunk(2)
        c_all[idx], r_all[idx] = c, r
    scorer.train()
    return c_all, r_all


def _validate(scorer, val: Pairs, cfg: RewardConfig, pad: int, device) -> tuple[dict, torch.Tensor, torch.Tensor]:
    c, r = _score_pairs(scorer, val, pad, device)
    margin = torch.tensor(val.margin) if val.margin is not None else None
    loss, stats = pairwise_loss(c, r, margin, cfg.center_coef)
    return {"val/loss": loss.item(), "val/accuracy": stats["accuracy"].item(), "val/margin": stats["margin"].item()}, c, r


def _lr_lambda(total: int, warmup: int):
    # Linear warm-up then linear decay; (s + 1) so no optimizer step runs at learning rate 0.
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        return max(0.0, (total - s) / max(1, total - warmup))
    return f


def _train(cfg: RewardConfig, run: Run, accelerator: Accelerator) -> Path:
    t_start = time.time()
    device = accelerator.device
    check_base_model(cfg.base_model)
    tokenizer = load_reward_tokenizer(cfg.base_model)
    train, val, info = prepare_data(cfg, tokenizer)
    if run.is_main:
        for name in ("metrics.jsonl", "val_scores.json", "error.log"):  # a fresh training, not a resume
            (run.path / name).unlink(missing_ok=True)
        save_config(cfg, run.path / "config.yaml")
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    run.set_status(step=0, total_steps=total, message="loading model", **info)

    torch.manual_seed(cfg.seed)  # the score head's init
    model = load_scalar_model(cfg.base_model, device, trainable=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # the <pad> we added
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)  # dropout makes chosen and rejected scores noisy; TRL disables it too
    kernels = backends.optimize(model, device, cfg.cpu_kernels)
    pad = tokenizer.pad_token_id
    probe = list(range(min(8, len(train))))  # the same pairs on every rank, so all ranks agree
    chosen, rejected = [train.chosen[i] for i in probe], [train.rejected[i] for i in probe]
    fwd = backends.select(model, _probe(chosen + rejected, pad, device))
    packed = packing_works(fwd, chosen, rejected, pad, device)
    packed = bool(accelerator.gather(torch.tensor([float(packed)], device=device)).min() > 0)  # all ranks alike
    run.set_status(packed_pairs=packed, processes=accelerator.num_processes, forward=fwd.name,
                   cpu_kernels=list(kernels))
    scorer = accelerator.prepare(_Scorer(model, fwd, packed))
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cpu" else {}  # one kernel for all tensors (as in PPO)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, **fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(total * cfg.warmup_ratio)))
    rank, world = accelerator.process_index, accelerator.num_processes
    rng = random.Random(cfg.seed)
    step, train_time, val_metrics = 0, 0.0, {}
    run.set_status(message="training")
    for epoch in range(cfg.epochs):
        for batch in _batches(train, cfg.batch_size, rng, packed):
            t0 = time.perf_counter()
            local = batch[rank::world] or batch[:1]  # every rank must run a forward for DDP
            micro = [m for m in (local[i::cfg.grad_accum] for i in range(cfg.grad_accum)) if m]
            sums = torch.zeros(3, device=device)
            for k, idx in enumerate(micro):
                inputs, margin = _pair_batch(train, idx, pad, device, packed)
                sync = accelerator.no_sync(scorer) if k < len(micro) - 1 else contextlib.nullcontext()
                with sync:
                    with autocast(device):
                        chosen, rejected = scorer(*inputs).float().chunk(2)
                    loss, stats = pairwise_loss(chosen, rejected, margin, cfg.center_coef)
                    accelerator.backward(loss * (len(idx) / len(local)))  # mean over the step's pairs
                sums += torch.stack([loss.detach(), stats["accuracy"], stats["margin"]]) * (len(idx) / len(local))
            accelerator.clip_grad_norm_(params, 1.0)
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if world > 1:
                sums = accelerator.reduce(sums, "mean")
            step += 1
            train_time += time.perf_counter() - t0
            loss_v, acc_v, margin_v = sums.tolist()
            row = {"loss/reward": loss_v, "rm/accuracy": acc_v, "rm/margin": margin_v, "lr": lr,
                   "epoch": epoch + (step - epoch * steps_per_epoch) / steps_per_epoch,
                   "time/step": time.perf_counter() - t0}
            if len(val) and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
                val_metrics, vc, vr = _validate(scorer, val, cfg, pad, device)
                row.update(val_metrics)
                run.set_status(val_accuracy=val_metrics["val/accuracy"])
            run.log_metrics(step, row)
            run.set_status(step=step, epoch=row["epoch"], pairs_per_s=_pairs_done(step, cfg, train) / train_time)
            stop = run.should_stop()
            if world > 1:  # all ranks must agree, or one would wait forever in the next all-reduce
                stop = bool(accelerator.reduce(torch.tensor(float(stop), device=device), "sum").item())
            if stop:
                raise StopRequested()

    run.set_status(message="saving")
    model = accelerator.unwrap_model(scorer).model
    stats_idx = random.Random(cfg.seed + 1).sample(range(len(train)), min(len(train), SCORE_STATS_PAIRS))
    c, r = _score_pairs(accelerator.unwrap_model(scorer), train.subset(sorted(stats_idx)), pad, device)
    scores = torch.cat([c, r])
    # PPO standardises rewards with these, so a score of 0 means "typical" and 1 "one std better".
    model.config.score_mean = scores.mean().item()
    model.config.score_std = scores.std().item() if len(scores) > 1 else 1.0
    model.config.score_max_length = cfg.max_length
    if run.is_main:
        model.save_pretrained(run.path / "model", safe_serialization=True)
        tokenizer.save_pretrained(run.path / "model")
        if not len(val):
            vc = vr = torch.empty(0)  # otherwise: from the validation at the last step
        write_json_atomic(run.path / "val_scores.json", {"chosen": vc.tolist(), "rejected": vr.tolist(), "step": step})
    run.set_status(message="done", step=step, train_seconds=round(train_time, 2),
                   total_seconds=round(time.time() - t_start, 2), score_mean=model.config.score_mean,
                   score_std=model.config.score_std, **{k.replace("/", "_"): v for k, v in val_metrics.items()})
    return run.path


def _pairs_done(step: int, cfg: RewardConfig, train: Pairs) -> int:
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    full_epochs, rest = divmod(step, steps_per_epoch)
    return full_epochs * len(train) + min(rest * cfg.batch_size, len(train))


# ---------------------------------------------------------------- entry points
def train_reward_model(cfg: RewardConfig, run: Run | None = None) -> Path:
    """Train and save a reward model; returns the run directory.

    With `run` (a core.runtime.worker child process) this is the job body: the caller's run_to_completion
    records the outcome. Without it (the CLI) it makes the Run at cfg.output_dir itself, uses all
    CPU cores, and re-raises a failure after recording it, so the command exits non-zero.
    """
    accelerator = Accelerator(cpu=distributed_on_cpu())
    if run is not None:
        return _train(cfg, run, accelerator)
    if not cfg.output_dir:
        if accelerator.num_processes > 1:  # each rank would invent a different directory
            raise ValueError("output_dir is required under accelerate launch")
        cfg = dataclasses.replace(cfg, output_dir=str(new_run_dir("workspace", "reward")))
    if accelerator.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    run = Run(cfg.output_dir, "reward", is_main=accelerator.is_main_process)
    failure: list[BaseException] = []

    def body(r: Run) -> None:
        try:
            _train(cfg, r, accelerator)
        except StopRequested:
            raise
        except Exception as e:
            failure.append(e)
            raise

    state = run_to_completion(run, body)
    if failure:
        raise failure[0]
    if accelerator.is_main_process:
        st = read_status(run.path)
        acc = st.get("val_accuracy")
        print(f"reward run {state}: {run.path} (step {st.get('step')}/{st.get('total_steps')}, "
              f"val accuracy {'-' if acc is None else f'{acc:.3f}'}, {st.get('truncated', 0)} responses truncated)")
    return run.path
