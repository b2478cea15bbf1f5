"""Preference data for reward-model training: read the sources, drop uninformative pairs, split
train/validation (seeded), tokenize as prompt + response + EOS (core.models.scoring)."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..config import RewardConfig
from ..models.scoring import tokenize_for_scoring
from ..preferences import PreferenceStore, read_preferences


@dataclass
class Pairs:
    """Tokenized pairs: unpadded id lists (padding happens per batch, to that batch's longest)."""
    chosen: list[list[int]]
    rejected: list[list[int]]
    margin: list[float] | None
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, idx: list[int]) -> "Pairs":
        m = None if self.margin is None else [self.margin[i] for i in idx]
        return Pairs([self.chosen[i] for i in idx], [self.rejected[i] for i in idx], m)


def _read_margins(path: Path) -> list[float] | None:
    """The optional `margin` column of a TRL file, row-aligned with read_preferences (which drops it)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        values = [r.get("margin") for r in rows]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        values = table.column("margin").to_pylist() if "margin" in table.column_names else [None]
    else:
        return None
    if not values or all(v is None for v in values):
        return None
    try:
        return [float(v) if v is not None else 0.0 for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{path.name}: the `margin` column must hold numbers") from None


def load_rows(path_str: str, what: str = "data") -> tuple[list[dict], list[float] | None]:
    """Labelled rows {prompt, chosen, rejected} and margins (or None), with messages a user can act on."""
    if not path_str:
        raise ValueError(f"no training data: set `{what}` to a preferences .db or a TRL .jsonl/.parquet file")
    path = Path(path_str).expanduser()
    if not path.exists():
        raise ValueError(f"{what} file {path} does not exist")
    rows = read_preferences(path)
    margins = _read_margins(path) if path.suffix.lower() != ".db" else None
    if not rows:
        hint = ""
        if path.suffix.lower() == ".db":
            with PreferenceStore(path) as store:
                c = store.counts()
            hint = (f" (it has {c['labels']} labels, none of them 'a' or 'b': ties, both_bad and skip do not "
                    "say which response is better)" if c["labels"] else
                    f" (it has {c['pairs']} pairs but no labels yet: label some in the Label tab)")
        raise ValueError(f"no labelled pairs in {path}{hint}")
    return rows, margins


def load_sources(spec: str, what: str = "data") -> tuple[list[dict], list[float] | None]:
    """`spec`: one source, or several separated by commas (e.g. the store and a TRL file), read
    in order and concatenated. Margins are kept when any source has them (0 for the others)."""
    parts = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if len(parts) <= 1:
        return load_rows(parts[0] if parts else "", what)
    rows, margins, any_margin = [], [], False
    for part in parts:
        r, m = load_rows(part, what)
        rows += r
        margins += m if m is not None else [0.0] * len(r)
        any_margin |= m is not None
    return rows, (margins if any_margin else None)


def _keep_informative(rows, margins, where: str):
    """Drop pairs whose chosen and rejected are the same text: they cannot teach a preference."""
    keep = [i for i, r in enumerate(rows) if r["chosen"] != r["rejected"]]
    if not keep:
        raise ValueError(f"all {len(rows)} pairs in {where} have identical chosen and rejected responses: "
                         "there is no preference to learn")
    return [rows[i] for i in keep], (None if margins is None else [margins[i] for i in keep]), len(rows) - len(keep)


def tokenize_pairs(tokenizer, rows, margins, max_length: int) -> Pairs:
    prompts = [r["prompt"] for r in rows]
    chosen, tc = tokenize_for_scoring(tokenizer, prompts, [r["chosen"] for r in rows], max_length)
    rejected, tr = tokenize_for_scoring(tokenizer, prompts, [r["rejected"] for r in rows], max_length)
    return Pairs(chosen, rejected, margins, tc + tr)


def prepare_data(cfg: RewardConfig, tokenizer) -> tuple[Pairs, Pairs, dict]:
    """(train, val, info). Raises ValueError for data that cannot train a reward model."""
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    for name in ("epochs", "batch_size", "grad_accum", "max_length"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    rows, margins = load_sources(cfg.data, "data")
    rows, margins, dropped = _keep_informative(rows, margins, cfg.data)
    if not cfg.use_margin:
        margins = None
    if cfg.val_data:
        vrows, vmargins = load_sources(cfg.val_data, "val_data")
        vrows, vmargins, _ = _keep_informative(vrows, vmargins if cfg.use_margin else None, cfg.val_data)
        train = tokenize_pairs(tokenizer, rows, margins, cfg.max_length)
        val = tokenize_pairs(tokenizer, vrows, vmargins, cfg.max_length)
    else:
        everything = tokenize_pairs(tokenizer, rows, margins, cfg.max_length)
        n = len(everything)
        n_val = min(n - 1, max(1, round(n * cfg.val_fraction))) if cfg.val_fraction > 0 and n >= 2 else 0
        perm = list(range(n))
        random.Random(cfg.seed).shuffle(perm)  # seeded: the same config always holds out the same pairs
        val, train = everything.subset(perm[:n_val]), everything.subset(perm[n_val:])
        train.truncated = everything.truncated
    info = {"pairs_train": len(train), "pairs_val": len(val), "identical_dropped": dropped,
            "truncated": train.truncated + val.truncated}
    return train, val, info
