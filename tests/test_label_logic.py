"""Pair sampling, the background filler, reward-model ordering, and the Label tab's plain handlers
(no browser, tiny random models)."""
import json
import os
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from core.config import GenerationConfig
from core.preferences.sampling import FILLER_NICE
from core.preferences import PairFiller, PreferenceStore, sample_pairs, score_pairs, unlabelled_count
from tiny_models import tiny_config, tiny_model
from workbench import label_logic as logic

CFG = GenerationConfig(max_new_tokens=6)


@pytest.fixture
def lm(tiny_tokenizer):
    return tiny_model("gpt2", tiny_tokenizer), tiny_tokenizer


@pytest.fixture
def ws(tmp_path, lm):
    return SimpleNamespace(db_path=tmp_path / "preferences.db", root=tmp_path, model_path="tiny",
                           policy=lambda path=None: lm)


def test_sample_pairs_two_samples_per_prompt(lm):
    model, tok = lm
    prompts = ["a charming", "the acting"]
    calls = []
    pairs = sample_pairs(model, tok, prompts, 5, CFG, seed=1, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert len(pairs) == 5 and all(p in prompts for p, _, _ in pairs)
    assert {p for p, _, _ in pairs[:2]} == set(prompts)  # every prompt once before any twice
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert pairs == sample_pairs(model, tok, prompts, 5, CFG, seed=1, batch_size=2)  # seeded
    assert any(a != b for _, a, b in pairs)  # independent draws, not one sample twice


def test_filler_keeps_target_unlabelled(tmp_path, lm):
    store = PreferenceStore(tmp_path / "p.db")
    filler = PairFiller(store, lambda: lm, ["a charming", "one of the"], "tiny", target=6, batch_pairs=4,
                        gen_cfg=CFG, seed=0)
    assert filler.fill_once() == 4 and filler.fill_once() == 2 and filler.fill_once() == 0
    assert unlabelled_count(store, "tiny") == 6
    store.add_label(store.next_pairs("x", 1)[0].id, "x", "a", "a")
    assert unlabelled_count(store, "tiny") == 5 and unlabelled_count(store, "other") == 0
    filler.pause_s = filler.check_every_s = 0.01
    seen_nice = []

    def load():  # called in the filler's own thread, whose OS priority it lowered for itself
        seen_nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return lm
    filler.load_model = load
    filler.start()
    deadline = time.monotonic() + 30
    while unlabelled_count(store, "tiny") < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    filler.stop(10)
    assert not filler.running and unlabelled_count(store, "tiny") == 6 and filler.last_error is None
    me = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen_nice and seen_nice[0] == min(19, me + FILLER_NICE)  # the sampler yields to request handling
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == me  # and only that thread


def test_score_pairs_orders_least_sure_first(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config("gpt2", len(tiny_tokenizer), tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id)
    cfg.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(cfg).eval()
    store = PreferenceStore(tmp_path / "p.db")
    store.add_pairs([(f"p{i}", f"a charming movie {i}", f"a slow mess {'!' * i}") for i in range(5)], model="m")
    pairs = store.next_pairs("x", 10)
    scores = score_pairs(rm, tiny_tokenizer, pairs, batch_size=2)
    assert set(scores) == {p.id for p in pairs}
    margins = {pid: abs(a - b) for pid, (a, b) in scores.items()}
    assert store.next_pairs("x", 1, order_by=scores)[0].id == min(margins, key=margins.get)


def test_label_maps_screen_side_and_ignores_repeats(ws):
    store = logic.store_for(ws)
    store.add_pairs([(f"p{i}", f"a{i}", f"b{i}") for i in range(4)], model="seed")
    prompt, left, right, shown, info = logic.next_view(ws, "ann")
    assert shown.startswith("1:") and info == "Pair #1" and prompt == "p0"
    side = shown.split(":")[1]
    assert left == f"{side}0"  # the text on the left is the response named by `left`
    view = logic.label(ws, "ann", shown, "left")
    assert view[3].startswith("2:")
    assert logic.label(ws, "ann", shown, "left") is None  # a double click: no second label
    second = view[3]
    logic.label(ws, "ann", second, "right")
    rows = store.labels()
    assert [(r.pair_id, r.choice, r.left) for r in rows] == [
        (1, side, side), (2, "b" if second[-1] == "a" else "a", second[-1])]

    view, msg = logic.undo(ws, "ann", "3:a")
    assert view[3] == second and "pair #2" in msg  # the undone pair comes back, same side left
    assert logic.undo(ws, "ann", "3:a") == (None, "")  # repeated undo: ignored
    assert logic.undo(ws, "ann", second)[0][3] == shown  # a real second undo goes one further back
    assert store.counts()["undone"] == 2
    with pytest.raises(ValueError):
        logic.label(ws, "", shown, "left")
    with pytest.raises(ValueError):
        logic.label(ws, "sim:me", shown, "left")


def test_policy_choices_list_ppo_models_and_checkpoints(ws):
    run = ws.root / "runs" / "ppo-x"
    for d in ("model", "checkpoints/step-000002/policy", "checkpoints/step-000002/critic", "checkpoints/step-000004/policy"):
        (run / d).mkdir(parents=True)
        (run / d / "config.json").write_text("{}")
    (run / "checkpoints" / "step-000006" / "policy").mkdir(parents=True)  # LoRA: an adapter only
    (run / "status.json").write_text(json.dumps({"kind": "ppo", "state": "finished", "step": 6}))
    assert logic.policy_choices(ws) == ["tiny", str(run / "model"), str(run / "checkpoints/step-000002/policy"),
                                        str(run / "checkpoints/step-000004/policy")]


def test_stats_generate_autolabel_import_export(ws, tmp_path):
    msg = logic.generate_pairs(ws, "", "Typed prompts", "", "a charming\nthe acting", 3, 1.0, 6, seed=0)
    assert msg.startswith("Added 3 pairs")
    with pytest.raises(ValueError):
        logic.generate_pairs(ws, "", "Prompt file", str(tmp_path / "missing.txt"), "", 3, 1.0, 6)
    assert "labelled 2 pairs" in logic.auto_label(ws, 2)
    view = logic.next_view(ws, "ann")
    logic.label(ws, "ann", view[3], "tie")
    progress, recent, agree_md, by_pair = logic.stats(ws, "ann")
    assert "**Queued for you** 2" in progress and len(recent) == 3
    assert len(by_pair) == 1 and "over 1 pairs" in agree_md  # pair 1: labelled by sim:vader and ann
    path, msg = logic.export_file(ws, "JSONL", include_ties=True)
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 4 and msg == "Exported 4 rows (ties written in both orders)."  # 2 sim labels + tie twice
    src = tmp_path / "more.jsonl"
    src.write_text(json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"}) + "\n")
    assert logic.import_upload(ws, str(src)).startswith("imported 1 pairs")
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="no recognised columns"):
        logic.import_upload(ws, str(bad))


def test_active_ordering_with_a_reward_run(ws, tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config("gpt2", len(tiny_tokenizer), tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id)
    cfg.num_labels = 1
    run = tmp_path / "runs" / "reward-1"
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(run / "model")
    tiny_tokenizer.save_pretrained(run / "model")
    (run / "status.json").write_text(json.dumps({"kind": "reward", "state": "finished", "step": 1}))
    (tmp_path / "runs" / "ppo-1").mkdir()
    (tmp_path / "runs" / "ppo-1" / "status.json").write_text(json.dumps({"kind": "ppo", "state": "running"}))
    rm = str(run / "model")
    assert logic.reward_model_choices(ws) == [rm]

    logic.store_for(ws).add_pairs([(f"p{i}", f"a charming movie {i}", f"a slow mess {'!' * i}") for i in range(6)],
                                  model="seed")
    assert "Scored 6 queued pairs" in logic.activate_reward_model(ws, "ann", rm)
    assert "Scored 0 queued pairs" in logic.activate_reward_model(ws, "ann", rm)  # cached
    scores = logic._scores[(str(ws.db_path), rm)]
    least_sure = min(scores, key=lambda pid: abs(scores[pid][0] - scores[pid][1]))
    view = logic.next_view(ws, "ann", rm)
    assert view[3].startswith(f"{least_sure}:") and "least-sure" in view[4]
    assert logic.next_view(ws, "ann")[3].startswith("1:")  # no reward model: oldest first
    # pairs sampled after the model was picked get scored by the filler's after-batch hook
    logic.store_for(ws).add_pairs([("late", "a charming late movie", "a late mess")], model="seed")
    assert logic.score_new_pairs(ws) == 1 and len(scores) == 7
    assert logic.score_new_pairs(ws) == 0


def test_filler_runs_its_after_fill_hook(tmp_path, lm):
    store = PreferenceStore(tmp_path / "p.db")
    calls = []
    filler = PairFiller(store, lambda: lm, ["a charming"], "tiny", target=2, batch_pairs=2, gen_cfg=CFG, seed=0,
                        pause_s=0.01, check_every_s=0.01, after_fill=lambda: calls.append(unlabelled_count(store, "tiny")))
    filler.start()
    deadline = time.monotonic() + 30
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    filler.stop(10)
    assert calls == [2] and filler.last_error is None  # once, after the one batch that stored pairs
