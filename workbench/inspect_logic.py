"""Handlers of the Inspect tab: one step's samples token by token, and reference vs current policy.

Plain values in and out; gradio stays in tabs/inspect.py. Records come from tokens.jsonl through
ppo_logic's incremental reader, so following a live run rereads nothing.
"""
from __future__ import annotations

import html
import threading
from pathlib import Path

import pandas as pd

from core.runtime.checkpoint import latest_checkpoint
from core.config import GenerationConfig, PPOConfig, load_config
from core.runtime.runs import read_status

from . import ppo_logic, ppo_plots, tokens

COMPARE_COLUMNS = ["prompt", "reference response", "reference score", "current response", "current score"]


def steps(run_path: str) -> list[int]:
    return ppo_logic.token_steps(run_path) if run_path else []


def tokens_signature(run_path: str) -> str:
    return run_path + "|" + ppo_logic.signature(run_path)["tokens"] if run_path else ""


def sample_choices(records: list[dict]) -> list[tuple[str, int]]:
    out = []
    for r in records:
        prompt = (r.get("prompt") or "")[:40]
        score = r.get("raw_score")
        out.append((f"#{r.get('sample')}: {prompt!r}" + (f" · score {score:+.2f}" if score is not None else ""),
                    int(r.get("sample", 0))))
    return out


def _fmt(v) -> str:
    return "–" if v is None else f"{float(v):+.3f}"


def header_html(record: dict | None) -> str:
    """Prompt, response and scores of one sample, escaped like the tokens."""
    if not record:
        return ""
    e = html.escape
    return (f'<div class="sample-head" style="margin-bottom:6px">'
            f'<div><b>Prompt</b> <span style="font-family:monospace">{e(str(record.get("prompt", "")))}</span></div>'
            f'<div><b>Response</b> <span style="font-family:monospace;white-space:pre-wrap">'
            f'{e(str(record.get("response", "")))}</span></div>'
            f'<div style="color:#555;font-size:13px">RM score {_fmt(record.get("raw_score"))} · score used '
            f'{_fmt(record.get("score"))} · gold {_fmt(record.get("gold"))} · β {_fmt(record.get("kl_coef"))} · '
            f'{len(record.get("tokens") or [])} tokens</div></div>')


def view(run_path: str, step, sample, quantity: str) -> tuple:
    """(sample choices, chosen sample, html, reward figure, values figure, heatmap) of one step."""
    quantity = quantity if quantity in tokens.QUANTITIES else "advantage"
    step = int(step) if step is not None else None
    records = ppo_logic.step_records(run_path, step) if run_path and step else []
    choices = sample_choices(records)
    if not records:
        msg = "No PPO run to inspect yet." if not run_path else f"No samples logged for step {step}."
        empty = ppo_plots.token_frame({})
        return (choices, None, f'<div class="token-view" style="color:#888">{html.escape(msg)}</div>',
                ppo_plots.token_reward_figure(empty), ppo_plots.token_values_figure(empty),
                ppo_plots.advantage_heatmap(ppo_plots.advantage_frame([])))
    by_sample = {int(r.get("sample", 0)): r for r in records}
    sample = int(sample) if sample is not None and int(sample) in by_sample else int(records[0].get("sample", 0))
    rec = by_sample[sample]
    scale = tokens.scale_of(v for r in records for v in (r.get(quantity) or []))  # comparable across samples
    df = ppo_plots.token_frame(rec)
    return (choices, sample, header_html(rec) + tokens.token_heatmap_html(rec, quantity, scale),
            ppo_plots.token_reward_figure(df, f"Reward r_t per token (step {step}, sample {sample})"),
            ppo_plots.token_values_figure(df),
            ppo_plots.advantage_heatmap(ppo_plots.advantage_frame(records), f"Advantages A_t at step {step}: "
                                                                            "samples × positions"))


# ---------------------------------------------------------------- compare reference and current policy
_cache: dict[tuple, tuple] = {}
_cache_lock = threading.Lock()


def current_policy_dir(run_path: str) -> Path:
    """The run's final policy when it finished, else its latest checkpoint's policy."""
    final = Path(run_path) / "model"
    if read_status(run_path).get("state") == "finished" and (final / "config.json").exists():
        return final
    ckpt = latest_checkpoint(run_path)
    if ckpt is not None:
        return ckpt / "policy"
    if (final / "config.json").exists():
        return final
    raise ValueError(f"{Path(run_path).name} has no checkpoint or final policy yet (the first is saved "
                     f"after save_every steps, or when the run stops)")


def _stamp(path: Path) -> int:
    p = path / "config.json" if (path / "config.json").exists() else path / "adapter_config.json"
    return p.stat().st_mtime_ns if p.exists() else 0


def _load(kind: str, path: str, base: str | None = None):
    """(model, tokenizer), cached by path and file time; at most four models stay loaded."""
    from core.models.device import pick_device
    from core.models.loading import load_policy, load_scalar_model, load_tokenizer
    key = (kind, path, _stamp(Path(path)))
    with _cache_lock:
        if key not in _cache:
            device = pick_device()
            if kind == "reward":
                model = load_scalar_model(path, device, trainable=False).eval()
            elif (Path(path) / "adapter_config.json").exists():  # a LoRA checkpoint: merge onto its base
                from peft import PeftModel
                model = PeftModel.from_pretrained(load_policy(base, device, trainable=False), path).merge_and_unload()
            else:
                model = load_policy(path, device, trainable=False)
            tok_dir = path if (Path(path) / "tokenizer_config.json").exists() else (base or path)
            while len(_cache) >= 4:
                _cache.pop(next(iter(_cache)))
            _cache[key] = (model.eval(), load_tokenizer(tok_dir))
        return _cache[key]


def empty_compare() -> pd.DataFrame:
    return pd.DataFrame(columns=COMPARE_COLUMNS)


def compare(run_path: str, step, seed: int = 0) -> tuple[str, pd.DataFrame]:
    """Sample the step's prompts from the reference (the config's policy) and the current policy
    with the same seed, and score both with the run's reward model (and gold when it has one)."""
    from core.backends import select
    from core.data.prompts import read_prompts
    from core.models.generation import sample_texts
    from core.models.scoring import score_texts
    empty = empty_compare()
    if not run_path:
        return "Pick a run first.", empty
    try:
        cfg = load_config(PPOConfig, Path(run_path) / "config.yaml")
        records = ppo_logic.step_records(run_path, int(step) if step else None)
        prompts = [r["prompt"] for r in records] or read_prompts(cfg.prompts)[:4]
        current = current_policy_dir(run_path)
        gen = GenerationConfig(max_new_tokens=cfg.response_length, temperature=cfg.temperature,
                               stop_at_eos=cfg.stop_token == "eos")
        ref_model, ref_tok = _load("policy", cfg.policy)
        cur_model, cur_tok = _load("policy", str(current), base=cfg.policy)
        ref = sample_texts(ref_model, ref_tok, prompts, gen, seed=seed, forward=select(ref_model))
        cur = sample_texts(cur_model, cur_tok, prompts, gen, seed=seed, forward=select(cur_model))
        rm, rm_tok = _load("reward", cfg.reward_model)
        ref_s = score_texts(rm, rm_tok, prompts, ref, forward=select(rm)).tolist()
        cur_s = score_texts(rm, rm_tok, prompts, cur, forward=select(rm)).tolist()
    except (ValueError, FileNotFoundError, OSError) as e:
        return f"**Cannot compare:** {html.escape(str(e))}", empty
    gold = None
    if cfg.gold_judge == "vader":
        from core.preferences.annotator import SentimentAnnotator
        gold = SentimentAnnotator().score
    # score and gold share a cell: five columns keep both responses readable side by side
    cell = lambda s, text: f"RM {s:+.3f}" + (f" · gold {gold(text):+.2f}" if gold else "")  # noqa: E731
    df = pd.DataFrame({"prompt": prompts, "reference response": ref,
                       "reference score": [cell(s, t) for s, t in zip(ref_s, ref)],
                       "current response": cur, "current score": [cell(s, t) for s, t in zip(cur_s, cur)]},
                      columns=COMPARE_COLUMNS)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    where = current.parent.name if current.name == "policy" else current.name
    return (f"Reference `{Path(cfg.policy).name}` vs current policy `{where}` on {len(prompts)} prompts "
            f"(same seed): mean RM score {mean(ref_s):+.3f} → {mean(cur_s):+.3f}.", df)
