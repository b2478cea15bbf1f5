"""Preference data: the SQLite store, file import/export, agreement, and a simulated annotator."""
from .agreement import Agreement, RaterPair, agreement, cohen_kappa, store_agreement
from .annotator import ANNOTATOR_ID, SentimentAnnotator
from .io import MAX_TEXT_CHARS, PreferenceImportError, export, import_file, read_preferences
from .store import (CHOICES, SCHEMA_VERSION, Label, Pair, PreferenceStore, SchemaVersionError,
                    default_db_path)

__all__ = [
    "PreferenceStore", "Pair", "Label", "CHOICES", "SCHEMA_VERSION", "SchemaVersionError", "default_db_path",
    "import_file", "export", "read_preferences", "PreferenceImportError", "MAX_TEXT_CHARS",
    "agreement", "store_agreement", "cohen_kappa", "Agreement", "RaterPair",
    "SentimentAnnotator", "ANNOTATOR_ID",
]
