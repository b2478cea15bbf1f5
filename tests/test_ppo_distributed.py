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

from core.runtime.runs import read_metrics, read_status

ROOT = Path(__file__).resolve().parent.parent


def launch(cfg: dict, out: Path, procs: int, program=("-m", "core.cli"), ok=True,
           command="ppo") -> subprocess.CompletedProcess:
    cfg = {**cfg, "output_dir": str(out)}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # `--cpu` would start ONE process whatever --num_processes says (accelerate's simple launcher);
    # --multi_gpu is its torchrun launcher, which on a machine without CUDA gives a gloo CPU group.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] if procs > 1 else ["--cpu"]),
           "--num_processes", str(procs),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           *program, command, "--config", str(path)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert read_status(out)["state"] == "finished", read_status(out)
    return res


@pytest.mark.slow
def test_two_processes_match_one(ppo_dirs, tmp_path):
    cfg = dict(policy=str(ppo_dirs / "policy"), reward_model=str(ppo_dirs / "rm"),
               prompts=str(ppo_dirs / "prompts.txt"), steps=3, batch_size=4, response_length=6, ppo_epochs=2,
               save_every=100, learning_rate=1e-3, critic_learning_rate=1e-3, gold_judge=None)
    launch(cfg, tmp_path / "one", 1)
    launch(cfg, tmp_path / "two", 2)
    assert read_status(tmp_path / "two")["processes"] == 2  # two really ran, as one process group
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):  # steps 2 and 3 depend on step 1's update being the same
        for k in ("objective/score", "objective/kl", "objective/rlhf_reward", "tokens/response_len"):
            assert b[k] == pytest.approx(a[k], abs=1e-3), (a["step"], k)
    w1 = load_file(tmp_path / "one" / "model" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for k in w1:
        assert (w1[k] - w2[k]).abs().max() < 1e-4, k


@pytest.mark.slow
def test_a_nan_on_one_process_fails_every_process_with_its_name(ppo_dirs, tmp_path):
    cfg = dict(policy=str(ppo_dirs / "policy"), reward_model=str(ppo_dirs / "rm"),
               prompts=str(ppo_dirs / "prompts.txt"), steps=4, batch_size=4, response_length=6, ppo_epochs=1,
               save_every=1, gold_judge=None)
    out = tmp_path / "nan"
    res = launch(cfg, out, 2, program=(str(ROOT / "tests" / "nan_on_one_rank.py"),), ok=False)
    assert res.returncode != 0
    st = read_status(out)  # written by process 0, whose own scores were fine
    assert st["state"] == "failed", st
    assert "score is NaN or Inf at step 2 (on another process)" in st["error"], st
    assert [r["step"] for r in read_metrics(out)] == [1]
    assert (out / "checkpoints" / "step-000001" / "trainer_state.json").exists()  # the last one stays loadable


@pytest.mark.slow
def test_reward_training_in_two_processes_matches_one(ppo_dirs, tmp_path):
    from test_reward_training import synthetic_pairs, write_jsonl
    data = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(48))
    cfg = dict(base_model=str(ppo_dirs / "policy"), data=data, epochs=1, batch_size=8, eval_every=0, seed=0)
    launch(cfg, tmp_path / "one", 1, command="train-rm")
    launch(cfg, tmp_path / "two", 2, command="train-rm")
    one, two = read_status(tmp_path / "one"), read_status(tmp_path / "two")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-4)  # each rank half of every batch
    w1 = load_file(tmp_path / "one" / "model" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max() for k in w1) < 1e-4
