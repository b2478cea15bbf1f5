"""core.preferences: the store on disk, imports that fail whole, export to TRL, agreement, the simulated annotator."""
import json
import math
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.preferences import (ANNOTATOR_ID, MAX_TEXT_CHARS, SCHEMA_VERSION, PreferenceImportError, PreferenceStore,
                              SchemaVersionError, SentimentAnnotator, agreement, cohen_kappa, default_db_path,
                              export, import_file, read_preferences, store_agreement)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    s = PreferenceStore(tmp_path / "prefs.db")
    yield s
    s.close()


def raw_counts(path):
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("prompts", "pairs", "labels")}
    finally:
        con.close()


def pair_ids(store):
    return [p.id for p in store.next_pairs("nobody", 10_000)]


# ---------------------------------------------------------------- schema and durability
def test_schema_wal_and_version_on_disk(tmp_path):
    path = default_db_path(tmp_path / "ws")
    assert path == tmp_path / "ws" / "preferences.db"
    PreferenceStore(path).close()
    con = sqlite3.connect(path)
    # journal_mode=WAL is stored in the file, so a plain connection sees it.
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"prompts", "pairs", "labels"} <= tables
    cols = {r[1] for r in con.execute("PRAGMA table_info(labels)")}
    assert cols == {"id", "pair_id", "annotator", "choice", "left", "time", "undone"}
    con.execute("INSERT INTO prompts(text) VALUES ('p')")
    con.execute("INSERT INTO pairs(prompt_id, response_a, response_b, source, created) VALUES (1, 'x', 'y', 'sampled', 0)")
    with pytest.raises(sqlite3.IntegrityError):  # the CHECK constraint guards choice even against raw SQL
        con.execute("INSERT INTO labels(pair_id, annotator, choice, \"left\", time) VALUES (1, 'u', 'maybe', 'a', 0)")
    with pytest.raises(sqlite3.IntegrityError):  # (prompt, a, b) is unique
        con.execute("INSERT INTO pairs(prompt_id, response_a, response_b, source, created) VALUES (1, 'x', 'y', 'sampled', 0)")
    con.commit()
    con.close()
    s = PreferenceStore(path)  # reopening an up-to-date file migrates nothing and keeps the data
    assert s.counts()["pairs"] == 1
    # synchronous is per connection, not stored in the file, so ask the store's own (2 = FULL).
    assert s._con().execute("PRAGMA synchronous").fetchone()[0] == 2
    s.close()


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "prefs.db"
    PreferenceStore(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(SchemaVersionError, match=rf"version {SCHEMA_VERSION + 1}.*upgrade rlhf-workbench"):
        PreferenceStore(path)


def test_acknowledged_label_survives_sigkill(tmp_path):
    path = tmp_path / "prefs.db"
    s = PreferenceStore(path)
    s.add_pairs([("p", "x", "y")], model="m")
    s.close()
    # The child acknowledges a label, then dies without closing anything or checkpointing the WAL.
    code = (f"import os, signal; from core.preferences import PreferenceStore\n"
            f"s = PreferenceStore({str(path)!r}); print(s.add_label(1, 'u', 'b', 'a'), flush=True)\n"
            f"os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    label_id = int(proc.stdout)
    s = PreferenceStore(path)
    assert [(l.id, l.choice) for l in s.labels()] == [(label_id, "b")]
    s.close()


# ---------------------------------------------------------------- store API
def test_add_pairs_counts_duplicates_and_keeps_metadata(store):
    added, skipped = store.add_pairs([("p1", "a", "b"), ("p1", "a", "c"), ("p1", "a", "b")], model="tiny",
                                     settings={"temperature": 0.7})
    assert (added, skipped) == (2, 1)  # the third repeats the first within one call
    assert store.add_pairs([("p1", "a", "b"), ("p2", "a", "b"), ("p1", "b", "a")], model="tiny") == (2, 1)
    assert store.prompts() == ["p1", "p2"]
    p = store.pair(1)
    assert (p.prompt, p.response_a, p.response_b, p.model, p.settings, p.source) == \
        ("p1", "a", "b", "tiny", {"temperature": 0.7}, "sampled")
    assert store.counts()["pairs"] == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(choice="maybe", left="a"), "choice must be one of a, b, tie, both_bad, skip; got 'maybe'"),
    (dict(choice="a", left="right"), "left must be 'a' or 'b'"),
    (dict(choice="a", left="a", pair_id=99), "no pair with id 99"),
    (dict(choice="a", left="a", annotator=""), "annotator must be a non-empty string"),
])
def test_add_label_validates(store, kwargs, message):
    store.add_pairs([("p", "x", "y")], model="m")
    args = dict(pair_id=1, annotator="u") | kwargs
    with pytest.raises(ValueError, match=message):
        store.add_label(**args)
    assert raw_counts(store.path)["labels"] == 0


def test_undo_marks_never_deletes_and_pair_comes_back(store):
    store.add_pairs([("p", "x", "y"), ("p", "x", "z")], model="m")
    first = store.add_label(1, "ann", "a", "b")
    second = store.add_label(2, "ann", "b", "a")
    other = store.add_label(2, "bob", "a", "a")
    assert store.next_pairs("ann", 10) == []

    undone = store.undo_last("ann")
    assert (undone.id, undone.pair_id, undone.choice, undone.undone) == (second, 2, "b", True)
    assert raw_counts(store.path)["labels"] == 3  # still there, only marked
    assert [p.id for p in store.next_pairs("ann", 10)] == [2]
    assert store.next_pairs("bob", 10)[0].id == 1  # bob's label on pair 2 is untouched

    assert store.undo_last("ann").id == first
    assert store.undo_last("ann") is None
    assert [l.id for l in store.labels()] == [other]
    assert [(l.id, l.undone) for l in store.recent_labels(10)] == [(other, False), (second, True), (first, True)]
    c = store.counts()
    assert (c["labels"], c["undone"], c["labelled"], c["unlabelled"], c["a"], c["b"]) == (1, 2, 1, 1, 1, 0)


def test_next_pairs_order_and_skip(store):
    store.add_pairs([("p", "x", str(i)) for i in range(5)], model="m")
    assert [p.id for p in store.next_pairs("u", 3)] == [1, 2, 3]
    store.add_label(1, "u", "skip", "a")  # a skip is an answer: don't show it again
    # Active learning, pairs 2..5 left: |r_a - r_b| = 2, 0.5, 0.1, 1 -> order 4, 3, 5, 2.
    # Pair 1 (skipped) and pair 9 (no such pair) have scores that must not matter.
    scores = {1: (0, 0), 2: (1.0, -1.0), 3: (0.25, -0.25), 4: (3.0, 2.9), 5: (0.0, 1.0), 9: (0, 0)}
    assert [p.id for p in store.next_pairs("u", 10, order_by=scores)] == [4, 3, 5, 2]
    del scores[3]  # unscored pairs go last
    assert [p.id for p in store.next_pairs("u", 10, order_by=scores)] == [4, 5, 2, 3]
    assert [p.id for p in store.next_pairs("u", 2, order_by=lambda p: -p.id)] == [5, 4]
    assert store.next_pairs("u", 0) == []


def test_labelled_pairs_rows(store):
    store.add_pairs([("p", "A1", "B1"), ("q", "A2", "B2"), ("r", "A3", "B3")], model="m")
    store.add_label(1, "u", "a", "a")
    store.add_label(1, "v", "b", "b")  # two annotators, two rows
    store.add_label(2, "u", "tie", "a")
    store.add_label(3, "u", "both_bad", "a")
    store.add_label(3, "v", "b", "a")
    store.undo_last("v")
    assert store.labelled_pairs() == [{"prompt": "p", "chosen": "A1", "rejected": "B1"},
                                      {"prompt": "p", "chosen": "B1", "rejected": "A1"}]
    assert store.labelled_pairs(include_ties=True)[2:] == [{"prompt": "q", "chosen": "A2", "rejected": "B2"},
                                                           {"prompt": "q", "chosen": "B2", "rejected": "A2"}]


def test_concurrent_labels_from_eight_threads(store):
    store.add_pairs([("p", "x", str(i)) for i in range(250)], model="m")
    ids = pair_ids(store)
    start, errors, got = threading.Barrier(8), [], [[] for _ in range(8)]

    def work(t):
        try:
            start.wait()
            for pid in ids:
                got[t].append(store.add_label(pid, f"t{t}", "ab"[pid % 2], "a"))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert raw_counts(store.path)["labels"] == 2000
    assert len({i for g in got for i in g}) == 2000
    assert store.counts()["labelled"] == 250 and all(store.next_pairs(f"t{t}", 1) == [] for t in range(8))


# ---------------------------------------------------------------- import
def write(path, rows):
    """rows: raw bytes, a pyarrow Table, or a list of dicts written as the suffix says."""
    if isinstance(rows, bytes):
        path.write_bytes(rows)
    elif isinstance(rows, pa.Table):
        pq.write_table(rows, path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


GOOD = {"prompt": "p", "chosen": "good", "rejected": "bad"}
LONG = "x" * (MAX_TEXT_CHARS + 1)

# (file name, content, expected message fragment). Each bad file has valid rows before the bad one,
# so "nothing written" is a real claim.
IMPORT_ERRORS = [
    ("missing.jsonl", [GOOD, {"prompt": "p", "chosen": "c"}], "row 2: missing field 'rejected'"),
    ("null.jsonl", [GOOD, GOOD | {"chosen": None}], "row 2: missing field 'chosen'"),
    ("empty.jsonl", [GOOD, GOOD, GOOD | {"rejected": "  "}], "row 3: 'rejected' is empty"),
    ("number.jsonl", [GOOD, GOOD | {"prompt": 7}], "row 2: 'prompt' is not a string (got int)"),
    ("long.jsonl", [GOOD, GOOD | {"chosen": LONG}], f"row 2: 'chosen' is {MAX_TEXT_CHARS + 1:,} characters"),
    ("badjson.jsonl", json.dumps(GOOD).encode() + b'\n{"prompt": "p", "chosen": \n', "row 2: invalid JSON"),
    ("array.jsonl", json.dumps(GOOD).encode() + b'\n["p", "c", "r"]\n', "row 2: expected a JSON object"),
    ("latin1.jsonl", json.dumps(GOOD).encode() + b'\n{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n',
     "row 2: not valid UTF-8"),
    ("unknown.jsonl", [{"question": "q", "answer": "a"}], "row 1: no recognised columns"),
    ("nothing.jsonl", b"\n\n", "no recognised columns"),
    ("latin1.csv", b"prompt,chosen,rejected\np,c,r\ncaf\xe9,c,r\n", "row 2: not valid UTF-8"),
    ("empty.csv", b"prompt,response_a,response_b\np,a,b\np,,b\n", "row 2: 'response_a' is empty"),
    ("fields.csv", b"prompt,chosen,rejected\np,c,r\np,c\n", "row 2: has 2 fields but the header has 3"),
    ("unknown.csv", b"text,label\nhello,1\n", "header: no recognised columns"),
    ("quote.csv", b'prompt,chosen,rejected\np,c,r\np,"c"x,r\n', "row 2: malformed CSV"),
    ("long.csv", b"prompt,chosen,rejected\np,c," + LONG.encode() + b"\n", "row 1: 'rejected' is"),
    ("int.parquet", pa.table({"prompt": ["p", "q"], "chosen": ["c", "d"], "rejected": [1, 2]}),
     "row 1: 'rejected' is not a string (got int)"),
    ("null.parquet", [GOOD, GOOD | {"rejected": None}], "row 2: missing field 'rejected'"),
    ("unknown.parquet", [{"a": "x", "b": "y"}], "columns: no recognised columns"),
    ("garbage.parquet", b"not parquet at all", "not a readable Parquet file"),
    ("pairs.txt", b"p\ta\tb\n", "unsupported file type '.txt'"),
]


@pytest.mark.parametrize("name, content, fragment", IMPORT_ERRORS, ids=[c[0] for c in IMPORT_ERRORS])
def test_import_errors_name_the_row_and_write_nothing(store, tmp_path, name, content, fragment):
    store.add_pairs([("existing", "x", "y")], model="m")
    store.add_label(1, "u", "a", "a")
    before = raw_counts(store.path)
    path = write(tmp_path / name, content)
    with pytest.raises(PreferenceImportError) as info:
        import_file(store, path)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{name}: ") and fragment in str(info.value), str(info.value)
    assert raw_counts(store.path) == before


def test_import_labelled_skips_duplicates(store, tmp_path):
    store.add_pairs([("p1", "c1", "r1")], model="m")  # already in the store: skipped
    rows = [{"prompt": "p1", "chosen": "c1", "rejected": "r1", "extra": 1},
            {"prompt": "p2", "chosen": "c2", "rejected": "r2", "extra": 2},
            {"prompt": "p2", "chosen": "c2", "rejected": "r2", "extra": 3},  # repeated in the file: skipped
            {"prompt": "p2", "chosen": "r2", "rejected": "c2", "extra": 4}]  # other order: a different pair
    message = import_file(store, write(tmp_path / "hh.jsonl", rows))
    assert message.startswith("imported 2 pairs (2 duplicates skipped)")
    labels = store.labels()
    assert {(l.annotator, l.choice, l.left) for l in labels} == {("import:hh.jsonl", "a", "a")}
    assert [(l.response_a, l.response_b) for l in labels] == [("c2", "r2"), ("r2", "c2")]
    assert store.pair(labels[0].pair_id).source == "imported"
    assert store.labelled_pairs() == [{"prompt": "p2", "chosen": "c2", "rejected": "r2"},
                                      {"prompt": "p2", "chosen": "r2", "rejected": "c2"}]
    # Importing the same file again adds nothing.
    assert import_file(store, tmp_path / "hh.jsonl").startswith("imported 0 pairs (4 duplicates skipped)")


def test_import_unlabelled_csv_and_parquet(store, tmp_path):
    csv_path = tmp_path / "to_label.csv"
    # BOM (as Excel writes it), a quoted cell with a comma and a newline, and non-ASCII text.
    csv_path.write_bytes(b'\xef\xbb\xbfprompt,response_a,response_b\n"Hi, you","one\ntwo",\xc3\xa9l\xc3\xa8ve\n')
    assert import_file(store, csv_path).startswith("imported 1 pairs (0 duplicates skipped)")
    pq_path = write(tmp_path / "more.parquet", [{"prompt": "q", "response_a": "a", "response_b": "b"}])
    import_file(store, pq_path)
    pairs = store.next_pairs("u", 10)
    assert [(p.prompt, p.response_a, p.response_b) for p in pairs] == [("Hi, you", "one\ntwo", "élève"), ("q", "a", "b")]
    assert store.labels() == []


# ---------------------------------------------------------------- export
@pytest.fixture
def labelled_store(store):
    store.add_pairs([("p", "A", "B"), ("q", "C", "D"), ("r", "E", "F"), ("s", "G", "H"), ("t", "I", "J")], model="m")
    store.add_label(1, "u", "a", "b")
    store.add_label(2, "u", "b", "a")
    store.add_label(3, "u", "tie", "a")
    store.add_label(4, "u", "both_bad", "a")
    store.add_label(5, "u", "a", "a")
    store.undo_last("u")  # pair 5 is not exported
    return store


@pytest.mark.parametrize("suffix, builder", [(".jsonl", "json"), (".parquet", "parquet")])
def test_export_round_trip_with_datasets(labelled_store, tmp_path, suffix, builder):
    import datasets
    datasets.disable_progress_bars()

    def load(path):
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
        return ds.column_names, ds.to_list()

    out = tmp_path / f"prefs{suffix}"
    assert export(labelled_store, out) == 2
    columns, rows = load(out)
    assert sorted(columns) == ["chosen", "prompt", "rejected"]
    assert rows == [{"prompt": "p", "chosen": "A", "rejected": "B"}, {"prompt": "q", "chosen": "D", "rejected": "C"}]

    out_ties = tmp_path / f"ties{suffix}"
    assert export(labelled_store, out_ties, include_ties=True) == 4
    assert load(out_ties)[1][2:] == [{"prompt": "r", "chosen": "E", "rejected": "F"},
                                     {"prompt": "r", "chosen": "F", "rejected": "E"}]
    assert read_preferences(out) == rows  # our own reader agrees with datasets
    # And the export imports back as labelled pairs.
    fresh = PreferenceStore(tmp_path / "fresh.db")
    assert import_file(fresh, out).startswith("imported 2 pairs")
    assert fresh.labelled_pairs() == rows
    fresh.close()


def test_read_preferences_from_db_and_export_suffix(labelled_store, tmp_path):
    assert read_preferences(labelled_store.path) == labelled_store.labelled_pairs()
    with pytest.raises(FileNotFoundError):
        read_preferences(tmp_path / "missing.db")
    with pytest.raises(ValueError, match="export writes .jsonl or .parquet"):
        export(labelled_store, tmp_path / "out.csv")


# ---------------------------------------------------------------- agreement
# Two annotators, six pairs (u first, v second):
#   pair:  1  2  3  4  5    6
#   u:     a  a  b  b  tie  a
#   v:     a  b  b  b  tie  both_bad
# agree on 1, 3, 4, 5 -> p_o = 4/6 -> 66.67 %
# marginals u: a 3, b 2, tie 1, both_bad 0;  v: a 1, b 3, tie 1, both_bad 1
# p_e = (3*1 + 2*3 + 1*1 + 0*1) / 36 = 10/36
# kappa = (24/36 - 10/36) / (26/36) = 14/26 = 0.538462
# A third annotator w labels pairs 1-3 as a, b, a (and skips pair 4: ignored).
#   (u, w) on 1-3: u a a b, w a b a -> p_o 1/3; u a2 b1, w a2 b1 -> p_e 5/9; kappa (3/9-5/9)/(4/9) = -0.5
#   (v, w) on 1-3: v a b b, w a b a -> p_o 2/3; v a1 b2, w a2 b1 -> p_e 4/9; kappa (6/9-4/9)/(5/9) = 0.4
# Means over the three annotator pairs: percent (200/3 + 100/3 + 200/3)/3 = 55.556;
# kappa (14/26 - 0.5 + 0.4)/3 = 0.146154
U = ["a", "a", "b", "b", "tie", "a"]
V = ["a", "b", "b", "b", "tie", "both_bad"]
W = ["a", "b", "a"]


def test_kappa_two_annotators_by_hand():
    assert cohen_kappa(U, V) == pytest.approx(14 / 26)
    result = agreement([(i, "u", c) for i, c in enumerate(U, 1)] + [(i, "v", c) for i, c in enumerate(V, 1)])
    assert result.n_pairs == 6
    assert result.percent == pytest.approx(400 / 6)
    assert result.kappa == pytest.approx(14 / 26)
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))  # no variation: kappa undefined


def test_agreement_three_annotators_through_the_store(store):
    store.add_pairs([("p", "x", str(i)) for i in range(1, 8)], model="m")
    store.add_label(2, "u", "b", "a")
    store.undo_last("u")  # undone: u's answer on pair 2 is the later 'a'
    for i, (cu, cv) in enumerate(zip(U, V), 1):
        store.add_label(i, "u", cu, "a")
        store.add_label(i, "v", cv, "a")
    for i, cw in enumerate(W, 1):
        store.add_label(i, "w", cw, "b")
    store.add_label(4, "w", "skip", "a")
    store.add_label(7, "u", "a", "a")  # one annotator only: not shared
    result = store_agreement(store)
    assert result.n_pairs == 6
    by = {r.annotators: (r.n, r.percent, r.kappa) for r in result.by_annotators}
    assert by[("u", "v")] == pytest.approx((6, 400 / 6, 14 / 26))
    assert by[("u", "w")] == pytest.approx((3, 100 / 3, -0.5))
    assert by[("v", "w")] == pytest.approx((3, 200 / 3, 0.4))
    assert result.percent == pytest.approx(55.5556, abs=1e-3)
    assert result.kappa == pytest.approx(0.146154, abs=1e-5)


# ---------------------------------------------------------------- simulated annotator
GOOD_TEXT, BAD_TEXT = "a wonderful, great and lovely film", "an awful, terrible and boring film"


def test_annotator_temperature_zero_is_deterministic():
    sim = SentimentAnnotator(temperature=0.0)
    assert sim.score(GOOD_TEXT) > 0.5 > -0.5 > sim.score(BAD_TEXT)
    state = sim.rng.getstate()
    assert [sim.prefer(GOOD_TEXT, BAD_TEXT) for _ in range(20)] == ["a"] * 20
    assert [sim.prefer(BAD_TEXT, GOOD_TEXT) for _ in range(20)] == ["b"] * 20
    assert sim.prefer("a film", "a film") == "a"  # exact tie: documented to go to a
    assert sim.rng.getstate() == state  # no randomness used


def test_annotator_seeded_noise():
    # temperature 100: p(a) = sigmoid(~1.8 / 100) ~ 0.5045 -> close to a coin flip
    hot = SentimentAnnotator(temperature=100.0, seed=0)
    draws = [hot.prefer(GOOD_TEXT, BAD_TEXT) for _ in range(4000)]
    assert abs(draws.count("a") / 4000 - 0.5) < 0.04  # sd is 0.008; fixed seed, so this never flakes
    again = SentimentAnnotator(temperature=100.0, seed=0)
    assert [again.prefer(GOOD_TEXT, BAD_TEXT) for _ in range(4000)] == draws
    other = SentimentAnnotator(temperature=100.0, seed=1)
    assert [other.prefer(GOOD_TEXT, BAD_TEXT) for _ in range(4000)] != draws
    # Moderate temperature: the frequency follows the Bradley-Terry probability.
    warm = SentimentAnnotator(temperature=1.0, seed=0)
    p = warm.prob_a(GOOD_TEXT, BAD_TEXT)
    assert 0.8 < p < 0.9
    freq = sum(warm.prefer(GOOD_TEXT, BAD_TEXT) == "a" for _ in range(4000)) / 4000
    assert abs(freq - p) < 0.03


def test_auto_label(store):
    texts = [GOOD_TEXT, BAD_TEXT, "a film", "a great film", "a dull film"]
    store.add_pairs([("p", a, b) for a in texts for b in texts if a != b], model="m")  # 20 pairs
    sim = SentimentAnnotator(temperature=0.0, seed=3)
    assert sim.auto_label(store, 15) == 15
    assert sim.auto_label(store, 15) == 5
    assert sim.auto_label(store, 15) == 0
    labels = store.labels()
    assert len(labels) == 20 and {l.annotator for l in labels} == {ANNOTATOR_ID}
    for l in labels:
        assert l.choice == ("a" if sim.score(l.response_a) >= sim.score(l.response_b) else "b")
    lefts = [l.left for l in labels]
    assert set(lefts) == {"a", "b"}
    # The left side comes from the seeded rng: the same seed reproduces it.
    rng = SentimentAnnotator(seed=3).rng
    assert lefts == [rng.choice("ab") for _ in range(20)]


def test_cli_export_writes_the_file_and_refuses_a_missing_db(labelled_store, tmp_path, capsys):
    from core.cli import main
    out = tmp_path / "cli.jsonl"
    main(["export", "--db", str(labelled_store.path), "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert f"wrote {len(rows)} pairs" in capsys.readouterr().out
    missing = tmp_path / "typo.db"
    with pytest.raises(SystemExit, match="no preference database"):
        main(["export", "--db", str(missing), "--out", str(tmp_path / "x.jsonl")])
    assert not missing.exists() and not (tmp_path / "x.jsonl").exists()
