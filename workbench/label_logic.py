"""Plain handlers behind the Label tab: plain values in, plain values out, the work done by core.

Kept free of gradio so it can be tested without a browser; workbench/tabs/label.py wires these to
components and turns ValueErrors into warnings.

The labelling path (label / skip / undo) only writes one label and reads the next pair from the
store: it never samples. Sampling happens ahead of time in a PairFiller thread, tuned by two
environment variables (read when the filler starts; benchmarks use them to make the app busy):
    RLHF_QUEUE_TARGET  unlabelled pairs of the default policy to keep ready (default 32; 0 = off)
    RLHF_QUEUE_PAUSE   seconds the filler sleeps between batches (default 1.0)
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from core.config import DEFAULT_PROMPTS, GenerationConfig
from core.data.prompts import read_prompts
from core.models.loading import load_scalar_model, load_tokenizer
from core.preferences import (PairFiller, PreferenceStore, SentimentAnnotator, agreement, export,
                              import_file, sample_pairs, score_pairs)
from core.runtime.runs import list_runs

# What the buttons mean on screen; `left`/`right` become 'a'/'b' depending on which response was shown left.
SCREEN_CHOICES = ("left", "right", "tie", "both_bad", "skip")
PROMPT_SOURCES = ("Default prompts", "Prompt file", "Typed prompts")
RESERVED_PREFIXES = ("sim:", "import:")  # automatic labelers; a person must not pose as one
RECENT_COLUMNS = ["time", "annotator", "choice", "left shown", "pair", "prompt", "undone"]
AGREEMENT_COLUMNS = ["annotator 1", "annotator 2", "pairs", "agree %", "kappa"]
MAX_PAIRS_PER_RUN = 5000
MAX_SCORED = 5000  # queued pairs scored for active ordering; the rest follow oldest first

SAMPLING_LOCK = threading.Lock()  # foreground generation / scoring and the filler never sample at once
_lock = threading.Lock()          # the dicts below; held only for lookups, never for slow work
_label_lock = threading.Lock()    # repeat check + write of label/undo
_slow_lock = threading.Lock()     # loading reward models, the simulated annotator (may take seconds)
_stores: dict[str, PreferenceStore] = {}
_fillers: dict[str, PairFiller] = {}
_reward_models: dict[str, tuple] = {}
_scores: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
_annotators: dict[tuple[str, str], set[str]] = {}  # who picked each (store, reward model): whose queue to keep scored
_last_action: dict[tuple[str, str], tuple[str, str]] = {}
_annotator: SentimentAnnotator | None = None
_sides = random.Random()


# ---------------------------------------------------------------- shared per-process state
def store_for(ws) -> PreferenceStore:
    key = str(ws.db_path)
    with _lock:
        if key not in _stores:
            _stores[key] = PreferenceStore(ws.db_path)
        return _stores[key]


def ensure_filler(ws) -> PairFiller | None:
    """Start the background pair filler for this workspace once (cheap on every later call)."""
    key = str(ws.db_path)
    with _lock:
        filler = _fillers.get(key)
    if filler is None:
        target = int(os.environ.get("RLHF_QUEUE_TARGET", "32"))
        pause = float(os.environ.get("RLHF_QUEUE_PAUSE", "1.0"))
        if target <= 0:
            return None
        filler = PairFiller(store_for(ws), lambda: ws.policy(), read_prompts(DEFAULT_PROMPTS),
                            model_name=ws.model_path, target=target, pause_s=pause, lock=SAMPLING_LOCK,
                            after_fill=lambda: score_new_pairs(ws))
        with _lock:
            filler = _fillers.setdefault(key, filler)
    return filler.start()


def clean_name(name: str | None) -> str:
    name = (name or "").strip()[:64]
    if name.startswith(RESERVED_PREFIXES):
        raise ValueError(f"names starting with {' or '.join(RESERVED_PREFIXES)} are reserved for automatic labelers")
    return name


# ---------------------------------------------------------------- the pair on screen
# A view is (prompt, left text, right text, shown, info). `shown` = "<pair id>:<side shown left>" travels
# through the browser, so a label always names the pair the annotator actually saw.
def empty_view(info: str) -> tuple[str, str, str, str, str]:
    return "", "", "", "", info


def next_view(ws, annotator: str, reward_model: str | None = None, left: str | None = None) -> tuple:
    if not annotator:
        return empty_view("Enter your name above to start labelling.")
    order = _scores.get((str(ws.db_path), reward_model or ""))
    pairs = store_for(ws).next_pairs(annotator, 1, order_by=order or None)
    if not pairs:
        return empty_view("Nothing left to label: generate pairs or import a file below.")
    pair = pairs[0]
    left = left or _sides.choice("ab")  # random per pair: position bias shows up in the `left` column
    texts = (pair.response_a, pair.response_b) if left == "a" else (pair.response_b, pair.response_a)
    ordered = " (least-sure first)" if order else ""
    return pair.prompt, texts[0], texts[1], f"{pair.id}:{left}", f"Pair #{pair.id}{ordered}"


def parse_shown(shown: str) -> tuple[int, str]:
    try:
        pair_id, left = (shown or "").split(":")
        if left not in ("a", "b"):
            raise ValueError
        return int(pair_id), left
    except ValueError:
        raise ValueError("no pair on screen to label") from None


def _is_repeat(ws, annotator: str, kind: str, shown: str) -> bool:
    """A second identical request from one annotator (a double click, a held key) must change nothing.

    After a label or an undo the screen shows a different pair, so a repeat of the same (action,
    pair on screen) can only be a duplicate of the request just served. Callers check and then
    record (after their write succeeded) under _label_lock, so racing requests cannot both pass.
    """
    return _last_action.get((str(ws.db_path), annotator)) == (kind, shown)


def _record(ws, annotator: str, kind: str, shown: str) -> None:
    _last_action[(str(ws.db_path), annotator)] = (kind, shown)


def label(ws, annotator: str, shown: str, screen_choice: str, reward_model: str | None = None) -> tuple | None:
    """Commit one label for the pair on screen, then return the next pair's view (None: a repeat, no change)."""
    annotator = clean_name(annotator)
    if not annotator:
        raise ValueError("enter your name first")
    if screen_choice not in SCREEN_CHOICES:
        raise ValueError(f"unknown choice {screen_choice!r}")
    pair_id, left = parse_shown(shown)
    right = "b" if left == "a" else "a"
    choice = {"left": left, "right": right}.get(screen_choice, screen_choice)
    with _label_lock:
        if _is_repeat(ws, annotator, "label", shown):
            return None
        store_for(ws).add_label(pair_id, annotator, choice, left)  # committed and fsynced on return
        _record(ws, annotator, "label", shown)
    return next_view(ws, annotator, reward_model)


def undo(ws, annotator: str, shown: str, reward_model: str | None = None) -> tuple[tuple | None, str]:
    """Undo this annotator's newest label and put that pair back on screen, same side left as before.

    Returns (view, message); view None means a repeated request: leave the screen as it is."""
    annotator = clean_name(annotator)
    if not annotator:
        raise ValueError("enter your name first")
    with _label_lock:
        if _is_repeat(ws, annotator, "undo", shown or ""):
            return None, ""
        undone = store_for(ws).undo_last(annotator)
        _record(ws, annotator, "undo", shown or "")
    if undone is None:
        return next_view(ws, annotator, reward_model), "Nothing to undo."
    # The undone pair is unlabelled again; show it now rather than wherever the queue order puts it.
    pair = store_for(ws).pair(undone.pair_id)
    texts = (pair.response_a, pair.response_b) if undone.left == "a" else (pair.response_b, pair.response_a)
    view = (pair.prompt, texts[0], texts[1], f"{pair.id}:{undone.left}", f"Pair #{pair.id} (undone: label it again)")
    return view, f"Undid your '{undone.choice}' label on pair #{pair.id}."


# ---------------------------------------------------------------- progress, recent labels, agreement
def _fmt(x: float, digits: int) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def stats(ws, annotator: str) -> tuple[str, pd.DataFrame, str, pd.DataFrame]:
    """(progress markdown, recent labels, agreement markdown, agreement per annotator pair).

    The markdown holds numbers only: names and texts go into tables, which show text as text.
    """
    store = store_for(ws)
    counts = store.counts()
    labels = store.labels()
    mine = [lab for lab in labels if lab.annotator == annotator]
    queued = counts["pairs"] - len({lab.pair_id for lab in mine})
    progress = (f"**Queued for you** {queued} · **your labels** {len(mine)} · "
                f"**all labels** {counts['labels']} ({counts['undone']} undone) on {counts['labelled']} of "
                f"{counts['pairs']} pairs  \nA/B better {counts['a']}/{counts['b']} · tie {counts['tie']} · "
                f"both bad {counts['both_bad']} · skip {counts['skip']}")
    recent = pd.DataFrame([
        [time.strftime("%H:%M:%S", time.localtime(lab.time)), lab.annotator, lab.choice, lab.left, lab.pair_id,
         lab.prompt[:80], "yes" if lab.undone else ""]
        for lab in store.recent_labels(10)], columns=RECENT_COLUMNS)
    agree = agreement((lab.pair_id, lab.annotator, lab.choice) for lab in labels)
    if agree.n_pairs:
        agree_md = (f"**Agreement** {_fmt(agree.percent, 1)}% · **Cohen's kappa** {_fmt(agree.kappa, 2)} over "
                    f"{agree.n_pairs} pairs labelled by two or more annotators (skips left out)")
    else:
        agree_md = "**Agreement**: no pair has labels from two annotators yet."
    rows = pd.DataFrame([[r.annotators[0], r.annotators[1], r.n, _fmt(r.percent, 1), _fmt(r.kappa, 2)]
                         for r in agree.by_annotators], columns=AGREEMENT_COLUMNS)
    return progress, recent, agree_md, rows


# ---------------------------------------------------------------- generating, auto-labelling, files
def policy_choices(ws) -> list[str]:
    """The default policy, then final models and checkpoints of PPO runs in this workspace."""
    out = [ws.model_path]
    for run in list_runs(ws.root, kind="ppo"):
        d = Path(run["path"])
        # a checkpoint keeps the policy in step-*/policy (core.runtime.checkpoint); a LoRA one holds only
        # an adapter (no config.json) and is left out: its final model/ is merged and listed
        out += [str(p) for p in [d / "model", *sorted((d / "checkpoints").glob("step-*/policy"))]
                if (p / "config.json").exists()]
    return out


def reward_model_choices(ws) -> list[str]:
    """`<workspace>/runs/*/model` of runs whose status.json says kind "reward"."""
    return [str(Path(r["path"]) / "model") for r in list_runs(ws.root, kind="reward")
            if (Path(r["path"]) / "model" / "config.json").exists()]


def prompts_from(source: str, path: str, typed: str) -> list[str]:
    if source == "Typed prompts":
        prompts = [line.strip() for line in (typed or "").splitlines() if line.strip()]
        if not prompts:
            raise ValueError("type at least one prompt (one per line)")
        return prompts
    if source == "Prompt file":
        if not (path or "").strip():
            raise ValueError("enter the path of a prompt file (one prompt per line)")
        return read_prompts(path.strip())
    return read_prompts(DEFAULT_PROMPTS)


def generate_pairs(ws, policy: str, source: str, path: str, typed: str, n, temperature, max_new_tokens,
                   progress=None, seed: int | None = None) -> str:
    """Sample n pairs from `policy` (a model directory; empty = the default) and store them."""
    n, max_new_tokens, temperature = int(n or 0), int(max_new_tokens or 0), float(temperature or 0)
    if not 1 <= n <= MAX_PAIRS_PER_RUN:
        raise ValueError(f"number of pairs must be between 1 and {MAX_PAIRS_PER_RUN}")
    if temperature <= 0:
        raise ValueError("temperature must be above 0")
    if not 1 <= max_new_tokens <= 512:
        raise ValueError("max new tokens must be between 1 and 512")
    policy = (policy or "").strip() or ws.model_path
    if policy != ws.model_path and Path(policy).expanduser().exists():
        policy = str(Path(policy).expanduser().resolve())
    prompts = prompts_from(source, path, typed)
    model, tokenizer = ws.policy(policy)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    with SAMPLING_LOCK:  # the filler waits; the user asked for these now
        items = sample_pairs(model, tokenizer, prompts, n, cfg, seed=seed, progress=progress)
    added, skipped = store_for(ws).add_pairs(items, model=policy, settings=dataclasses.asdict(cfg))
    return f"Added {added} pairs from {Path(policy).name} ({skipped} duplicates skipped)."


def auto_label(ws, n) -> str:
    """Label up to n pairs as the simulated VADER annotator (annotator id sim:vader)."""
    global _annotator
    n = int(n or 0)
    if n <= 0:
        raise ValueError("number of pairs to auto-label must be at least 1")
    with _slow_lock:  # one annotator (and one rng stream) per process
        if _annotator is None:
            _annotator = SentimentAnnotator(temperature=0.1, seed=0)
        done = _annotator.auto_label(store_for(ws), n)
    return f"sim:vader labelled {done} pairs." if done else "sim:vader has labelled every pair already."


def import_upload(ws, path: str | None) -> str:
    if not path:
        raise ValueError("choose a .jsonl, .csv or .parquet file")
    return import_file(store_for(ws), path)


def export_file(ws, fmt: str, include_ties: bool) -> tuple[str, str]:
    """Write TRL preference rows to a fresh temporary file; returns (path, message)."""
    fmt = "parquet" if "parquet" in (fmt or "").lower() else "jsonl"
    out = Path(tempfile.mkdtemp(prefix="rlhf-export-")) / f"preferences-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
    n = export(store_for(ws), out, include_ties=bool(include_ties))
    ties = " (ties written in both orders)" if include_ties else ""
    return str(out), f"Exported {n} rows{ties}."


# ---------------------------------------------------------------- active ordering
def reward_model(path: str) -> tuple:
    with _slow_lock:
        if path not in _reward_models:
            tok = load_tokenizer(path)
            _reward_models[path] = (load_scalar_model(path, pad_token_id=tok.pad_token_id), tok)
        return _reward_models[path]


def _score_queue(ws, path: str, annotator: str, progress=None) -> int:
    """Score the annotator's queued pairs this reward model has not scored yet; returns how many."""
    key = (str(ws.db_path), path)
    scores = _scores.setdefault(key, {})
    _annotators.setdefault(key, set()).add(annotator)
    todo = [p for p in store_for(ws).next_pairs(annotator, MAX_SCORED) if p.id not in scores]
    if not todo:
        return 0
    model, tokenizer = reward_model(path)
    with SAMPLING_LOCK:
        scores.update(score_pairs(model, tokenizer, todo, progress=progress))
    return len(todo)


def score_new_pairs(ws) -> int:
    """Score queued pairs that an active reward model has not seen yet (the filler calls this after
    each batch), so pairs sampled after a model was picked join the least-sure-first order."""
    return sum(_score_queue(ws, path, who) for (db, path), names in list(_annotators.items())
               if db == str(ws.db_path) for who in list(names))


def activate_reward_model(ws, annotator: str, path: str | None, progress=None) -> str:
    """Score this annotator's queued pairs with a reward model; later picks come least-sure first.

    Scores are cached per (store, model), so re-selecting only scores pairs added since.
    """
    if not path:
        return "Pairs come oldest first."
    n = _score_queue(ws, path, clean_name(annotator), progress)
    return f"Scored {n} queued pairs with {Path(path).parent.name}: least-sure pairs come first."
