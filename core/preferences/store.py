"""The preference store: prompts, response pairs and human (or simulated) labels in one SQLite file.

Durability and concurrency are the point of this module:
- WAL journal + synchronous=FULL: every acknowledged label has been fsynced, so it survives a
  SIGKILL or power cut, while readers (the GUI polling counts) never block the writer.
- One connection per thread (sqlite3 connections must not be shared across threads); writers take
  the write lock up front with BEGIN IMMEDIATE, so two writers queue on the busy timeout instead of
  deadlocking on a read->write lock upgrade.
- Labels are never deleted: undo sets undone=1, so the full history stays auditable.

`choice` names a response, not a screen side: 'a' means response_a is better, whichever side it was
shown on. `left` records which response the annotator saw on the left, for position-bias checks.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

CHOICES = ("a", "b", "tie", "both_bad", "skip")
SIDES = ("a", "b")
SOURCES = ("sampled", "imported")
BUSY_TIMEOUT_MS = 30_000


def default_db_path(workspace: str | Path) -> Path:
    return Path(workspace) / "preferences.db"


class SchemaVersionError(RuntimeError):
    """The file was written by a newer rlhf-workbench; opening it could damage it."""


# ---------------------------------------------------------------- schema migrations
# MIGRATIONS[v] takes a database at user_version v to v + 1. Add a function per change and never
# edit an old one: files in the wild are at every version.

def _run_ddl(con: sqlite3.Connection, script: str) -> None:
    # Statement by statement: executescript() would COMMIT first, escaping the migration's transaction.
    # (So migration scripts must not contain ';' except between statements.)
    for statement in script.split(";"):
        if statement.strip():
            con.execute(statement)


def _migrate_0_to_1(con: sqlite3.Connection) -> None:
    _run_ddl(con, """
        CREATE TABLE prompts (
            id   INTEGER PRIMARY KEY,
            text TEXT NOT NULL UNIQUE
        );
        CREATE TABLE pairs (
            id         INTEGER PRIMARY KEY,
            prompt_id  INTEGER NOT NULL REFERENCES prompts(id),
            response_a TEXT NOT NULL,
            response_b TEXT NOT NULL,
            model      TEXT NOT NULL DEFAULT '',
            settings   TEXT NOT NULL DEFAULT '{}',
            source     TEXT NOT NULL CHECK (source IN ('sampled', 'imported')),
            created    REAL NOT NULL,
            UNIQUE (prompt_id, response_a, response_b)
        );
        CREATE TABLE labels (
            id        INTEGER PRIMARY KEY,
            pair_id   INTEGER NOT NULL REFERENCES pairs(id),
            annotator TEXT NOT NULL,
            choice    TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad', 'skip')),
            "left"    TEXT NOT NULL CHECK ("left" IN ('a', 'b')),
            time      REAL NOT NULL,
            undone    INTEGER NOT NULL DEFAULT 0 CHECK (undone IN (0, 1))
        );
        -- next_pairs asks "has this annotator a live label on this pair?" for every pair
        CREATE INDEX labels_pair_annotator ON labels(pair_id, annotator, undone);
        -- undo_last asks for an annotator's newest live label
        CREATE INDEX labels_annotator ON labels(annotator, undone, id);
    """)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_0_to_1]
SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------- rows handed out
@dataclass(frozen=True)
class Pair:
    id: int
    prompt: str
    response_a: str
    response_b: str
    model: str
    settings: dict
    source: str
    created: float


@dataclass(frozen=True)
class Label:
    id: int
    pair_id: int
    annotator: str
    choice: str
    left: str
    time: float
    undone: bool
    prompt: str
    response_a: str
    response_b: str


_PAIR_SQL = """SELECT p.id, pr.text, p.response_a, p.response_b, p.model, p.settings, p.source, p.created
               FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id"""
_LABEL_SQL = """SELECT l.id, l.pair_id, l.annotator, l.choice, l."left", l.time, l.undone,
                       pr.text, p.response_a, p.response_b
                FROM labels l JOIN pairs p ON p.id = l.pair_id JOIN prompts pr ON pr.id = p.prompt_id"""


def _pair(row) -> Pair:
    return Pair(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7])


def _label(row) -> Label:
    return Label(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7], row[8], row[9])


def _check_text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


class PreferenceStore:
    """A preference database at `path` (created, or migrated to SCHEMA_VERSION, on open).

    Safe to share one instance between threads: each thread lazily gets its own connection.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ connections and transactions
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":  # e.g. some network filesystems; durability claims would be false
                con.close()
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            con.execute("PRAGMA synchronous = FULL")  # per connection, not stored in the file
            con.execute("PRAGMA foreign_keys = ON")
            self._local.con = con
        return con

    @contextmanager
    def _write(self):
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:  # also after a failed COMMIT, so the connection stays usable
                con.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self):
        # A read transaction so multi-query reads (counts) see one consistent snapshot.
        con = self._con()
        con.execute("BEGIN")
        try:
            yield con
        finally:
            con.execute("COMMIT")

    def close(self) -> None:
        """Close the calling thread's connection (other threads' close when those threads end)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _migrate(self) -> None:
        with self._write() as con:  # under the write lock, so two processes opening at once can't both migrate
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has preference schema version {version}, but this rlhf-workbench only "
                    f"knows versions up to {SCHEMA_VERSION}; upgrade rlhf-workbench to open it "
                    f"(refusing rather than risk damaging the newer file)")
            for v in range(version, SCHEMA_VERSION):
                MIGRATIONS[v](con)
                con.execute(f"PRAGMA user_version = {v + 1}")

    # ------------------------------------------------------------ writing
    def add_prompts(self, texts: Iterable[str]) -> int:
        """Store prompts (for sampling later); returns how many were new."""
        texts = [_check_text(t, "prompt") for t in texts]
        with self._write() as con:
            return sum(con.execute("INSERT INTO prompts(text) VALUES (?) ON CONFLICT(text) DO NOTHING",
                                   (t,)).rowcount for t in texts)

    def add_pairs(self, items: Iterable[tuple[str, str, str]], model: str, settings: dict | None = None,
                  source: str = "sampled", label_as: str | None = None) -> tuple[int, int]:
        """Store (prompt, response_a, response_b) triples in one transaction.

        `model` is who produced the responses, `settings` the sampling settings (stored as JSON).
        A triple already in the database (or repeated in `items`) is skipped. With `label_as`, every
        newly added pair also gets the label 'a' (left='a') by that annotator in the same
        transaction: that is how chosen/rejected imports land. Returns (added, skipped_duplicates).
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
        checked = []
        for prompt, a, b in items:
            checked.append((_check_text(prompt, "prompt"), _check_text(a, "response_a"), _check_text(b, "response_b")))
        settings_json = json.dumps(settings or {}, sort_keys=True)
        added = skipped = 0
        now = time.time()
        with self._write() as con:
            for prompt, a, b in checked:
                con.execute("INSERT INTO prompts(text) VALUES (?) ON CONFLICT(text) DO NOTHING", (prompt,))
                prompt_id = con.execute("SELECT id FROM prompts WHERE text = ?", (prompt,)).fetchone()[0]
                # ON CONFLICT names the unique key, so a CHECK/NOT NULL failure still raises
                # (INSERT OR IGNORE would swallow those too).
                cur = con.execute(
                    "INSERT INTO pairs(prompt_id, response_a, response_b, model, settings, source, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(prompt_id, response_a, response_b) DO NOTHING",
                    (prompt_id, a, b, model, settings_json, source, now))
                if cur.rowcount == 0:
                    skipped += 1
                    continue
                added += 1
                if label_as is not None:
                    con.execute('INSERT INTO labels(pair_id, annotator, choice, "left", time) '
                                "VALUES (?, ?, 'a', 'a', ?)", (cur.lastrowid, label_as, now))
        return added, skipped

    def add_label(self, pair_id: int, annotator: str, choice: str, left: str) -> int:
        """Record one label in its own committed (fsynced) transaction; returns the label id."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}; got {choice!r}")
        if left not in SIDES:
            raise ValueError(f"left must be 'a' or 'b' (the response shown on the left); got {left!r}")
        if not isinstance(annotator, str) or not annotator:
            raise ValueError(f"annotator must be a non-empty string; got {annotator!r}")
        with self._write() as con:
            if con.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone() is None:
                raise ValueError(f"no pair with id {pair_id!r}")
            cur = con.execute('INSERT INTO labels(pair_id, annotator, choice, "left", time) VALUES (?, ?, ?, ?, ?)',
                              (pair_id, annotator, choice, left, time.time()))
            return cur.lastrowid

    def undo_last(self, annotator: str) -> Label | None:
        """Mark this annotator's newest live label undone (never deleted); returns it, or None."""
        with self._write() as con:
            row = con.execute(_LABEL_SQL + " WHERE l.annotator = ? AND l.undone = 0 ORDER BY l.id DESC LIMIT 1",
                              (annotator,)).fetchone()
            if row is None:
                return None
            con.execute("UPDATE labels SET undone = 1 WHERE id = ?", (row[0],))
        return replace(_label(row), undone=True)

    # ------------------------------------------------------------ reading
    def pair(self, pair_id: int) -> Pair | None:
        row = self._con().execute(_PAIR_SQL + " WHERE p.id = ?", (pair_id,)).fetchone()
        return None if row is None else _pair(row)

    def next_pairs(self, annotator: str, n: int,
                   order_by: Callable[[Pair], float] | Mapping[int, tuple[float, float]] | None = None) -> list[Pair]:
        """Up to n pairs this annotator has no live label on (an undone pair comes back; a skip counts).

        order_by=None: oldest first. A callable: ascending by order_by(pair). A mapping
        pair_id -> (r_a, r_b) of reward-model scores: active learning, the pairs the model is least
        sure about (smallest |r_a - r_b|) first; pairs without a score follow, oldest first.
        """
        if n <= 0:
            return []
        sql = (_PAIR_SQL + " WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id "
               "AND l.annotator = ? AND l.undone = 0) ORDER BY p.id")
        if order_by is None:
            return [_pair(r) for r in self._con().execute(sql + " LIMIT ?", (annotator, n))]
        pairs = [_pair(r) for r in self._con().execute(sql, (annotator,))]
        if isinstance(order_by, Mapping):
            scores = order_by

            def order_by(p: Pair) -> float:
                r = scores.get(p.id)
                return math.inf if r is None else abs(r[0] - r[1])
        return sorted(pairs, key=order_by)[:n]  # sorted is stable: equal keys stay oldest first

    def labels(self, include_undone: bool = False) -> list[Label]:
        """Every label, oldest first."""
        where = "" if include_undone else " WHERE l.undone = 0"
        return [_label(r) for r in self._con().execute(_LABEL_SQL + where + " ORDER BY l.id")]

    def recent_labels(self, n: int, include_undone: bool = True) -> list[Label]:
        """The n newest labels, newest first (undone ones included and flagged, by default)."""
        where = "" if include_undone else " WHERE l.undone = 0"
        return [_label(r) for r in self._con().execute(_LABEL_SQL + where + " ORDER BY l.id DESC LIMIT ?",
                                                       (max(n, 0),))]

    def counts(self) -> dict[str, int]:
        """pairs; labelled / unlabelled pairs (labelled = has a live label of any choice, skip included,
        from any annotator); labels (live); undone; and live labels per choice."""
        with self._read() as con:
            pairs = con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            labelled = con.execute("SELECT COUNT(DISTINCT pair_id) FROM labels WHERE undone = 0").fetchone()[0]
            per_choice = dict(con.execute("SELECT choice, COUNT(*) FROM labels WHERE undone = 0 GROUP BY choice"))
            undone = con.execute("SELECT COUNT(*) FROM labels WHERE undone = 1").fetchone()[0]
        out = {"pairs": pairs, "labelled": labelled, "unlabelled": pairs - labelled,
               "labels": sum(per_choice.values()), "undone": undone}
        out.update({c: per_choice.get(c, 0) for c in CHOICES})
        return out

    def labelled_pairs(self, include_ties: bool = False) -> list[dict[str, str]]:
        """Training rows {"prompt", "chosen", "rejected"}: one per live 'a'/'b' label, oldest first.

        A pair labelled by several annotators gives one row per label, so agreement weighs in
        naturally. include_ties=True adds each 'tie' as two rows, (a, b) and (b, a): under
        Bradley-Terry the two losses together pull r_a and r_b together, which is what a tie means.
        'both_bad' and 'skip' never become rows: they say nothing about which response is better.
        """
        rows = []
        for label in self.labels():
            a, b = label.response_a, label.response_b
            if label.choice == "a":
                rows.append({"prompt": label.prompt, "chosen": a, "rejected": b})
            elif label.choice == "b":
                rows.append({"prompt": label.prompt, "chosen": b, "rejected": a})
            elif label.choice == "tie" and include_ties:
                rows.append({"prompt": label.prompt, "chosen": a, "rejected": b})
                rows.append({"prompt": label.prompt, "chosen": b, "rejected": a})
        return rows

    def prompts(self) -> list[str]:
        """All prompt texts, in the order they were first stored."""
        return [r[0] for r in self._con().execute("SELECT text FROM prompts ORDER BY id")]
