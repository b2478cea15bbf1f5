"""Sampling speed: core.models.generation vs transformers' model.generate, same model, same settings.

    python benchmarks/bench_generation.py [--model DIR] [--batches 16 64] [--new-tokens 24] [--repeats 5]

Both sample 24 new tokens per prompt (EOS does not stop either, so both produce the same number
of tokens) with temperature 1, top_k 0, top_p 1. The machine's fp32 matmul rate (1024 x 1024)
is measured in the same run; the roof fraction is achieved FLOP/s over it, with FLOPs taken as
2 x parameters x generated tokens. Prints a table and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.config import DEFAULT_MODEL, DEFAULT_PROMPTS, GenerationConfig  # noqa: E402
from core.models.generation import generate  # noqa: E402
from core.models.loading import load_policy, load_tokenizer  # noqa: E402


def matmul_gflops(n: int = 1024, repeats: int = 30) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    model, tok = load_policy(args.model, torch.device("cpu"), trainable=False), load_tokenizer(args.model)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    prompts = [p for p in Path(DEFAULT_PROMPTS).read_text().splitlines() if p.strip()]
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, stop_at_eos=False)
    roof = matmul_gflops()

    rows, figures = [], {"matmul_gflops": round(roof, 1), "parameters": n_params, "threads": torch.get_num_threads()}
    for B in args.batches:
        batch = (prompts * (B // len(prompts) + 1))[:B]
        enc = tok(batch, return_tensors="pt", padding=True)
        g = torch.Generator().manual_seed(0)

        def ours():
            generate(model, tok, batch, cfg, g)

        def theirs():
            with torch.no_grad():
                model.generate(**enc, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               pad_token_id=tok.pad_token_id)

        n_tok = B * args.new_tokens
        t_ours, t_hf = timed(ours, args.repeats), timed(theirs, args.repeats)
        ours_tps, hf_tps = n_tok / t_ours, n_tok / t_hf
        frac = 2 * n_params * ours_tps / (roof * 1e9)
        rows.append((B, ours_tps, hf_tps, ours_tps / hf_tps, frac))
        figures[f"b{B}_ours_tok_s"] = round(ours_tps, 1)
        figures[f"b{B}_generate_tok_s"] = round(hf_tps, 1)
        figures[f"b{B}_speedup"] = round(ours_tps / hf_tps, 2)
        figures[f"b{B}_roof_fraction"] = round(frac, 4)

    print(f"model {args.model}: {n_params / 1e6:.2f}M parameters; fp32 matmul {roof:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads); {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'batch':>6} {'ours tok/s':>11} {'generate tok/s':>15} {'speed-up':>9} {'roof':>7}")
    for B, o, h, s, f in rows:
        print(f"{B:>6} {o:>11.0f} {h:>15.0f} {s:>8.2f}x {f:>6.1%}")
    last = rows[-1]
    figures["goal_met"] = bool(last[3] >= 3.0)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
