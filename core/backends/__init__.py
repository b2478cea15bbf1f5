"""Speed behind interfaces the algorithms call, each chosen once at setup (docs/architecture.md):

    select(model, probe) -> a forward      (core/backends/forwards.py; GPT-2's in gpt2.py)
    optimize(model, device, kernels)       (core/backends/kernels.py: oneDNN, GELU; keep_heap)
    runner(device, processes, enabled)     (core/backends/threads.py: two jobs side by side)
"""
from .forwards import PaddedForward, Probe, select
from .kernels import choose, keep_heap, optimize
from .threads import runner

__all__ = ["PaddedForward", "Probe", "select", "choose", "keep_heap", "optimize", "runner"]
