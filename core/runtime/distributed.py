"""Several processes: the one helper every trainer uses to talk across them.

Under `accelerate launch` each process holds a slice of the batch. `Dist` gives the few
collectives the trainers need, and is a set of no-ops in a single process, so the algorithms
call it unconditionally. On a machine without CUDA (or with `accelerate launch --cpu`, or
RLHF_DEVICE=cpu) the processes form a gloo group on the CPU.
"""
from __future__ import annotations

import torch

from ..models.device import pick_device


def distributed_on_cpu() -> bool:
    """Whether accelerate's processes talk over gloo on the CPU: no CUDA, `accelerate launch --cpu`, or
    RLHF_DEVICE=cpu. accelerate's PartialState() needs `cpu=True` to see a CPU process group at all;
    without it every process of `accelerate launch --multi_gpu` on a CPU machine runs alone."""
    from accelerate.utils import parse_flag_from_env
    return parse_flag_from_env("ACCELERATE_USE_CPU") or pick_device().type == "cpu"  # cpu when no CUDA


class Dist:
    """The collective operations the trainers need; no-ops in a single process."""

    def __init__(self):
        from accelerate import PartialState
        st = PartialState(cpu=distributed_on_cpu())
        self.rank, self.world, self.device = st.process_index, st.num_processes, st.device
        self.is_main = st.is_main_process

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            x = x.clone()
            torch.distributed.all_reduce(x)
        return x

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.sum(x) / self.world

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on one: all of them leave the loop at the same
        point, so none is left waiting in a collective the others never reach."""
        return bool(self.sum(torch.tensor(float(flag), device=self.device))) if self.world > 1 else flag

    def sync_grads(self, params) -> None:
        """Average gradients over processes (the update calls submodules directly, which DDP's
        forward hooks would not see)."""
        if self.world > 1:
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.world

    @property
    def reduce(self):
        """A sum over processes for core.rl.whiten's `reduce`, or None in one process."""
        return self.sum if self.world > 1 else None
