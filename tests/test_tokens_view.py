"""The token heatmap (escaping, colours by sign, numbers on hover) and the Inspect tab's handlers on
a real tiny PPO run (views of a step, reference vs current policy)."""
import html
import json
import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from core.config import PPOConfig
from core.ppo.loop import run_ppo
from workbench import inspect_logic, ppo_plots, tokens

from tiny_models import tiny_model

RECORD = {"step": 2, "sample": 0, "prompt": "p", "response": "<script>alert(1)</script> ok",
          "tokens": ["<script>", "alert(1)", "</script>", ' "ok" & \n'],
          "advantage": [0.5, -0.25, 0.0, -1.0], "reward": [0.1, -0.2, 0.0, 1.5], "kl": [0.01, 0.02, 0.0, -0.03],
          "value": [0.3, 0.2, 0.1, 0.0], "return": [0.8, -0.05, 0.1, -1.0], "logprob": [-1.0, -2.0, -3.0, -0.5],
          "ref_logprob": [-1.01, -2.02, -3.0, -0.47], "kl_coef": 0.2, "score": 1.5, "raw_score": 1.2, "gold": 0.4}


def spans(markup):
    return re.findall(r'<span class="tok" style="background:([^"]*)" title="([^"]*)" data-value="[^"]*">(.*?)</span>',
                      markup, re.S)


def test_tokens_are_escaped_text_never_markup():
    out = tokens.token_heatmap_html(RECORD, "advantage")
    assert "<script>" not in out and "</script>" not in out.replace("&lt;/script&gt;", "")
    assert "&lt;script&gt;" in out and "&lt;/script&gt;" in out
    texts = [html.unescape(t) for _, _, t in spans(out)]
    assert texts[:3] == ["<script>", "alert(1)", "</script>"]
    assert texts[3] == ' "ok" & ↵\n'  # a newline stays visible as a symbol
    # quotes in a token cannot close the title attribute
    assert all('"' not in title for _, title, _ in spans(out))


def test_colours_follow_the_sign_and_size():
    got = spans(tokens.token_heatmap_html(RECORD, "advantage"))
    pos, neg = tokens._rgb(ppo_plots.POS_COLOR), tokens._rgb(ppo_plots.NEG_COLOR)
    assert got[0][0].startswith("rgba(%d,%d,%d," % pos)
    assert got[1][0].startswith("rgba(%d,%d,%d," % neg) and got[3][0].startswith("rgba(%d,%d,%d," % neg)
    assert got[2][0] == "transparent"  # exactly zero
    alpha = lambda css: float(css.rsplit(",", 1)[1].rstrip(")"))  # noqa: E731
    assert alpha(got[3][0]) > alpha(got[0][0]) > alpha(got[1][0])  # |−1.0| > |0.5| > |−0.25|
    by_reward = spans(tokens.token_heatmap_html(RECORD, "reward"))
    assert by_reward[1][0].startswith("rgba(%d,%d,%d," % neg) and by_reward[3][0].startswith("rgba(%d,%d,%d," % pos)


def test_hover_carries_every_number_of_the_token():
    title = html.unescape(spans(tokens.token_heatmap_html(RECORD, "kl"))[1][1])
    for needle in ("#1 'alert(1)'", "A_t = -0.2500", "r_t = -0.2000", "KL_t = +0.0200", "V_t = +0.2000",
                   "G_t = -0.0500", "logπ = -2.0000", "logπ_ref = -2.0200"):
        assert needle in title


def test_legend_names_the_quantity_and_its_scale():
    out = tokens.token_heatmap_html(RECORD, "return")
    assert "G_t" in out and "+1" in out and "-1" in out
    assert tokens.token_heatmap_html(None) .count("No sample") == 1
    with pytest.raises(ValueError):
        tokens.token_spans(RECORD, "nonsense")


def test_token_text_in_plot_hovers_is_escaped():
    df = ppo_plots.token_frame(RECORD)
    labels = list(ppo_plots.token_reward_figure(df).data[0].customdata)
    assert labels[0] == "0: &#x27;&lt;script&gt;&#x27;" and all("<" not in lab for lab in labels)
    hm = ppo_plots.advantage_heatmap(ppo_plots.advantage_frame([RECORD])).data[0]
    assert hm.text[0][0] == "&lt;script&gt;"


def test_missing_and_non_finite_values_render_uncoloured():
    rec = dict(RECORD, advantage=[None, float("nan")])
    got = spans(tokens.token_heatmap_html(rec, "advantage"))
    assert len(got) == 4 and all(c == "transparent" for c, _, _ in got)


# ---------------------------------------------------------------- Inspect handlers on a real run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("inspect")
    tiny_model("gpt2", tiny_tokenizer, 0).save_pretrained(root / "policy")
    tiny_tokenizer.save_pretrained(root / "policy")
    cfg = tiny_model("gpt2", tiny_tokenizer, 1).config
    cfg.num_labels = 1
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(root / "rm")
    tiny_tokenizer.save_pretrained(root / "rm")
    (root / "prompts.txt").write_text("a charming\nthe acting is\ni hated\none of the best\n")
    out = root / "run"
    run_ppo(PPOConfig(policy=str(root / "policy"), reward_model=str(root / "rm"), prompts=str(root / "prompts.txt"),
                      steps=2, batch_size=4, response_length=6, ppo_epochs=1, save_every=1, log_samples=3,
                      output_dir=str(out)))
    return out


def test_view_of_a_step_and_sample(run_dir):
    assert inspect_logic.steps(str(run_dir)) == [1, 2]
    choices, picked, body, fig_r, fig_v, fig_h = inspect_logic.view(str(run_dir), 2, 1, "reward")
    assert [v for _, v in choices] == [0, 1, 2] and picked == 1
    assert "token-legend" in body and "r_t" in body and body.count('class="tok"') >= 1
    assert [t.name for t in fig_r.data] == ["−β·KL_t", "score (last token)", "r_t"]
    assert [t.name for t in fig_v.data] == ["V_t", "A_t", "G_t", "KL_t"]
    assert list(fig_h.data[0].y) == ["sample 0", "sample 1", "sample 2"]
    # an unknown sample falls back to the first; a step without samples says so
    assert inspect_logic.view(str(run_dir), 2, 99, "advantage")[1] == 0
    assert "No samples logged for step 7" in inspect_logic.view(str(run_dir), 7, None, "advantage")[2]


def test_script_in_a_logged_response_is_shown_as_text(run_dir, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "tokens.jsonl").write_text(json.dumps(RECORD) + "\n")
    body = inspect_logic.view(str(fake), 2, 0, "advantage")[2]
    assert "<script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt; ok" in body


def test_compare_samples_reference_and_current_policy(run_dir):
    msg, df = inspect_logic.compare(str(run_dir), 2)
    assert "mean RM score" in msg, msg
    assert len(df) == 3 and list(df.columns) == inspect_logic.COMPARE_COLUMNS
    assert all(c.startswith("RM ") and " · gold " in c for c in df["reference score"].tolist() + df["current score"].tolist())
    assert df["prompt"].tolist() == [r["prompt"] for r in inspect_logic.ppo_logic.step_records(str(run_dir), 2)]
    assert inspect_logic.current_policy_dir(str(run_dir)) == run_dir / "model"  # finished: the final policy


def test_samples_table_escapes_model_text(tmp_path):
    from workbench import ppo_logic
    (tmp_path / "tokens.jsonl").write_text(json.dumps(RECORD) + "\n")
    page = ppo_logic.samples_html(str(tmp_path))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; ok" in page


def test_compare_explains_what_is_missing(tmp_path):
    msg, df = inspect_logic.compare(str(tmp_path), 1)
    assert msg.startswith("**Cannot compare:**") and df.empty
