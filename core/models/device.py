"""Which device a run uses, and the precision it computes in there."""
from __future__ import annotations

import contextlib
import os

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (unless RLHF_DEVICE/prefer says otherwise), else CPU."""
    prefer = prefer or os.environ.get("RLHF_DEVICE")
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full fp32 on CPU (exact, and what the CPU paths are tested in)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_device(device: torch.device, kernels: list[str] | tuple = ()) -> str:
    """One line for the GUI's header: the device, its precision, and the CPU kernels in use."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}, bf16 autocast)"
    extra = f", {' + '.join(kernels)}" if kernels else ""
    return f"cpu ({torch.get_num_threads()} threads, fp32{extra})"
