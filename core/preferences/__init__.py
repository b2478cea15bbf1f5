"""Preference data: the SQLite store, file import/export, agreement, a simulated annotator, and sampling pairs."""
from .agreement import Agreement, RaterPair, agreement, cohen_kappa, store_agreement
from .annotator import ANNOTATOR_ID, SentimentAnnotator
from .io import MAX_TEXT_CHARS, PreferenceImportError, export, import_file, read_preferences
from .sampling import PairFiller, pick_prompts, sample_pairs, score_pairs, unlabelled_count
from .store import (CHOICES, SCHEMA_VERSION, Label, Pair, PreferenceStore, SchemaVersionError,
                    default_db_path)

__all__ = [
    "PreferenceStore", "Pair", "Label", "CHOICES", "SCHEMA_VERSION", "SchemaVersionError", "default_db_path",
    "import_file", "export", "read_preferences", "PreferenceImportError", "MAX_TEXT_CHARS",
    "agreement", "store_agreement", "cohen_kappa", "Agreement", "RaterPair",
    "SentimentAnnotator", "ANNOTATOR_ID",
    "sample_pairs", "pick_prompts", "PairFiller", "unlabelled_count", "score_pairs",
]
