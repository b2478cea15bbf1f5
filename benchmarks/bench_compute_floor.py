"""How fast could ANY implementation of this PPO step be on this machine? A matmul-only floor.

    python benchmarks/bench_compute_floor.py [--steps 4] [--warmup 1] [--threads 0] [bench_ppo_speed options]

bench_ppo_speed.py races our PPO step against TRL's. This script asks what ratio is possible at
all. For each trainer (children of bench_ppo_speed.py, same settings):
  1. a timed run: seconds per step in steady state (as bench_ppo_speed.py measures it);
  2. a counted run under torch.utils.flop_counter.FlopCounterMode: the FLOPs of matrix products
     (mm, addmm, bmm, ...) per step. Attention on CPU is not counted (a few % here), so this is
     a lower bound on the arithmetic. The counter sees only its own thread, so our counted run
     does the policy's and the critic's work in sequence (overlap_models off: the same products);
  3. the matmul rate of this machine now, at the step's shapes: bare fp32 products for the forward
     and backward of a GPT-2 block's four linear layers and an LM head, on as many tokens as one
     PPO batch, through torch.mm (MKL) and through oneDNN (what core/backends/onednn.py uses); the faster
     library sets the floor.
A step cannot take less than FLOPs / rate even if everything that is not a matmul (GELU, layer
norm, softmax, attention, optimizer, sampling, Python) were free. So TRL's measured s/step divided
by our floor bounds the ratio any implementation of our arithmetic could reach against it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ppo_speed as race  # noqa: E402


def matmul_rate(tokens: int, width: int = 256, vocab: int = 4096, threads: int = 0, seconds: float = 3.0,
                onednn: bool = False) -> float:
    """GFLOP/s of bare fp32 products at the step's shapes, through torch.mm (MKL) or, with `onednn`,
    oneDNN's kernel (core/backends/onednn.py's): for each linear layer of a GPT-2 block (qkv, proj, MLP in
    and out) and the LM head, the forward product and the two of its backward (input and weight
    gradients), each timed in a hot loop of its own (warm caches, no autograd, no allocation): the
    fastest these products run here, so the floor it gives is a true lower bound."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    if onednn:
        lin = torch.ops.mkldnn._linear_pointwise
        mm = lambda a, b: lin(a, b.t(), None, "none", [], "")  # noqa: E731  a @ b
    else:
        mm = torch.mm
    products = []
    for i, o in [(width, 3 * width), (width, width), (width, 4 * width), (4 * width, width), (width, vocab)]:
        products += [((tokens, i), (i, o)), ((tokens, o), (o, i)), ((i, tokens), (tokens, o))]
    pairs = [(torch.randn(*a), torch.randn(*b)) for a, b in products]
    flops = total_s = 0.0
    for a, b in pairs:  # each product in a hot loop of its own: the most favourable case
        for _ in range(3):
            mm(a, b)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / len(pairs):
            mm(a, b)
            n += 1
        flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        total_s += (time.perf_counter() - t0) / n
    return flops / total_s / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default=race.DEFAULT_MODEL)
    ap.add_argument("--reward-model", default="")
    ap.add_argument("--prompts", default=race.DEFAULT_PROMPTS)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--response-length", type=int, default=24)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--kl-coef", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--stop", default="eos", choices=("eos", "none"), help="as in bench_ppo_speed.py")
    args = ap.parse_args()
    args.device, args.gold = "cpu", False
    env = {"CUDA_VISIBLE_DEVICES": "", "RLHF_DEVICE": "cpu"}
    tmp = tempfile.mkdtemp(prefix="bench-floor-")
    if not args.reward_model:
        args.reward_model = str(Path(tmp) / "reward-model")
        res = race.run_child("make-rm", args, tmp, env)
        if "error" in res:
            raise SystemExit(res["error"])
    out = {}
    for kind in ("ours", "trl"):
        timed = race.run_child(kind, args, tmp, env)
        if "error" in timed:
            print(f"{kind}: {timed['error']}")
            continue
        # FlopCounterMode counts aten's matmuls only: the counted run does ours through them too
        counted = race.run_child(kind, args, tmp, {**env, "BENCH_COUNT_FLOPS": "1", "RLHF_ONEDNN": "0"})
        if "error" in counted:
            print(f"{kind}: {counted['error']}")
            continue
        st = race.steady(timed, args.warmup, args.batch_size)
        out[kind] = {"s_step": st["s_step"], "resp_len": st["resp_len"],
                     "gflop_step": counted["flops"] / args.steps / 1e9,
                     "resp_len_counted": sum(counted["resp_len"]) / len(counted["resp_len"])}
    # one PPO batch: batch x (prompt ~5 + response) tokens
    tokens = args.batch_size * (5 + args.response_length)
    rates = {lib: matmul_rate(tokens=tokens, threads=args.threads, onednn=lib == "oneDNN") for lib in ("torch.mm", "oneDNN")}
    rate = max(rates.values())  # the floor takes the faster library
    print(f"bare matmul rate now, fp32, forward and backward products at GPT-2 shapes, {tokens} tokens: "
          + ", ".join(f"{lib} {r:.1f}" for lib, r in rates.items()) + f" GFLOP/s ({os.cpu_count()} CPUs)")
    print(f"{'trainer':<8} {'s/step':>8} {'GFLOP/step':>11} {'floor s/step':>13} {'achieved GFLOP/s':>17} "
          f"{'resp len (timed/counted)':>25}")
    for kind, r in out.items():
        r["floor_s"] = r["gflop_step"] / rate
        print(f"{kind:<8} {r['s_step']:>8.3f} {r['gflop_step']:>11.1f} {r['floor_s']:>13.3f} "
              f"{r['gflop_step'] / r['s_step']:>17.1f} {r['resp_len']:>12.1f} / {r['resp_len_counted']:.1f}")
    fig = {"matmul_gflops": round(rate, 1), "matmul_gflops_torch_mm": round(rates["torch.mm"], 1), **{f"{k}_{m}": round(v, 3) for k, r in out.items() for m, v in r.items()}}
    if "ours" in out and "trl" in out:
        fig["measured_ratio"] = round(out["trl"]["s_step"] / out["ours"]["s_step"], 2)
        fig["best_possible_ratio"] = round(out["trl"]["s_step"] / out["ours"]["floor_s"], 2)
        print(f"measured ours / TRL {fig['measured_ratio']:.2f}x; TRL's s/step over our matmul floor: "
              f"{fig['best_possible_ratio']:.2f}x = the most any implementation of our arithmetic could reach")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
