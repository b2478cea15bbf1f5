"""PPO checkpoints: safetensors and JSON only (no pickles, so loading one runs no code).

    checkpoints/step-000025/
        policy/               save_pretrained (full model, or the LoRA adapter)
        critic/               save_pretrained (AutoModelForSequenceClassification)
        optimizer.safetensors one tensor per (optimizer, parameter, state key)
        trainer_state.json    step, param groups, scalar optimizer state, KL controller
        rng.safetensors       torch CPU (and CUDA) RNG state

Written to a .tmp directory and renamed, so a crash mid-save never leaves a half checkpoint
that `latest_checkpoint` would pick.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def optimizer_state(optimizers: list) -> tuple[dict, list]:
    tensors, meta = {}, []
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        scalars = {}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{i}.{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars[f"{pid}.{k}"] = v
        meta.append({"param_groups": sd["param_groups"], "scalars": scalars})
    return tensors, meta


def load_optimizer_state(optimizers: list, tensors: dict, meta: list) -> None:
    for i, (opt, m) in enumerate(zip(optimizers, meta)):
        state: dict = {}
        for key, v in tensors.items():
            oi, pid, k = key.split(".", 2)
            if int(oi) == i:
                state.setdefault(int(pid), {})[k] = v
        for key, v in m["scalars"].items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
        opt.load_state_dict({"state": state, "param_groups": m["param_groups"]})


def save_checkpoint(run, step: int, models, optimizers: list, kl_ctl, cfg) -> Path | None:
    if not run.is_main:
        return None
    root = run.path / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    models.policy.save_pretrained(tmp / "policy", safe_serialization=True)
    models.tokenizer.save_pretrained(tmp / "policy")
    models.critic.save_pretrained(tmp / "critic", safe_serialization=True)
    tensors, meta = optimizer_state(optimizers)
    save_file(tensors, tmp / "optimizer.safetensors")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, tmp / "rng.safetensors")
    (tmp / "trainer_state.json").write_text(json.dumps(
        {"step": step, "optimizers": meta, "kl_controller": kl_ctl.state_dict(), "lora": bool(cfg.lora_rank),
         # the schedule is a function of the step (core.ppo.loop.lr_factor): its state is the step
         "scheduler": {"name": cfg.lr_schedule, "step": step,
                       "lrs": [g["lr"] for opt in optimizers for g in opt.param_groups]}},
        indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run or of one of its checkpoints (<run>/checkpoints/step-N)."""
    p = Path(path)
    return p.parent.parent if (p / "trainer_state.json").exists() and p.parent.name == "checkpoints" else p


def latest_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or `path` itself if it is one."""
    p = Path(path)
    if (p / "trainer_state.json").exists():
        return p
    found = sorted((p / "checkpoints").glob("step-*")) if (p / "checkpoints").exists() else []
    found = [c for c in found if (c / "trainer_state.json").exists()]
    return found[-1] if found else None


def load_checkpoint(ckpt: Path, optimizers: list, kl_ctl) -> int:
    """Restore optimizer, KL controller and RNG state (the models are loaded from ckpt/policy and
    ckpt/critic by the caller). Returns the checkpoint's step."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    load_optimizer_state(optimizers, load_file(ckpt / "optimizer.safetensors"), state["optimizers"])
    kl_ctl.load_state_dict(state["kl_controller"])
    rng = load_file(ckpt / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return int(state["step"])
