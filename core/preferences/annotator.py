"""A simulated annotator who prefers the more positive response (VADER sentiment).

It stands in for a person so the whole loop (label -> reward model -> PPO) can run unattended, and
because its taste is a known function, the reward model can be checked against it. The noise model
is Bradley-Terry: P(choose a) = sigmoid((s_a - s_b) / temperature), so temperature sets how often
it disagrees with its own scorer, like a human who is sometimes careless.
"""
from __future__ import annotations

import math
import random

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

ANNOTATOR_ID = "sim:vader"


def _sigmoid(x: float) -> float:
    # Split by sign so exp never overflows for a large |x| (temperature near 0).
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class SentimentAnnotator:
    """Scores with VADER's compound score in [-1, 1]; all randomness from its own seeded rng.

    temperature=0 is deterministic: the higher score wins and an exact tie goes to 'a' (response_a
    is just the first of two i.i.d. samples, so this favours no side of the screen).
    """

    def __init__(self, temperature: float = 0.1, seed: int = 0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.temperature = temperature
        self.rng = random.Random(seed)
        self._vader = SentimentIntensityAnalyzer()

    def score(self, text: str) -> float:
        return self._vader.polarity_scores(text)["compound"]

    def prob_a(self, a: str, b: str) -> float:
        """P(this annotator prefers a over b)."""
        diff = self.score(a) - self.score(b)
        if self.temperature == 0:
            return 1.0 if diff >= 0 else 0.0
        return _sigmoid(diff / self.temperature)

    def prefer(self, a: str, b: str) -> str:
        p = self.prob_a(a, b)
        if p in (0.0, 1.0):  # no draw when the outcome is certain: temperature 0 leaves the rng alone
            return "a" if p == 1.0 else "b"
        return "a" if self.rng.random() < p else "b"

    def auto_label(self, store, n: int, annotator_id: str = ANNOTATOR_ID) -> int:
        """Label up to n pairs `annotator_id` has not labelled yet; returns how many were labelled.

        Responses are scored alone, without the prompt: both share it, and the choice should be
        about what the policy wrote. The 'shown on the left' side is drawn from the rng, as a GUI
        would randomise it, so position-bias statistics see a fair mix.
        """
        done = 0
        for pair in store.next_pairs(annotator_id, n):
            left = self.rng.choice("ab")
            store.add_label(pair.id, annotator_id, self.prefer(pair.response_a, pair.response_b), left)
            done += 1
        return done
