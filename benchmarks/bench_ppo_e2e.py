"""Does PPO make the embedded model write more positive reviews, as judged by a gold judge it never sees?

    python benchmarks/bench_ppo_e2e.py --reward-model DIR [--minutes 10] [--lr 5e-5] [--kl-coef 0.5]
                                       [--kl-target 5] [--kl-horizon 1000] [--batch-size 32]

The reward model is trained on VADER-labelled pairs (benchmarks/bench_reward.py --keep DIR makes
one); the gold judge is VADER itself (objective/gold). Baseline, measured in the same run: the
reference policy's mean gold score on every default prompt x 2 samples. PPO then runs for a
wall-clock budget; the final policy is evaluated the same way. Goal: gold rises by >= 0.3 over the
reference with the mean KL of the last 10 steps <= 6 nats per sequence. Prints the curve of gold,
score and KL by step, and ends with one JSON line.

The defaults differ from PPOConfig's (lr 1e-4, adaptive KL from 0.2 towards 6 over a 10,000 horizon)
because a 10-minute run has to land inside a KL budget, not just head towards it (2 cores, batch 32,
the 1,000-pair reward model; docs/performance.md has the runs):
  - with beta from 0.2 and a 10,000 horizon, beta moves ~12% in 10 minutes: KL ends near 9.6;
  - from 0.5 with a 1,000 horizon it follows the target, but settles slightly above it;
  - lr 1e-4 makes KL swing 4-8 nats from step to step; at 5e-5 the path is smooth and buys more gold
    per nat (+0.41 at KL 5.7 against +0.29 at KL 6.2), so the target sits 1 nat below the budget.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.config import DEFAULT_MODEL, DEFAULT_PROMPTS, GenerationConfig, PPOConfig  # noqa: E402
from core.models.generation import sample_texts  # noqa: E402
from core.ppo.loop import ppo_step, setup  # noqa: E402
from core.preferences import SentimentAnnotator  # noqa: E402
from core.runtime.runs import Run  # noqa: E402


def mean_gold(model, tok, prompts: list[str], seeds=(1000, 1001)) -> float:
    vader = SentimentAnnotator(temperature=0)
    texts = [t for s in seeds for t in sample_texts(model, tok, prompts, GenerationConfig(max_new_tokens=24), seed=s)]
    return statistics.fmean(vader.score(t) for t in texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default=DEFAULT_MODEL)
    ap.add_argument("--reward-model", required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--critic-lr", type=float, default=1e-4)
    ap.add_argument("--kl-coef", type=float, default=0.5)
    ap.add_argument("--kl-target", type=float, default=5.0, help="negative = fixed coefficient")
    ap.add_argument("--kl-horizon", type=float, default=1000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="PPO's seed (prompt order, sampling, shuffles)")
    ap.add_argument("--out", default=None, help="run directory (default: a temp dir)")
    args = ap.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="ppo-e2e-"))
    cfg = PPOConfig(policy=args.policy, reward_model=args.reward_model, prompts=DEFAULT_PROMPTS, steps=100_000,
                    batch_size=args.batch_size, learning_rate=args.lr, critic_learning_rate=args.critic_lr,
                    kl_coef=args.kl_coef, kl_target=None if args.kl_target < 0 else args.kl_target,
                    kl_horizon=args.kl_horizon, ppo_epochs=args.epochs, output_dir=str(out), gold_judge="vader",
                    seed=args.seed)
    prompts = [p for p in Path(DEFAULT_PROMPTS).read_text().splitlines() if p.strip()]
    run = Run(out, "ppo")
    tr, _ = setup(cfg, run, None)
    ref = tr.models.reference
    t0 = time.time()
    ref_gold = mean_gold(ref, tr.models.tokenizer, prompts)
    t_eval = time.time() - t0

    rows, step, t_start = [], 0, time.time()
    while time.time() - t_start < args.minutes * 60:
        step += 1
        metrics, records = ppo_step(tr, step, lambda: None)
        tr.kl_ctl.update(metrics["objective/kl"], cfg.batch_size)
        run.log_metrics(step, metrics)
        run.log_tokens(records)
        rows.append(metrics)
    train_s = time.time() - t_start
    final_gold = mean_gold(tr.models.policy, tr.models.tokenizer, prompts)
    last = rows[-10:]
    kl_last = statistics.fmean(r["objective/kl"] for r in last)
    gain = final_gold - ref_gold

    print(f"{'step':>5} {'gold':>7} {'score':>7} {'KL':>7} {'beta':>7}")
    every = max(1, len(rows) // 25)
    for i, r in enumerate(rows, 1):
        if i % every == 0 or i == len(rows):
            print(f"{i:>5} {r['objective/gold']:>7.3f} {r['objective/score']:>7.3f} {r['objective/kl']:>7.2f} "
                  f"{r['objective/kl_coef']:>7.3f}")
    print(f"reference gold {ref_gold:.3f} (all {len(prompts)} prompts x 2 samples, {t_eval:.0f} s)")
    print(f"final gold     {final_gold:.3f}  gain {gain:+.3f} (goal >= +0.3)")
    print(f"mean KL of the last {len(last)} steps {kl_last:.2f} nats (goal <= 6); {step} steps x {cfg.batch_size} "
          f"in {train_s / 60:.1f} min; run directory {out}")
    print(json.dumps({"ref_gold": round(ref_gold, 4), "final_gold": round(final_gold, 4), "gold_gain": round(gain, 4),
                      "kl_last10": round(kl_last, 3), "steps": step, "episodes": step * cfg.batch_size,
                      "minutes": round(train_s / 60, 2), "threads": torch.get_num_threads(),
                      "goal_met": bool(gain >= 0.3 and kl_last <= 6.0)}))


if __name__ == "__main__":
    main()
