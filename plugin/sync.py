"""Keep vectors true when others write: find documents whose vector is missing or stale, re-embed only those.

Teams keep writing to an adopted index with their own clients: new documents arrive without a
vector, partial updates change a text field under an old vector, whole-document writes drop the
vector. :func:`sync_index` reads every document (through a point-in-time, the vector left out),
recomputes what its stored ``content_hash`` must be (:func:`~esdistill.plugin.documents.vector_is_current`)
and re-embeds only the documents that are

- **missing**: they have text but no vector;
- **stale**: their vector was made from other text, or by another model.

Each fix is a partial update guarded by ``if_seq_no``/``if_primary_term``: when someone else
changed the document between the read and the write, Elasticsearch refuses the write (409), and
the document is read again and embedded again from its new text. A vector of old text never
overwrites a newer document. A sync is idempotent and resumable: run it again after a crash and it
embeds only what is still missing or stale; a sync over an unchanged index embeds nothing.

:func:`vector_health` counts missing and stale vectors without writing (``esdistill index info``,
the service's ``/readyz``): exactly up to a number of documents, by a random sample above it (the
result says which).

Example::

    >>> summary = sync_index(client, "articles", OnnxEncoder("runs/minilm-int8"))   # doctest: +SKIP
    >>> summary.embedded, summary.missing, summary.stale                          # doctest: +SKIP
    (20, 10, 10)

An index that stores a bi-encoder teacher's document vectors (``--teacher-vectors``,
:mod:`~esdistill.plugin.teacher_vectors`) gets both vectors in the same partial update: a document
re-embedded by the student is re-embedded by the teacher too.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from esdistill.plugin._bulk import RetryPolicy, call_with_retry
from esdistill.plugin._pipeline import EmbedBatch, run_pipeline, vector_format, vector_value
from esdistill.plugin._scan import scan
from esdistill.plugin._writes import action_line, bulk_outcomes
from esdistill.plugin.documents import (
    BadDocument,
    DocumentSpec,
    PreparedDocument,
    prepare,
    strip_reserved,
    text_hash,
    vector_is_current,
)
from esdistill.plugin.teacher_vectors import TEACHER_VECTOR_FIELD, teacher_embedder

__all__ = ["SyncSummary", "VectorHealth", "classify", "sync_index", "vector_health"]

logger = logging.getLogger(__name__)

_HAS_VECTOR = "esdistill_has_vector"
#: conflict rounds before the documents that keep changing are left to the next sync
_CONFLICT_ROUNDS = 5


@dataclass
class VectorHealth:
    """How many documents of an index lack a true vector.

    Attributes:
        index: the physical index counted.
        docs: documents in it.
        missing_vectors: documents with text but no vector (always an exact count).
        stale_vectors: documents whose vector was made from other text or by another model.
        stale_vectors_exact: True when every document was checked, False when ``stale_vectors``
            is extrapolated from a random sample of ``checked`` documents.
        no_text: documents without text to embed (counted neither as missing nor as stale).
        checked: documents whose content hash was recomputed.
    """

    index: str
    docs: int
    missing_vectors: int
    stale_vectors: int
    stale_vectors_exact: bool
    no_text: int
    checked: int
    missing_vectors_exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = "exact" if self.stale_vectors_exact else f"stale_vectors sampled from {self.checked} documents"
        return out


@dataclass
class SyncSummary:
    """What a sync did.

    Attributes:
        index: the physical index synced.
        model / model_fingerprint: the model that embedded.
        checked: documents read and checked.
        current: documents whose vector was already true.
        missing / stale: documents found without a vector / with a stale one.
        embedded: vectors written (missing + stale, less the ones that vanished or kept changing).
        conflicts: writes refused because someone else changed the document first (each was read
            and embedded again).
        gone: documents deleted by someone else before their vector was written.
        no_text: documents with no text to embed (left as they are).
        still_changing: documents that changed on every try (the next sync takes them).
        failed: ``(id, reason)`` for writes Elasticsearch refused for good (first 100).
        seconds / embed_seconds: wall time and time in the encoder.
        complete: the whole index was checked.
    """

    index: str
    model: str
    model_fingerprint: str
    checked: int = 0
    current: int = 0
    missing: int = 0
    stale: int = 0
    embedded: int = 0
    conflicts: int = 0
    gone: int = 0
    no_text: int = 0
    still_changing: int = 0
    failed: list[tuple[str, str]] | None = None
    seconds: float = 0.0
    embed_seconds: float = 0.0
    complete: bool = False

    @property
    def checked_per_s(self) -> float:
        return self.checked / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failed"] = [{"id": i, "reason": r} for i, r in (self.failed or [])]
        out["seconds"] = round(self.seconds, 3)
        out["embed_seconds"] = round(self.embed_seconds, 3)
        out["checked_per_s"] = round(self.checked_per_s, 1)
        return out

    def format(self) -> str:
        text = (f"checked {self.checked} documents of {self.index} in {self.seconds:.1f} s "
                f"({self.checked_per_s:.0f}/s): {self.missing} missing, {self.stale} stale, embedded {self.embedded}")
        extras = [f"{n} {label}" for n, label in ((self.conflicts, "conflicts re-read"), (self.gone, "deleted meanwhile"),
                                                  (self.no_text, "without text"),
                                                  (self.still_changing, "still changing (next sync)"),
                                                  (len(self.failed or []), "refused")) if n]
        return text + (f"; {', '.join(extras)}" if extras else "")


def _has_vector(hit: dict[str, Any]) -> bool:
    matched = hit.get("matched_queries") or ()
    return _HAS_VECTOR in matched


def _check_query(vector_field: str, *, only_with_vector: bool = False) -> dict[str, Any]:
    """Every document; the ones with a vector are marked by a named query."""
    has = {"exists": {"field": vector_field, "_name": _HAS_VECTOR}}
    if only_with_vector:
        return {"bool": {"filter": [has]}}
    return {"bool": {"should": [has, {"match_all": {}}]}}


def classify(source: dict[str, Any], doc_id: str, *, has_vector: bool, spec: DocumentSpec,
             fingerprint: str) -> tuple[str, PreparedDocument | None]:
    """``current``, ``missing``, ``stale`` or ``no_text`` for one stored document, and the document.

    Args:
        source: the stored ``_source`` (the vector may be left out).
        doc_id: its id.
        has_vector: whether the vector field holds a value.
        spec: the index's text fields and vector field.
        fingerprint: the model that must have made the vector.
    """
    try:
        doc = prepare({"_id": doc_id, **strip_reserved(source, spec.vector_field)}, spec)
    except BadDocument:
        return "no_text", None
    if not has_vector:
        return "missing", doc
    return ("current" if vector_is_current(source, doc, fingerprint) else "stale"), doc


def _spec(meta: Any) -> DocumentSpec:
    return DocumentSpec(text_fields=tuple(meta.text_fields), vector_field=meta.vector_field)


def _text_exists(fields: tuple[str, ...]) -> dict[str, Any]:
    return {"bool": {"should": [{"exists": {"field": f}} for f in fields], "minimum_should_match": 1}}


def vector_health(client: Any, index: str, *, exact_limit: int = 10_000, sample: int = 500,
                  policy: RetryPolicy | None = None, refresh: bool = True) -> VectorHealth:
    """Count the documents of an esdistill index whose vector is missing or stale.

    Args:
        client: an ``elasticsearch.Elasticsearch`` client.
        index: the index or alias (its current physical index is counted).
        exact_limit: check every document when the index holds at most this many.
        sample: otherwise check this many random documents that have a vector and extrapolate.
        policy: backoff for transient failures.
        refresh: refresh the index first, so that the last writes are counted (needs the
            ``maintenance`` privilege; without it the counts lag by up to the refresh interval).

    Raises:
        ConfigError: the index is not an esdistill index.
    """
    from esdistill.plugin.index import IndexManager

    policy = policy or RetryPolicy()
    mgr = IndexManager(client, index)
    physical = mgr.current()
    meta = mgr.meta(physical)
    spec = _spec(meta)
    fields = spec.text_fields

    def count(query: dict[str, Any]) -> int:
        return int(call_with_retry(lambda: client.count(index=physical, query=query), what=f"count {physical}",
                                   policy=policy)["count"])

    if refresh:
        call_with_retry(lambda: client.indices.refresh(index=physical), what=f"refresh {physical}", policy=policy)
    docs = count({"match_all": {}})
    no_vector = {"exists": {"field": meta.vector_field}}
    missing = count({"bool": {"must_not": [no_vector], "filter": [_text_exists(fields)]}})
    no_text = count({"bool": {"must_not": [_text_exists(fields)]}})
    with_vector = count({"bool": {"filter": [no_vector]}})
    stale = checked = 0
    exact = with_vector <= exact_limit
    if exact:
        hits: Any = scan(client, physical, policy=policy, query=_check_query(meta.vector_field, only_with_vector=True),
                         source_excludes=[meta.vector_field, TEACHER_VECTOR_FIELD], what="vector check", restart=False)
    else:
        resp = call_with_retry(lambda: client.search(
            index=physical, size=sample, source_excludes=[meta.vector_field, TEACHER_VECTOR_FIELD],
            query={"function_score": {"query": _check_query(meta.vector_field, only_with_vector=True),
                                      "random_score": {}, "boost_mode": "replace"}}),
            what=f"sample {physical}", policy=policy)
        hits = resp["hits"]["hits"]
    for hit in hits:
        checked += 1
        label, _ = classify(hit.get("_source") or {}, hit["_id"], has_vector=True, spec=spec,
                            fingerprint=meta.model_fingerprint)
        stale += label == "stale"
    if not exact and checked:
        stale = round(stale / checked * with_vector)
    return VectorHealth(index=physical, docs=docs, missing_vectors=missing, stale_vectors=stale,
                        stale_vectors_exact=exact, no_text=no_text, checked=checked)


class _Sync:
    """One sync run (see :func:`sync_index`)."""

    def __init__(self, client: Any, index: str, encoder: Any, *, batch_size: int, page_size: int,
                 policy: RetryPolicy, progress: bool | None, refresh: bool) -> None:
        from esdistill.plugin.index import IndexManager

        self.client = client
        self.encoder = encoder
        self.manifest = encoder.manifest
        mgr = IndexManager(client, index)
        self.meta = mgr.check_model(self.manifest)
        self.index = mgr.current()
        self.spec = _spec(self.meta)
        self.batch_size = batch_size
        self.page_size = page_size
        self.policy = policy
        self.progress = progress
        self.refresh = refresh
        self.fmt = vector_format(client)
        self.teacher = teacher_embedder(self.meta)
        self.excludes = [self.meta.vector_field, *([self.teacher.field] if self.teacher is not None else [])]
        self.summary = SyncSummary(index=self.index, model=self.manifest.name,
                                   model_fingerprint=self.manifest.fingerprint, failed=[])
        self.conflicted: list[str] = []
        self._lock = threading.Lock()

    # reader thread
    def batches(self, hits: Iterator[dict[str, Any]], bar: Any) -> Iterator[EmbedBatch]:
        batch = EmbedBatch()
        for hit in hits:
            label, doc = classify(hit.get("_source") or {}, hit["_id"], has_vector=_has_vector(hit), spec=self.spec,
                                  fingerprint=self.manifest.fingerprint)
            self.summary.checked += 1
            bar.update(1)
            if label == "current":
                self.summary.current += 1
                continue
            if label == "no_text":
                self.summary.no_text += 1
                continue
            if label == "missing":
                self.summary.missing += 1
            else:
                self.summary.stale += 1
            assert doc is not None
            batch.items.append((doc.id, hit.get("_seq_no"), hit.get("_primary_term"), hit.get("_routing"),
                                text_hash(doc.text)))
            batch.texts.append(doc.text)
            if len(batch.texts) >= self.batch_size:
                yield batch
                batch = EmbedBatch()
        if batch.texts:
            yield batch

    # writer thread
    def write(self, batch: EmbedBatch) -> None:
        assert batch.vectors is not None
        lines = []
        for pos, ((doc_id, seq_no, term, routing, thash), vec) in enumerate(zip(batch.items, batch.vectors)):
            body = {"doc": {self.meta.vector_field: vector_value(vec, self.fmt), "content_hash": thash,
                            "model_fingerprint": self.manifest.fingerprint}}
            if self.teacher is not None and batch.teacher_vectors is not None:
                body["doc"][self.teacher.field] = vector_value(batch.teacher_vectors[pos], self.fmt)
            lines.append(action_line("update", doc_id, source=body, if_seq_no=seq_no, if_primary_term=term,
                                     routing=routing))
        outcomes = bulk_outcomes(self.client, self.index, lines, policy=self.policy)
        with self._lock:
            for (doc_id, *_), outcome in zip(batch.items, outcomes):
                if outcome.ok:
                    self.summary.embedded += 1
                elif outcome.status == 409:
                    self.summary.conflicts += 1
                    self.conflicted.append(doc_id)
                elif outcome.status == 404:
                    self.summary.gone += 1
                elif self.summary.failed is not None and len(self.summary.failed) < 100:
                    self.summary.failed.append((doc_id, outcome.reason))

    def on_embed(self, n: int, seconds: float) -> None:
        self.summary.embed_seconds += seconds

    def reread(self, ids: list[str]) -> Iterator[dict[str, Any]]:
        """The current version of documents that changed under a write (after a refresh)."""
        call_with_retry(lambda: self.client.indices.refresh(index=self.index), what=f"refresh {self.index}",
                        policy=self.policy)
        for start in range(0, len(ids), self.page_size):
            chunk = ids[start:start + self.page_size]
            query = _check_query(self.meta.vector_field)
            query["bool"]["filter"] = [{"ids": {"values": chunk}}]
            size = len(chunk)
            resp = call_with_retry(lambda query=query, size=size: self.client.search(
                index=self.index, size=size, query=query, source_excludes=self.excludes,
                seq_no_primary_term=True), what=f"re-read from {self.index}", policy=self.policy)
            hits = resp["hits"]["hits"]
            with self._lock:
                self.summary.gone += len(chunk) - len(hits)
            yield from hits

    def run(self) -> SyncSummary:
        from tqdm import tqdm

        started = time.perf_counter()
        call_with_retry(lambda: self.client.indices.refresh(index=self.index), what=f"refresh {self.index}",
                        policy=self.policy)
        total = int(call_with_retry(lambda: self.client.count(index=self.index), what=f"count {self.index}",
                                    policy=self.policy)["count"])
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        with tqdm(total=total, unit="doc", desc=f"sync {self.index}", disable=not show, dynamic_ncols=True) as bar:
            hits = scan(self.client, self.index, policy=self.policy, page_size=self.page_size,
                        query=_check_query(self.meta.vector_field), source_excludes=self.excludes,
                        seq_no_primary_term=True, what="sync")
            run_pipeline(self.batches(hits, bar), self.encoder, self.write, dims=int(self.meta.dims),
                         on_embed=self.on_embed, teacher=self.teacher)
            for _ in range(_CONFLICT_ROUNDS):
                if not self.conflicted:
                    break
                ids, self.conflicted = list(dict.fromkeys(self.conflicted)), []
                logger.info("sync of %s: %d document(s) changed under the write; reading them again", self.index,
                            len(ids))
                checked_before = self.summary.checked
                run_pipeline(self.batches(self.reread(ids), bar), self.encoder, self.write,
                             dims=int(self.meta.dims), on_embed=self.on_embed, teacher=self.teacher)
                self.summary.checked = checked_before  # a re-read is not a new document
        self.summary.still_changing = len(set(self.conflicted))
        if self.refresh:
            call_with_retry(lambda: self.client.indices.refresh(index=self.index), what=f"refresh {self.index}",
                            policy=self.policy)
        self.summary.complete = True
        self.summary.seconds = time.perf_counter() - started
        logger.info("%s", self.summary.format())
        return self.summary


def sync_index(client: Any, index: str, encoder: Any, *, batch_size: int = 256, page_size: int = 500,
               retry: RetryPolicy | None = None, progress: bool | None = None, refresh: bool = True) -> SyncSummary:
    """Re-embed the documents of ``index`` whose vector is missing or stale; return what was done.

    Args:
        client: an ``elasticsearch.Elasticsearch`` client.
        index: an esdistill index or alias (adopted in place, or made by esdistill).
        encoder: the model the index was built with (an ``OnnxEncoder``).
        batch_size: documents per encoder call and bulk request.
        page_size: documents read per request.
        retry: backoff for transient Elasticsearch failures.
        progress: show a progress bar (default: when stderr is a terminal).
        refresh: refresh the index at the end, so the new vectors are searchable at once.

    Raises:
        FingerprintError: ``encoder`` did not make this index's vectors.
        ConfigError: the index is not an esdistill index.
        IngestError: Elasticsearch kept failing (run the sync again: it resumes by itself).
    """
    return _Sync(client, index, encoder, batch_size=batch_size, page_size=page_size, policy=retry or RetryPolicy(),
                 progress=progress, refresh=refresh).run()
