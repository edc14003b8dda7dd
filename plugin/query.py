"""The query hook: kNN, BM25 and hybrid search over an esdistill index, with an optional teacher
rerank under a deadline and A/B arms.

One call, :meth:`QueryHook.search`, runs the stages a production query needs and times each one:

1. **embed**: the query through the student (an ``OnnxEncoder``), via a bounded LRU cache;
2. **es**: approximate kNN on the index's ``dense_vector`` field (``num_candidates`` tunable), a BM25
   ``multi_match`` over its text fields, or both in one ``_msearch`` round trip; filters (query
   clauses from the allow-list of :mod:`esdistill.plugin.filters`: nothing that reads another index
   or runs a script) go into ``knn.filter`` and the BM25 ``bool.filter``;
3. **fuse** (hybrid): reciprocal rank fusion or a normalized linear combination, client-side, since
   RRF is a licensed feature not present on every cluster (:mod:`esdistill.plugin.fusion`);
4. **rerank** (optional): the teacher rescoring the top N within the request's budget, behind a
   circuit breaker (:mod:`esdistill.plugin.rerank`); a rerank failure never fails the query, and a
   teacher call that hangs past the deadline is abandoned (the student's ranking comes back on time);
5. A/B: the arm of the request's key decides whether to rerank or to show a team-draft interleaving
   of the student's and the reranked ranking, and each answer goes to the exposure log
   (:mod:`esdistill.plugin.ab`).

The model must be the one that made the index's vectors: the hook compares the encoder's fingerprint
with the index's mapping ``_meta`` before its first query, and again as soon as the alias points at
another physical index (looked up before a search, at most every ``alias_check_s``, and after any
search Elasticsearch refuses), and raises :class:`FingerprintError` on a mismatch.

Errors from Elasticsearch become esdistill's own messages: what an exception says never quotes
Elasticsearch's reason (it could name other indices or carry their data); the reason is logged by
this module at WARNING for the operator::

    >>> from esdistill.plugin import connect
    >>> from esdistill.plugin.encoder import OnnxEncoder
    >>> hook = QueryHook(connect(), "scifact", OnnxEncoder("runs/student-int8"))   # doctest: +SKIP
    >>> r = hook.search("vitamin D and bone density", k=5, mode="hybrid")          # doctest: +SKIP
    >>> [h.id for h in r.hits], r.timings["total"]                                 # doctest: +SKIP
    (['4983', '1023', ...], 11.8)
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
from esdistill.plugin._errors import ConfigError, ElasticsearchUnavailable, FingerprintError, IndexNotFound
from esdistill.plugin._lru import LRUCache
from esdistill.plugin.ab import ABTest, Arm, ExposureLog, exposure_fields, team_draft_interleave
from esdistill.plugin.documents import RESERVED_FIELDS, document_text
from esdistill.plugin.es_errors import EsFailure, classify, failure_of_answer
from esdistill.plugin.filters import validate_filters
from esdistill.plugin.fusion import FUSION_METHODS, RRF_K, fuse, score_kind
from esdistill.plugin.index import model_problems, parse_meta
from esdistill.plugin.lexical import LexicalTemplate
from esdistill.plugin.rerank import (
    REASON_BUDGET,
    REASON_NO_RERANKER,
    REASON_NOT_REQUESTED,
    RerankConfig,
    Reranker,
    RerankOutcome,
    RerankResult,
    RerankStage,
)
from esdistill.plugin.teacher_vectors import TeacherInfo
from esdistill.plugin.tune import AUTO, resolve_auto, stored_choice

__all__ = ["MODES", "Hit", "QueryConfig", "QueryHook", "SearchResponse"]

logger = logging.getLogger(__name__)

MODES = ("knn", "hybrid", "bm25")
_MAX_NUM_CANDIDATES = 10_000
_DEFAULT_VECTOR_FIELD = "embedding"
_DEFAULT_TEXT_FIELDS = ("title", "text")
_MULTI_MATCH_TYPES = ("best_fields", "most_fields", "cross_fields")


@dataclass
class QueryConfig:
    """Knobs of the query hook (validated on construction).

    Attributes:
        max_k: the largest ``k`` a request may ask for.
        num_candidates: default kNN ``num_candidates``; ``None`` = ``max(100, 1.5 * depth)`` where
            depth is the number of hits fetched (``k``, or the rerank depth when larger).
        fusion: hybrid fusion method, ``rrf`` or ``linear``.
        rrf_k: the RRF constant.
        linear_weight: ``alpha``, the weight of the kNN list in linear fusion (the lexical list gets
            ``1 - alpha``); each list's scores are min-max normalised first.
        fusion_depth: hits fetched from each retriever in hybrid mode (at least the depth).
        bm25_type: ``multi_match`` type over the text fields (``cross_fields`` scores the fields as
            one combined field, like a concatenated title and text).
        lexical_template: the team's lexical query for ``bm25`` and ``hybrid`` modes instead of the
            ``multi_match`` (a :class:`~esdistill.plugin.lexical.LexicalTemplate`, a parsed clause or
            a JSON file path; checked against the allow-list on construction).
        cache_size: query embeddings kept in the LRU cache (0 disables it).
        rerank: :class:`~esdistill.plugin.rerank.RerankConfig` (top N, chunk size, breaker).
        default_budget_ms: budget for requests that give none (``None`` = no deadline).
        max_budget_ms: the largest budget a request may ask for.
        request_timeout_s: Elasticsearch request timeout; slower answers raise
            :class:`ElasticsearchUnavailable`.
        max_retries: Elasticsearch client retries on connection errors.
        check_fingerprint: compare the encoder with the index's ``_meta`` before searching.
        meta_refresh_s: re-read the index's ``_meta`` at least this often.
        alias_check_s: look up which physical index the alias points at before a search, at most
            this often (0: before every search); a new one has its model checked before the search.
        interleave_names: team names for an interleaving arm: (student, reranked).
    """

    max_k: int = 1000
    num_candidates: int | None = None
    fusion: str = "rrf"
    rrf_k: int = RRF_K
    linear_weight: float = 0.5
    fusion_depth: int = 50
    bm25_type: str = "cross_fields"
    lexical_template: LexicalTemplate | None = None
    cache_size: int = 1024
    rerank: RerankConfig = field(default_factory=RerankConfig)
    default_budget_ms: float | None = None
    max_budget_ms: float = 60_000.0
    request_timeout_s: float = 10.0
    max_retries: int = 1
    check_fingerprint: bool = True
    meta_refresh_s: float = 60.0
    alias_check_s: float = 1.0
    interleave_names: tuple[str, str] = ("student", "rerank")

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= int(self.max_k) <= _MAX_NUM_CANDIDATES:
            problems.append(f"max_k={self.max_k} (1..{_MAX_NUM_CANDIDATES})")
        if self.num_candidates is not None and not 1 <= int(self.num_candidates) <= _MAX_NUM_CANDIDATES:
            problems.append(f"num_candidates={self.num_candidates} (1..{_MAX_NUM_CANDIDATES})")
        if self.fusion not in FUSION_METHODS:
            problems.append(f"fusion={self.fusion!r} (one of {FUSION_METHODS})")
        if not self.rrf_k > 0:
            problems.append(f"rrf_k={self.rrf_k} (> 0)")
        if not 0.0 <= float(self.linear_weight) <= 1.0:
            problems.append(f"linear_weight={self.linear_weight} (0..1)")
        if not 1 <= int(self.fusion_depth) <= _MAX_NUM_CANDIDATES:
            problems.append(f"fusion_depth={self.fusion_depth} (1..{_MAX_NUM_CANDIDATES})")
        if self.bm25_type not in _MULTI_MATCH_TYPES:
            problems.append(f"bm25_type={self.bm25_type!r} (one of {_MULTI_MATCH_TYPES})")
        try:
            self.lexical_template = LexicalTemplate.coerce(self.lexical_template)
        except ConfigError as exc:
            problems.append(str(exc))
        if int(self.cache_size) < 0:
            problems.append(f"cache_size={self.cache_size} (>= 0)")
        if self.default_budget_ms is not None and not 0 < float(self.default_budget_ms) <= self.max_budget_ms:
            problems.append(f"default_budget_ms={self.default_budget_ms} (0 < budget <= max_budget_ms)")
        if not float(self.request_timeout_s) > 0:
            problems.append(f"request_timeout_s={self.request_timeout_s} (> 0)")
        if int(self.max_retries) < 0:
            problems.append(f"max_retries={self.max_retries} (>= 0)")
        if not (math.isfinite(float(self.alias_check_s)) and float(self.alias_check_s) >= 0):
            problems.append(f"alias_check_s={self.alias_check_s} (>= 0 seconds)")
        if len(self.interleave_names) != 2 or self.interleave_names[0] == self.interleave_names[1]:
            problems.append(f"interleave_names={self.interleave_names} (two different names)")
        if problems:
            raise ConfigError("invalid query configuration: " + "; ".join(problems))


@dataclass
class Hit:
    """One search result.

    Attributes:
        id: the document id.
        score: the retrieval score, on the scale ``score_kind`` names. Hits are listed in final
            order, which after a rerank follows the teacher, not ``score``.
        rank: 1-based position in the response.
        source: the stored fields (the vector field and esdistill's bookkeeping fields left out).
        rerank_score: the teacher's score, when the teacher scored this hit.
        team: for an interleaved response, which ranking contributed the hit.
        index: the physical index the hit came from (not part of :meth:`SearchResponse.to_dict`).
        score_kind: the scale of ``score``: ``knn_cosine01`` ((1 + cosine) / 2, in [0, 1]),
            ``knn_dot01``, ``knn_l2`` or ``knn_max_inner_product`` (Elasticsearch's kNN score for the
            index's similarity), ``bm25`` (the lexical query's ``_score``: BM25 times the template's
            boosts and functions, unbounded), ``rrf`` (sum of ``1 / (rrf_k + rank)``, at most
            ``2 / (rrf_k + 1)``) or ``linear`` (weighted sum of min-max normalised scores, in [0, 1]).
    """

    id: str
    score: float
    rank: int
    source: dict[str, Any] = field(default_factory=dict)
    rerank_score: float | None = None
    team: str | None = None
    index: str | None = None
    score_kind: str = "knn_cosine01"

    def to_dict(self) -> dict[str, Any]:
        """The hit in the shape every interface shares (CLI ``--json``, Python, HTTP)."""
        return {"id": str(self.id), "score": float(self.score), "score_kind": self.score_kind, "rank": int(self.rank),
                "source": dict(self.source), "rerank_score": None if self.rerank_score is None else float(self.rerank_score),
                "team": self.team}


@dataclass
class SearchResponse:
    """What :meth:`QueryHook.search` returns.

    Attributes:
        query_id: a fresh id per request (join clicks to the exposure log on it).
        query: the query text.
        mode: ``knn``, ``hybrid`` or ``bm25``.
        k: hits asked for.
        hits: the results, best first.
        variant: what produced the list: ``student``, ``student+rerank`` or ``interleaved``.
        arm: the A/B arm, or ``None`` outside an experiment.
        rerank: how far the teacher rerank ran (``reranked``: full, partial or none; why).
        timings: milliseconds per stage: ``embed``, ``es``, ``fuse``, ``rerank``, ``total``
            (``timings_ms`` in :meth:`to_dict`).
        embedding_cached: the query embedding came from the cache.
        score_kind: the scale of every hit's ``score`` (see :class:`Hit`).
        mode_reason: for ``mode="auto"``, why ``mode`` ran: ``tuned`` (the index's stored choice),
            ``untuned`` or ``other_model`` (knn), ``no_model`` (bm25); ``""`` for an explicit mode.
    """

    query_id: str
    query: str
    mode: str
    k: int
    hits: list[Hit]
    variant: str
    arm: str | None
    rerank: RerankOutcome
    timings: dict[str, float]
    embedding_cached: bool = False
    score_kind: str = "knn_cosine01"
    mode_reason: str = ""

    @property
    def ids(self) -> list[str]:
        """The hit ids, in order."""
        return [h.id for h in self.hits]

    def to_dict(self) -> dict[str, Any]:
        """The response as JSON-ready data: the one shape ``esdistill search --json`` prints and
        ``POST /v1/search`` answers (same keys, ``timings_ms`` in milliseconds).

        Example:
            >>> sorted(resp.to_dict())                                        # doctest: +SKIP
            ['arm', 'embedding_cached', 'hits', 'k', 'mode', 'query', 'query_id', 'rerank',
             'score_kind', 'timings_ms', 'variant']
        """
        r = self.rerank
        return {
            "query_id": self.query_id, "query": self.query, "mode": self.mode, "k": int(self.k),
            "variant": self.variant, "arm": self.arm, "score_kind": self.score_kind,
            "hits": [h.to_dict() for h in self.hits],
            "rerank": {"reranked": r.reranked, "count": int(r.count), "candidates": int(r.candidates),
                       "reason": r.reason, "error": r.error, "ms": round(float(r.ms), 3)},
            "timings_ms": {str(k): round(float(v), 3) for k, v in self.timings.items()},
            "embedding_cached": bool(self.embedding_cached),
            "mode_reason": self.mode_reason,
        }


def _filters_list(filters: Any) -> list[dict[str, Any]]:
    """The request's filters as a list of clauses, checked against the allow-list (see
    :func:`esdistill.plugin.filters.validate_filters`; raises ``FilterNotAllowed``)."""
    return validate_filters(filters)


class _Rejected(ConfigError):
    """Elasticsearch refused a search as a bad request (a filter or parameter it cannot apply)."""


class QueryHook:
    """Search an esdistill index with the student, optionally reranked by the teacher, under A/B.

    Args:
        client: an ``elasticsearch.Elasticsearch`` client (see :func:`esdistill.plugin.connect`).
        index: the index or alias to search.
        encoder: the student ``OnnxEncoder`` (``None`` allows BM25 only).
        reranker: a teacher :class:`~esdistill.plugin.rerank.Reranker` (``None``: no rerank).
        ab: an :class:`~esdistill.plugin.ab.ABTest` assigning ``ab_key`` values to arms.
        exposure_log: where to log what each request showed (an :class:`ExposureLog`).
        config: :class:`QueryConfig`.
        clock: seconds clock for timings and deadlines (``time.perf_counter``).

    Example:
        >>> hook = QueryHook(client, "docs", encoder, reranker=load_reranker("teacher-onnx"),
        ...                  ab=ABTest.from_shares({"student": 0.9, "student+rerank": 0.1}, salt="e1"))
        ...                                                                    # doctest: +SKIP
        >>> hook.search("query", k=10, ab_key="user-7", budget_ms=50).rerank.reranked  # doctest: +SKIP
        'full'
    """

    def __init__(
        self,
        client: Any,
        index: str,
        encoder: Any = None,
        *,
        reranker: Reranker | None = None,
        ab: ABTest | None = None,
        exposure_log: ExposureLog | None = None,
        config: QueryConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not isinstance(index, str) or not index:
            raise ConfigError(f"index must be a non-empty name, got {index!r}")
        self.client = client
        self.index = index
        self.encoder = encoder
        self.config = config or QueryConfig()
        self.ab = ab
        self.exposure_log = exposure_log
        self.reranker = reranker
        self.rerank_stage = (
            RerankStage(reranker, config=self.config.rerank, clock=clock) if reranker is not None else None
        )
        self._clock = clock
        self._cache: LRUCache[str, np.ndarray] = LRUCache(int(self.config.cache_size))
        self._es = client.options(request_timeout=self.config.request_timeout_s,
                                  max_retries=self.config.max_retries, retry_on_timeout=False)
        self._meta_lock = threading.Lock()
        self._checked: set[str] = set()
        self._meta_at = -math.inf
        self._alias_at = -math.inf
        self.vector_field = _DEFAULT_VECTOR_FIELD
        self.text_fields: tuple[str, ...] = _DEFAULT_TEXT_FIELDS
        self._tuned: dict[str, Any] | None = None  # what `esdistill tune` stored: mode="auto" runs it
        self.similarity = "cosine"
        self.teacher_vectors: TeacherInfo | None = None  # the teacher whose document vectors the index stores
        # a reranker that reads the index (stored teacher vectors, BM25 scores from Elasticsearch)
        # gets this hook once: its client, index and lexical query
        attach = getattr(reranker, "attach", None)
        if callable(attach):
            attach(self)

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def open(
        cls,
        index: str,
        model: str | os.PathLike[str] | None,
        *,
        rerank_model: str | os.PathLike[str] | None = None,
        client: Any = None,
        threads: int | None = None,
        **kwargs: Any,
    ) -> QueryHook:
        """Build a hook from folder paths: the student (exported bi-encoder) and optional teacher.

        Args:
            index: index or alias name.
            model: exported student folder or packaged name (``minilm``); ``None`` for BM25 only.
            rerank_model: the teacher, anything :func:`~esdistill.plugin.rerank.load_reranker` takes:
                an exported teacher folder (cross- or bi-encoder), a distillation run folder (the
                teacher spec it chose) or a spec such as ``"0.5*mpnet+0.5*bm25"``; ``None``: no
                rerank. A bi-encoder teacher reads the index's stored teacher vectors when they are its own
                (:class:`~esdistill.plugin.teacher_vectors.StoredTeacherReranker`).
            client: an Elasticsearch client (default :func:`esdistill.plugin.connect`).
            threads: onnxruntime threads for the student and teacher.
            kwargs: passed to :class:`QueryHook` (``ab``, ``exposure_log``, ``config``).

        Raises:
            ModelError / FingerprintError: a model folder is not a valid export.
            ElasticsearchUnavailable: the cluster cannot be reached.
        """
        from esdistill.plugin.es_client import connect

        encoder = None
        if model is not None:
            from esdistill.plugin.encoder import OnnxEncoder
            from esdistill.plugin.models import exported_model

            encoder = OnnxEncoder(exported_model(model), threads=threads)
        reranker = None
        if rerank_model is not None:
            from esdistill.plugin.rerank import load_reranker
            from esdistill.plugin.teacher_vectors import with_stored_vectors

            reranker = with_stored_vectors(load_reranker(rerank_model, threads=threads))
        return cls(client if client is not None else connect(), index, encoder, reranker=reranker, **kwargs)

    # -------------------------------------------------------------------------------- the index
    def _es_call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one Elasticsearch call; translate its failures into esdistill errors (see :meth:`_fail`)."""
        try:
            return fn()
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
        if failure.kind == "timeout":
            raise ElasticsearchUnavailable(
                f"Elasticsearch did not answer the {what} within {self.config.request_timeout_s:g} s; it is "
                "overloaded or stuck. Check the cluster's health, or raise QueryConfig.request_timeout_s."
            ) from None
        if failure.kind in ("unreachable", "tls"):
            raise ElasticsearchUnavailable(
                f"cannot reach Elasticsearch for the {what} on index {self.index!r}: {failure.reason}. "
                "Is it running? Check ESDISTILL_ES_URL."
            ) from None
        if failure.kind == "transport":
            logger.warning("the %s on %s failed in the transport: %s", what, self.index, _cut(failure.reason))
            raise ElasticsearchUnavailable(f"Elasticsearch failed the {what} ({failure.reason.split(':')[0]})") \
                from None
        self._fail(what, failure)

    def _fail(self, what: str, failure: EsFailure) -> NoReturn:
        """Raise esdistill's error for an Elasticsearch error answer; its reason goes to the log only.

        Elasticsearch's reason text can name other indices and quote their data (a lookup in a
        filter), so no message built here contains it; the kind of error (its ``type``, an identifier)
        is kept, with esdistill's words for it.
        """
        status = failure.status
        logger.warning("Elasticsearch answered the %s on %s with status %s: %s", what, self.index, status,
                       _cut(failure.reason))
        if status == 404:
            raise IndexNotFound(self.index) from None
        if status in (401, 403):
            raise ElasticsearchUnavailable(
                f"Elasticsearch refused the {what} on {self.index!r} ({status}): check the "
                "credentials (ESDISTILL_ES_API_KEY / ESDISTILL_ES_USER) and the user's read privilege"
            ) from None
        if status == 400:
            kind = failure.error_type
            words = _ES_TYPE_WORDS.get(kind, "the request is not valid for this index")
            raise _Rejected(
                f"Elasticsearch rejected the {what} on {self.index!r}: {words}"
                f"{f' ({kind})' if kind else ''}. Check the filters and parameters of the request "
                "(Elasticsearch's own reason is in the log)."
            ) from None
        raise ElasticsearchUnavailable(
            f"Elasticsearch failed the {what} on {self.index!r} with status {status}; retry later"
        ) from None

    def _load_meta(self, force: bool = False) -> None:
        """Read the index's esdistill ``_meta`` (vector/text fields) and check the model.

        The mappings are re-read every ``meta_refresh_s``, when ``force`` is set, and as soon as the
        alias points at a physical index not checked yet (looked up at most every ``alias_check_s``),
        so that a swap to another model's index is noticed before a search runs on it.
        """
        now = self._clock()
        if not force and now - self._meta_at < self.config.meta_refresh_s:
            if now - self._alias_at < self.config.alias_check_s:
                return
            physical = self._physical_indices()
            self._alias_at = now
            if physical <= self._checked:
                return
            logger.info("index %s now points at %s: checking the model again", self.index,
                        sorted(physical - self._checked))
            force = True
        with self._meta_lock:
            if not force and now - self._meta_at < self.config.meta_refresh_s:
                return
            self._meta_at = -math.inf  # until the check below passes, every search checks again
            mappings = self._es_call("mapping lookup", lambda: self._es.indices.get_mapping(index=self.index))
            checked: set[str] = set()
            for physical_name, body in dict(mappings).items():
                meta = (body.get("mappings") or {}).get("_meta") or {}
                self._apply_meta(physical_name, meta)
                checked.add(physical_name)
            self._checked = checked
            self._meta_at = self._alias_at = now

    def _physical_indices(self) -> set[str]:
        """The physical indices behind the alias (the index itself when it is one)."""
        found = self._es_call("alias lookup", lambda: self._es.indices.get_alias(index=self.index))
        return set(dict(found))

    def _apply_meta(self, physical: str, meta: Mapping[str, Any]) -> None:
        own = parse_meta(dict(meta), physical)
        self._tuned = stored_choice(meta)
        self.vector_field = own.vector_field if own else _DEFAULT_VECTOR_FIELD
        self.text_fields = tuple(own.text_fields) if own and own.text_fields else _DEFAULT_TEXT_FIELDS
        self.similarity = own.similarity if own else "cosine"
        self.teacher_vectors = TeacherInfo.from_meta(own) if own else None
        if self.encoder is None or not self.config.check_fingerprint:
            return
        if own is None:
            logger.warning("index %s has no esdistill model fingerprint in its _meta; cannot check that "
                           "the query model made its vectors", physical)
            return
        mine = str(self.encoder.fingerprint)
        paired = str(getattr(getattr(self.encoder, "manifest", None), "document_fingerprint", "") or "")
        if model_problems(own, fingerprint=mine, dims=int(self.encoder.dims), document_fingerprint=paired):
            raise FingerprintError(
                f"the query model (fingerprint {mine[:12]}…, {self.encoder.dims} dims) did not make the vectors of "
                f"index {self.index!r} (physical {physical}: fingerprint {own.model_fingerprint[:12]}…, {own.dims} "
                f"dims, model {own.model_name!r}). Query with the model the index was built with, or "
                f"re-embed it: `esdistill index reindex {self.index} --model DIR`.",
                expected=own.model_fingerprint, actual=mine,
            )

    # -------------------------------------------------------------------------------- embedding
    def embed_query(self, text: str) -> tuple[np.ndarray, bool]:
        """The query's embedding (from the LRU cache when possible) and whether it was cached."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit, True
        vec = np.asarray(self.encoder.encode([text], kind="query"), dtype=np.float32)[0]
        vec.setflags(write=False)
        self._cache.put(text, vec)
        return vec, False

    def clear_cache(self) -> None:
        """Forget every cached query embedding (benchmarks measure uncached embedding this way)."""
        with self._cache._lock:
            self._cache._data.clear()

    @property
    def cache_info(self) -> dict[str, int]:
        """Embedding-cache size and hit/miss counters."""
        return {"size": len(self._cache), "max_size": self._cache.size, "hits": self._cache.hits,
                "misses": self._cache.misses}

    # ----------------------------------------------------------------------------------- bodies
    def _source_filter(self) -> dict[str, Any]:
        """Leave the vector and esdistill's bookkeeping fields (content hash, model fingerprint) out."""
        return {"excludes": [self.vector_field, *RESERVED_FIELDS]}

    def _knn_body(self, vector: np.ndarray, depth: int, num_candidates: int,
                  filters: list[dict[str, Any]]) -> dict[str, Any]:
        knn: dict[str, Any] = {"field": self.vector_field, "query_vector": vector.tolist(), "k": depth,
                               "num_candidates": num_candidates}
        if filters:
            knn["filter"] = filters
        return {"knn": knn, "size": depth, "_source": self._source_filter(), "track_total_hits": False}

    def _bm25_body(self, text: str, depth: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
        """The lexical leg: the configured template (or a ``multi_match`` over the text fields), with
        the request's filters as ``bool.filter`` around it."""
        template = self.config.lexical_template
        if template is not None:
            match = template.render(text)
        else:
            match = {"multi_match": {"query": text, "fields": list(self.text_fields), "type": self.config.bm25_type}}
        return {"query": {"bool": {"must": [match], "filter": filters}}, "size": depth,
                "_source": self._source_filter(), "track_total_hits": False}

    # ----------------------------------------------------------------------------------- search
    def _validate(self, text: Any, k: Any, mode: Any, budget_ms: Any, num_candidates: Any) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"the query text must be a non-empty string, got {_shown(text)}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # the tokenizer and Elasticsearch both need valid Unicode
            raise ConfigError(f"the query text is not valid Unicode: it holds a lone surrogate "
                              f"({text[exc.start]!r} at position {exc.start}); fix the text at its source") from None
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.config.max_k:
            raise ConfigError(f"k={_shown(k)} must be an integer between 1 and {self.config.max_k}")
        if mode not in (*MODES, AUTO):
            raise ConfigError(f"mode={_shown(mode)} is unknown; use one of {(*MODES, AUTO)}")
        if mode not in ("bm25", AUTO) and self.encoder is None:
            raise ConfigError(f"mode={mode!r} needs a query encoder; this hook was built without one (bm25 only)")
        if budget_ms is not None and (
            isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float))
            or not 0 < budget_ms <= self.config.max_budget_ms
        ):
            raise ConfigError(
                f"budget_ms={_shown(budget_ms)} must be a number of milliseconds in "
                f"(0, {self.config.max_budget_ms:g}]"
            )
        if num_candidates is not None and (
            isinstance(num_candidates, bool) or not isinstance(num_candidates, int)
            or not k <= num_candidates <= _MAX_NUM_CANDIDATES
        ):
            raise ConfigError(f"num_candidates={_shown(num_candidates)} must be an integer between k={k} and "
                              f"{_MAX_NUM_CANDIDATES}")

    def _retrieve(self, text: str, vector: np.ndarray | None, mode: str, depth: int, num_candidates: int,
                  filters: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """The raw hit lists: [knn] / [bm25] / [bm25, knn]."""
        if mode == "knn":
            body = self._knn_body(vector, depth, num_candidates, filters)  # type: ignore[arg-type]
            return [self._es_call("kNN search", lambda: self._es.search(index=self.index, **body))["hits"]["hits"]]
        if mode == "bm25":
            body = self._bm25_body(text, depth, filters)
            return [self._es_call("BM25 search", lambda: self._es.search(index=self.index, **body))["hits"]["hits"]]
        searches = [{}, self._bm25_body(text, depth, filters), {},
                    self._knn_body(vector, depth, num_candidates, filters)]  # type: ignore[arg-type]
        resp = self._es_call("hybrid search", lambda: self._es.msearch(index=self.index, searches=searches))
        out = []
        for name, item in zip(("BM25", "kNN"), resp["responses"]):
            if "error" in item:
                self._fail(f"{name} part of the hybrid search", failure_of_answer(int(item.get("status") or 0),
                                                                                 item["error"]))
            out.append(item["hits"]["hits"])
        return out

    def search(
        self,
        text: str,
        *,
        k: int = 10,
        mode: str = AUTO,
        filters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        rerank: bool | None = None,
        ab_key: str | None = None,
        arm: str | None = None,
        budget_ms: float | None = None,
        num_candidates: int | None = None,
        fusion: str | None = None,
        alpha: float | None = None,
    ) -> SearchResponse:
        """Search the index.

        Args:
            text: the query.
            k: hits to return (1..``config.max_k``).
            mode: ``knn`` (student vectors), ``bm25`` (text fields), ``hybrid`` (both, fused) or ``auto``
                (the default): the mode and fusion ``esdistill tune`` stored for the index, knn when it was
                never tuned or tuned for another model (``SearchResponse.mode`` says which ran,
                ``mode_reason`` why).
            filters: Elasticsearch query clause(s) every hit must match (e.g. ``{"term": {"lang": "en"}}``),
                from the allow-list of :func:`esdistill.plugin.filters.validate_filters`.
            rerank: force the teacher rerank on (``True``) or off (``False``); ``None`` lets the A/B arm
                decide (no rerank outside an experiment).
            ab_key: the user or session id that picks the A/B arm.
            arm: force this arm (a per-request override of the assignment).
            budget_ms: the request's deadline in ms from the call; the rerank stops when it is spent
                and the student's order is kept for the rest (``config.default_budget_ms`` when None).
            num_candidates: kNN candidates per shard (default from ``config``); at least ``k``.
            fusion: hybrid fusion for this request, ``rrf`` or ``linear`` (default ``config.fusion``).
            alpha: kNN weight of ``linear`` fusion for this request (default ``config.linear_weight``).

        Returns:
            A :class:`SearchResponse`.

        Raises:
            ConfigError: a bad argument (the message names it), no such index, or a filter
                Elasticsearch rejects (in esdistill's words; Elasticsearch's reason is logged).
            FilterNotAllowed: (a ConfigError) a filter clause outside the allow-list, named by its path.
            FingerprintError: the encoder did not make the index's vectors.
            ElasticsearchUnavailable: Elasticsearch is down, refuses us, or does not answer in time.
        """
        t0 = self._clock()
        budget_ms = self.config.default_budget_ms if budget_ms is None else budget_ms
        self._validate(text, k, mode, budget_ms, num_candidates)
        explicit_fusion = fusion is not None or alpha is not None
        fusion = self.config.fusion if fusion is None else fusion
        alpha = self.config.linear_weight if alpha is None else alpha
        if fusion not in FUSION_METHODS:
            raise ConfigError(f"fusion={_shown(fusion)} is unknown; use one of {FUSION_METHODS}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"alpha={_shown(alpha)} must be a weight between 0 and 1 (the kNN share of linear fusion)")
        flist = _filters_list(filters)
        chosen, want_rerank, interleave = self._plan(rerank, ab_key, arm)
        deadline = None if budget_ms is None else t0 + float(budget_ms) / 1000.0
        self._load_meta()
        mode, fusion, alpha, mode_reason = self._resolve_auto(mode, fusion, alpha, explicit_fusion)

        timings = {"embed": 0.0, "es": 0.0, "fuse": 0.0, "rerank": 0.0, "total": 0.0}
        depth = max(k, self.config.rerank.top_n) if want_rerank and self.rerank_stage is not None else k
        try:
            order, by_id, cached = self._candidates(text, mode, depth, num_candidates, flist, timings,
                                                    fusion=fusion, alpha=float(alpha))
        except _Rejected:
            # the alias may have moved to another model's index (other dims) since the last look:
            # then the model mismatch is the answer, not the refused search
            self._load_meta(force=True)
            raise
        student_ids = [d for d, _ in order]

        outcome = RerankOutcome(reason=REASON_NOT_REQUESTED)
        rerank_scores: dict[str, float] = {}
        final_ids = student_ids
        if want_rerank and self.rerank_stage is None:
            outcome = RerankOutcome(reason=REASON_NO_RERANKER)
        elif want_rerank:
            t = self._clock()
            final_ids, rerank_scores, outcome = self._rerank(text, student_ids, by_id, deadline)
            timings["rerank"] = (self._clock() - t) * 1000.0

        query_id = uuid.uuid4().hex
        teams: dict[str, str] = {}
        if interleave and self.rerank_stage is not None:
            il = team_draft_interleave(student_ids, final_ids, seed=query_id, k=k,
                                       names=self.config.interleave_names)
            final_ids, teams, variant = list(il.ids), dict(zip(il.ids, il.teams)), "interleaved"
        else:
            variant = "student+rerank" if outcome.count > 0 else "student"

        score_of = dict(order)
        kind = score_kind(mode, fusion=fusion, similarity=self.similarity)
        hits_out = [
            Hit(id=d, score=score_of[d], rank=rank, source=by_id[d].get("_source") or {},
                rerank_score=rerank_scores.get(d), team=teams.get(d), index=by_id[d].get("_index"), score_kind=kind)
            for rank, d in enumerate(final_ids[:k], start=1)
        ]
        timings["total"] = (self._clock() - t0) * 1000.0
        response = SearchResponse(
            query_id=query_id, query=text, mode=mode, k=k, hits=hits_out, variant=variant,
            arm=chosen.name if chosen else None, rerank=outcome, timings=timings, embedding_cached=cached,
            score_kind=kind, mode_reason=mode_reason,
        )
        self._log_exposure(response, ab_key, bool(teams), chosen=chosen, forced=arm is not None,
                           rerank_override=rerank)
        return response

    def _resolve_auto(self, mode: str, fusion: str, alpha: float,
                      explicit_fusion: bool) -> tuple[str, str, float, str]:
        """``mode="auto"`` as the index's tuned choice (:func:`esdistill.plugin.tune.resolve_auto`):
        the mode, its fusion and kNN weight (unless the request gave its own), and why."""
        if mode != AUTO:
            return mode, fusion, alpha, ""
        auto = resolve_auto(self._tuned, self.encoder)
        if auto.fusion and not explicit_fusion:
            fusion = str(auto.fusion.get("fusion", fusion))
            alpha = float(auto.fusion.get("alpha", alpha))
        return auto.mode, fusion, alpha, auto.reason

    def _plan(self, rerank: bool | None, ab_key: str | None, arm: str | None) -> tuple[Arm | None, bool, bool]:
        """The request's arm, whether to rerank, and whether to interleave."""
        if arm is not None and self.ab is None:
            raise ConfigError(f"arm={arm!r} given but this hook runs no A/B test; pass ab=ABTest(...)")
        if rerank and self.rerank_stage is None:
            raise ConfigError("rerank=True but this hook has no reranker; build it with reranker=load_reranker(DIR)")
        chosen = self.ab.resolve(ab_key, override=arm) if self.ab is not None else None
        interleave = bool(chosen and chosen.interleave) and rerank is not False
        want_rerank = rerank if rerank is not None else bool(chosen and (chosen.rerank or chosen.interleave))
        return chosen, bool(want_rerank), interleave

    def _candidates(
        self, text: str, mode: str, depth: int, num_candidates: int | None, filters: list[dict[str, Any]],
        timings: dict[str, float], *, fusion: str, alpha: float,
    ) -> tuple[list[tuple[str, float]], dict[str, dict[str, Any]], bool]:
        """Embed, retrieve and (hybrid) fuse: the student's top ``depth`` as (id, score), the raw hits."""
        vector, cached = None, False
        if mode != "bm25":
            t = self._clock()
            vector, cached = self.embed_query(text)
            timings["embed"] = (self._clock() - t) * 1000.0
        fetch = depth if mode != "hybrid" else max(depth, self.config.fusion_depth)
        nc = num_candidates if num_candidates is not None else self.config.num_candidates
        nc = min(_MAX_NUM_CANDIDATES, max(nc if nc is not None else max(100, math.ceil(1.5 * fetch)), fetch))
        t = self._clock()
        lists = self._retrieve(text, vector, mode, fetch, nc, filters)
        timings["es"] = (self._clock() - t) * 1000.0
        self._check_physical(lists)
        by_id: dict[str, dict[str, Any]] = {}
        for hits in lists:
            for h in hits:
                by_id.setdefault(h["_id"], h)
        if mode != "hybrid":
            return [(h["_id"], float(h["_score"] or 0.0)) for h in lists[0][:depth]], by_id, cached
        t = self._clock()
        ranked = [[(h["_id"], float(h["_score"] or 0.0)) for h in hits] for hits in lists]
        fused = fuse(ranked, method=fusion, rrf_k=self.config.rrf_k,
                     weights=None if fusion == "rrf" else [1.0 - alpha, alpha])
        timings["fuse"] = (self._clock() - t) * 1000.0
        return fused[:depth], by_id, cached

    def _rerank(
        self, text: str, student_ids: list[str], by_id: dict[str, dict[str, Any]], deadline: float | None
    ) -> tuple[list[str], dict[str, float], RerankOutcome]:
        """The teacher's pass over the student's top N: new order, teacher scores, outcome."""
        head = student_ids[: self.config.rerank.top_n]
        texts = [self._text_of(by_id[d].get("_source") or {}) for d in head]
        result = self._run_stage(text, texts, deadline, head)
        scores = {head[i]: s for i, s in enumerate(result.scores) if s is not None}
        return [head[i] for i in result.order] + student_ids[len(head):], scores, result.outcome

    def _run_stage(self, text: str, texts: list[str], deadline: float | None, ids: list[str]) -> RerankResult:
        """Run the rerank stage; under a deadline, in a helper thread this query stops waiting for
        when the deadline passes.

        The stage stops between chunks when its estimate of the teacher's cost says the next chunk
        will not fit, but it cannot interrupt a teacher call that hangs (or the first call, before
        anything is known about the teacher). Such a call is abandoned: it finishes in the background
        (its timing still teaches the stage's estimate) and this query gets the student's ranking,
        on time.
        """
        stage = self.rerank_stage
        assert stage is not None
        if deadline is None or deadline - self._clock() <= 0:
            return stage.run(text, texts, deadline=deadline, ids=ids)  # no deadline, or a stop before any call
        started = self._clock()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = stage.run(text, texts, deadline=deadline, ids=ids)
            except BaseException as exc:  # noqa: BLE001 - handed back to the query's thread
                box["error"] = exc

        worker = threading.Thread(target=work, name="esdistill-rerank", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - self._clock()))
        if "result" in box:
            return box["result"]
        if "error" in box:
            raise box["error"]
        waited_ms = (self._clock() - started) * 1000.0
        logger.warning("the reranker did not return within the budget (%.0f ms); answering with the student's "
                       "ranking and leaving the call to finish in the background", waited_ms)
        n = len(texts)
        outcome = RerankOutcome(reranked="none", count=0, candidates=n, reason=REASON_BUDGET, ms=waited_ms)
        return RerankResult(list(range(n)), [None] * n, outcome)

    def _log_exposure(self, response: SearchResponse, ab_key: str | None, interleaved: bool, *,
                      chosen: Arm | None, forced: bool, rerank_override: bool | None) -> None:
        """One exposure row: the arm assigned, the variant served and why (see
        :func:`esdistill.plugin.ab.exposure_fields`), latency, and the interleaving teams."""
        if self.exposure_log is None:
            return
        extra: dict[str, Any] = {"mode": response.mode, "k": response.k,
                                 **exposure_fields(chosen, response.variant, response.rerank,
                                                   forced=forced, rerank_override=rerank_override),
                                 "latency_ms": round(float(response.timings.get("total", 0.0)), 3)}
        if interleaved:
            extra["names"] = list(self.config.interleave_names)
        self.exposure_log.record(query_id=response.query_id, key=ab_key, arm=response.arm, shown=response.ids,
                                 teams=[h.team for h in response.hits] if interleaved else None, **extra)

    def _text_of(self, source: Mapping[str, Any]) -> str:
        """The text the teacher scores: :func:`document_text` of the hit, a non-string value (a
        BM25-only hit whose field holds a list, say) read as its ``str``."""
        fields_ = {f: v if v is None or isinstance(v, str) else str(v)
                   for f, v in ((f, source.get(f)) for f in self.text_fields)}
        return document_text(fields_, self.text_fields)

    def _check_physical(self, lists: list[list[dict[str, Any]]]) -> None:
        """Re-check the model when hits come from a physical index not checked yet (alias moved)."""
        seen = {h.get("_index") for hits in lists for h in hits}
        if seen - self._checked - {None}:
            logger.info("index %s now serves from %s: checking the model again", self.index, sorted(seen - self._checked))
            self._load_meta(force=True)


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about user input (a huge
    query is not echoed whole, and an int too long for ``repr`` does not break the message)."""
    try:
        text = repr(value)
    except ValueError:  # int longer than sys.get_int_max_str_digits()
        text = f"<{type(value).__name__} of {value.bit_length()} bits>" if isinstance(value, int) else "<?>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: esdistill's words for the kinds of error Elasticsearch gives a search it refuses
_ES_TYPE_WORDS = {
    "parsing_exception": "a clause or parameter is malformed",
    "x_content_parse_exception": "a clause or parameter is malformed",
    "query_shard_exception": "a filter or the query does not fit the type of its field, or a value does not parse",
    "illegal_argument_exception": "a parameter or value is not valid",
    "number_format_exception": "a value is not a number",
    "search_phase_execution_exception": "the search could not run on the index's shards",
}
def _cut(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
