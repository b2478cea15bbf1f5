"""`accelerate launch` with 2 CPU processes (gloo) takes the same steps as 1 process at the same
global batch: the same samples (per-row uniforms), globally whitened advantages, token-weighted
losses and all-reduced gradients."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from core.runs import read_metrics, read_status

ROOT = Path(__file__).resolve().parent.parent


def launch(cfg: dict, out: Path, procs: int) -> None:
    cfg = {**cfg, "output_dir": str(out)}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(procs),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "core.cli", "ppo", "--config", str(path)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert read_status(out)["state"] == "finished", read_status(out)


@pytest.mark.slow
def test_two_processes_match_one(ppo_dirs, tmp_path):
    cfg = dict(policy=str(ppo_dirs / "policy"), reward_model=str(ppo_dirs / "rm"),
               prompts=str(ppo_dirs / "prompts.txt"), steps=3, batch_size=4, response_length=6, ppo_epochs=2,
               save_every=100, learning_rate=1e-3, critic_learning_rate=1e-3, gold_judge=None)
    launch(cfg, tmp_path / "one", 1)
    launch(cfg, tmp_path / "two", 2)
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):  # steps 2 and 3 depend on step 1's update being the same
        for k in ("objective/score", "objective/kl", "objective/rlhf_reward", "tokens/response_len"):
            assert b[k] == pytest.approx(a[k], abs=1e-3), (a["step"], k)
    w1 = load_file(tmp_path / "one" / "model" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for k in w1:
        assert (w1[k] - w2[k]).abs().max() < 1e-4, k
