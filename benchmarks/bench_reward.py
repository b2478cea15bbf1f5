"""Reward-model quality and speed: core.reward.training vs TRL's RewardTrainer, same data, same run.

    python benchmarks/bench_reward.py [--model DIR] [--pairs 1200] [--val 200] [--train N] [--epochs 2]
                                      [--batch-size 16] [--lr 3e-4] [--trl-steps N] [--data-cache FILE]
                                      [--keep DIR]

1. Samples 2 x pairs responses (24 new tokens) from the embedded model on the default prompts.
2. Labels each pair with SentimentAnnotator(temperature=0.1): a noisy Bradley-Terry annotator.
3. Trains our reward model on the first (pairs - val) pairs, validates on the rest.
4. Quality: on validation pairs whose VADER scores differ by >= 0.1, how often the reward model
   agrees with the *deterministic* preference (higher VADER score), i.e. the annotator's taste
   without its noise. Goal >= 0.80.
5. Speed: training pairs per second (the optimisation loop: forward, backward, step; data
   tokenization, model loading and saving excluded, as TRL's train_runtime excludes its dataset
   preparation). TRL's RewardTrainer (optional `bench` extra) trains the same base model on the
   same pairs, batch size and learning rate, measured two ways:
     fair      fp32, gradient checkpointing off, --trl-steps steps (default: as many as ours, i.e.
               the same pairs and epochs, so both are timed over the same work and the
               same stretch of this VM's drifting speed): the same arithmetic as ours;
               this is the baseline of the ratio. Goal >= 1.5x.
     defaults  TRL 0.29's defaults, --trl-default-steps steps: bf16 autocast (bf16=None means on)
               and gradient checkpointing. On a CPU without bf16 units that is ~20x slower, so
               it is shown for information only, never used for the ratio.
Prints a table and ends with one JSON line of figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.config import DEFAULT_MODEL, DEFAULT_PROMPTS, GenerationConfig, RewardConfig  # noqa: E402
from core.models.generation import sample_texts  # noqa: E402
from core.models.loading import load_policy, load_tokenizer  # noqa: E402
from core.preferences import SentimentAnnotator  # noqa: E402
from core.reward.training import train_reward_model  # noqa: E402
from core.runtime.runs import read_status  # noqa: E402
from core.models.scoring import score_texts  # noqa: E402


def make_pairs(model_dir: str, n: int, seed: int) -> list[dict]:
    """n pairs {prompt, a, b, score_a, score_b}: two independent samples per prompt.

    5% extra are sampled because a response can be empty (EOS first), and the preference
    store, like a person, cannot label an empty response; such pairs are dropped.
    """
    model, tok = load_policy(model_dir, torch.device("cpu"), trainable=False), load_tokenizer(model_dir)
    prompts = [p for p in Path(DEFAULT_PROMPTS).read_text().splitlines() if p.strip()]
    prompts = [prompts[i % len(prompts)] for i in range(int(n * 1.05) + 8)]
    gen = GenerationConfig(max_new_tokens=24)
    a = sample_texts(model, tok, prompts, gen, seed=seed)
    b = sample_texts(model, tok, prompts, gen, seed=seed + 1)
    vader = SentimentAnnotator(temperature=0)
    pairs = [{"prompt": p, "a": x, "b": y, "score_a": vader.score(x), "score_b": vader.score(y)}
             for p, x, y in zip(prompts, a, b) if x.strip() and y.strip()]
    if len(pairs) < n:
        raise SystemExit(f"only {len(pairs)} pairs with two non-empty responses; wanted {n}")
    return pairs[:n]


def label(pairs: list[dict], seed: int) -> list[dict]:
    ann = SentimentAnnotator(temperature=0.1, seed=seed)
    rows = []
    for p in pairs:
        choice = ann.prefer(p["a"], p["b"])
        c, r = (p["a"], p["b"]) if choice == "a" else (p["b"], p["a"])
        rows.append({"prompt": p["prompt"], "chosen": c, "rejected": r})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def gold_accuracy(model_dir: Path, val_pairs: list[dict], min_gap: float = 0.1) -> tuple[float, int]:
    """Agreement with the deterministic VADER preference on pairs whose scores differ by >= min_gap."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()  # plain transformers
    tok = AutoTokenizer.from_pretrained(model_dir)
    clear = [p for p in val_pairs if abs(p["score_a"] - p["score_b"]) >= min_gap]
    prompts = [p["prompt"] for p in clear]
    ra = score_texts(model, tok, prompts, [p["a"] for p in clear])
    rb = score_texts(model, tok, prompts, [p["b"] for p in clear])
    gold = torch.tensor([p["score_a"] > p["score_b"] for p in clear])
    return ((ra > rb) == gold).float().mean().item(), len(clear)


def trl_pairs_per_s(model_dir: str, rows: list[dict], args, steps: int, fair: bool) -> float | None:
    try:
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from trl import RewardConfig as TRLConfig, RewardTrainer
    except ImportError:
        return None
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model.config.pad_token_id = tok.pad_token_id
    out = tempfile.mkdtemp(prefix="trl-rm-")
    try:
        cfg = TRLConfig(output_dir=out, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                        max_steps=steps, max_length=args.max_length, logging_steps=10_000,
                        save_strategy="no", report_to="none", disable_tqdm=True, seed=args.seed,
                        use_cpu=not torch.cuda.is_available(), warmup_steps=0, dataloader_pin_memory=False,
                        **({"gradient_checkpointing": False, "bf16": False} if fair else {}))
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok)
        result = trainer.train()
        return steps * args.batch_size / result.metrics["train_runtime"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--pairs", type=int, default=1200)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--train", type=int, help="train on only the first N pairs (default: all but the last --val); "
                    "with a large --data-cache this draws a learning curve on a fixed validation set")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--trl-steps", type=int, help="TRL optimizer steps (default: the same as ours); "
                    "0 skips TRL (e.g. for a hyperparameter sweep)")
    ap.add_argument("--trl-default-steps", type=int, default=3, help="0 skips the (slow on CPU) TRL-defaults run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-cache", help="JSON file of sampled pairs: read if it exists, else written")
    ap.add_argument("--keep", help="copy the trained reward model here (e.g. for bench_ppo_e2e.py --reward-model)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    t0 = time.time()
    cache = Path(args.data_cache) if args.data_cache else None
    if cache and cache.exists():
        pairs = [p for p in json.loads(cache.read_text()) if p["a"].strip() and p["b"].strip()][:args.pairs]
    else:
        pairs = make_pairs(args.model, args.pairs, args.seed)
        if cache:
            cache.write_text(json.dumps(pairs))
    sample_s = time.time() - t0
    rows = label(pairs, args.seed)
    n_val_from = len(pairs) - args.val
    n_train = n_val_from if args.train is None else args.train
    if not 0 < n_train <= n_val_from:
        raise SystemExit(f"--train {n_train}: between 1 and {n_val_from} (the pairs before the last --val)")
    work = Path(tempfile.mkdtemp(prefix="bench-rm-"))
    write_jsonl(work / "train.jsonl", rows[:n_train])
    write_jsonl(work / "val.jsonl", rows[n_val_from:])
    noisy = sum(1 for p, r in zip(pairs, rows) if (p["score_a"] > p["score_b"]) != (r["chosen"] == p["a"])
                and p["score_a"] != p["score_b"])

    cfg = RewardConfig(base_model=args.model, data=str(work / "train.jsonl"), val_data=str(work / "val.jsonl"),
                       epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                       max_length=args.max_length, eval_every=0, seed=args.seed, output_dir=str(work / "run"))
    t1 = time.time()
    run = train_reward_model(cfg)
    wall = time.time() - t1
    st = read_status(run)
    ours = st["pairs_per_s"]
    acc, n_clear = gold_accuracy(run / "model", pairs[n_val_from:])

    if args.trl_steps is None:
        args.trl_steps = st["step"]
    trl_fair = trl_pairs_per_s(args.model, rows[:n_train], args, args.trl_steps, fair=True) if args.trl_steps else None
    trl_default = trl_pairs_per_s(args.model, rows[:n_train], args, args.trl_default_steps, fair=False) \
        if args.trl_default_steps else None
    ratio = ours / trl_fair if trl_fair else None
    stats = json.loads((Path(args.model) / "training_stats.json").read_text()) \
        if (Path(args.model) / "training_stats.json").exists() else {}

    why_none = "n/a (skipped)" if not args.trl_steps else "n/a (trl not installed)"
    fmt = lambda x, f="{:.2f}": why_none if x is None else f.format(x)  # noqa: E731
    print(f"\nmodel {args.model} (LM trained {stats.get('minutes', '?')} min), {torch.get_num_threads()} threads")
    print(f"pairs sampled in {sample_s:.0f}s; train {n_train}, val {args.val}; "
          f"{noisy} labels disagree with the deterministic preference ({100 * noisy / len(pairs):.0f}%)")
    print(f"{'figure':52s} value")
    for name, value in [
        ("val accuracy vs VADER (|gap|>=0.1, n=%d)" % n_clear, f"{acc:.3f}"),
        ("val accuracy vs noisy labels", f"{st.get('val_accuracy', float('nan')):.3f}"),
        (f"training loop seconds ({args.epochs} epochs)", f"{st['train_seconds']:.1f}"),
        ("train_reward_model wall seconds", f"{wall:.1f}"),
        ("ours pairs/s", f"{ours:.1f}"),
        (f"TRL pairs/s, fair: fp32, no grad ckpt ({args.trl_steps} steps)", fmt(trl_fair, "{:.1f}")),
        (f"TRL pairs/s, defaults: bf16 + grad ckpt ({args.trl_default_steps} steps)",
         "n/a (skipped)" if not args.trl_default_steps else fmt(trl_default, "{:.2f}")),
        ("speed ratio vs fair TRL", fmt(ratio)),
    ]:
        print(f"{name:52s} {value}")
    figures = {"val_accuracy_gold": round(acc, 4), "val_pairs_gold": n_clear,
               "val_accuracy_labels": st.get("val_accuracy"), "train_seconds": st["train_seconds"],
               "wall_seconds": round(wall, 1), "ours_pairs_per_s": round(ours, 2),
               "trl_pairs_per_s": None if trl_fair is None else round(trl_fair, 2),
               "trl_defaults_pairs_per_s": None if trl_default is None else round(trl_default, 3),
               "ratio": None if ratio is None else round(ratio, 2), "lm_minutes": stats.get("minutes"),
               "goal_met": bool(acc >= 0.8 and (ratio or 0) >= 1.5 and wall < 180)}
    if args.keep:
        shutil.copytree(run / "model", args.keep, dirs_exist_ok=True)
        print(f"reward model kept in {args.keep}")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
