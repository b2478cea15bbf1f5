"""CPU kernels, applied by one call at setup: `optimize(model, device, kernels)`.

Three kernels change how the CPU computes the same fp32 numbers:

- `onednn`: linear layers through oneDNN instead of MKL (core/backends/onednn.py);
- `gelu`: GPT-2's tanh GELU as x*sigmoid(2u) (core/backends/gelu.py);
- `heap`: freed memory stays in the process instead of being faulted back in every step
  (core/backends/heap.py; process-wide, `keep_heap`).

Whether oneDNN or the sigmoid GELU is faster depends on the CPU: oneDNN ran PPO's products 1.8-2x
as fast as MKL on an AMD EPYC and 0.5-0.85x on an Intel Xeon with AMX (docs/performance.md). So
`kernels="auto"` (the config field `cpu_kernels`) measures each against torch's default on this
machine, forward + backward at the embedded model's shapes, alternating the two several times,
and keeps a kernel only when it is at least WIN faster. The verdict is cached per CPU model,
torch version and thread count in `cpu_kernels.json` under $RLHF_CACHE_DIR (default
~/.cache/rlhf-workbench), so the probe (well under a second) runs once per machine.
`kernels="off"` keeps torch's defaults. RLHF_ONEDNN=1 / 0 overrides the oneDNN verdict either way.
Nothing changes on a GPU.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import gelu, heap, onednn

CHOICES = ("auto", "off")
WIN = 1.05  # a kernel must be this much faster than torch's default to be used
ROWS = 384  # tokens in a PPO forward of the embedded model (batch 16, ~24 tokens each)
PRODUCTS = ((256, 768), (256, 256), (256, 1024), (1024, 256), (256, 4096))  # (in, out): qkv, proj, fc, mlp proj, LM head


def cache_path() -> Path:
    root = os.environ.get("RLHF_CACHE_DIR") or Path.home() / ".cache" / "rlhf-workbench"
    return Path(root) / "cpu_kernels.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _time(fn, reps: int = 3) -> float:
    fn()  # warm-up: oneDNN builds its kernels on first use
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def _speedup(ours, theirs, rounds: int = 3) -> float:
    """theirs' time / ours' time, the median over alternated rounds (>1: ours is faster)."""
    return statistics.median(_time(theirs) / _time(ours) for _ in range(rounds))


def _linear_pass(linear, x, w, b):
    def run():
        y = linear(x, w, b)
        torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
    return run


def probe_onednn() -> float:
    """oneDNN's speed-up over F.linear on PPO's products, forward + both backward products."""
    if not onednn.available():
        return 0.0
    g = torch.Generator().manual_seed(0)
    ratios = []
    for k, n in PRODUCTS:
        x = torch.randn(ROWS, k, generator=g, requires_grad=True)
        w = torch.randn(n, k, generator=g, requires_grad=True)
        b = torch.randn(n, generator=g, requires_grad=True)
        ratios.append(_speedup(_linear_pass(onednn.linear, x, w, b), _linear_pass(F.linear, x, w, b)))
    return statistics.geometric_mean(ratios)


def probe_gelu() -> float:
    """The sigmoid-form GELU's speed-up over aten's tanh GELU, forward + backward at (470, 1024)."""
    x = torch.randn(470, 1024, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def run(f):
        def go():
            y = f(x)
            torch.autograd.grad(y, x, torch.ones_like(y))
        return go
    return _speedup(run(gelu.tanh_gelu), run(lambda t: F.gelu(t, approximate="tanh")))


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def measured() -> dict:
    """This machine's probe results {"onednn": speed-up, "gelu": speed-up}, from the cache or
    measured now (and cached)."""
    key, cache = machine_key(), _read_cache()
    if key not in cache:
        cache[key] = {"onednn": round(probe_onednn(), 3), "gelu": round(probe_gelu(), 3)}
        try:
            path = cache_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, path)
        except OSError:  # a read-only home: probe again next time
            pass
    return cache[key]


@functools.cache
def _choose_cpu(kernels: str, threads: int) -> tuple[str, ...]:
    if kernels == "off":
        return ()
    speed = measured()
    env = os.environ.get("RLHF_ONEDNN")
    use_onednn = onednn.available() and (env == "1" if env in ("0", "1") else speed["onednn"] >= WIN)
    return tuple(k for k, on in (("onednn", use_onednn), ("gelu", speed["gelu"] >= WIN), ("heap", True)) if on)


def choose(kernels: str, device: torch.device | str) -> tuple[str, ...]:
    """The CPU kernels to use: a subset of ("onednn", "gelu", "heap"); () on a GPU or when off."""
    if kernels not in CHOICES:
        raise ValueError(f"cpu_kernels must be one of {', '.join(CHOICES)}, not {kernels!r}")
    if torch.device(device).type != "cpu":
        return ()
    return _choose_cpu(kernels, torch.get_num_threads())


def optimize(model: torch.nn.Module, device: torch.device | str, kernels: str = "auto") -> tuple[str, ...]:
    """Apply the chosen kernels to `model` in place (its parameters, state dict and outputs stay
    the same); returns their names. Call once per model, after loading, before training."""
    chosen = choose(kernels, device)
    if "gelu" in chosen:
        gelu.swap_gelu(model)
    if "onednn" in chosen:
        onednn.use_onednn(model)
    return chosen


def keep_heap(device: torch.device | str, kernels: str = "auto") -> bool:
    """Keep freed memory in this process (glibc) when the heap kernel is chosen; True if done."""
    return "heap" in choose(kernels, device) and heap.keep_freed_memory()
