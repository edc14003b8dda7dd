"""Adopt an index a team already runs: give its documents vectors without changing anything of theirs.

Two ways, both resumable (run the same command again after a crash) and safe next to the team's
own writers:

- **In place** (``mode="in-place"``): one mapping update adds the vector field and esdistill's
  bookkeeping fields (``content_hash``, ``model_fingerprint``) to the existing index, and puts
  esdistill's metadata under one key of its own (``_meta.esdistill``); the team's fields,
  analyzers, settings and ``_meta`` keys are not touched. Then every document gets its vector by a
  partial update guarded by ``if_seq_no``/``if_primary_term`` (:func:`~esdistill.plugin.sync.sync_index`):
  a document someone else changed between the read and the write is read again and embedded from
  its new text, never overwritten with a vector of the old one.
- **By copy** (``mode="copy"``): a blue/green copy into ``<name>-000001`` that carries the index's
  whole mapping and settings plus the vector field, catches up on writes made during the copy,
  verifies every document, and then, when ``name`` is a concrete index, replaces it by an alias of
  the same name in one atomic call, so every client and query keeps working. The old data is kept
  in ``<name>-000000`` (or the index the alias pointed at) for ``esdistill index rollback`` until
  ``esdistill index prune`` (:mod:`esdistill.plugin._bluegreen`).

With ``teacher`` (``--teacher-vectors``), the index also stores a bi-encoder teacher's document
vectors in a field of its own (:mod:`esdistill.plugin.teacher_vectors`), filled by the same
backfill or copy.

Example::

    >>> mgr = IndexManager(client, "articles")                                     # doctest: +SKIP
    >>> mgr.adopt(OnnxEncoder("runs/minilm-int8"), text_fields=("title", "body")).format()   # doctest: +SKIP
    'adopted articles in place: checked 5000 documents of articles in 61.0 s (82/s): 5000 missing, ...'
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from esdistill.plugin._copy import check_source_mapping
from esdistill.plugin._errors import ConfigError, FingerprintError
from esdistill.plugin.documents import RESERVED_FIELDS, DocumentSpec
from esdistill.plugin.index import (
    BOOKKEEPING_PROPERTIES,
    INDEX_OPTIONS,
    IndexMeta,
    ReindexResult,
    merged_meta,
    new_meta,
    vector_property,
)
from esdistill.plugin.sync import SyncSummary, sync_index

if TYPE_CHECKING:  # pragma: no cover
    from esdistill.plugin.index import IndexManager
    from esdistill.plugin.teacher_vectors import TeacherInfo

__all__ = ["ADOPT_MODES", "AdoptResult", "adopt"]

logger = logging.getLogger(__name__)

ADOPT_MODES = ("in-place", "copy")


@dataclass
class AdoptResult:
    """What an adoption did.

    Attributes:
        alias: the name the team searches.
        index: the physical index that holds the vectors now.
        mode: ``in-place`` or ``copy``.
        seconds: wall time.
        backfill: the in-place backfill (a :class:`~esdistill.plugin.sync.SyncSummary`).
        copy: the blue/green copy (a :class:`~esdistill.plugin.index.ReindexResult`).
    """

    alias: str
    index: str
    mode: str
    seconds: float
    backfill: SyncSummary | None = None
    copy: ReindexResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "index": self.index, "mode": self.mode, "seconds": round(self.seconds, 3),
                "backfill": self.backfill.to_dict() if self.backfill else None,
                "copy": self.copy.to_dict() if self.copy else None}

    def format(self) -> str:
        if self.backfill is not None:
            return f"adopted {self.alias} in place: {self.backfill.format()}"
        assert self.copy is not None
        c = self.copy
        return (f"adopted {self.alias} by copy: {c.docs} documents in {c.new_index} ({c.summary.indexed} embedded, "
                f"{c.summary.caught_up} caught up, {c.summary.verified} verified, write block "
                f"{c.summary.write_block_s:.2f} s) in {c.seconds:.1f} s; {self.alias} -> {c.new_index}; the old data "
                f"is kept in {c.rollback_index} (`esdistill index rollback {self.alias}`, "
                f"`esdistill index prune {self.alias}`)")


def _mapping(client: Any, index: str) -> dict[str, Any]:
    return next(iter(client.indices.get_mapping(index=index).values()))["mappings"]


def _check_fields(index: str, mapping: dict[str, Any], text_fields: tuple[str, ...]) -> None:
    props = mapping.get("properties") or {}
    missing = [f for f in text_fields if f not in props]
    if missing:
        texts = sorted(k for k, v in props.items() if isinstance(v, dict) and v.get("type") in ("text", "match_only_text"))
        raise ConfigError(f"--text-fields {','.join(missing)}: not in the mapping of {index!r} (its text fields: "
                          f"{', '.join(texts) or 'none'}); name top-level fields the documents hold text in")
    odd = [f for f in text_fields if (props[f] or {}).get("type") not in ("text", "match_only_text", "keyword",
                                                                          "wildcard")]
    if odd:
        raise ConfigError(f"--text-fields {','.join(odd)}: mapped as {[props[f].get('type') for f in odd]} in "
                          f"{index!r}, not as text")


def adopt(mgr: IndexManager, encoder: Any, *, text_fields: tuple[str, ...], vector_field: str = "embedding",
          mode: str = "in-place", index_options: str | None = None, batch_size: int = 256,
          progress: bool | None = None, teacher: TeacherInfo | None = None) -> AdoptResult:
    """Adopt ``mgr``'s index for ``encoder``'s vectors (see the module docstring).

    Args:
        mgr: the index (a concrete index, or an alias with one write index).
        encoder: the model whose vectors the index gets.
        text_fields: the fields whose text is embedded, joined in this order.
        vector_field: the ``dense_vector`` field to add.
        mode: ``in-place`` or ``copy``.
        index_options: ``dense_vector`` index type (default ``int8_hnsw``).
        batch_size: documents per encoder call and bulk request.
        progress: show a progress bar (default: when stderr is a terminal).
        teacher: also store this bi-encoder teacher's document vectors
            (:func:`~esdistill.plugin.teacher_vectors.describe_teacher`).

    Raises:
        ConfigError: bad arguments, no such index, a text field is not in its mapping, a field of
            esdistill's is taken, ``_source`` is filtered, or an earlier adoption recorded other
            teacher vectors.
        FingerprintError: the index was adopted with another model already (use ``reindex``).
        IngestError: Elasticsearch kept failing, or (copy) a document could not be carried over;
            run the same command again to resume.
    """
    started = time.perf_counter()
    if mode not in ADOPT_MODES:
        raise ConfigError(f"mode={mode!r} (choose {' or '.join(ADOPT_MODES)})")
    if index_options is not None and index_options not in INDEX_OPTIONS:
        raise ConfigError(f"index_options={index_options!r} (choose one of {', '.join(INDEX_OPTIONS)})")
    if not vector_field or vector_field.startswith("_") or vector_field in RESERVED_FIELDS:
        raise ConfigError(f"--vector-field {vector_field!r}: give a name not starting with '_' and not one of "
                          f"{', '.join(RESERVED_FIELDS)}")
    DocumentSpec(text_fields=text_fields, vector_field=vector_field)  # validates the field names
    if not mgr.exists():
        raise ConfigError(f"no index or alias named {mgr.alias!r} to adopt")
    current = mgr.current()
    mapping = _mapping(mgr.client, current)
    _check_fields(current, mapping, text_fields)
    if mode == "copy":
        from esdistill.plugin._bluegreen import blue_green

        result = blue_green(mgr, encoder, text_fields=text_fields, vector_field=vector_field,
                            index_options=index_options, batch_size=batch_size, progress=progress, adopting=True,
                            teacher=teacher)
        return AdoptResult(alias=mgr.alias, index=result.new_index, mode=mode, seconds=time.perf_counter() - started,
                           copy=result)
    check_source_mapping(current, mapping, action="partial updates",
                         instead="adopting needs every field in _source")
    _add_fields(mgr, current, mapping, encoder, text_fields=text_fields, vector_field=vector_field,
                index_options=index_options or "int8_hnsw", teacher=teacher)
    summary = sync_index(mgr.client, mgr.alias, encoder, batch_size=batch_size, progress=progress)
    return AdoptResult(alias=mgr.alias, index=current, mode=mode, seconds=time.perf_counter() - started,
                       backfill=summary)


def _add_fields(mgr: IndexManager, index: str, mapping: dict[str, Any], encoder: Any, *,
                text_fields: tuple[str, ...], vector_field: str, index_options: str,
                teacher: TeacherInfo | None = None) -> None:
    """The one mapping update of an in-place adoption (skipped when an earlier run made it)."""
    manifest = encoder.manifest
    existing = mapping.get("_meta") or {}
    props = mapping.get("properties") or {}
    try:
        meta: IndexMeta | None = IndexMeta.from_meta(existing, index)
    except ConfigError:
        meta = None
    if meta is not None:  # adopted before: resume the backfill, with the same model and layout only
        if meta.model_fingerprint != manifest.fingerprint:
            raise FingerprintError(
                f"{index!r} holds vectors of model {meta.model_name!r} ({meta.model_fingerprint[:12]}…) already; to "
                f"move it to {manifest.name!r} use `esdistill index reindex {mgr.alias} --model DIR`",
                expected=meta.model_fingerprint, actual=manifest.fingerprint)
        if (meta.vector_field, tuple(meta.text_fields)) != (vector_field, text_fields):
            raise ConfigError(f"{index!r} was adopted with vector field {meta.vector_field!r} and text fields "
                              f"{','.join(meta.text_fields)}; run adopt with those (or reindex to change them)")
        if meta.teacher_fingerprint != (teacher.fingerprint if teacher else ""):
            had = f"teacher vectors of {meta.teacher_name!r}" if meta.teacher_fingerprint else "no teacher vectors"
            raise ConfigError(f"{index!r} was adopted with {had}; run adopt as before (--teacher-vectors "
                              f"{meta.teacher_model or 'left out'}), or adopt --copy into a new index to change them")
        logger.info("%s was adopted already; resuming its backfill", index)
        return
    taken = [f for f in (vector_field, *BOOKKEEPING_PROPERTIES, *([teacher.field] if teacher else [])) if f in props]
    if taken:
        raise ConfigError(f"{index!r} has field(s) {taken} of its own, which esdistill needs for its vectors and "
                          "bookkeeping; choose another --vector-field, or adopt --copy into a new index after "
                          "renaming them")
    meta = new_meta(manifest, vector_field=vector_field, text_fields=text_fields, index_options=index_options,
                    alias=mgr.alias, teacher=teacher)
    added = {**BOOKKEEPING_PROPERTIES,
             vector_field: vector_property(manifest, index_options=index_options)}
    if teacher is not None:
        from esdistill.plugin.teacher_vectors import teacher_property

        added[teacher.field] = teacher_property(teacher)
    mgr.client.indices.put_mapping(index=index, properties=added, meta=merged_meta(existing, meta))
    logger.info("added %s (%d dims, %s) and esdistill's bookkeeping fields to %s", vector_field, manifest.dims,
                index_options, index)
