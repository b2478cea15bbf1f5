"""GUI forms generated from the config dataclasses of core.config (any of them: reward, PPO, ...).

Each field's metadata (help, advanced, choices) is written once in core.config; here it becomes a
labelled component: basic fields in view, advanced ones in a closed accordion. Values come back
through core.config.from_dict, so the form, the YAML file and the CLI apply the same coercion and
validation and give the same error messages.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import gradio as gr

from core.config import field_type, from_dict, to_yaml


def _optional(cls, name: str) -> bool:
    return "None" in str(typing.get_type_hints(cls)[name])


def _label(name: str) -> str:
    return name.replace("_", " ")


def component_for(cls, fl: dataclasses.Field, value) -> gr.components.Component:
    """One input component for one field, its help as the info line."""
    tp, help_ = field_type(cls, fl.name), fl.metadata.get("help", "")
    choices = fl.metadata.get("choices")
    label = _label(fl.name)
    if choices:
        return gr.Dropdown(choices=list(choices), value=value, label=label, info=help_)
    if tp is bool:
        return gr.Checkbox(value=bool(value), label=label, info=help_)
    if tp in (int, float):
        info = help_ + (" Empty = null." if _optional(cls, fl.name) else "")
        return gr.Number(value=value, label=label, info=info, precision=0 if tp is int else None)
    info = help_ + (" Empty = null." if _optional(cls, fl.name) else "")
    return gr.Textbox(value="" if value is None else str(value), label=label, info=info, max_lines=1)


def config_values(cfg, names: list[str]) -> list:
    """The values the components of `names` show for a config."""
    return [getattr(cfg, n) for n in names]


def values_to_config(cls, names: list[str], values) -> object:
    """Component values -> config. Raises ValueError (from core.config) naming the bad field.

    Strings are stripped: a stray space pasted into a path field must not make a different path.
    An empty box of an Optional field is null, as the form shows null as an empty box.
    """
    data = {}
    for n, v in zip(names, values):
        v = v.strip() if isinstance(v, str) else v
        data[n] = None if v == "" and _optional(cls, n) else v
    return from_dict(cls, data)


def yaml_or_error(cls, names: list[str], values) -> str:
    """The equivalent config.yaml, or the validation error as a YAML comment."""
    try:
        return to_yaml(values_to_config(cls, names, values))
    except ValueError as e:
        return f"# invalid: {e}\n"


@dataclass
class Form:
    cls: type
    names: list[str]
    components: list

    def to_config(self, *values):
        return values_to_config(self.cls, self.names, values)

    def yaml(self, *values) -> str:
        return yaml_or_error(self.cls, self.names, values)

    def bind_yaml(self, code: gr.Code) -> None:
        """Keep `code` showing the equivalent YAML as any field changes."""
        for comp in self.components:
            comp.change(self.yaml, inputs=self.components, outputs=code, show_progress="hidden")


def build_form(cls, cfg=None, exclude: tuple[str, ...] = (), advanced_label: str = "Advanced settings") -> Form:
    """Lay out a form for `cls` inside the current Blocks context (basic fields, then a closed
    accordion of advanced ones). `cfg` gives the initial values (default: the dataclass defaults)."""
    cfg = cfg if cfg is not None else cls()
    fields = [f for f in dataclasses.fields(cls) if f.name not in exclude]
    basic = [f for f in fields if not f.metadata.get("advanced")]
    advanced = [f for f in fields if f.metadata.get("advanced")]
    comps: dict[str, object] = {}
    for fl in basic:
        comps[fl.name] = component_for(cls, fl, getattr(cfg, fl.name))
    if advanced:
        with gr.Accordion(advanced_label, open=False):
            for fl in advanced:
                comps[fl.name] = component_for(cls, fl, getattr(cfg, fl.name))
    names = [f.name for f in fields]  # dataclass order, so values line up with fields
    return Form(cls, names, [comps[n] for n in names])
