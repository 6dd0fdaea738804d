"""Profile persistence: what the layer-skip search learned, kept on disk and shared.

A skip profile (:class:`ProfileRecord`) says which layers to skip when drafting for one
pipeline step of one model. :class:`ProfileStore` keeps one JSON file per (model
fingerprint, step key), safe across threads and processes (atomic writes, a lock per
record) and distrustful of everything it reads: a bad file may cost a search, never a
generation call. The package, a module per idea:

* :mod:`~swift_engine.store.records`: what a record is (schema, limits, key rules); no files.
* :mod:`~swift_engine.store.profile_store`: :class:`ProfileStore` itself (get, list, put,
  update, delete, reset, clean) and the rules it keeps.
* :mod:`~swift_engine.store.names`: which file names are the store's own.
* :mod:`~swift_engine.store.reading`: reading one record file and classifying what it holds.
* :mod:`~swift_engine.store.locking`: the inter-process lock of one record.
* :mod:`~swift_engine.store.maintenance`: setting unusable files aside, removals, eviction
  beyond ``max_records``, clean-up of crash leftovers.
* :mod:`~swift_engine.store.transfer`: export and import, in our format and the reference
  SWIFT ``skip_layers.json`` format.
* :mod:`~swift_engine.store.safe_files`: bounded no-follow reads, atomic writes and strict
  JSON for any untrusted file (the cost files use it too).
* :mod:`~swift_engine.store.errors`: :class:`ProfileStoreUnavailable`.

Nothing here imports torch, transformers or an integration: worker processes and the
profile CLI use the store on its own.
"""

from __future__ import annotations

from swift_engine.store.errors import ProfileStoreUnavailable
from swift_engine.store.profile_store import DEFAULT_MAX_RECORDS, ProfileStore
from swift_engine.store.records import (
    DraftMemory,
    ProfileRecord,
    SkipSet,
    default_profile_dir,
    safe_step_name,
    validate_fingerprint,
    validate_step_key,
)
from swift_engine.store.transfer import export_json, export_reference, import_json, import_reference

__all__ = [
    "DEFAULT_MAX_RECORDS",
    "DraftMemory",
    "ProfileRecord",
    "ProfileStore",
    "ProfileStoreUnavailable",
    "SkipSet",
    "default_profile_dir",
    "export_json",
    "export_reference",
    "import_json",
    "import_reference",
    "safe_step_name",
    "validate_fingerprint",
    "validate_step_key",
]
