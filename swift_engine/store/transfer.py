"""Moving profiles in and out of a store: our own JSON format and the reference SWIFT format.

* :func:`export_json` / :func:`import_json`: every field of every record (search state and
  statistics included) in one ``swift-profiles`` document; the format for moving profiles
  between machines.
* :func:`export_reference` / :func:`import_reference`: the reference SWIFT implementation's
  ``skip_layers.json`` mapping of ``"<model>_<task>"`` to skipped layers; only skip sets.

Import files are user-supplied, so they are read like records are (bounded, strict JSON)
and validated completely before anything is written: a bad file leaves the store as it
was. The functions go through a store's public operations (``list``, ``update`` and the
``_put`` behind ``put``), so they work for any :class:`ProfileStore
<swift_engine.store.profile_store.ProfileStore>`, a Ray-backed one included; the store's
methods of the same names call them.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from swift_engine.store.errors import _as_unavailable
from swift_engine.store.records import (
    EXPORT_SCHEMA,
    EXPORT_VERSION,
    MAX_IMPORT_BYTES,
    MAX_LAYERS,
    ProfileRecord,
    SkipSet,
    _validation_summary,
    validate_fingerprint,
    validate_step_key,
)
from swift_engine.store.safe_files import (
    FileTooLarge,
    NotARegularFile,
    loads_strict_json,
    read_regular_file,
    write_file_atomic,
)

__all__ = ["export_json", "export_reference", "import_json", "import_reference"]

# The store's logger: its messages kept the name they had before the store was split in modules.
logger = logging.getLogger("swift_engine.store.profile_store")


class _Store(Protocol):
    """What import and export need of a store (:class:`ProfileStore` and its subclasses)."""

    def list(self, fingerprint: str | None = None) -> builtins.list[ProfileRecord]: ...

    def update(
        self,
        fingerprint: str,
        step_key: str,
        fn: Callable[[ProfileRecord | None], ProfileRecord | None],
    ) -> ProfileRecord | None: ...

    def _put(self, record: ProfileRecord) -> bool: ...


# ----------------------------------------------------------------- our JSON format


def export_json(store: _Store, path: str | os.PathLike[str], fingerprint: str | None = None) -> int:
    """Write all (or one model's) records of ``store`` to ``path`` in our full format.

    Unlike the reference format this keeps search state and statistics, so it is
    the one to use for moving profiles between machines. Returns the record count.
    """
    records = store.list(fingerprint)
    document = {
        "schema": EXPORT_SCHEMA,
        "version": EXPORT_VERSION,
        "profiles": [record.model_dump(mode="json") for record in records],
    }
    with _as_unavailable():
        write_file_atomic(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return len(records)


def _read_document(source: Path) -> Any:
    """Read a user-supplied JSON file for import, bounded like records are."""
    try:
        raw = read_regular_file(source, MAX_IMPORT_BYTES, follow_symlinks=True)
    except (NotARegularFile, FileTooLarge) as exc:
        raise ValueError(f"{source} cannot be imported: {exc}") from exc
    try:
        return loads_strict_json(raw)
    except ValueError as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from exc


def import_json(store: _Store, path: str | os.PathLike[str]) -> int:
    """Load records written by :func:`export_json` into ``store``, replacing same-key records.

    The whole document is validated (every record as strictly as when read from
    the store) before anything is written, so a bad file leaves the store
    untouched. Records of a newer release already in the store are kept. Returns
    the number of records imported.

    Raises:
        ValueError: if the file is not a valid ``swift-profiles`` document.
    """
    source = Path(path)
    document = _read_document(source)
    if not isinstance(document, dict) or document.get("schema") != EXPORT_SCHEMA:
        raise ValueError(f"{source} is not a {EXPORT_SCHEMA!r} export (missing or wrong 'schema' field)")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= EXPORT_VERSION:
        raise ValueError(f"{source} has export version {version!r}; this code supports up to {EXPORT_VERSION}")
    entries = document.get("profiles")
    if not isinstance(entries, list):
        raise ValueError(f"{source}: 'profiles' must be a list")
    records: list[ProfileRecord] = []
    for index, entry in enumerate(entries):
        try:
            records.append(ProfileRecord.model_validate(entry))
        except ValidationError as exc:
            raise ValueError(f"{source}: profile #{index} is invalid: {_validation_summary(exc)}") from exc
    return sum(1 for record in records if store._put(record))


# ----------------------------------------------------------------- reference format


def export_reference(store: _Store, path: str | os.PathLike[str], fingerprint: str | None = None) -> int:
    """Write the records of ``store`` as the reference SWIFT ``skip_layers.json`` mapping.

    Keys are ``f"{model_name or fingerprint}_{step_key}"``. Records marked ``plain``
    and empty skip sets are left out: the reference format can only express "skip
    these layers", and replaying an empty set would just be slower plain decoding.
    When two records map to the same key the most recently updated one wins.
    Returns the number of entries written.
    """
    chosen: dict[str, ProfileRecord] = {}
    for record in store.list(fingerprint):
        if record.plain or not (record.skip.attention or record.skip.mlp):
            continue
        key = f"{record.model_name or record.model_fingerprint}_{record.step_key}"
        previous = chosen.get(key)
        if previous is not None:
            logger.warning(
                "Reference export key %r is shared by fingerprints %s and %s; keeping the newer record",
                key,
                previous.model_fingerprint,
                record.model_fingerprint,
            )
            if previous.updated_at >= record.updated_at:
                continue
        chosen[key] = record
    document = {
        key: {"attention": list(record.skip.attention), "mlp": list(record.skip.mlp)}
        for key, record in sorted(chosen.items())
    }
    with _as_unavailable():
        write_file_atomic(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return len(document)


def import_reference(
    store: _Store,
    path: str | os.PathLike[str],
    fingerprint: str,
    model_name: str,
    num_layers: int | None = None,
) -> list[ProfileRecord]:
    """Import a reference SWIFT ``skip_layers.json`` for one model into ``store``.

    Entries keyed ``f"{model_name}_<step>"`` become step ``<step>``; if no key has
    that prefix (files often use a different model spelling), every entry is
    imported with its whole key as the step key. Imported records are marked
    ``converged`` with no score: they are known-good cached configurations, so the
    engine should use them rather than search again. Existing records for the same
    steps keep their usage counters, ``created_at`` and ``extra``.

    Everything is validated before anything is written.

    Raises:
        ValueError: naming the offending entry, if the file is malformed or an
            index is negative, not an integer, or ``>= num_layers``.
    """
    validate_fingerprint(fingerprint)
    if num_layers is not None and num_layers <= 0:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    source = Path(path)
    document = _read_document(source)
    if not isinstance(document, dict):
        raise ValueError(f"{source}: expected a JSON object mapping '<model>_<task>' to skip layers")

    prefix = f"{model_name}_" if model_name else None
    matching = [key for key in document if prefix is not None and key.startswith(prefix)]
    if matching:
        selected = [(key, key[len(prefix or "") :]) for key in matching]
    else:
        selected = [(key, key) for key in document]

    parsed: list[tuple[str, SkipSet]] = []
    for entry_key, step_key in selected:
        skip = _parse_reference_entry(source, entry_key, step_key, document[entry_key], num_layers)
        parsed.append((step_key, skip))

    imported: list[ProfileRecord] = []
    for step_key, skip in parsed:

        def merge(current: ProfileRecord | None, step_key: str = step_key, skip: SkipSet = skip) -> ProfileRecord:
            base = current.model_dump() if current is not None else {}
            base.update(
                model_fingerprint=fingerprint,
                model_name=model_name,
                step_key=step_key,
                skip=skip.model_dump(),
                score=None,
                expected_speedup=None,
                converged=True,
                plain=False,
                observations=[],
                iterations=0,
            )
            return ProfileRecord.model_validate(base)

        record = store.update(fingerprint, step_key, merge)
        if record is not None:  # None: a newer release's record is kept
            imported.append(record)
    logger.info("Imported %d reference skip profile(s) from %s for %s", len(imported), source, fingerprint)
    return imported


def _parse_reference_entry(
    source: Path, entry_key: str, step_key: str, value: object, num_layers: int | None
) -> SkipSet:
    """Validate one ``{"attention": [...], "mlp": [...]}`` entry with errors naming it."""
    where = f"{source}: entry {entry_key!r}"
    try:
        validate_step_key(step_key)
    except ValueError as exc:
        raise ValueError(f"{where} gives an unusable step key: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object with 'attention' and 'mlp' lists")
    lists: dict[str, list[int]] = {}
    for field in ("attention", "mlp"):
        indices = value.get(field, [])
        if not isinstance(indices, list):
            raise ValueError(f"{where}: {field!r} must be a list of layer indices")
        for index in indices:
            if not isinstance(index, int) or isinstance(index, bool):
                raise ValueError(f"{where}: {field} index {index!r} is not an integer")
            if index < 0:
                raise ValueError(f"{where}: {field} index {index} is negative")
            if num_layers is not None and index >= num_layers:
                raise ValueError(f"{where}: {field} index {index} is out of range for a model with {num_layers} layers")
            if index >= MAX_LAYERS:
                raise ValueError(f"{where}: {field} index {index} is out of range (at most {MAX_LAYERS} layers)")
        lists[field] = indices
    return SkipSet(attention=lists["attention"], mlp=lists["mlp"])
