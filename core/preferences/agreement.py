"""Inter-annotator agreement: percent agreement and Cohen's kappa over pairs labelled by several people.

Categories are a, b, tie, both_bad; 'skip' is not an opinion about the pair, so skipped labels are
dropped before anything is counted, as are undone labels. If an annotator has several live labels
on one pair, their newest one counts.

Cohen's kappa is defined for two raters. With more than two annotators we compute it for every pair
of annotators on the items both labelled, and report the unweighted mean over annotator pairs
(Light's kappa, Light 1971); percent agreement is averaged the same way, so the two headline
numbers describe the same comparisons. Per-annotator-pair figures are returned too.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

AGREEMENT_CHOICES = ("a", "b", "tie", "both_bad")


@dataclass(frozen=True)
class RaterPair:
    annotators: tuple[str, str]
    n: int            # pairs both labelled
    percent: float    # 0..100
    kappa: float      # nan when undefined (both raters used one and the same category throughout)


@dataclass(frozen=True)
class Agreement:
    n_pairs: int      # pairs with live non-skip labels from two or more annotators
    percent: float    # mean over annotator pairs, 0..100; nan if no overlap at all
    kappa: float      # mean over annotator pairs with a defined kappa (Light's kappa); nan if none
    by_annotators: list[RaterPair]


def cohen_kappa(x: list[str], y: list[str]) -> float:
    """kappa = (p_o - p_e) / (1 - p_e), p_e from each rater's own category frequencies."""
    n = len(x)
    if n == 0 or n != len(y):
        raise ValueError(f"need two equally long non-empty label lists, got {len(x)} and {len(y)}")
    p_o = sum(u == v for u, v in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[c] * cy[c] for c in cx) / (n * n)
    if p_e == 1.0:  # 0/0: no variation to agree beyond chance about
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def agreement(labels: Iterable[tuple[int, str, str]]) -> Agreement:
    """From (pair_id, annotator, choice) triples, oldest first (later ones win per pair+annotator)."""
    by_pair: dict[int, dict[str, str]] = defaultdict(dict)
    for pair_id, annotator, choice in labels:
        if choice in AGREEMENT_CHOICES:
            by_pair[pair_id][annotator] = choice
    shared = {p: votes for p, votes in by_pair.items() if len(votes) >= 2}
    annotators = sorted({a for votes in shared.values() for a in votes})

    results = []
    for u, v in itertools.combinations(annotators, 2):
        both = [(votes[u], votes[v]) for votes in shared.values() if u in votes and v in votes]
        if not both:
            continue
        x, y = [b[0] for b in both], [b[1] for b in both]
        percent = 100.0 * sum(s == t for s, t in both) / len(both)
        results.append(RaterPair((u, v), len(both), percent, cohen_kappa(x, y)))

    kappas = [r.kappa for r in results if not math.isnan(r.kappa)]
    return Agreement(
        n_pairs=len(shared),
        percent=sum(r.percent for r in results) / len(results) if results else math.nan,
        kappa=sum(kappas) / len(kappas) if kappas else math.nan,
        by_annotators=results,
    )


def store_agreement(store) -> Agreement:
    """Agreement over a PreferenceStore's live labels."""
    return agreement((label.pair_id, label.annotator, label.choice) for label in store.labels())
