"""The steps of a blue/green copy that loses no write: copy, catch up, verify (see
:mod:`esdistill.plugin._bluegreen` for the whole procedure and the alias swap).

A document goes into the target with the source's ``_version`` as an external version
(``version_type=external_gte``): the target's versions then say exactly which source version each
document came from, a retried write is idempotent, and an older copy can never overwrite a newer
one. Verification compares every document by id and version. A target that stores a bi-encoder
teacher's document vectors (:mod:`~esdistill.plugin.teacher_vectors`) gets them embedded with the
student's vectors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from esdistill.plugin._bulk import RetryPolicy, call_with_retry
from esdistill.plugin._errors import ConfigError
from esdistill.plugin._pipeline import EmbedBatch, run_pipeline, vector_format, vector_value
from esdistill.plugin._scan import scan
from esdistill.plugin._writes import action_line, bulk_outcomes
from esdistill.plugin.documents import BadDocument, DocumentSpec, prepare, strip_reserved, text_hash
from esdistill.plugin.teacher_vectors import teacher_embedder

if TYPE_CHECKING:  # pragma: no cover
    from esdistill.plugin.index import IndexMeta

__all__ = ["Copier", "CopySummary", "check_source_mapping", "copyable_settings"]

logger = logging.getLogger(__name__)

#: flat settings of a source index that describe that index itself, not how it is configured
_NOT_COPIED = ("index.uuid", "index.creation_date", "index.provided_name", "index.version.", "index.blocks.",
               "index.resize.", "index.routing.allocation.initial_recovery.", "index.history.uuid",
               "index.verified_before_close", "index.shrink.", "index.lifecycle.", "index.downsample.",
               "index.store.snapshot.", "index.frozen", "index.search.throttled", "index.format")


@dataclass
class CopySummary:
    """What a blue/green copy did.

    Attributes:
        index: the target (new) index; ``source`` the index copied.
        model / model_fingerprint: the model that embedded.
        read: source documents read in the first pass.
        indexed: documents embedded and written (first pass, catch-up and repairs).
        unchanged: documents already in the target with the source's version (a resumed run).
        no_text: documents copied without a vector (no text to embed).
        caught_up: documents copied again because they changed while the copy ran.
        catch_up_rounds: catch-up rounds before the write block.
        deleted: documents removed from the target because they were deleted from the source.
        verified: documents checked against the source by id and version (every document the
            source holds at the swap: by the full pass before the write block, or after it when
            they changed since).
        failed: documents that could not be carried over; ``failures`` lists some with reasons.
        write_block_s: how long the source was write-blocked.
        seconds / embed_seconds: wall time and time in the encoder.
        complete: every document was carried over and verified.
    """

    index: str
    source: str
    model: str
    model_fingerprint: str
    read: int = 0
    indexed: int = 0
    unchanged: int = 0
    no_text: int = 0
    caught_up: int = 0
    catch_up_rounds: int = 0
    deleted: int = 0
    verified: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    write_block_s: float = 0.0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = [{"id": i, "reason": r} for i, r in self.failures]
        for key in ("seconds", "embed_seconds", "write_block_s"):
            out[key] = round(out[key], 3)
        return out

    def note_failure(self, doc_id: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < 100:
            self.failures.append((doc_id, reason))


def copyable_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat settings of a source index that a copy of it carries (analysis, shards, replicas...)."""
    return {k: v for k, v in flat.items() if not k.startswith(_NOT_COPIED) and k not in _NOT_COPIED}


class Copier:
    """The copy, catch-up and verification steps of one blue/green copy (see the module docstring)."""

    def __init__(self, client: Any, *, source: str, target: str, encoder: Any, meta: IndexMeta,
                 source_vector_field: str | None, policy: RetryPolicy, batch_size: int, page_size: int,
                 progress: bool | None) -> None:
        self.client = client
        self.source = source
        self.target = target
        self.encoder = encoder
        self.fingerprint = encoder.manifest.fingerprint
        self.meta = meta
        self.spec = DocumentSpec(text_fields=tuple(meta.text_fields), vector_field=meta.vector_field)
        self.teacher = teacher_embedder(meta)
        self.excludes = sorted({meta.vector_field, *([source_vector_field] if source_vector_field else []),
                                *([self.teacher.field] if self.teacher is not None else [])})
        self.policy = policy
        self.batch_size = batch_size
        self.page_size = page_size
        self.progress = progress
        self.fmt = vector_format(client)
        self.summary = CopySummary(index=target, source=source, model=encoder.manifest.name,
                                   model_fingerprint=self.fingerprint)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading
    def _retry(self, fn: Any, what: str) -> Any:
        return call_with_retry(fn, what=what, policy=self.policy)

    def refresh(self, index: str) -> None:
        self._retry(lambda: self.client.indices.refresh(index=index), f"refresh {index}")

    def count(self, index: str) -> int:
        self.refresh(index)
        return int(self._retry(lambda: self.client.count(index=index), f"count {index}")["count"])

    def watermarks(self) -> dict[str, int]:
        """Per shard of the source, the highest ``_seq_no`` it has assigned."""
        stats = self._retry(lambda: self.client.indices.stats(index=self.source, level="shards"),
                            f"shard stats of {self.source}")
        marks: dict[str, int] = {}
        for shard, copies in stats["indices"][self.source]["shards"].items():
            for copy in copies:
                if copy.get("routing", {}).get("primary", True):
                    marks[shard] = int(copy.get("seq_no", {}).get("max_seq_no", -1))
        return marks

    def changed_since(self, marks: dict[str, int], upto: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
        """Documents of the source whose ``_seq_no`` is above ``marks`` (per shard), oldest first; with
        ``upto``, only those at or below it. A catch-up round must pass ``upto``: a writer faster than the
        copy would otherwise keep the round reading its newest writes forever."""
        shards = sorted(set(marks) | set(upto or {}))
        for shard in shards:
            mark = marks.get(shard, -1)
            bounds: dict[str, int] = {"gt": mark}
            if upto is not None:
                if upto.get(shard, -1) <= mark:
                    continue
                bounds["lte"] = upto[shard]
            after: list[Any] | None = None
            while True:
                kwargs: dict[str, Any] = {"search_after": after} if after is not None else {}
                resp = self._retry(lambda kwargs=kwargs, shard=shard, bounds=bounds: self.client.search(
                    index=self.source, preference=f"_shards:{shard}", size=self.page_size, version=True,
                    query={"range": {"_seq_no": bounds}}, sort=[{"_seq_no": "asc"}],
                    source_excludes=self.excludes, track_total_hits=False, **kwargs), f"changes in {self.source}")
                hits = resp["hits"]["hits"]
                if not hits:
                    break
                yield from hits
                after = hits[-1]["sort"]

    def _targets(self, hits: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        docs = [{"_id": h["_id"], **({"routing": h["_routing"]} if h.get("_routing") else {})} for h in hits]
        resp = self._retry(lambda: self.client.mget(index=self.target, docs=docs, source_includes=["model_fingerprint"]),
                           f"lookup in {self.target}")
        return {d["_id"]: d for d in resp["docs"] if d.get("found")}

    def batches(self, hits: Iterator[dict[str, Any]], *, counter: str | None, bar: Any) -> Iterator[EmbedBatch]:
        """Source hits grouped, minus those the target already holds in the same version."""
        page: list[dict[str, Any]] = []
        for hit in hits:
            page.append(hit)
            if len(page) >= self.batch_size:
                yield self._batch(page, counter, bar)
                page = []
        if page:
            yield self._batch(page, counter, bar)

    def _batch(self, page: list[dict[str, Any]], counter: str | None, bar: Any) -> EmbedBatch:
        have = self._targets(page)
        batch = EmbedBatch(extra={"plain": []})
        for hit in page:
            if counter:
                setattr(self.summary, counter, getattr(self.summary, counter) + 1)
            source = strip_reserved(hit.get("_source") or {}, self.meta.vector_field)
            for name in self.excludes:
                source.pop(name, None)
            try:
                doc = prepare({"_id": hit["_id"], **source}, self.spec)
            except BadDocument:
                doc = None
            old = have.get(hit["_id"])
            want_fp = self.fingerprint if doc is not None else None
            if (old is not None and old.get("_version") == hit.get("_version")
                    and (old.get("_source") or {}).get("model_fingerprint") == want_fp):
                self.summary.unchanged += 1
                continue
            if doc is None:
                batch.extra["plain"].append((hit, source))
            else:
                # a document ingested by esdistill keeps its whole-document hash (a later ingest of the same
                # input then skips it); any other gets the hash of its text (a change of another field
                # does not make its vector stale)
                stored_hash = (hit.get("_source") or {}).get("content_hash")
                chash = doc.content_hash if stored_hash == doc.content_hash else text_hash(doc.text)
                batch.items.append((hit, source, chash))
                batch.texts.append(doc.text)
        bar.update(len(page))
        return batch

    # ------------------------------------------------------------------ writing
    def write(self, batch: EmbedBatch) -> None:
        lines: list[bytes] = []
        ids: list[str] = []
        vectors = batch.vectors if batch.vectors is not None else []
        for pos, ((hit, source, chash), vec) in enumerate(zip(batch.items, vectors)):
            body = {**source, "content_hash": chash, "model_fingerprint": self.fingerprint,
                    self.meta.vector_field: vector_value(vec, self.fmt)}
            if self.teacher is not None and batch.teacher_vectors is not None:
                body[self.teacher.field] = vector_value(batch.teacher_vectors[pos], self.fmt)
            lines.append(self._line(hit, body))
            ids.append(hit["_id"])
        for hit, source in batch.extra.get("plain", []):
            lines.append(self._line(hit, source))
            ids.append(hit["_id"])
        if not lines:
            return
        outcomes = bulk_outcomes(self.client, self.target, lines, policy=self.policy)
        n_embedded = len(batch.items)
        with self._lock:
            for pos, (doc_id, outcome) in enumerate(zip(ids, outcomes)):
                if outcome.ok:
                    if pos < n_embedded:
                        self.summary.indexed += 1
                    else:
                        self.summary.no_text += 1
                elif outcome.status == 409:
                    self.summary.note_failure(doc_id, f"the new index {self.target} holds a newer version of this "
                                                      "document than the source (its history was rewritten during "
                                                      f"the copy); delete {self.target} and run again")
                else:
                    self.summary.note_failure(doc_id, outcome.reason)

    @staticmethod
    def _line(hit: dict[str, Any], body: dict[str, Any]) -> bytes:
        return action_line("index", hit["_id"], source=body, version=int(hit["_version"]),
                           version_type="external_gte", routing=hit.get("_routing"))

    def copy(self, hits: Iterator[dict[str, Any]], *, counter: str | None, bar: Any) -> None:
        run_pipeline(self.batches(hits, counter=counter, bar=bar), self.encoder, self.write,
                     dims=int(self.meta.dims), on_embed=self._on_embed, teacher=self.teacher)

    def _on_embed(self, n: int, seconds: float) -> None:
        self.summary.embed_seconds += seconds

    def delete_from_target(self, ids: list[str]) -> None:
        lines = [action_line("delete", i) for i in ids]
        for doc_id, outcome in zip(ids, bulk_outcomes(self.client, self.target, lines, policy=self.policy)):
            if outcome.ok or outcome.status == 404:
                self.summary.deleted += 1
            else:
                self.summary.note_failure(doc_id, f"could not delete it from {self.target}: {outcome.reason}")

    # ------------------------------------------------------------------ verification
    def verify_all(self, bar: Any) -> int:
        """Compare every source document with the target by id and version and fix what differs
        (missing or outdated: copied again; gone from the source: deleted). Returns how many were fixed."""
        hits = scan(self.client, self.source, policy=self.policy, page_size=self.page_size, source=False,
                    version=True, what="verification")
        return self._repair_all(hits, bar) + self.drop_extras()

    def verify_changed(self, marks: dict[str, int], bar: Any) -> int:
        """Compare (and fix) the documents changed since ``marks``; returns how many were fixed."""
        return self._repair_all(self.changed_since(marks), bar)

    def _repair_all(self, hits: Iterator[dict[str, Any]], bar: Any) -> int:
        """:meth:`_repair` over ``hits`` a page at a time; how many were fixed."""
        fixed = 0
        page: list[dict[str, Any]] = []
        for hit in hits:
            page.append(hit)
            if len(page) >= self.page_size:
                fixed += self._repair(page, bar)
                page = []
        if page:
            fixed += self._repair(page, bar)
        return fixed

    def drop_extras(self) -> int:
        """Delete from the target the documents the source no longer has (only looked for when the
        counts differ: the target holds every source document by then, so equal counts mean equal sets)."""
        if self.count(self.target) == self.count(self.source):
            return 0
        fixed = 0
        extra: list[str] = []
        for hit in scan(self.client, self.target, policy=self.policy, page_size=self.page_size, source=False,
                        what="verification"):
            extra.append(hit["_id"])
            if len(extra) >= self.page_size:
                fixed += self._drop_deleted(extra)
                extra = []
        if extra:
            fixed += self._drop_deleted(extra)
        return fixed

    def _repair(self, hits: list[dict[str, Any]], bar: Any) -> int:
        have = self._targets(hits)
        wrong = [h for h in hits if h["_id"] not in have or have[h["_id"]].get("_version") != h.get("_version")]
        if not wrong:
            return 0
        docs = [{"_id": h["_id"], **({"routing": h["_routing"]} if h.get("_routing") else {})} for h in wrong]
        resp = self._retry(lambda: self.client.mget(index=self.source, docs=docs, source_excludes=self.excludes),
                           f"read from {self.source}")
        found = [{**d, "_routing": d.get("_routing")} for d in resp["docs"] if d.get("found")]
        self.copy(iter(found), counter="caught_up", bar=bar)
        return len(wrong)

    def _drop_deleted(self, ids: list[str]) -> int:
        resp = self._retry(lambda: self.client.mget(index=self.source, ids=ids, source=False), f"lookup in {self.source}")
        gone = [d["_id"] for d in resp["docs"] if not d.get("found")]
        if gone:
            self.delete_from_target(gone)
        return len(gone)


def check_source_mapping(index: str, mapping: dict[str, Any], *, action: str, instead: str) -> None:
    """Refuse to work on an index whose ``_source`` leaves fields out: a copy, or a partial update,
    would silently lose them.

    Raises:
        ConfigError: ``_source`` is disabled or filtered (the message says what to do ``instead``).
    """
    src = mapping.get("_source") or {}
    if src.get("enabled") is False or src.get("includes") or src.get("excludes") or src.get("mode") == "disabled":
        raise ConfigError(f"index {index!r} does not keep every field in _source ({src}), so {action} would lose "
                          f"data; {instead}")
