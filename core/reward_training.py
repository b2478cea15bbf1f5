"""Bradley-Terry reward-model training (seeds 000, 004): -log sigmoid(r(x, y_c) - r(x, y_r)).

The reward model is AutoModelForSequenceClassification(num_labels=1) initialised from a causal LM;
its score is read at the EOS ending prompt + response (core.scoring, shared with PPO).

Two entry points share one body:
  CLI  train_reward_model(cfg)        makes the Run at cfg.output_dir and wraps it in run_to_completion;
                                      errors are re-raised so the command exits non-zero
  GUI  start_reward_job(ws, cfg)      checks the config synchronously (errors reach the user at once),
                                      then runs train_reward_model(cfg, run) in a core.jobs child process
Everything goes through accelerate.Accelerator, so `accelerate launch -m core.cli train-rm ...` works;
only the main process writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoConfig, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from .config import RewardConfig, save_config
from .models import autocast, check_model_dir, load_scalar_model, sequence_scores
from .preferences import PreferenceStore, read_preferences
from .rl import pairwise_loss
from .jobs import JOBS, Job
from .runs import Run, StopRequested, new_run_dir, read_status, run_to_completion, write_json_atomic
from .scoring import pad_right, tokenize_for_scoring

EVAL_BATCH = 64          # pairs per no-grad forward when validating
SCORE_STATS_PAIRS = 512  # training pairs re-scored at the end for score_mean/std (1,024 scores: ~2% error on std)


# ---------------------------------------------------------------- data
@dataclass
class Pairs:
    """Tokenized pairs: unpadded id lists (padding happens per batch, to that batch's longest)."""
    chosen: list[list[int]]
    rejected: list[list[int]]
    margin: list[float] | None
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, idx: list[int]) -> "Pairs":
        m = None if self.margin is None else [self.margin[i] for i in idx]
        return Pairs([self.chosen[i] for i in idx], [self.rejected[i] for i in idx], m)


def _read_margins(path: Path) -> list[float] | None:
    """The optional `margin` column of a TRL file, row-aligned with read_preferences (which drops it)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        values = [r.get("margin") for r in rows]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        values = table.column("margin").to_pylist() if "margin" in table.column_names else [None]
    else:
        return None
    if not values or all(v is None for v in values):
        return None
    try:
        return [float(v) if v is not None else 0.0 for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{path.name}: the `margin` column must hold numbers") from None


def load_rows(path_str: str, what: str = "data") -> tuple[list[dict], list[float] | None]:
    """Labelled rows {prompt, chosen, rejected} and margins (or None), with messages a user can act on."""
    if not path_str:
        raise ValueError(f"no training data: set `{what}` to a preferences .db or a TRL .jsonl/.parquet file")
    path = Path(path_str).expanduser()
    if not path.exists():
        raise ValueError(f"{what} file {path} does not exist")
    rows = read_preferences(path)
    margins = _read_margins(path) if path.suffix.lower() != ".db" else None
    if not rows:
        hint = ""
        if path.suffix.lower() == ".db":
            with PreferenceStore(path) as store:
                c = store.counts()
            hint = (f" (it has {c['labels']} labels, none of them 'a' or 'b': ties, both_bad and skip do not "
                    "say which response is better)" if c["labels"] else
                    f" (it has {c['pairs']} pairs but no labels yet: label some in the Label tab)")
        raise ValueError(f"no labelled pairs in {path}{hint}")
    return rows, margins


def load_sources(spec: str, what: str = "data") -> tuple[list[dict], list[float] | None]:
    """`spec`: one source, or several separated by commas (e.g. the store and a TRL file), read
    in order and concatenated. Margins are kept when any source has them (0 for the others)."""
    parts = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if len(parts) <= 1:
        return load_rows(parts[0] if parts else "", what)
    rows, margins, any_margin = [], [], False
    for part in parts:
        r, m = load_rows(part, what)
        rows += r
        margins += m if m is not None else [0.0] * len(r)
        any_margin |= m is not None
    return rows, (margins if any_margin else None)


def _keep_informative(rows, margins, where: str):
    """Drop pairs whose chosen and rejected are the same text: they cannot teach a preference."""
    keep = [i for i, r in enumerate(rows) if r["chosen"] != r["rejected"]]
    if not keep:
        raise ValueError(f"all {len(rows)} pairs in {where} have identical chosen and rejected responses: "
                         "there is no preference to learn")
    return [rows[i] for i in keep], (None if margins is None else [margins[i] for i in keep]), len(rows) - len(keep)


def tokenize_pairs(tokenizer, rows, margins, max_length: int) -> Pairs:
    prompts = [r["prompt"] for r in rows]
    chosen, tc = tokenize_for_scoring(tokenizer, prompts, [r["chosen"] for r in rows], max_length)
    rejected, tr = tokenize_for_scoring(tokenizer, prompts, [r["rejected"] for r in rows], max_length)
    return Pairs(chosen, rejected, margins, tc + tr)


def prepare_data(cfg: RewardConfig, tokenizer) -> tuple[Pairs, Pairs, dict]:
    """(train, val, info). Raises ValueError for data that cannot train a reward model."""
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    for name in ("epochs", "batch_size", "grad_accum", "max_length"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    rows, margins = load_sources(cfg.data, "data")
    rows, margins, dropped = _keep_informative(rows, margins, cfg.data)
    if not cfg.use_margin:
        margins = None
    if cfg.val_data:
        vrows, vmargins = load_sources(cfg.val_data, "val_data")
        vrows, vmargins, _ = _keep_informative(vrows, vmargins if cfg.use_margin else None, cfg.val_data)
        train = tokenize_pairs(tokenizer, rows, margins, cfg.max_length)
        val = tokenize_pairs(tokenizer, vrows, vmargins, cfg.max_length)
    else:
        everything = tokenize_pairs(tokenizer, rows, margins, cfg.max_length)
        n = len(everything)
        n_val = min(n - 1, max(1, round(n * cfg.val_fraction))) if cfg.val_fraction > 0 and n >= 2 else 0
        perm = list(range(n))
        random.Random(cfg.seed).shuffle(perm)  # seeded: the same config always holds out the same pairs
        val, train = everything.subset(perm[:n_val]), everything.subset(perm[n_val:])
        train.truncated = everything.truncated
    info = {"pairs_train": len(train), "pairs_val": len(val), "identical_dropped": dropped,
            "truncated": train.truncated + val.truncated}
    return train, val, info


# ---------------------------------------------------------------- model
def check_base_model(path: str) -> None:
    """A ValueError a user understands for a base model that is missing or is not a causal LM."""
    check_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a model from {path!r}: {str(e).splitlines()[0]}") from None
    archs = config.architectures or []
    if getattr(config, "is_encoder_decoder", False) or (archs and not any(
            a.endswith(("ForCausalLM", "LMHeadModel", "ForSequenceClassification")) for a in archs)):
        raise ValueError(f"{path} is not a causal language model (architectures: {', '.join(archs) or '?'}); "
                         "the reward model starts from a causal LM such as the workbench's policy")
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ValueError(f"transformers has no sequence-classification head for model type {config.model_type!r}")


def load_reward_tokenizer(path: str):
    """The base model's tokenizer with a pad token distinct from EOS.

    Why distinct: with right padding, plain transformers finds the scored position as the last
    non-pad token. Were pad == EOS, it would skip the EOS that ends every scored text and score
    the token before it, so the saved model would score differently outside the workbench.
    """
    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token is None:
        raise ValueError(f"{path}: the tokenizer has no EOS token; the reward is read at the EOS after the response")
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": "<pad>"})
    tok.padding_side = "right"  # matches core.scoring; saved with the model for plain-transformers users
    return tok


class _Scorer(torch.nn.Module):
    """Wraps the HF model so DDP (accelerate) sees one forward: ids, mask -> last-token scores."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return sequence_scores(self.model, input_ids, attention_mask)


def preflight(cfg: RewardConfig) -> dict:
    """Everything that can be checked without loading weights; raises ValueError. Returns the data info."""
    check_base_model(cfg.base_model)
    return prepare_data(cfg, load_reward_tokenizer(cfg.base_model))[2]


# ---------------------------------------------------------------- training
def _batches(train: Pairs, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of shuffled batches, length-grouped within windows of 8 batches.

    Sorting each window by length puts rows of similar length together, so dynamic padding wastes
    little, while the shuffle before and after keeps the order random.
    """
    idx = list(range(len(train)))
    rng.shuffle(idx)
    length = [max(len(c), len(r)) for c, r in zip(train.chosen, train.rejected)]
    out = []
    window = 8 * batch_size
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w:w + window], key=length.__getitem__)
        out += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def _pair_batch(data: Pairs, idx: list[int], pad: int, device):
    """chosen rows then rejected rows, padded together: ONE forward scores both sides."""
    ids, mask = pad_right([data.chosen[i] for i in idx] + [data.rejected[i] for i in idx], pad, device)
    margin = None if data.margin is None else torch.tensor([data.margin[i] for i in idx], device=device)
    return ids, mask, margin


@torch.no_grad()
def _score_pairs(scorer, data: Pairs, pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) scores of every pair, in order; batches sorted by length."""
    order = sorted(range(len(data)), key=lambda i: max(len(data.chosen[i]), len(data.rejected[i])))
    c_all, r_all = torch.empty(len(data)), torch.empty(len(data))
    scorer.eval()
    for i in range(0, len(order), EVAL_BATCH):
        idx = order[i:i + EVAL_BATCH]
        ids, mask, _ = _pair_batch(data, idx, pad, device)
        with autocast(device):
            c, r = scorer(ids, mask).float().cpu().chunk(2)
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
    for m in model.modules():  # dropout makes chosen and rejected scores noisy; TRL disables it too
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    scorer = accelerator.prepare(_Scorer(model))
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cpu" else {}  # one kernel for all tensors (as in PPO)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, **fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(total * cfg.warmup_ratio)))
    pad = tokenizer.pad_token_id
    rank, world = accelerator.process_index, accelerator.num_processes
    rng = random.Random(cfg.seed)
    step, train_time, val_metrics = 0, 0.0, {}
    run.set_status(message="training")
    for epoch in range(cfg.epochs):
        for batch in _batches(train, cfg.batch_size, rng):
            t0 = time.perf_counter()
            local = batch[rank::world] or batch[:1]  # every rank must run a forward for DDP
            micro = [m for m in (local[i::cfg.grad_accum] for i in range(cfg.grad_accum)) if m]
            sums = torch.zeros(3, device=device)
            for k, idx in enumerate(micro):
                ids, mask, margin = _pair_batch(train, idx, pad, device)
                sync = accelerator.no_sync(scorer) if k < len(micro) - 1 else contextlib.nullcontext()
                with sync:
                    with autocast(device):
                        chosen, rejected = scorer(ids, mask).float().chunk(2)
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

    With `run` (a core.jobs child process) this is the job body: the caller's run_to_completion
    records the outcome. Without it (the CLI) it makes the Run at cfg.output_dir itself, uses all
    CPU cores, and re-raises a failure after recording it, so the command exits non-zero.
    """
    accelerator = Accelerator()
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


def start_reward_job(workspace: str | Path, cfg: RewardConfig) -> Job:
    """Check the config (ValueError at once), then train in a background process (core.jobs).

    RuntimeError when a reward run is already running in this workspace.
    """
    active = JOBS.active(workspace, "reward")
    if active is not None:
        raise RuntimeError(f"a reward run is already running: {active.path.name}. Stop it first.")
    cfg = dataclasses.replace(cfg, output_dir=cfg.output_dir or str(new_run_dir(workspace, "reward")))
    preflight(cfg)
    return JOBS.start(workspace, "reward", cfg, cfg.output_dir)
