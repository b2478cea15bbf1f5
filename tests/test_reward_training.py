"""core.reward.training and core.models.scoring on tiny random GPT-2s (never downloaded)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, PreTrainedTokenizerFast

from core.config import RewardConfig, load_config
from core.data.reward_pairs import prepare_data
from core.models.heads import sequence_scores
from core.models.scoring import PromptTooLongError, format_for_scoring, score_texts
from core.preferences import PreferenceStore
from core.reward.preflight import load_reward_tokenizer, preflight
from core.reward.training import train_reward_model
from core.runtime.runs import Run, read_metrics, read_status, run_to_completion

from tiny_models import tiny_model

ROOT = Path(__file__).resolve().parent.parent
GOOD = ["a good movie", "good , really good", "the good one", "so good and charming"]
BAD = ["a bad movie", "bad , really bad", "the bad one", "so bad and dull"]
PROMPTS = ["this movie is", "the film was", "i thought it"]


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Learnable preferences: chosen says 'good', rejected says 'bad'."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    return [{"prompt": pick(PROMPTS), "chosen": " " + pick(GOOD), "rejected": " " + pick(BAD)} for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def save_tiny(path: Path, tokenizer, drop_pad: bool = False) -> str:
    model = tiny_model("gpt2", tokenizer)
    model.save_pretrained(path)
    if drop_pad:  # a tokenizer without a pad token, like GPT-2's own
        # A copy of the backend without its padding state: a shared tokenizer that padded a batch
        # earlier in the session would otherwise carry "<pad>" into tokenizer.json.
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_padding()
        backend.no_truncation()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend,
                                            eos_token=tokenizer.eos_token, bos_token=tokenizer.bos_token)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    return save_tiny(tmp_path_factory.mktemp("base"), tiny_tokenizer)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base):
    """One short training shared by the output tests (about 3 s)."""
    d = tmp_path_factory.mktemp("rm")
    cfg = RewardConfig(base_model=base, data=write_jsonl(d / "train.jsonl", synthetic_pairs(160)), epochs=2,
                       batch_size=16, learning_rate=3e-3, eval_every=5, val_fraction=0.2, output_dir=str(d / "run"))
    return cfg, train_reward_model(cfg)


# ---------------------------------------------------------------- training and outputs
def test_learns_a_learnable_preference(trained):
    cfg, run = trained
    st = read_status(run)
    assert st["state"] == "finished" and st["step"] == st["total_steps"] == 2 * 8
    assert st["packed_pairs"] is True  # GPT-2 takes one packed row per pair (core.backends.pair_packing)
    rows = read_metrics(run)
    assert sum(r["rm/accuracy"] for r in rows[-4:]) / 4 >= 0.9
    assert rows[-1]["val/accuracy"] >= 0.9 and st["val_accuracy"] == rows[-1]["val/accuracy"]


def test_metrics_status_and_files(trained):
    cfg, run = trained
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 17))
    for r in rows:
        assert {"step", "time", "loss/reward", "rm/accuracy", "rm/margin", "lr", "epoch"} <= set(r)
    val_steps = [r["step"] for r in rows if "val/loss" in r]
    assert val_steps == [5, 10, 15, 16]  # every eval_every steps and at the end
    assert all({"val/accuracy", "val/margin"} <= set(r) for r in rows if "val/loss" in r)
    assert rows[-1]["epoch"] == pytest.approx(2.0) and rows[0]["lr"] > 0
    st = read_status(run)
    assert st["kind"] == "reward" and st["pairs_train"] == 128 and st["pairs_val"] == 32
    assert load_config(RewardConfig, run / "config.yaml") == cfg
    vs = json.loads((run / "val_scores.json").read_text())
    assert len(vs["chosen"]) == len(vs["rejected"]) == 32


def test_saved_model_loads_with_plain_transformers(trained, tiny_tokenizer):
    _, run = trained
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert (run / "model" / "model.safetensors").exists()
    assert model.config.num_labels == 1 and model.config.score_std > 0
    assert isinstance(model.config.score_mean, float) and model.config.score_max_length == 96
    # A plain forward (pad-token pooling) scores the same position as our mask-based convention.
    ids, mask, _ = format_for_scoring(tok, ["this movie is", "i thought it"], [" good", " so bad and dull"], 96)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(plain, sequence_scores(model, ids, mask))
    good, bad = score_texts(model, tok, ["this movie is"] * 2, [" so good and charming", " so bad and dull"])
    assert good > bad


def test_tokenizer_without_pad_gets_a_distinct_one(tmp_path, tiny_tokenizer):
    base = save_tiny(tmp_path / "nopad", tiny_tokenizer, drop_pad=True)
    assert AutoTokenizer.from_pretrained(base).pad_token is None
    tok = load_reward_tokenizer(base)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    cfg = RewardConfig(base_model=base, data=write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(16)), batch_size=8,
                       output_dir=str(tmp_path / "run"))
    run = train_reward_model(cfg)
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.pad_token_id == AutoTokenizer.from_pretrained(run / "model").pad_token_id != tok.eos_token_id


# ---------------------------------------------------------------- the scoring convention
def test_scoring_ends_with_eos_and_truncates_the_response(tiny_tokenizer):
    tok, eos = tiny_tokenizer, tiny_tokenizer.eos_token_id
    prompts = ["the acting is dull and the plot", "one"]
    responses = [" is thin and the acting is dull and the plot is thin", " of the best"]
    p_len = len(tok(prompts[0])["input_ids"])
    ids, mask, n = format_for_scoring(tok, prompts, responses, max_length=p_len + 4)
    assert n == 1 and ids.shape == (2, p_len + 4)
    lengths = mask.sum(1)
    for row, L in zip(ids, lengths):
        assert row[L - 1] == eos  # the last attended token is the EOS after the response
        assert (row[L:] == tok.pad_token_id).all()  # right padding
    assert ids[0, :p_len].tolist() == tok(prompts[0])["input_ids"]  # the prompt is whole
    assert ids[0, p_len:p_len + 3].tolist() == tok(responses[0], add_special_tokens=False)["input_ids"][:3]
    full = format_for_scoring(tok, prompts, responses, max_length=96)
    expected = len(tok(prompts[1])["input_ids"]) + len(tok(responses[1], add_special_tokens=False)["input_ids"]) + 1
    assert full[2] == 0 and full[1][1].sum() == expected
    with pytest.raises(PromptTooLongError, match="max_length"):
        format_for_scoring(tok, prompts, responses, max_length=p_len + 1)


# ---------------------------------------------------------------- errors before training
def _cfg(base, tmp_path, data, **kw):
    return RewardConfig(base_model=base, data=str(data), output_dir=str(tmp_path / "run"), **kw)


def test_error_no_labelled_pairs(base, tmp_path):
    db = tmp_path / "p.db"
    with PreferenceStore(db) as store:
        store.add_pairs([("p", "x", "y")], model="m")
    with pytest.raises(ValueError, match="no labelled pairs.*no labels yet"):
        preflight(_cfg(base, tmp_path, db))
    with PreferenceStore(db) as store:
        store.add_label(store.next_pairs("me", 1)[0].id, "me", "tie", "a")
    with pytest.raises(ValueError, match="none of them 'a' or 'b'"):
        preflight(_cfg(base, tmp_path, db))
    with pytest.raises(ValueError, match="no training data"):
        preflight(_cfg(base, tmp_path, ""))
    with pytest.raises(ValueError, match="does not exist"):
        preflight(_cfg(base, tmp_path, tmp_path / "missing.jsonl"))


def test_error_identical_pairs(base, tmp_path):
    rows = [{"prompt": "p", "chosen": " same", "rejected": " same"}] * 4
    with pytest.raises(ValueError, match="identical chosen and rejected"):
        preflight(_cfg(base, tmp_path, write_jsonl(tmp_path / "d.jsonl", rows)))


def test_error_prompt_too_long(base, tmp_path):
    rows = synthetic_pairs(4) + [{"prompt": "the acting is dull " * 20, "chosen": " good", "rejected": " bad"}]
    with pytest.raises(ValueError, match="1 prompt.*max_length=16"):
        preflight(_cfg(base, tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), max_length=16))


def test_error_base_model(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(4))
    with pytest.raises(ValueError, match="does not exist"):
        preflight(_cfg(str(tmp_path / "nowhere"), tmp_path, data))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        preflight(_cfg(str(tmp_path / "empty"), tmp_path, data))
    BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="not a causal language model"):
        preflight(_cfg(str(tmp_path / "bert"), tmp_path, data))


def test_margin_column_and_seeded_split(base, tmp_path, tiny_tokenizer):
    rows = [dict(r, margin=float(i % 3)) for i, r in enumerate(synthetic_pairs(20))]
    cfg = _cfg(base, tmp_path, write_jsonl(tmp_path / "m.jsonl", rows), val_fraction=0.25)
    train, val, info = prepare_data(cfg, tiny_tokenizer)
    assert (len(train), len(val)) == (15, 5) and sorted(train.margin + val.margin) == sorted(r["margin"] for r in rows)
    again, val2, _ = prepare_data(cfg, tiny_tokenizer)
    assert val2.chosen == val.chosen  # the same seed holds out the same pairs
    assert prepare_data(RewardConfig(**{**cfg.__dict__, "use_margin": False}), tiny_tokenizer)[0].margin is None


def test_store_and_file_together(base, tmp_path, tiny_tokenizer):
    db = tmp_path / "p.db"
    with PreferenceStore(db) as store:
        store.add_pairs([("p1", " x", " y"), ("p2", " z", " w")], model="m")
        for pair in store.next_pairs("me", 2):
            store.add_label(pair.id, "me", "a", "a")
    rows = [dict(r, margin=2.0) for r in synthetic_pairs(6)]
    cfg = _cfg(base, tmp_path, f"{db}, {write_jsonl(tmp_path / 'f.jsonl', rows)}", val_fraction=0.0)
    train, val, info = prepare_data(cfg, tiny_tokenizer)
    assert info["pairs_train"] == 8 and len(val) == 0  # 2 labelled pairs from the store + 6 from the file
    assert sorted(train.margin) == [0.0] * 2 + [2.0] * 6  # the store has no margins: 0 for its pairs
    with pytest.raises(ValueError, match="does not exist"):
        preflight(_cfg(base, tmp_path, f"{db},{tmp_path / 'nope.jsonl'}"))


# ---------------------------------------------------------------- stopping and the CLI
class StopAfterTwo(Run):
    def should_stop(self):
        return self._status.get("step", 0) >= 2 or super().should_stop()


def test_stop_mid_run(base, tmp_path):
    cfg = _cfg(base, tmp_path, write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(64)), batch_size=8)
    run = StopAfterTwo(cfg.output_dir, "reward")
    assert run_to_completion(run, lambda r: train_reward_model(cfg, r)) == "stopped"
    st = read_status(run.path)
    assert st["state"] == "stopped" and st["step"] == 2 and len(read_metrics(run.path)) == 2
    assert not (run.path / "model").exists()


def test_cli_end_to_end(base, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(24))
    (tmp_path / "x.yaml").write_text(f"base_model: {base}\ndata: {data}\nbatch_size: 8\nepochs: 1\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([str(Path(sys.executable).parent / "rlhf-workbench"), "train-rm", "--config",
                          str(tmp_path / "x.yaml"), f"output_dir={tmp_path / 'cli-run'}", "learning_rate=1e-3"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "cli-run"
    assert read_status(run)["state"] == "finished" and (run / "model" / "model.safetensors").exists()
    assert load_config(RewardConfig, run / "config.yaml").learning_rate == 1e-3


def test_cli_reports_bad_data(base, tmp_path, capsys):
    from core.cli import main
    with pytest.raises(SystemExit, match="error: .*does not exist"):
        main(["train-rm", f"base_model={base}", f"data={tmp_path / 'nope.jsonl'}", f"output_dir={tmp_path / 'r'}"])
    assert read_status(tmp_path / "r")["state"] == "failed"


def test_reward_run_whose_process_died_shows_as_interrupted(tmp_path):
    """A reward job killed mid-run leaves status "running": the Reward tab must say it is
    interrupted, and its live view must notice although status.json does not change."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from workbench import reward_logic
    ws = SimpleNamespace(root=tmp_path)
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    run = tmp_path / "runs" / "reward-killed"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"kind": "reward", "state": "running", "step": 3,
                                                 "total_steps": 10, "pid": job.pid}))
    try:
        assert reward_logic.status_line(str(run)).startswith("**running**")
        alive_sig = reward_logic.run_signature(str(run))
    finally:
        job.kill()
        job.wait()
    assert reward_logic.run_signature(str(run)) != alive_sig  # the timer redraws
    line = reward_logic.status_line(str(run))
    assert line.startswith("**interrupted** · `reward-killed` · step 3/10") and f"process {job.pid} exited" in line
    assert reward_logic.runs_table(ws)["state"].tolist() == ["interrupted"]
    assert reward_logic.stop(ws, str(run)) == "No reward run is running."
    assert not (run / "STOP").exists()
