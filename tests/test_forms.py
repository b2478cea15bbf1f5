"""workbench.forms: config dataclass -> components -> the same dataclass."""
import gradio as gr
import pytest

from core.config import PPOConfig, RewardConfig
from workbench.forms import build_form, values_to_config, yaml_or_error


def frontend_values(form):
    """What the browser sends back for unchanged components (postprocess, then preprocess)."""
    return [c.preprocess(c.postprocess(c.value)) for c in form.components]


def in_accordion(comp) -> bool:
    while comp is not None:
        if isinstance(comp, gr.Accordion):
            return True
        comp = comp.parent
    return False


@pytest.mark.parametrize("cfg", [
    RewardConfig(data="/tmp/prefs.db", epochs=3, learning_rate=2e-5, use_margin=False, center_coef=0.01),
    PPOConfig(kl_target=None, steps=7, kl_estimator="k3", gold_judge=None, target_kl=0.5),
])
def test_round_trip(cfg):
    with gr.Blocks():
        form = build_form(type(cfg), cfg)
    assert form.to_config(*frontend_values(form)) == cfg


def test_components_follow_field_metadata():
    with gr.Blocks():
        form = build_form(PPOConfig)
    comp = dict(zip(form.names, form.components))
    assert isinstance(comp["steps"], gr.Number) and comp["steps"].precision == 0
    assert isinstance(comp["whiten_advantages"], gr.Checkbox)
    assert isinstance(comp["kl_estimator"], gr.Dropdown)
    assert isinstance(comp["policy"], gr.Textbox)
    assert in_accordion(comp["gamma"]) and not in_accordion(comp["steps"])  # advanced fields fold away
    assert comp["steps"].label == "steps" and "PPO steps" in comp["steps"].info


def test_bad_values_give_the_config_error():
    names = ["epochs", "data"]
    with pytest.raises(ValueError, match="epochs: expected int"):
        values_to_config(RewardConfig, names, [1.5, ""])
    assert values_to_config(RewardConfig, names, [2.0, " a.db "]).data == "a.db"
    assert yaml_or_error(RewardConfig, names, [-1, ""]).startswith("# invalid: epochs must not be negative")
    assert "epochs: 2" in yaml_or_error(RewardConfig, names, [2, ""])
