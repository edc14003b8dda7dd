"""Teacher vectors stored at ingest: a bi-encoder teacher's document vectors kept in the index.

A bi-encoder teacher scores a candidate by the cosine of its query embedding and the candidate's
embedding, and the candidate's embedding does not depend on the query. An index created (or
adopted) with ``--teacher-vectors TEACHER`` therefore keeps each document's teacher vector next to
the student's, in the field :data:`TEACHER_VECTOR_FIELD` (a ``dense_vector`` with ``index: false``:
doc values only, no HNSW graph), and the teacher rerank of the top N costs one teacher query
embedding plus one Elasticsearch request, never a document embedding.

This module holds everything the writers and the query side share:

* :class:`TeacherInfo`: which teacher, as recorded in the index's ``_meta`` (model reference,
  fingerprint, name, dims, field), and :func:`describe_teacher`, which checks a teacher reference
  given to ``index create`` / ``index adopt``;
* :func:`teacher_property`: the field's mapping;
* :class:`TeacherEmbedder` and :func:`teacher_embedder`: the teacher loaded once from the index's
  meta, embedding a batch of texts as documents (unit vectors); ``ingest``, ``sync``, ``index adopt``
  and ``index reindex`` all fill the field through it;
* :class:`StoredTeacherReranker` and :func:`with_stored_vectors`: the rerank that reads the stored
  vectors of the candidates (one ``ids`` search) and takes their dot products with the teacher's
  query vector, falling back to embedding the text of a candidate that has no stored vector, or of
  every candidate when the index holds no vectors of this teacher. (The dot products are taken here,
  not in a ``script_score``, so that a cluster without the painless scripting module serves it too.)

Example::

    >>> info = describe_teacher("mpnet")                                    # doctest: +SKIP
    >>> IndexManager(client, "scifact").create(manifest, teacher=info)      # doctest: +SKIP
    >>> reranker = with_stored_vectors(load_reranker(exported_model("mpnet")))   # doctest: +SKIP
    >>> QueryHook(client, "scifact", encoder, reranker=reranker)            # doctest: +SKIP

Cross-encoders score a query and a document together, so nothing can be stored for them: they keep
the budgeted rerank path (:mod:`esdistill.plugin.rerank`).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.plugin._errors import ConfigError, FingerprintError, IngestError
from esdistill.plugin.documents import TEACHER_VECTOR_FIELD
from esdistill.plugin.encoder import l2_normalize

__all__ = [
    "TEACHER_VECTOR_FIELD",
    "StoredTeacherReranker",
    "TeacherEmbedder",
    "TeacherInfo",
    "describe_teacher",
    "teacher_embedder",
    "teacher_property",
    "with_stored_vectors",
]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class TeacherInfo:
    """The teacher whose document vectors an index stores (kept in its esdistill ``_meta``).

    Attributes:
        model: how to load it again: a packaged name (``mpnet``) or an exported folder's absolute path.
        fingerprint: the export's fingerprint (which vectors it makes).
        name: the model's name (from its manifest).
        dims: the vectors' size.
        field: the ``dense_vector`` field that holds them.
    """

    model: str
    fingerprint: str
    name: str
    dims: int
    field: str = TEACHER_VECTOR_FIELD

    def meta_fields(self) -> dict[str, Any]:
        """The :class:`~esdistill.plugin.index.IndexMeta` fields that record this teacher."""
        return {"teacher_model": self.model, "teacher_fingerprint": self.fingerprint, "teacher_name": self.name,
                "teacher_dims": int(self.dims), "teacher_vector_field": self.field}

    @classmethod
    def from_meta(cls, meta: Any) -> TeacherInfo | None:
        """The teacher an index records, or ``None`` (an index without teacher vectors, or made before them).

        Args:
            meta: an :class:`~esdistill.plugin.index.IndexMeta`, or a mapping ``_meta`` (esdistill's
                keys at the top or under ``esdistill``).
        """
        if isinstance(meta, Mapping):
            nested = meta.get("esdistill")
            values: Mapping[str, Any] = nested if isinstance(nested, Mapping) and "teacher_fingerprint" in nested \
                else meta
            get = values.get
        else:
            def get(key: str, default: Any = None) -> Any:
                return getattr(meta, key, default)
        fingerprint = get("teacher_fingerprint")
        if not fingerprint:
            return None
        return cls(model=str(get("teacher_model") or ""), fingerprint=str(fingerprint),
                   name=str(get("teacher_name") or ""), dims=int(get("teacher_dims") or 0),
                   field=str(get("teacher_vector_field") or TEACHER_VECTOR_FIELD))


def describe_teacher(ref: str | os.PathLike[str]) -> TeacherInfo:
    """Check a ``--teacher-vectors`` reference and describe the teacher it names.

    Args:
        ref: an exported bi-encoder folder, or a packaged name (``mpnet``: exported once, see
            :func:`~esdistill.plugin.models.exported_model`).

    Raises:
        ConfigError: the model is a cross-encoder (its scores need the query: it keeps the budgeted
            rerank path) or a query encoder.
        ModelError: ``ref`` is neither an exported folder nor a packaged name.
    """
    from esdistill.plugin.manifest import Manifest
    from esdistill.plugin.models import exported_model

    text = os.fspath(ref)
    folder = exported_model(text)
    manifest = Manifest.load(folder)
    if manifest.kind == "cross-encoder":
        raise ConfigError(f"--teacher-vectors {text}: {manifest.name!r} is a cross-encoder, which scores a query and a "
                          "document together, so no document vector can be stored for it; cross-encoders keep the "
                          "budgeted rerank path (`--rerank DIR` at search time). Give a bi-encoder teacher, e.g. "
                          "--teacher-vectors mpnet")
    if manifest.kind != "bi-encoder":
        raise ConfigError(f"--teacher-vectors {text}: manifest kind {manifest.kind!r}; give a bi-encoder export")
    if manifest.document_fingerprint:
        raise ConfigError(f"--teacher-vectors {text}: {manifest.name!r} is a query encoder (trained query-side "
                          "only); give the teacher's document model")
    # a folder is recorded by its absolute path (writers may run elsewhere), a packaged name as given
    model = str(Path(folder).resolve()) if Path(text).expanduser().is_dir() else text
    return TeacherInfo(model=model, fingerprint=manifest.fingerprint, name=manifest.name, dims=int(manifest.dims))


def teacher_property(info: TeacherInfo) -> dict[str, Any]:
    """The mapping of the teacher vector field: doc values only (``index: false``, no HNSW graph)."""
    return {"type": "dense_vector", "dims": int(info.dims), "index": False}


class TeacherEmbedder:
    """The teacher of an index, embedding documents for its teacher vector field.

    Args:
        info: the teacher the index records.
        encoder: an ``OnnxEncoder`` of that teacher (default: loaded from ``info.model``).

    Raises:
        FingerprintError: the model found at ``info.model`` is not the one the index recorded.
    """

    def __init__(self, info: TeacherInfo, encoder: Any = None) -> None:
        if encoder is None:
            from esdistill.plugin.encoder import OnnxEncoder
            from esdistill.plugin.models import exported_model

            encoder = OnnxEncoder(exported_model(info.model))
        if str(encoder.fingerprint) != info.fingerprint:
            raise FingerprintError(
                f"the teacher at {info.model!r} (fingerprint {str(encoder.fingerprint)[:12]}…) is not the one whose "
                f"vectors the index stores ({info.name!r}, {info.fingerprint[:12]}…); put that export back at "
                f"{info.model!r}, or re-embed the index into one created with the new teacher",
                expected=info.fingerprint, actual=str(encoder.fingerprint))
        self.info = info
        self.encoder = encoder

    @property
    def field(self) -> str:
        return self.info.field

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit teacher vectors of ``texts`` embedded as documents, shape ``(len(texts), dims)``.

        Raises:
            IngestError: the teacher returned vectors of another shape than the index expects.
        """
        out = l2_normalize(np.asarray(self.encoder.encode(list(texts), kind="document"), dtype=np.float32))
        if out.shape != (len(texts), int(self.info.dims)):
            raise IngestError(f"the teacher {self.info.name!r} returned vectors of shape {out.shape} for {len(texts)} "
                              f"texts; the index expects {self.info.dims} dims")
        return out


_LOADED: dict[tuple[str, str], TeacherEmbedder] = {}
_LOAD_LOCK = threading.Lock()


def teacher_embedder(meta: Any) -> TeacherEmbedder | None:
    """The teacher embedder of an index (loaded once per process and teacher), or ``None`` when
    the index stores no teacher vectors.

    Args:
        meta: the index's :class:`~esdistill.plugin.index.IndexMeta` (or mapping ``_meta``).
    """
    info = TeacherInfo.from_meta(meta)
    if info is None:
        return None
    key = (info.model, info.fingerprint)
    with _LOAD_LOCK:
        found = _LOADED.get(key)
        if found is None or found.info != info:
            found = _LOADED[key] = TeacherEmbedder(info)
            logger.info("teacher %s (%s…, %d dims) loaded for the teacher vector field %s", info.name,
                        info.fingerprint[:12], info.dims, info.field)
        return found


class StoredTeacherReranker:
    """A bi-encoder teacher rerank that reads the candidates' teacher vectors from the index.

    Wraps a :class:`~esdistill.plugin.rerank.BiEncoderReranker`. When the query hook's index records
    teacher vectors of this very teacher (same fingerprint), a rerank is one teacher query embedding,
    one Elasticsearch request that reads the candidates' stored vectors by id, and their dot products
    with the query vector (the stored vectors are unit vectors, so these are the cosines the wrapped
    reranker computes); a candidate without a stored vector is scored by embedding its text, as before. Otherwise every
    candidate is scored the wrapped reranker's way (one INFO line says which path is taken, again
    whenever it changes).

    Args:
        inner: the bi-encoder reranker of the teacher.

    Example:
        >>> rr = StoredTeacherReranker(load_reranker("runs/mpnet-onnx"))       # doctest: +SKIP
        >>> hook = QueryHook(client, "scifact", encoder, reranker=rr)          # doctest: +SKIP
    """

    #: one request scores the whole list, so the rerank stage does not split it into chunks
    whole_list = True

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.fingerprint = str(inner.fingerprint)
        self._hook: Any = None
        self._path: tuple[str, bool] | None = None
        self._source: dict[str, Any] | None = None  # how to ask for the vectors in _source

    def attach(self, hook: Any) -> None:
        """Called once by :class:`~esdistill.plugin.query.QueryHook` with itself."""
        self._hook = hook

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Scores from the texts alone (the wrapped reranker's way)."""
        return self.inner.score(query, documents)

    def stored_field(self) -> str | None:
        """The field holding this teacher's vectors in the hook's index, or ``None``."""
        hook = self._hook
        info = getattr(hook, "teacher_vectors", None) if hook is not None else None
        field = info.field if info is not None and info.fingerprint == self.fingerprint else None
        index = getattr(hook, "index", "?")
        if self._path != (index, field is not None):
            self._path = (index, field is not None)
            if field is not None:
                logger.info("rerank of %s by %s reads the stored teacher vectors (%s)", index, self.name, field)
            else:
                what = (f"vectors of another teacher ({info.name!r}, {info.fingerprint[:12]}…)" if info is not None
                        else "no teacher vectors")
                logger.info("index %s holds %s; rerank by %s (%s…) embeds the candidates' texts", index, what,
                            self.name, self.fingerprint[:12])
        return field

    def score_candidates(self, query: str, ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Teacher scores of the candidates ``ids`` (``texts`` are theirs, same order).

        Raises:
            ElasticsearchUnavailable / ConfigError: the lookup failed (the rerank stage then keeps the
                student's order and counts a failure).
        """
        field = self.stored_field()
        if field is None or not ids:
            return self.inner.score(query, texts)
        hook = self._hook
        q = self.inner._query_vector(query)
        source = self._source_param(field)
        resp = hook._es_call("teacher vector lookup", lambda: hook._es.search(
            index=hook.index, query={"ids": {"values": list(ids)}}, size=len(ids), source=source,
            track_total_hits=False, filter_path="hits.hits._id,hits.hits._source"))
        found = {}
        for hit in (resp.get("hits") or {}).get("hits") or []:
            value = (hit.get("_source") or {}).get(field)
            if value is not None:
                found[hit["_id"]] = _decode(value)
        scores = np.zeros(len(ids), dtype=np.float32)
        missing = []
        for i, doc_id in enumerate(ids):
            vec = found.get(doc_id)
            if vec is not None and vec.shape == q.shape:
                scores[i] = float(vec @ q)
            else:
                missing.append(i)
        if missing:
            scores[missing] = self.inner.score(query, [texts[i] for i in missing])
        return scores


    def _source_param(self, field: str) -> dict[str, Any]:
        """``_source`` filtering that returns ``field`` (Elasticsearch >= 9.1 leaves vectors out unless
        ``exclude_vectors`` is false; older versions do not know that key)."""
        if self._source is None:
            from esdistill.plugin.es_client import source_with_vectors

            self._source = source_with_vectors(self._hook._es, [field])
        return {**self._source, "includes": [field]}


def _decode(value: Any) -> np.ndarray:
    """A stored vector as float32: base64 of big-endian float32, or a list of floats."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype=">f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def with_stored_vectors(reranker: Any) -> Any:
    """``reranker`` as a :class:`StoredTeacherReranker` when it is a bi-encoder teacher (it then uses
    the index's stored teacher vectors when they are this teacher's); any other reranker unchanged."""
    from esdistill.plugin.rerank import BiEncoderReranker

    if isinstance(reranker, BiEncoderReranker):
        return StoredTeacherReranker(reranker)
    return reranker
