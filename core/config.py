"""One config dataclass per stage. The YAML file, the CLI's key=value overrides and the GUI form
are three views of these fields; each field is documented once, in its `help` metadata.

YAML keys are the field names (docs/architecture.md, "Configs": a contract)."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = str(ASSETS / "tiny-reviews")
DEFAULT_PROMPTS = str(ASSETS / "prompts" / "reviews.txt")


def option(default, help: str, advanced: bool = False, choices: tuple | None = None):
    """A documented field. `advanced` fields are folded away in the GUI form."""
    return field(default=default, metadata={"help": help, "advanced": advanced, "choices": choices})


@dataclass
class GenerationConfig:
    max_new_tokens: int = option(24, "Tokens to sample per response (the response length cap).")
    temperature: float = option(1.0, "Sampling temperature; 1.0 samples the policy as it is, which PPO's KL estimate assumes.")
    top_k: int = option(0, "Keep only the k most likely tokens (0 = off). Truncation biases the KL estimate negative (TRL #925).", True)
    top_p: float = option(1.0, "Nucleus sampling mass (1.0 = off). Same caveat as top_k.", True)
    stop_at_eos: bool = option(True, "End a response at the EOS token.", True)


@dataclass
class RewardConfig:
    base_model: str = option(DEFAULT_MODEL, "Causal LM directory or hub id to initialise the reward model from.")
    data: str = option("", "Training preferences: a TRL-format .jsonl/.parquet file (prompt, chosen, rejected), a preferences .db, or several separated by commas (e.g. the store and a file).")
    val_data: str = option("", "Optional separate validation file; empty = split val_fraction off the training data.", True)
    val_fraction: float = option(0.1, "Share of pairs held out for validation (seeded split).")
    epochs: int = option(2, "Passes over the training pairs.")
    batch_size: int = option(16, "Pairs per optimizer step (chosen and rejected: one forward, one packed row per pair where the model allows it).")
    learning_rate: float = option(3e-4, "Peak AdamW learning rate (3e-4 x 2 epochs beat 1e-4 x 1 on the embedded model: 0.63 vs 0.57).")
    weight_decay: float = option(0.0, "AdamW weight decay.", True)
    warmup_ratio: float = option(0.05, "Fraction of steps with linear warm-up before linear decay.", True)
    max_length: int = option(96, "Token cap for prompt + response + EOS; the response is truncated, never the prompt.")
    grad_accum: int = option(1, "Gradient accumulation steps per optimizer step.", True)
    center_coef: float = option(0.0, "Reward centering coefficient: + c * mean((r_c + r_r)^2). TRL recommends 0.01.", True)
    use_margin: bool = option(True, "Use the data's `margin` column when it has one.", True)
    eval_every: int = option(20, "Validate every N optimizer steps (and at the end).", True)
    cpu_kernels: str = option("auto", "On a CPU: 'auto' measures oneDNN linears and a sigmoid-form GELU against torch's defaults once on this machine (cached per CPU model) and uses each only where it is faster, and keeps freed memory in the process; 'off' keeps torch's defaults. The same numbers either way. RLHF_ONEDNN=1/0 overrides the oneDNN choice.", True, ("auto", "off"))
    seed: int = option(0, "Seed for the split, shuffling and the value-head init.")
    output_dir: str = option("", "Run directory (empty = <workspace>/runs/<id> from the GUI).")


@dataclass
class PPOConfig:
    policy: str = option(DEFAULT_MODEL, "Policy to train (causal LM directory or hub id); its initial weights are the reference.")
    reward_model: str = option("", "Reward model directory (a reward run's model/).")
    prompts: str = option(DEFAULT_PROMPTS, "Text file with one prompt per line.")
    steps: int = option(100, "PPO steps (rollout + update) to run.")
    batch_size: int = option(32, "Prompts per rollout (episodes per step).")
    response_length: int = option(24, "Tokens sampled per response.")
    temperature: float = option(1.0, "Rollout sampling temperature.", True)
    stop_token: str = option("eos", "Where a response ends: 'eos' or 'none' (always response_length tokens).", True, ("eos", "none"))
    missing_eos_penalty: float = option(0.0, "Subtracted from the score of responses without EOS (0 = off).", True)
    ppo_epochs: int = option(4, "Optimisation passes over each rollout batch.")
    num_minibatches: int = option(1, "Minibatches per PPO epoch.")
    grad_accum: int = option(1, "Gradient accumulation steps per minibatch.", True)
    learning_rate: float = option(3e-5, "Policy learning rate.")
    critic_learning_rate: float = option(3e-5, "Critic learning rate.", True)
    lr_schedule: str = option("constant", "Learning rates over the run: constant, or linear decay to 0 at the last step (TRL's default).", True, ("constant", "linear"))
    kl_coef: float = option(0.2, "Initial KL penalty coefficient beta.")
    kl_target: float | None = option(6.0, "Target KL (nats per sequence) for the adaptive controller; null = fixed beta.")
    kl_horizon: float = option(10000.0, "Adaptive controller horizon (episodes).", True)
    kl_estimator: str = option("k1", "Per-token KL estimator in the reward.", True, ("k1", "k2", "k3"))
    gamma: float = option(1.0, "GAE discount.", True)
    lam: float = option(0.95, "GAE lambda.", True)
    whiten_advantages: bool = option(True, "Whiten advantages over the batch before the update.", True)
    cliprange: float = option(0.2, "Policy ratio clip epsilon.", True)
    cliprange_value: float = option(0.2, "Value clip epsilon.", True)
    vf_coef: float = option(0.1, "Weight of the value loss.", True)
    entropy_coef: float = option(0.0, "Entropy bonus coefficient.", True)
    max_grad_norm: float = option(1.0, "Gradient norm clip.", True)
    target_kl: float | None = option(None, "Stop the epoch loop early when approx KL exceeds this (null = never).", True)
    score_norm: bool = option(True, "Standardise scores with the reward model's stored training mean/std.", True)
    whiten_scores: bool = option(False, "Whiten scores over each batch (seed 003).", True)
    score_clip: float | None = option(5.0, "Clip scores to +-this (null = off).", True)
    critic_init: str = option("reward", "Initialise the critic from the reward model or from the policy.", True, ("reward", "policy"))
    lora_rank: int = option(0, "LoRA rank for the policy (0 = full fine-tuning); the reference is the adapter switched off.", True)
    overlap_models: bool = option(True, "On a CPU, run the policy's and the critic's work side by side on two threads, each with half the cores: their update epochs (epoch by epoch when target_kl is set), and, when scoring, the reference and the policy beside the critic and the reward model. The same update.", True)
    cpu_kernels: str = option("auto", "On a CPU: 'auto' measures oneDNN linears and a sigmoid-form GELU against torch's defaults once on this machine (cached per CPU model) and uses each only where it is faster, and keeps freed memory in the process; 'off' keeps torch's defaults. The same numbers either way. RLHF_ONEDNN=1/0 overrides the oneDNN choice.", True, ("auto", "off"))
    gold_judge: str | None = option("vader", "Gold judge for objective/gold: 'vader' or null.", True)
    log_samples: int = option(4, "Samples per step written to tokens.jsonl.", True)
    save_every: int = option(25, "Checkpoint every N steps (and at the end).", True)
    seed: int = option(0, "Random seed.")
    output_dir: str = option("", "Run directory (empty = <workspace>/runs/<id> from the GUI).")


STAGES = {"reward": RewardConfig, "ppo": PPOConfig, "generation": GenerationConfig}


def field_type(cls, name: str):
    """The concrete type of a field, with Optional[X] unwrapped to X."""
    tp = typing.get_type_hints(cls)[name]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    return tp


def coerce(cls, name: str, value):
    """Turn a YAML/CLI/GUI value into the field's type; 'null'/'none'/'' -> None for Optional fields."""
    tp = field_type(cls, name)
    optional = "None" in str(typing.get_type_hints(cls)[name])
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
        if optional:
            return None
        if tp is str:
            return ""
        raise ValueError(f"{name} cannot be null")
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.strip().lower() in ("1", "true", "yes", "on"):
                    return True
                if value.strip().lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if tp is int and isinstance(value, str):
            return int(float(value)) if float(value).is_integer() else int(value)
        return tp(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {tp.__name__}, got {value!r}") from None


def from_dict(cls, data: dict):
    """Build a config from a plain dict, refusing unknown keys with the list of known ones."""
    names = {fl.name for fl in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    cfg = cls(**{k: coerce(cls, k, v) for k, v in data.items()})
    validate(cfg)
    return cfg


def validate(cfg) -> None:
    for fl in dataclasses.fields(cfg):
        choices = fl.metadata.get("choices")
        value = getattr(cfg, fl.name)
        if choices and value not in choices:
            raise ValueError(f"{fl.name} must be one of {', '.join(choices)}, got {value!r}")
        tp = field_type(type(cfg), fl.name)
        if tp in (int, float) and value is not None and value < 0 and fl.name not in ("seed",):
            raise ValueError(f"{fl.name} must not be negative, got {value}")


def parse_overrides(items: list[str]) -> dict:
    """['steps=10', 'kl_target=null'] -> {'steps': '10', 'kl_target': 'null'}; types come from coerce."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config(cls, path: str | Path | None = None, overrides: list[str] | dict | None = None):
    data = {}
    if path:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of field names to values")
    if overrides:
        data.update(overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return from_dict(cls, data)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))
