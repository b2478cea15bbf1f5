"""Linear layers through oneDNN (core/backends/onednn.py) against torch's default CPU matmuls, same run.

    python benchmarks/bench_onednn.py [--threads 1] [--reps 30]

1. Products at the embedded model's PPO shapes (a batch of 16 episodes: ~390 tokens, ~325 read
   positions; a decode step: 16 rows), forward + both backward products, F.linear vs
   core.backends.onednn.linear: GFLOP/s and the ratio.
2. The embedded policy's forward + backward on a PPO-sized batch (16 x 30 tokens, LM loss), one
   model with torch's layers and one with oneDNN's (same weights), alternated: median seconds and
   the ratio.
Ends with one JSON line. The products are fp32 on both paths (the tests check them against
float64); only the GEMM library differs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from bench_generation import timed as median_s  # median seconds of fn() after a warm-up call

    from core.backends import onednn
    from core.models.loading import load_policy
    torch.set_num_threads(args.threads)
    if not onednn.available():
        raise SystemExit("oneDNN is not available in this torch build: nothing to compare")
    out: dict = {"threads": args.threads}
    print(f"{'product (rows x in -> out)':<30} {'torch GFLOP/s':>14} {'oneDNN GFLOP/s':>15} {'ratio':>6}")
    shapes = [("qkv", 390, 256, 768), ("attn proj", 390, 256, 256), ("mlp fc", 390, 256, 1024),
              ("mlp proj", 390, 1024, 256), ("lm head", 325, 256, 4096), ("decode mlp fc", 16, 256, 1024),
              ("decode lm head", 16, 256, 4096)]
    for name, m, k, n in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(m, k, generator=g, requires_grad=True)
        w = torch.randn(n, k, generator=g, requires_grad=True)
        gy = torch.randn(m, n, generator=g)
        rates = []
        for f in (F.linear, onednn.linear):
            s = median_s(lambda: torch.autograd.grad(f(x, w), (x, w), gy), args.reps)
            rates.append(3 * 2 * m * k * n / s / 1e9)  # forward + dX + dW
        ratio = rates[1] / rates[0]
        out[f"ratio/{name}"] = round(ratio, 2)
        print(f"{name + f' ({m} x {k} -> {n})':<30} {rates[0]:>14.1f} {rates[1]:>15.1f} {ratio:>6.2f}")

    plain = load_policy(device=torch.device("cpu"))
    fast = onednn.use_onednn(load_policy(device=torch.device("cpu")))
    ids = torch.randint(0, plain.config.vocab_size, (16, 30), generator=torch.Generator().manual_seed(1))

    def step(model):
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    times: dict[str, list[float]] = {"torch": [], "oneDNN": []}
    for _ in range(5):  # alternated, so a drift of the machine's speed hits both alike
        times["torch"].append(median_s(lambda: step(plain), max(3, args.reps // 5)))
        times["oneDNN"].append(median_s(lambda: step(fast), max(3, args.reps // 5)))
    med = {k: statistics.median(v) for k, v in times.items()}
    out["policy_fwd_bwd_s"] = {k: round(v, 4) for k, v in med.items()}
    out["ratio/policy forward+backward"] = round(med["torch"] / med["oneDNN"], 2)
    print(f"\nembedded policy forward + backward, 16 x 30 tokens, {args.threads} thread(s): torch layers "
          f"{med['torch'] * 1e3:.1f} ms, oneDNN layers {med['oneDNN'] * 1e3:.1f} ms: "
          f"{out['ratio/policy forward+backward']:.2f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
