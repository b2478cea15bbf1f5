"""Pairs to label: sampling two responses per prompt, a background filler, reward-model scores.

- sample_pairs: n (prompt, a, b) triples, the two responses independent draws from the policy,
  batched through core.models.generation.generate.
- PairFiller: a daemon thread that keeps at least `target` unlabelled pairs of one policy in the
  store, so a labeler never waits for sampling. It is polite on a shared CPU: small batches, a
  pause between batches, a slow poll while the queue is full, and it shares a lock with any
  foreground sampling so the two never run at once.
- score_pairs: reward-model scores (r_a, r_b) per pair (core.models.scoring, as in training and PPO),
  the `order_by` mapping of PreferenceStore.next_pairs (least-sure pairs first).
"""
from __future__ import annotations

import dataclasses
import os
import random
import threading
from collections.abc import Callable, Sequence

import torch

from ..backends import select
from ..config import GenerationConfig
from ..models.generation import decode_responses, generate
from ..models.scoring import score_texts  # the reward model's own convention (prompt + response + EOS)
from .store import Pair, PreferenceStore

Progress = Callable[[int, int], None]  # (pairs done, pairs total)
FILLER_NICE = 10  # the background sampler yields to the app's request handling


def pick_prompts(prompts: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """n prompts: a shuffled pass over all of them, again as often as needed (no prompt twice
    before every prompt once)."""
    pool = [p for p in prompts if p.strip()]
    if not pool:
        raise ValueError("no prompts: every prompt is empty")
    out: list[str] = []
    while len(out) < n:
        batch = list(pool)
        rng.shuffle(batch)
        out += batch[:n - len(out)]
    return out


def sample_pairs(model, tokenizer, prompts: Sequence[str], n: int, gen_cfg: GenerationConfig | None = None,
                 seed: int | None = None, batch_size: int = 16,
                 progress: Progress | None = None) -> list[tuple[str, str, str]]:
    """n (prompt, response_a, response_b) triples; prompts are drawn by `pick_prompts`.

    Each batch samples its k prompts twice in one generate call (2k rows): the rows are independent
    draws, so a and b are two i.i.d. samples of the same policy. `seed` fixes prompts and samples.
    """
    if n <= 0:
        return []
    rng = random.Random(seed)
    chosen = pick_prompts(prompts, n, rng)
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(rng.randrange(2 ** 63)) if seed is not None else None
    out: list[tuple[str, str, str]] = []
    fwd = select(model)  # the model family's decoder (the same logits as the model's own forward)
    for i in range(0, n, max(1, batch_size)):
        chunk = chosen[i:i + batch_size]
        texts = decode_responses(tokenizer, generate(model, tokenizer, chunk + chunk, gen_cfg, g, forward=fwd))
        out += zip(chunk, texts[:len(chunk)], texts[len(chunk):])
        if progress:
            progress(len(out), n)
    return out


def unlabelled_count(store: PreferenceStore, model: str) -> int:
    """Pairs produced by `model` with no live label from anyone: the filler's cheap queue check.

    One COUNT over pairs with an indexed NOT EXISTS probe per pair. Uses the store's per-thread
    connection (same package), since the public counts() does not split by model.
    """
    return store._con().execute(
        "SELECT COUNT(*) FROM pairs p WHERE p.model = ? AND NOT EXISTS "
        "(SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.undone = 0)", (model,)).fetchone()[0]


class PairFiller:
    """Keeps at least `target` unlabelled pairs of `model_name` in the store, in a daemon thread.

    load_model() -> (model, tokenizer) is called lazily on the first fill (never when the queue is
    already full). Between fills the thread sleeps `pause_s`; while the queue is full it re-checks
    every `check_every_s`. Errors are kept in `last_error` and retried after `retry_s`; the thread
    never dies of one. `lock` is held for each batch, so foreground sampling can take it to run alone.
    `after_fill()`, when given, runs in the thread after every batch that stored pairs.
    """

    def __init__(self, store: PreferenceStore, load_model: Callable[[], tuple], prompts: Sequence[str],
                 model_name: str, target: int = 32, batch_pairs: int = 8, pause_s: float = 1.0,
                 check_every_s: float = 5.0, retry_s: float = 30.0, gen_cfg: GenerationConfig | None = None,
                 lock: threading.Lock | None = None, seed: int | None = None,
                 after_fill: Callable[[], object] | None = None):
        self.store, self.load_model, self.prompts = store, load_model, list(prompts)
        self.model_name, self.target, self.batch_pairs = model_name, target, max(1, batch_pairs)
        self.pause_s, self.check_every_s, self.retry_s = pause_s, check_every_s, retry_s
        self.gen_cfg = gen_cfg or GenerationConfig()
        self.lock = lock or threading.Lock()
        self.rng = random.Random(seed)
        self.after_fill = after_fill  # run in this thread after each batch stored (e.g. score new pairs)
        self.added = 0                # pairs this filler has stored
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> PairFiller:
        """Start the thread unless it runs already (cheap and idempotent: call it on every page load)."""
        if self.target <= 0 or self.running:
            return self
        with self._start_lock:
            if not self.running:
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, daemon=True, name="pair-filler")
                self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def fill_once(self) -> int:
        """One step: sample and store one batch if the queue is short; returns pairs added."""
        missing = self.target - unlabelled_count(self.store, self.model_name)
        if missing <= 0:
            return 0
        model, tokenizer = self.load_model()
        with self.lock:
            items = sample_pairs(model, tokenizer, self.prompts, min(missing, self.batch_pairs), self.gen_cfg,
                                 seed=self.rng.randrange(2 ** 31), batch_size=self.batch_pairs)
        settings = {**dataclasses.asdict(self.gen_cfg), "sampler": "filler"}
        added, _ = self.store.add_pairs(items, model=self.model_name, settings=settings)
        self.added += added
        return added

    def _loop(self) -> None:
        # Lower this thread's CPU priority (Linux: a thread is a task), so the app's event loop
        # wins the CPU when a label click arrives. OpenMP teams are per calling thread in libgomp,
        # so the worker threads this thread's torch ops start inherit the same niceness.
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + FILLER_NICE))
        except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
            pass
        while not self._stop.is_set():
            try:
                added = self.fill_once()
                if added and self.after_fill:
                    self.after_fill()
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - a background helper reports, it must not die
                self.last_error = f"{type(e).__name__}: {e}"
                self._stop.wait(self.retry_s)
                continue
            # A full queue (or a batch of nothing but duplicates) waits longer than a productive fill.
            self._stop.wait(self.pause_s if added else self.check_every_s)
        self.store.close()  # this thread's connection


def score_pairs(model, tokenizer, pairs: Sequence[Pair], batch_size: int = 32,
                progress: Progress | None = None) -> dict[int, tuple[float, float]]:
    """{pair_id: (r_a, r_b)} for next_pairs(order_by=...): least-sure (smallest |r_a - r_b|) first."""
    out: dict[int, tuple[float, float]] = {}
    fwd = select(model)
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        prompts = [p.prompt for p in chunk]
        r = score_texts(model, tokenizer, prompts * 2, [p.response_a for p in chunk] + [p.response_b for p in chunk],
                        batch_size=2 * len(chunk), forward=fwd).tolist()
        out.update({p.id: (r[j], r[len(chunk) + j]) for j, p in enumerate(chunk)})
        if progress:
            progress(len(out), len(pairs))
    return out
