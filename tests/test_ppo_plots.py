"""PPO tab pieces without a browser: plot builders on small frames, the reward-hacking detector on
synthetic trends, incremental jsonl reading, and the tab's handlers on a real (tiny) run."""
import json
import random
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from core.config import PPOConfig
from core.ppo.loop import run_ppo
from core.runtime.jobs import JOBS
from workbench import hacking, ppo_logic, ppo_plots

from tiny_models import tiny_model


def frame(n=10):
    return pd.DataFrame({"step": range(1, n + 1), "objective/score": [0.1 * i for i in range(n)],
                         "objective/gold": [0.5 - 0.02 * i for i in range(n)],
                         "objective/kl": [0.3 * i for i in range(n)],
                         "objective/kl_coef": [0.2] * n, "loss/policy": [0.01] * n, "loss/value": [0.5] * n,
                         "policy/clipfrac": [0.1] * n, "policy/approx_kl": [0.001] * n, "policy/entropy": [2.0] * n,
                         "val/explained_variance": [0.3] * n, "eps": [20.0] * n})


# ---------------------------------------------------------------- run-level figures
def test_score_figure_puts_gold_on_a_second_axis():
    fig = ppo_plots.score_figure(frame())
    names = [t.name for t in fig.data]
    assert names == ["RM score (proxy)", "gold"]
    assert fig.data[0].yaxis == "y" and fig.data[1].yaxis == "y2"
    assert fig.layout.yaxis2.overlaying == "y" and fig.layout.xaxis.title.text == "step"
    assert list(fig.data[0].x) == list(range(1, 11))
    assert fig.data[0].line.color == ppo_plots.SCORE_COLOR and fig.data[1].line.color == ppo_plots.GOLD_COLOR


@pytest.mark.parametrize("build, expected", [
    (ppo_plots.kl_figure, ["KL(policy ‖ ref)", "kl_coef β"]),
    (ppo_plots.loss_figure, ["policy loss", "value loss"]),
    (ppo_plots.clip_figure, ["policy clipfrac", "approx KL"]),
    (ppo_plots.entropy_figure, ["entropy / token"]),
    (ppo_plots.explained_variance_figure, ["explained variance"]),
    (ppo_plots.eps_figure, ["episodes / s"]),
])
def test_each_run_figure_draws_its_metrics(build, expected):
    fig = build(frame())
    assert [t.name for t in fig.data] == expected  # absent metrics (val/clipfrac) are left out


def test_missing_metrics_give_a_placeholder_not_an_error():
    for build in ppo_plots.RUN_FIGURES:
        fig = build(ppo_plots.metrics_frame([]))
        assert len(fig.data) == 0 and fig.layout.annotations[0].text == "waiting for the first step"
    fig = ppo_plots.score_figure(pd.DataFrame({"step": [1, 2], "objective/score": [0.1, 0.2]}))
    assert [t.name for t in fig.data] == ["RM score (proxy)"] and "yaxis2" not in fig.to_dict()["layout"]


def test_dashboard_keeps_each_figure_in_its_own_subplot():
    df = frame()
    fig = ppo_plots.dashboard_figure(df)
    assert len(fig.data) == sum(len(b(df).data) for b in ppo_plots.RUN_FIGURES)
    gold = next(t for t in fig.data if t.name == "gold")
    assert (gold.xaxis, gold.yaxis) == ("x", "y2")  # first subplot, its second axis
    ev = next(t for t in fig.data if t.name == "explained variance")
    assert (ev.xaxis, ev.yaxis) == ("x6", "y11")
    layout = fig.layout
    assert layout.yaxis2.overlaying == "y" and layout.yaxis4.overlaying == "y3" and layout.xaxis6.anchor == "y11"
    shape = layout.shapes[0]  # EV's zero line spans its subplot (the 6th: right column, third row)
    assert shape.yref == "y11" and (shape.x0, shape.x1) == tuple(layout.xaxis6.domain)
    title = layout.annotations[0].text  # the legend is written into the title, in the traces' colours
    assert title.startswith("<b>Score and gold</b>") and f"color:{ppo_plots.GOLD_COLOR}'>┅ gold" in title
    assert layout.annotations[1].text.startswith("<b>KL and its coefficient</b>") and layout.showlegend is False
    assert all(0 <= d <= 1 for k in ("xaxis", "yaxis", "xaxis8", "yaxis15") for d in layout[k].domain)
    empty = ppo_plots.dashboard_figure(ppo_plots.metrics_frame([]))
    assert len(empty.data) == 0 and sum("waiting" in a.text for a in empty.layout.annotations) == 8


def test_every_figure_is_valid_plotly():
    """Builders skip plotly's validation for speed; check here that what they write is valid."""
    import plotly.graph_objects as go
    record_df = ppo_plots.token_frame(RECORD)
    figs = [b(frame()) for b in ppo_plots.RUN_FIGURES] + [b(ppo_plots.metrics_frame([])) for b in ppo_plots.RUN_FIGURES]
    figs += [ppo_plots.dashboard_figure(frame()), ppo_plots.dashboard_figure(ppo_plots.metrics_frame([])),
             ppo_plots.token_reward_figure(record_df), ppo_plots.token_values_figure(record_df),
             ppo_plots.advantage_heatmap(ppo_plots.advantage_frame([RECORD])),
             ppo_plots.token_reward_figure(ppo_plots.token_frame({}))]
    for fig in figs:
        go.Figure(fig.to_dict())  # raises ValueError on an unknown or malformed property


def test_overoptimisation_figure_plots_score_and_gold_against_kl():
    df = frame()
    fig = ppo_plots.overoptimisation_figure(df, smooth=1)
    by_name = {t.name: t for t in fig.data}
    assert {"RM score (proxy)", "gold", "RM score (proxy) (steps)", "gold (steps)"} == set(by_name)
    assert list(by_name["gold (steps)"].x) == df["objective/kl"].tolist()
    assert list(by_name["gold (steps)"].y) == df["objective/gold"].tolist()
    assert list(by_name["gold (steps)"].customdata) == df["step"].tolist()  # hover names the step
    assert by_name["gold"].yaxis == "y2" and fig.layout.xaxis.title.text.startswith("KL")


# ---------------------------------------------------------------- token-level figures
RECORD = {"step": 3, "sample": 0, "tokens": [" good", " fun", "<|endoftext|>"], "kl_coef": 0.5,
          "kl": [0.2, -0.4, 0.1], "reward": [-0.1, 0.2, -1.05], "value": [0.3, 0.1, -0.2],
          "advantage": [0.5, -0.25, -0.85], "return": [0.8, -0.15, -1.05], "score": -1.0}


def test_token_frame_splits_reward_into_kl_and_score_parts():
    df = ppo_plots.token_frame(RECORD)
    assert df["kl_part"].tolist() == pytest.approx([-0.1, 0.2, -0.05])
    assert df["score_part"].tolist() == pytest.approx([0.0, 0.0, -1.0])  # the score sits on the last token


def test_token_reward_figure_stacks_parts_and_colours_score_by_sign():
    fig = ppo_plots.token_reward_figure(ppo_plots.token_frame(RECORD))
    kl_bar, score_bar, total = fig.data
    assert fig.layout.barmode == "relative"
    assert kl_bar.type == "bar" and list(kl_bar.y) == pytest.approx([-0.1, 0.2, -0.05])
    assert list(score_bar.y)[:2] == [None, None] and score_bar.y[2] == pytest.approx(-1.0)
    assert score_bar.marker.color[2] == ppo_plots.NEG_COLOR
    positive = dict(RECORD, reward=[-0.1, 0.2, 1.95])
    assert ppo_plots.token_reward_figure(ppo_plots.token_frame(positive)).data[1].marker.color[2] == ppo_plots.POS_COLOR
    assert list(total.y) == RECORD["reward"]


def test_token_values_figure_has_v_a_g_kl():
    fig = ppo_plots.token_values_figure(ppo_plots.token_frame(RECORD))
    assert [t.name for t in fig.data] == ["V_t", "A_t", "G_t", "KL_t"]
    assert list(fig.data[1].y) == RECORD["advantage"] and fig.layout.xaxis.title.text == "response position"


def test_advantage_heatmap_is_samples_by_positions_centred_on_zero():
    other = dict(RECORD, sample=1, tokens=["a"], advantage=[0.7])
    fig = ppo_plots.advantage_heatmap(ppo_plots.advantage_frame([RECORD, other]))
    hm = fig.data[0]
    assert hm.type == "heatmap" and hm.zmid == 0
    assert list(hm.y) == ["sample 0", "sample 1"] and list(hm.x) == [0, 1, 2]
    assert hm.z[0] == pytest.approx([0.5, -0.25, -0.85])
    assert hm.z[1][0] == pytest.approx(0.7) and all(v != v for v in hm.z[1][1:])  # NaN past a short response
    assert hm.colorscale[0][1] == ppo_plots.NEG_COLOR and hm.colorscale[-1][1] == ppo_plots.POS_COLOR


# ---------------------------------------------------------------- reward-hacking detector
def noisy(values, sd, seed):
    rng = random.Random(seed)
    return [v + rng.gauss(0, sd) for v in values]


def test_detector_fires_when_proxy_rises_and_gold_falls():
    steps = list(range(1, 41))
    proxy = noisy([0.05 * s for s in steps], 0.1, 0)
    gold = noisy([0.6 - 0.01 * max(0, s - 15) for s in steps], 0.02, 1)  # peaks at 15, then declines
    v = hacking.detect(steps, proxy, gold, kl=[0.1 * s for s in steps])
    assert v.hacking and "Reward hacking likely" in v.message
    assert v.proxy.slope > 0 and v.gold.slope < 0 and v.gold_peak_step <= 20


@pytest.mark.parametrize("seed", range(5))
def test_detector_is_silent_when_both_rise(seed):
    steps = list(range(1, 41))
    proxy, gold = noisy([0.05 * s for s in steps], 0.1, seed), noisy([0.01 * s for s in steps], 0.02, seed + 7)
    v = hacking.detect(steps, proxy, gold)
    assert not v.hacking and "No sign" in v.message


@pytest.mark.parametrize("seed", range(20))
def test_detector_is_silent_on_noise(seed):
    steps = list(range(1, 41))
    v = hacking.detect(steps, noisy([0.0] * 40, 1.0, seed), noisy([0.0] * 40, 1.0, seed + 100))
    assert not v.hacking


def test_detector_waits_for_enough_steps_and_skips_missing_gold():
    v = hacking.detect([1, 2, 3], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    assert not v.hacking and "waiting" in v.message
    assert hacking.detect([1, 2], [0.1, 0.2], [None, None]) == hacking.Verdict(False, "")


def test_t_distribution_tail_matches_known_values():
    assert hacking.t_sf(0.0, 10) == pytest.approx(0.5)
    assert hacking.t_sf(2.228, 10) == pytest.approx(0.025, abs=2e-4)  # two-sided 5% critical value, df=10
    assert hacking.t_sf(-2.228, 10) == pytest.approx(0.975, abs=2e-4)
    assert hacking.t_sf(1.96, 10_000) == pytest.approx(0.025, abs=5e-4)


# ---------------------------------------------------------------- incremental reading
def test_jsonl_tail_reads_only_complete_new_lines_and_survives_a_rewrite(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2')  # a writer mid-append
    t = ppo_logic.JsonlTail(p)
    assert [r["step"] for r in t.read()] == [1]
    with open(p, "a") as fh:
        fh.write("}\n" + json.dumps({"step": 3}) + "\n")
    assert [r["step"] for r in t.read()] == [1, 2, 3]
    # resume rewrites the file without steps past its checkpoint, then appends again
    p.write_text("".join(json.dumps(r) + "\n" for r in ({"step": 1}, {"step": 2, "x": 1}, {"step": 3, "x": 22})))
    assert [r.get("x") for r in t.read()] == [None, 1, 22]


# ---------------------------------------------------------------- handlers on a real tiny run
PROMPTS = ["a charming", "the acting is", "i hated", "one of the best"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_tokenizer):
    """A workspace with a reward run (tiny random model) and one finished 3-step PPO run."""
    root = tmp_path_factory.mktemp("ppo_tab")
    tiny_model("gpt2", tiny_tokenizer, 0).save_pretrained(root / "policy")
    tiny_tokenizer.save_pretrained(root / "policy")
    cfg = tiny_model("gpt2", tiny_tokenizer, 1).config
    cfg.num_labels = 1
    torch.manual_seed(1)
    reward_run = root / "ws" / "runs" / "reward-tiny"
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(reward_run / "model")
    tiny_tokenizer.save_pretrained(reward_run / "model")
    (reward_run / "status.json").write_text(json.dumps({"kind": "reward", "state": "finished", "step": 1}))
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")

    class W:  # the two attributes the handlers use of workbench.context.Workspace (no model loading)
        pass
    w = W()
    w.root, w.model_path, w.prompts = root / "ws", str(root / "policy"), str(root / "prompts.txt")
    run_ppo(PPOConfig(policy=w.model_path, reward_model=str(reward_run / "model"), prompts=w.prompts, steps=3,
                      batch_size=4, response_length=6, ppo_epochs=1, save_every=2, log_samples=2,
                      output_dir=str(w.root / "runs" / "ppo-done")))
    return w


def test_choices_list_reward_models_final_policies_and_runs(ws):
    assert [v for _, v in ppo_logic.reward_model_choices(ws)] == [str(ws.root / "runs" / "reward-tiny" / "model")]
    assert [v for _, v in ppo_logic.policy_choices(ws)] == [ws.model_path, str(ws.root / "runs" / "ppo-done" / "model")]
    done = str(ws.root / "runs" / "ppo-done")
    assert [v for _, v in ppo_logic.resumable_choices(ws)] == [done]  # a finished run can go on with more steps
    ok, msg, _ = ppo_logic.resume(ws, done)
    assert not ok and "already reached its 3 steps" in msg and "more steps" in msg
    assert ppo_logic.current_run(ws, "") == str(ws.root / "runs" / "ppo-done")
    assert ppo_logic.default_config(ws).reward_model.endswith("reward-tiny/model")


def test_views_of_a_finished_run(ws):
    path = str(ws.root / "runs" / "ppo-done")
    assert "finished" in ppo_logic.status_line(path) and "step 3/3" in ppo_logic.status_line(path)
    assert 'data-step="3"' in ppo_logic.status_html(path) and "<b>finished</b>" in ppo_logic.status_html(path)
    fig = ppo_logic.dashboard(path)
    assert list(fig.data[0].x) == [1, 2, 3] and fig.data[0].name == "RM score (proxy)"
    assert ppo_logic.dashboard(path) is fig  # cached until metrics.jsonl grows
    table = ppo_logic.samples_table(path)
    assert list(table.columns) == ppo_logic.SAMPLE_COLUMNS and len(table) == 2 and table["gold"].notna().all()
    page = ppo_logic.samples_html(path)
    assert page.count("<tr>") == 3 and "Sample responses of step 3" in page
    assert "waiting" in ppo_logic.hacking_message(path)  # 3 steps: too few to judge
    assert ppo_logic.runs_table(ws)["state"].tolist() == ["finished"]


def test_a_run_whose_process_died_shows_as_interrupted_and_resumable(ws, tmp_path):
    import shutil
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    run = ws.root / "runs" / "ppo-killed"
    shutil.copytree(ws.root / "runs" / "ppo-done", run)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "running", "step": 2, "pid": pid}))
    try:
        assert ppo_logic.process_gone(ppo_logic.read_status(run))
        assert not ppo_logic.process_gone({"state": "running", "pid": __import__("os").getpid()})
        assert ppo_logic.status_line(str(run)).startswith("interrupted · ppo-killed · step 2/3")
        assert str(run) in [v for _, v in ppo_logic.resumable_choices(ws)]
        assert ppo_logic.stop(ws, str(run)) == "No PPO run is running."
    finally:
        shutil.rmtree(run)


def test_start_refuses_bad_input_with_a_message(ws):
    names = [n for n in PPOConfig.__dataclass_fields__ if n not in ppo_logic.FORM_EXCLUDE]
    good = {n: getattr(PPOConfig(), n) for n in names}
    def vals(rm="", **kw):
        return [ws.model_path, rm, ws.prompts, *[kw.get(n, good[n]) for n in names]]
    ok, msg, _ = ppo_logic.start(ws, names, vals())
    assert not ok and "No reward model" in msg
    rm = str(ws.root / "runs" / "reward-tiny" / "model")
    ok, msg, _ = ppo_logic.start(ws, names, vals(rm=rm, batch_size=-3))
    assert not ok and "batch_size" in msg
    ok, msg, _ = ppo_logic.start(ws, names, vals(rm=rm, steps="many"))
    assert not ok and "steps" in msg


def test_start_stop_and_resume_a_job(ws):
    names = [n for n in PPOConfig.__dataclass_fields__ if n not in ppo_logic.FORM_EXCLUDE]
    cfg = PPOConfig(steps=200, batch_size=2, response_length=4, ppo_epochs=1, save_every=1000, log_samples=1)
    rm = str(ws.root / "runs" / "reward-tiny" / "model")
    values = [ws.model_path, rm, ws.prompts, *[getattr(cfg, n) for n in names]]
    ok, msg, path = ppo_logic.start(ws, names, values)
    assert ok, msg
    try:
        ok2, msg2, _ = ppo_logic.start(ws, names, values)
        assert not ok2 and "already running" in msg2
        assert ppo_logic.current_run(ws, "") == path  # the active job wins over the newest directory
        t0 = time.time()
        while ppo_logic.metrics_df(path).empty and time.time() - t0 < 60:
            time.sleep(0.1)
        assert "Stop requested" in ppo_logic.stop(ws, path)
    finally:
        JOBS.stop(ws.root, "ppo")
        JOBS.wait(ws.root, "ppo", timeout=60)
    assert path in [v for _, v in ppo_logic.resumable_choices(ws)]
    ok, msg, _ = ppo_logic.resume(ws, path, -1)
    assert not ok and "positive" in msg
    ok, msg, _ = ppo_logic.resume(ws, path, 5)
    assert ok, msg
    assert "to step 205" in msg and "steps: 205" in (Path(path) / "config.yaml").read_text()
    JOBS.stop(ws.root, "ppo")
    JOBS.wait(ws.root, "ppo", timeout=60)
    steps = ppo_logic.metrics_df(path)["step"].tolist()
    assert steps == list(range(1, len(steps) + 1))  # no gap, no duplicate across the resume
