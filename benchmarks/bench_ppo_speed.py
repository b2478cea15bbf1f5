"""PPO step speed: our PPO (core.ppo.loop) vs TRL 0.29.1's trl.experimental.ppo.PPOTrainer.

    python benchmarks/bench_ppo_speed.py [--policy DIR] [--reward-model DIR] [--prompts FILE]
                                         [--steps 8] [--warmup 2] [--batch-size 16]
                                         [--response-length 24] [--ppo-epochs 4] [--lr 3e-5]
                                         [--kl-coef 0.2] [--threads N] [--only ours|trl] [--rounds 2]
                                         [--stop eos|none]
    python benchmarks/bench_ppo_speed.py --profile [--steps 3]   # where our step's time goes

Both trainers train the same policy with the same reward model, on the same prompts, with the
same per-step work: batch 16 (one rollout batch = one PPO step), up to 24 sampled tokens per
response at temperature 1 (top_k 0, top_p 1), responses end at EOS on both sides, 4 PPO epochs
of 1 minibatch (one optimizer step each), one learning rate for policy and critic, a fixed KL
coefficient (k1), whitened advantages, no entropy bonus, no gradient checkpointing, fp32 on CPU.
The value model (critic) starts from the reward model on both sides (TRL's value_model is an
AutoModelForSequenceClassification too). Without --reward-model, one is made on the fly: the
policy directory loaded as AutoModelForSequenceClassification(num_labels=1) with a seeded random
score head, saved to a temp dir (fine for a speed race: both sides score with it).

Each trainer runs in its own subprocess (this script re-invokes itself with --child ours|trl),
so its peak RSS is its own: VmHWM of the child (the process image's resident high-water mark;
ru_maxrss where /proc is missing). Speed is steady state: the first --warmup steps are excluded
and episodes/s = batch * measured steps / wall time of the measured steps, where a step is one
loop iteration (rollout, scoring, advantages, 4 epochs of updates, logging), timed from the end
of one step to the end of the next on both sides (ours: around core.ppo.loop.ppo_step plus the
per-step records ppo_body writes; TRL: TrainerCallback.on_step_end timestamps). Differences
left in on purpose: ours clips gradients (max_grad_norm) and TRL does not; ours runs its linear
layers through whatever core.backends.kernels measured faster on this CPU (--kernels), TRL's
models through torch's default (MKL), fp32 both;
TRL logs through the Trainer machinery; the mean response length of each side is printed, since both sample
the same model but different random draws. The lengths drift apart as the policies learn: the
two score a response that has no EOS differently (TRL reads its last token, ours appends EOS as
the reward model was trained), so the policies learn different lengths, and an episode of
shorter responses is cheaper work. --stop none removes that: every response is exactly
--response-length tokens on both sides (TRL stop_token=None, ours stop_token "none"), so both
do the same work per episode. With --rounds N the race runs N times, alternating
which trainer goes first, and each trainer's measured steps are pooled (peak RSS: the highest).

The table also gives CPU seconds per step (process time, all threads): on a busy machine it moves
far less than wall time, so compare it when the wall figures are noisy. On a busy machine, also try
--threads 1 (with 2 threads competing for 2 loaded cores, OpenMP waits cost several x).

--profile runs our step alone with timers around its phases and torch.profiler's top operators
over one more step (benchmarks/ppo_profile.py).

Prints a table and ends with one JSON line:
{"ours_eps", "trl_eps", "ratio", "ours_rss_mb", "trl_rss_mb", "goal_met": ratio >= 2 and
ours_rss <= trl_rss, ...}. When trl is not importable, ours is measured alone and the JSON says so.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The parent imports nothing heavy (no torch): it only starts the children and prints.
DEFAULT_MODEL = str(ROOT / "assets" / "tiny-reviews")
DEFAULT_PROMPTS = str(ROOT / "assets" / "prompts" / "reviews.txt")


# ---------------------------------------------------------------- helpers run in the children
def peak_rss_mb() -> float:
    """This process image's peak resident set size in MB (VmHWM; ru_maxrss as the fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / (1024 if sys.platform == "darwin" else 1)


def read_prompt_lines(path: str) -> list[str]:
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def common_setup(args) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


def child_make_rm(args) -> dict:
    """A reward model from the policy directory with a seeded random scalar head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(args.policy, num_labels=1, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.policy)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.save_pretrained(args.reward_model, safe_serialization=True)
    tok.save_pretrained(args.reward_model)
    return {"reward_model": args.reward_model}


def ours_config(args, out_dir: str):
    from core.config import PPOConfig
    return PPOConfig(
        policy=args.policy, reward_model=args.reward_model, prompts=args.prompts, steps=args.steps,
        batch_size=args.batch_size, response_length=args.response_length, temperature=1.0, stop_token=args.stop,
        missing_eos_penalty=0.0, ppo_epochs=args.ppo_epochs, num_minibatches=1, grad_accum=1,
        learning_rate=args.lr, critic_learning_rate=args.lr, kl_coef=args.kl_coef, kl_target=None,
        kl_estimator="k1", whiten_advantages=True, entropy_coef=0.0, vf_coef=0.1, cliprange=0.2,
        cliprange_value=0.2, gamma=1.0, lam=0.95, critic_init="reward", lora_rank=0,
        gold_judge="vader" if args.gold else None, save_every=10 ** 9, seed=args.seed, output_dir=out_dir,
        # FlopCounterMode (bench_compute_floor.py) sees only its own thread's operators: count with the
        # policy's and the critic's work on one thread (the same arithmetic, in sequence)
        overlap_models=not os.environ.get("BENCH_COUNT_FLOPS"), cpu_kernels=args.kernels)


def child_ours(args) -> dict:
    common_setup(args)
    import torch
    from core.ppo.loop import ppo_step, setup
    from core.runtime.runs import Run
    out_dir = tempfile.mkdtemp(prefix="bench-ppo-ours-")
    try:
        cfg = ours_config(args, out_dir)
        run = Run(out_dir, "ppo")
        rss_imports = peak_rss_mb()
        t = time.perf_counter()
        tr, _ = setup(cfg, run, None)
        setup_s = time.perf_counter() - t
        stamps, cpu, lens = [time.perf_counter()], [time.process_time()], []
        for step in range(1, cfg.steps + 1):  # ppo_body's loop, less checkpoints
            metrics, records = ppo_step(tr, step, run.check_stop)
            tr.kl_ctl.update(metrics["objective/kl"], cfg.batch_size)
            run.log_metrics(step, metrics)
            run.log_tokens(records)
            run.set_status(step=step)
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            lens.append(metrics["tokens/response_len"])
        return {"stamps": stamps, "cpu_stamps": cpu, "resp_len": lens, "setup_s": setup_s,
                "rss_imports_mb": rss_imports, "threads": torch.get_num_threads(),
                "device": str(next(tr.models.policy.parameters()).device)}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def child_trl(args) -> dict:
    common_setup(args)
    import torch
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import trl
        from trl.experimental.ppo import PPOConfig, PPOTrainer
        from trl.experimental.ppo import ppo_trainer as trl_ppo
    except Exception as e:  # noqa: BLE001 - any import failure means "no baseline"
        return {"error": f"trl not importable: {type(e).__name__}: {e}"}
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    rss_imports = peak_rss_mb()
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.policy)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if tok.pad_token_id == tok.eos_token_id:
        # TRL finds padding by comparing with pad_token_id: with pad == EOS it would drop the EOS.
        raise SystemExit("TRL's PPOTrainer needs a pad token distinct from EOS; this tokenizer has none")

    def causal():
        return AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)

    def scalar():
        m = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, dtype=torch.float32)
        m.config.pad_token_id = tok.pad_token_id
        return m

    policy, ref, reward, value = causal(), causal(), scalar(), scalar()
    prompts = read_prompt_lines(args.prompts)
    ds = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})
    out_dir = tempfile.mkdtemp(prefix="bench-ppo-trl-")
    cpu = args.device == "cpu"
    config = PPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        num_mini_batches=1, num_ppo_epochs=args.ppo_epochs, response_length=args.response_length,
        total_episodes=args.batch_size * args.steps, learning_rate=args.lr,
        stop_token="eos" if args.stop == "eos" else None,
        missing_eos_penalty=None, kl_coef=args.kl_coef, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2,
        vf_coef=0.1, gamma=1.0, lam=0.95, whiten_rewards=False, temperature=1.0,
        local_rollout_forward_batch_size=args.batch_size, num_sample_generations=0, report_to=[],
        save_strategy="no", logging_steps=1, use_cpu=cpu, bf16=False, fp16=False, gradient_checkpointing=False,
        seed=args.seed, disable_tqdm=True, dataloader_num_workers=0)

    # Record each step's responses (the EOS-truncated length, as ours reports it) without
    # changing what TRL does: wrap the module-level function its train() calls by name.
    lens = []
    real_batch_generation = trl_ppo.batch_generation

    def recording_batch_generation(model, queries, *a, **kw):
        qr, logits = real_batch_generation(model, queries, *a, **kw)
        resp = qr[:, queries.shape[1]:]
        is_eos = resp == tok.eos_token_id
        n = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, resp.shape[1])  # up to and including EOS
        if args.stop == "none":  # no stop token: every response is all its tokens
            n = torch.full_like(n, resp.shape[1])
        lens.append(float(n.float().mean()))
        return qr, logits

    trl_ppo.batch_generation = recording_batch_generation

    class Clock(TrainerCallback):
        def __init__(self):
            self.stamps, self.cpu = [], []

        def on_train_begin(self, *a, **kw):
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def on_step_end(self, *a, **kw):
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

    clock = Clock()
    try:
        trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                             train_dataset=ds, value_model=value, eval_dataset=ds.select(range(args.batch_size)),
                             callbacks=[clock])
        setup_s = time.perf_counter() - t
        trainer.train()
        device = str(next(trainer.model.parameters()).device)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return {"stamps": clock.stamps, "cpu_stamps": clock.cpu, "resp_len": lens, "setup_s": setup_s,
            "rss_imports_mb": rss_imports, "threads": torch.get_num_threads(), "device": device,
            "trl_version": trl.__version__}


# ---------------------------------------------------------------- parent
def steady(res: dict, warmup: int, batch: int) -> dict:
    st = res["stamps"]
    steps = len(st) - 1
    if steps <= warmup:
        raise SystemExit(f"need more than --warmup {warmup} steps, got {steps}")
    per = [b - a for a, b in zip(st[:-1], st[1:])]
    measured = per[warmup:]
    wall = st[-1] - st[warmup]
    lens = res.get("resp_len") or []
    cpu = res["cpu_stamps"]
    return {"eps": batch * len(measured) / wall, "s_step": wall / len(measured),
            "cpu_s_step": (cpu[-1] - cpu[warmup]) / len(measured), "n": len(measured), "wall": wall,
            "cpu": cpu[-1] - cpu[warmup], "measured": measured,
            "median_s_step": statistics.median(measured), "steps": [round(x, 3) for x in per],
            "warmup_s": sum(per[:warmup]), "resp_len": sum(lens[warmup:]) / max(1, len(lens[warmup:])),
            "rss_mb": res["peak_rss_mb"]}


def pooled(rounds: list[dict], batch: int) -> dict:
    """One trainer's rounds as one measurement: all measured steps over all measured wall time."""
    n, wall, cpu = (sum(r[k] for r in rounds) for k in ("n", "wall", "cpu"))
    return {**rounds[-1], "eps": batch * n / wall, "s_step": wall / n, "cpu_s_step": cpu / n,
            "median_s_step": statistics.median(x for r in rounds for x in r["measured"]),
            "steps": [x for r in rounds for x in r["steps"]], "resp_len": sum(r["resp_len"] * r["n"] for r in rounds) / n,
            "rss_mb": max(r["rss_mb"] for r in rounds)}


def run_child(kind: str, args, tmp: str, extra_env: dict) -> dict:
    out = Path(tmp) / f"{kind}.json"
    log = Path(tmp) / f"{kind}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--out", str(out),
           "--policy", args.policy, "--reward-model", args.reward_model or "", "--prompts", args.prompts,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
           "--response-length", str(args.response_length), "--ppo-epochs", str(args.ppo_epochs),
           "--lr", str(args.lr), "--kl-coef", str(args.kl_coef), "--seed", str(args.seed),
           "--threads", str(args.threads), "--device", args.device, "--stop", args.stop, "--kernels", args.kernels] + (["--gold"] if args.gold else [])
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false", **extra_env}
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT)).returncode
    if rc != 0 or not out.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        return {"error": f"child {kind} exited with {rc}:\n{tail}"}
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default=DEFAULT_MODEL)
    ap.add_argument("--reward-model", default="", help="reward model directory (default: made on the fly)")
    ap.add_argument("--prompts", default=DEFAULT_PROMPTS)
    ap.add_argument("--steps", type=int, default=8, help="PPO steps per trainer, warm-up included")
    ap.add_argument("--warmup", type=int, default=2, help="first steps excluded from the timing")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--response-length", type=int, default=24)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-5, help="learning rate of policy and critic (both sides)")
    ap.add_argument("--kl-coef", type=float, default=0.2, help="fixed KL coefficient (both sides)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each child (0 = torch's default)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--stop", default="eos", choices=("eos", "none"),
                    help="eos: responses end at EOS (default); none: always --response-length tokens (equal work)")
    ap.add_argument("--gold", action="store_true", help="also run our VADER gold judge each step (TRL has none)")
    ap.add_argument("--kernels", default="auto", choices=("auto", "off"),
                    help="our cpu_kernels setting: auto (measured per CPU, the default) or off (torch's defaults)")
    ap.add_argument("--only", choices=("ours", "trl"), help="measure one trainer only")
    ap.add_argument("--rounds", type=int, default=2, help="race rounds, alternating which trainer goes first "
                    "(ours-TRL, TRL-ours, ...); each trainer's measured steps are pooled over the rounds")
    ap.add_argument("--profile", action="store_true", help="profile our step instead of racing")
    ap.add_argument("--child", choices=("ours", "trl", "make-rm", "profile"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        if args.child == "profile":
            from ppo_profile import child_profile as fn
        else:
            fn = {"ours": child_ours, "trl": child_trl, "make-rm": child_make_rm}[args.child]
        if os.environ.get("BENCH_COUNT_FLOPS"):  # benchmarks/bench_compute_floor.py: count, don't time
            from torch.utils.flop_counter import FlopCounterMode
            with FlopCounterMode(display=False) as counter:
                res = fn(args)
            res["flops"] = counter.get_total_flops()
        else:
            res = fn(args)
        res["peak_rss_mb"] = peak_rss_mb()
        Path(args.out).write_text(json.dumps(res))
        return

    env = {"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}
    env["RLHF_DEVICE"] = args.device
    tmp = tempfile.mkdtemp(prefix="bench-ppo-")
    try:
        rm_note = args.reward_model
        if not args.reward_model:
            args.reward_model = str(Path(tmp) / "reward-model")
            res = run_child("make-rm", args, tmp, env)
            if "error" in res:
                raise SystemExit(res["error"])
            rm_note = f"made on the fly from {args.policy} (seeded random head)"
        if args.profile:
            res = run_child("profile", args, tmp, env)
            if "error" in res:
                raise SystemExit(res["error"])
            from ppo_profile import print_profile
            print_profile(res)
            print(json.dumps({"ours_profile_s_step": round(res["step_s"], 4),
                              "ours_profile_cpu_s_step": round(res["step_cpu_s"], 4),
                              **{f"cpu/{k}": round(v, 4) for k, v in res["phases_cpu"].items()}}))
            return
        print(f"policy {args.policy}\nreward model {rm_note}\nbatch {args.batch_size}, response_length "
              f"{args.response_length}, {args.ppo_epochs} PPO epochs x 1 minibatch, lr {args.lr}, temperature 1, "
              f"{'EOS stops' if args.stop == 'eos' else 'no stop token'}; {args.steps} steps each, first {args.warmup} excluded; device {args.device}")
        # Alternating the order cancels a slow drift of the machine's speed (this VM's wanders +-20%).
        per_round: dict[str, list] = {}
        for r in range(args.rounds):
            for kind in ("ours", "trl")[::-1 if r % 2 else 1]:
                if (args.only and args.only != kind) or (kind == "trl" and r and "trl" not in per_round):
                    continue
                res = run_child(kind, args, tmp, env)
                if "error" in res:
                    print(f"{kind}: {res['error']}")
                    if kind == "ours":
                        raise SystemExit(1)
                    continue
                per_round.setdefault(kind, []).append(
                    {**steady(res, args.warmup, args.batch_size), "setup_s": res["setup_s"],
                     "threads": res["threads"], "rss_imports_mb": res["rss_imports_mb"]})
        results = {kind: pooled(rs, args.batch_size) for kind, rs in per_round.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'trainer':<8} {'episodes/s':>11} {'s/step':>8} {'median':>8} {'CPU s/step':>11} {'resp len':>9} "
          f"{'peak RSS MB':>12} {'(after imports)':>16} {'setup s':>8} {'threads':>8}")
    for kind, r in results.items():
        print(f"{kind:<8} {r['eps']:>11.2f} {r['s_step']:>8.3f} {r['median_s_step']:>8.3f} {r['cpu_s_step']:>11.3f} "
              f"{r['resp_len']:>9.1f} "
              f"{r['rss_mb']:>12.0f} {r['rss_imports_mb']:>16.0f} {r['setup_s']:>8.1f} {r['threads']:>8}")
    for kind, r in results.items():
        print(f"{kind} per-step seconds: {r['steps']}")
    if len(per_round.get("trl", [])) > 1 and len(per_round["trl"]) == len(per_round["ours"]):
        print("ratio per round: " + ", ".join(f"{o['eps'] / t['eps']:.2f}x"
                                             for o, t in zip(per_round["ours"], per_round["trl"])))
    ours, trl = results.get("ours"), results.get("trl")
    fig = {"ours_eps": round(ours["eps"], 2) if ours else None, "trl_eps": round(trl["eps"], 2) if trl else None,
           "ratio": None, "ours_rss_mb": round(ours["rss_mb"], 1) if ours else None,
           "trl_rss_mb": round(trl["rss_mb"], 1) if trl else None, "goal_met": None,
           "ours_s_step": round(ours["s_step"], 4) if ours else None,
           "trl_s_step": round(trl["s_step"], 4) if trl else None,
           "ours_cpu_s_step": round(ours["cpu_s_step"], 4) if ours else None,
           "trl_cpu_s_step": round(trl["cpu_s_step"], 4) if trl else None,
           "ours_resp_len": round(ours["resp_len"], 2) if ours else None,
           "trl_resp_len": round(trl["resp_len"], 2) if trl else None,
           "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "batch_size": args.batch_size}
    if ours and trl:
        fig["ratio"] = round(ours["eps"] / trl["eps"], 2)
        fig["goal_met"] = bool(fig["ratio"] >= 2 and ours["rss_mb"] <= trl["rss_mb"])
        print(f"ours / TRL: {fig['ratio']:.2f}x episodes/s; peak RSS {ours['rss_mb']:.0f} vs {trl['rss_mb']:.0f} MB")
    elif ours and not args.only:
        fig["note"] = "trl not importable: ours measured alone"
        print("TRL baseline not available (trl not importable): ours measured alone")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
