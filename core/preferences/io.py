"""Import pairs from files into the store; export labels in TRL's preference format.

Imports are all-or-nothing: every row is read and checked first, and only a fully valid file is
written, in one transaction. A half-imported file is worse than a rejected one: the user cannot
tell which rows made it, and re-importing the fixed file would then count its own rows as
duplicates. Errors name the 1-based data row (for JSONL that is the line number; for CSV the
first row after the header is row 1) and what is wrong with it.

Two layouts are recognised (extra columns are ignored):
  prompt, chosen, rejected        labelled pairs: stored as response_a=chosen, response_b=rejected
                                  with label 'a' by annotator 'import:<filename>'
  prompt, response_a, response_b  pairs still to label
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .store import PreferenceStore

MAX_TEXT_CHARS = 20_000  # longer than any response we sample; a bigger cell is almost surely a broken file
LABELLED = ("prompt", "chosen", "rejected")
UNLABELLED = ("prompt", "response_a", "response_b")
TRL_COLUMNS = LABELLED
SUFFIXES = (".jsonl", ".csv", ".parquet")


class PreferenceImportError(ValueError):
    """A file that cannot be imported; the message names the row and the problem."""


def _fail(row: int | str, problem: str):
    where = f"row {row}" if isinstance(row, int) else row
    raise PreferenceImportError(f"{where}: {problem}")


def _not_utf8(row: int | str, data: bytes, err: UnicodeDecodeError):
    _fail(row, f"not valid UTF-8 (byte 0x{data[err.start]:02x}); save the file as UTF-8")


# ---------------------------------------------------------------- readers: (where the columns are, columns, [(row, record)])
def _read_jsonl(path: Path):
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    records = []
    for i, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            _not_utf8(i, line, e)
        if not text.strip():  # blank lines (a trailing newline, say) carry nothing
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            _fail(i, f"invalid JSON ({e.msg} at column {e.colno})")
        if not isinstance(obj, dict):
            _fail(i, f"expected a JSON object, got {type(obj).__name__}")
        records.append((i, obj))
    columns = list(records[0][1]) if records else []
    return (f"row {records[0][0]}" if records else "file"), columns, records


def _read_csv(path: Path):
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # Excel writes a BOM
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n")  # 0 is the header line; multi-line cells make this approximate
        _not_utf8(line if line else "header", raw, e)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, records, row = None, [], 0
    try:
        header = next(reader, None)
        if header is None:
            _fail("file", "empty (no header row)")
        for fields in reader:
            row += 1
            if not fields:  # a blank line
                continue
            if len(fields) != len(header):
                _fail(row, f"has {len(fields)} fields but the header has {len(header)}")
            records.append((row, dict(zip(header, fields))))
    except csv.Error as e:
        _fail(row + 1 if header is not None else "header", f"malformed CSV ({e})")
    return "header", header, records


def _read_parquet(path: Path):
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        _fail("file", f"not a readable Parquet file ({e})")
    return "columns", table.column_names, list(enumerate(table.to_pylist(), 1))


_READERS = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}


def _read_validated(path: Path) -> tuple[bool, list[tuple[str, str, str]]]:
    """(labelled?, [(prompt, a, b)]) for a file, or PreferenceImportError naming its first bad row."""
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise PreferenceImportError(f"{path.name}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        return _validate(*_READERS[suffix](path))
    except PreferenceImportError as e:
        raise PreferenceImportError(f"{path.name}: {e}") from None


def _validate(where: str, columns: list, records: list[tuple[int, dict]]):
    if set(LABELLED) <= set(columns):
        fields, labelled = LABELLED, True
    elif set(UNLABELLED) <= set(columns):
        fields, labelled = UNLABELLED, False
    else:
        _fail(where, f"no recognised columns; expected {', '.join(LABELLED)} (labelled) or "
                     f"{', '.join(UNLABELLED)} (to label), found {', '.join(map(str, columns)) or 'none'}")
    if not records:
        _fail("file", "no data rows")
    items = []
    for row, record in records:
        values = []
        for field in fields:
            value = record.get(field)
            if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: pandas' missing
                _fail(row, f"missing field {field!r}")
            if not isinstance(value, str):
                _fail(row, f"{field!r} is not a string (got {type(value).__name__})")
            if not value.strip():
                _fail(row, f"{field!r} is empty")
            if len(value) > MAX_TEXT_CHARS:
                _fail(row, f"{field!r} is {len(value):,} characters, over the limit of {MAX_TEXT_CHARS:,}")
            values.append(value)
        items.append(tuple(values))
    return labelled, items


# ---------------------------------------------------------------- public
def import_file(store: PreferenceStore, path: str | Path) -> str:
    """Import a .jsonl/.csv/.parquet file; returns a one-line summary for the user.

    Pairs already in the store, or repeated within the file, are skipped and counted.
    """
    path = Path(path)
    labelled, items = _read_validated(path)
    annotator = f"import:{path.name}"
    added, skipped = store.add_pairs(items, model=annotator, settings={"file": path.name}, source="imported",
                                     label_as=annotator if labelled else None)
    what = f"labelled by {annotator}" if labelled else "to label"
    return f"imported {added} pairs ({skipped} duplicates skipped), {what}"


def read_preferences(path: str | Path, include_ties: bool = False) -> list[dict[str, str]]:
    """Training rows {"prompt", "chosen", "rejected"} from a preferences .db or a TRL .jsonl/.csv/.parquet.

    One entry point for anything that trains on preferences (the reward config's `data` may be either).
    """
    path = Path(path)
    if path.suffix.lower() == ".db":
        if not path.exists():  # PreferenceStore would create an empty database
            raise FileNotFoundError(path)
        with PreferenceStore(path) as store:
            return store.labelled_pairs(include_ties)
    labelled, items = _read_validated(path)
    if not labelled:
        raise PreferenceImportError(f"{path.name}: has response_a/response_b but no chosen/rejected; label it first")
    return [dict(zip(TRL_COLUMNS, item)) for item in items]


def export(store: PreferenceStore, out_path: str | Path, include_ties: bool = False) -> int:
    """Write TRL preference rows (.jsonl or .parquet by suffix); returns the number of rows.

    Only live 'a'/'b' labels by default. include_ties=True writes each tie in both orders, the
    Bradley-Terry encoding of "equally good" (see PreferenceStore.labelled_pairs).
    """
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"export writes .jsonl or .parquet, not {suffix or 'a file without suffix'!r}")
    rows = store.labelled_pairs(include_ties)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # write aside, then rename: readers never see half a file
    try:
        if suffix == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps({k: r[k] for k in TRL_COLUMNS}, ensure_ascii=False) + "\n")
        else:
            # Explicit string type, so an empty export still has the right schema.
            table = pa.table({k: pa.array([r[k] for r in rows], pa.string()) for k in TRL_COLUMNS})
            pq.write_table(table, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)
