"""The HTTP service behind ``esdistill serve``: search, ingest and index info over a versioned JSON API.

Needs the ``serve`` extra (FastAPI and uvicorn), imported only here; ``import esdistill.plugin`` never
imports a web framework. Routes:

=========================  =====================================================================
``POST /v1/search``        kNN / hybrid / BM25 search, optional teacher rerank, A/B arms
``POST /v1/ingest``        embed and index a batch of documents
``DELETE /v1/documents/ID``  delete one document (404 when it is not there)
``GET /v1/index/{name}``   the alias, its physical indices and their models (name must be ours)
``POST /v1/embeddings``    the student's vectors in OpenAI's embeddings shape (:mod:`._service_openai`)
``POST /v1/rerank``        the reranker's scores for a query and texts, as Elasticsearch's rerank services
``GET /healthz``           the process is alive (no Elasticsearch call)
``GET /readyz``            Elasticsearch reachable, the index present, the model matches its vectors;
                           how many vectors are missing or stale (``vectors``, informative only)
``GET /metrics``           Prometheus text format
``GET /openapi.json``      the OpenAPI schema of all of the above (no ``/docs`` UI: it would load
                           scripts from a public CDN)
=========================  =====================================================================

Search filters must pass the allow-list of :mod:`esdistill.plugin.filters` (no clause that reads
another index or runs a script); a refused one is a 400 naming its path. Elasticsearch's own error
text never reaches a client: answers carry esdistill's message, the service log has the reason.

Every error is JSON ``{"error": {"type", "message", "details"}}``: 422 for a request that does not
match the schema (``details`` lists every problem), 400 for a request Elasticsearch or the hooks
refuse, 401/403 for a missing/wrong API key, 413 for a body above the limit, 429 from the rate
limit, and **503 when Elasticsearch is unavailable** (with ``Retry-After``). ``/readyz`` turns false
while Elasticsearch is down and true again by itself when it comes back.

Example:
    >>> from esdistill.plugin.service import create_app                  # doctest: +SKIP
    >>> app = create_app(ServiceSettings(index="docs", model="runs/student-int8"))  # doctest: +SKIP
"""

# No ``from __future__ import annotations`` here on purpose: the request models are built inside
# create_app (their limits come from the settings), and FastAPI/pydantic must see real types.

import dataclasses
import json
import logging
import math
import signal
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from esdistill.plugin._errors import (
    ConfigError,
    ElasticsearchUnavailable,
    EsdistillError,
    FingerprintError,
    ModelError,
)
from esdistill.plugin._service_guards import (
    API_KEY_HEADER,
    ApiKeyGuard,
    GuardMiddleware,
    TokenBucketLimiter,
    error_body,
)
from esdistill.plugin.es_errors import classify_chain
from esdistill.plugin.filters import ALLOWED_CLAUSES, validate_filters
from esdistill.plugin.metrics import CONTENT_TYPE, ServiceMetrics
from esdistill.plugin.service_settings import ServiceSettings

__all__ = ["API_VERSION", "ServiceState", "create_app", "serve"]

logger = logging.getLogger(__name__)

API_VERSION = "v1"
_RETRY_AFTER_S = "5"
#: a scrape of /metrics re-runs the readiness check when the last one is older than this
_READY_MAX_AGE_S = 5.0
#: how long /readyz reuses its count of missing and stale vectors
_VECTORS_MAX_AGE_S = 30.0
#: refused documents listed in one ingest answer (the counts are always complete)
_MAX_ERRORS = 100


def _require_serve_extra():
    try:
        import fastapi
    except ImportError as exc:  # pragma: no cover - the test environment has the extra
        raise ConfigError(f"the HTTP service needs the serve extra ({exc}); install it with "
                          "`pip install 'esdistill[serve]'`") from None
    return fastapi


# ---------------------------------------------------------------------------------------------- state
class ServiceState:
    """Everything the routes share: the client, the model, the hooks and the metrics.

    Built once by :func:`create_app`; the model is loaded (and its fingerprint verified) up front, so
    a broken model folder stops the service before it binds its port. Elasticsearch is *not* needed
    at start: the service starts while it is down, reports not-ready, and recovers by itself.
    """

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        from esdistill.plugin.encoder import OnnxEncoder
        from esdistill.plugin.es_client import connect
        from esdistill.plugin.index import IndexManager
        from esdistill.plugin.query import QueryHook

        self.settings = settings
        self.metrics = metrics
        self.encoder = OnnxEncoder(settings.model, threads=settings.threads)
        self.manifest = self.encoder.manifest
        self.reranker = None
        if settings.rerank:
            from esdistill.plugin.rerank import load_reranker
            from esdistill.plugin.teacher_vectors import with_stored_vectors

            # a bi-encoder teacher reads the index's stored teacher vectors when they are its own
            self.reranker = with_stored_vectors(load_reranker(settings.rerank, threads=settings.threads))
        self.ab = None
        if settings.ab_rerank_share is not None:
            from esdistill.plugin.ab import ABTest

            share = float(settings.ab_rerank_share)
            self.ab = ABTest.from_shares({"student": 1.0 - share, "student+rerank": share},
                                         salt=settings.ab_salt)
        self.exposure = None
        if settings.exposure_log:
            from esdistill.plugin.ab import ExposureLog

            self.exposure = ExposureLog(settings.exposure_log, to_logger=False)
        self.client = connect(settings.es_url, request_timeout=settings.es_timeout_s, check=False,
                              max_retries=settings.es_max_retries, retry_on_timeout=False)
        self.index = IndexManager(self.client, settings.index)
        self.query = QueryHook(self.client, settings.index, self.encoder, reranker=self.reranker, ab=self.ab,
                               exposure_log=self.exposure, config=_query_config(settings))
        self._ready_at = -math.inf

    def ingest(self, documents: list[dict[str, Any]], *, refresh: bool) -> dict[str, Any]:
        """Embed and index ``documents``; return the summary with the reason of every refused one.

        A hook is built per request: it checks the model against the index (which may have moved to
        a new physical index since the last request) and fails fast while Elasticsearch is down.
        """
        import tempfile

        from esdistill.plugin._bulk import RetryPolicy
        from esdistill.plugin.ingest import IngestHook

        retry = RetryPolicy(initial_delay=0.2, max_delay=2.0, give_up_after=self.settings.ingest_retry_s)
        with tempfile.TemporaryDirectory(prefix="esdistill-ingest-") as tmp:
            dead = Path(tmp) / "dead-letter.jsonl"
            hook = IngestHook(self.client, self.settings.index, self.encoder, progress=False, refresh=refresh,
                              dead_letter=dead, retry=retry, request_timeout=self.settings.es_timeout_s,
                              batch_size=64)
            summary = _jsonable(hook.ingest(documents, source="http"))
            errors = []
            if dead.exists():
                for line in dead.read_text(encoding="utf-8", errors="replace").splitlines()[:_MAX_ERRORS]:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    errors.append({k: entry.get(k) for k in ("position", "id", "stage", "reason")})
        summary.pop("dead_letter", None)
        summary["errors"] = errors
        return summary

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.exposure is not None:
                self.exposure.close()

    def _fast_client(self):
        return self.client.options(request_timeout=min(2.0, self.settings.es_timeout_s), max_retries=0)

    def index_present(self) -> bool | None:
        """Whether the served index exists (None: Elasticsearch cannot tell us right now)."""
        from esdistill.plugin.index import IndexManager

        try:
            return IndexManager(self._fast_client(), self.settings.index).exists()
        except Exception:  # noqa: BLE001 - any failure here means we cannot know
            return None

    def readiness(self) -> dict[str, Any]:
        """Check Elasticsearch, the index and the model; never raises.

        Only index-level calls on the served index are made (no cluster privilege is needed): an
        answer to the first one is what "Elasticsearch reachable" means.
        """
        checks: dict[str, Any] = {"elasticsearch": False, "index": False, "model": False}
        reason = None
        fast = self._fast_client()
        try:
            from esdistill.plugin.index import IndexManager

            mgr = IndexManager(fast, self.settings.index)
            present = mgr.exists()
            checks["elasticsearch"] = True
            if present:
                checks["index"] = True
                mgr.check_model(self.manifest, queries_only=True)
                checks["model"] = True
            else:
                reason = (f"index {self.settings.index!r} does not exist; create it with "
                          f"`esdistill index create {self.settings.index} --model DIR`")
        except FingerprintError as exc:
            reason = str(exc)
        except EsdistillError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure to talk to ES means "not ready"
            kind = _es_failure(exc)
            reason = (f"Elasticsearch is unavailable ({type(exc).__name__})" if kind == "unavailable"
                      else f"Elasticsearch answered with an error ({_summary(exc)})")
        ready = all(checks.values())
        self.metrics.ready.set(1.0 if ready else 0.0)
        self._ready_at = time.monotonic()
        # the short fingerprint only: /readyz answers without a key
        return {"ready": ready, "checks": checks, "reason": reason, "index": self.settings.index,
                "model": {"name": self.manifest.name, "fingerprint": self.manifest.short_fingerprint},
                "vectors": self.vector_health() if ready else None}

    def vector_health(self, max_age_s: float = _VECTORS_MAX_AGE_S) -> dict[str, Any] | None:
        """Missing and stale vectors of the served index (cached ``max_age_s``; ``None`` when they
        cannot be counted). Exact up to a thousand documents with a vector, sampled above (the answer
        says which); it never makes the service unready."""
        now = time.monotonic()
        cached = getattr(self, "_vectors", None)
        if cached is not None and now - cached[0] < max_age_s:
            return cached[1]
        from esdistill.plugin._bulk import RetryPolicy
        from esdistill.plugin.sync import vector_health

        try:
            health = vector_health(self._fast_client(), self.settings.index, exact_limit=1000, sample=200,
                                   refresh=False, policy=RetryPolicy(initial_delay=0.1, max_delay=0.2,
                                                                     give_up_after=0.5)).to_dict()
            report: dict[str, Any] | None = {k: health[k] for k in (
                "missing_vectors", "stale_vectors", "stale_vectors_exact", "no_text", "checked", "counts")}
        except Exception as exc:  # noqa: BLE001 - the counts are informative; readiness does not depend on them
            logger.debug("could not count missing/stale vectors: %s", type(exc).__name__)
            report = None
        self._vectors = (now, report)
        return report

    def delete(self, doc_id: str, *, refresh: bool) -> dict[str, Any]:
        """Delete one document of the served index; ``deleted`` is False when it was not there."""
        from esdistill.plugin._bulk import RetryPolicy
        from esdistill.plugin._writes import delete_documents

        retry = RetryPolicy(initial_delay=0.2, max_delay=2.0, give_up_after=self.settings.ingest_retry_s)
        result = delete_documents(self.client, self.settings.index, [doc_id], policy=retry, refresh=refresh)
        if result.failed:
            raise ConfigError(f"Elasticsearch refused to delete document {doc_id!r}")
        return {"index": self.settings.index, "id": doc_id, "deleted": bool(result.deleted)}

    def refresh_ready_gauge(self, max_age_s: float = _READY_MAX_AGE_S) -> None:
        """Re-run the readiness check when the last one is older than ``max_age_s`` (a scrape calls it)."""
        if time.monotonic() - self._ready_at >= max_age_s:
            self.readiness()


def _query_config(settings: ServiceSettings):
    from esdistill.plugin.query import QueryConfig
    from esdistill.plugin.rerank import RerankConfig

    rerank = RerankConfig(top_n=settings.rerank_top_n) if settings.rerank_top_n else RerankConfig()
    return QueryConfig(max_k=settings.max_k, rerank=rerank, default_budget_ms=settings.default_budget_ms,
                       request_timeout_s=settings.es_timeout_s, max_retries=settings.es_max_retries,
                       lexical_template=settings.lexical_template, fusion=settings.fusion,
                       linear_weight=float(settings.alpha))


# ---------------------------------------------------------------------------------------------- errors
def _es_failure(exc: BaseException) -> str | None:
    """Classify an exception (or what caused it): ``unavailable``, ``not_found``, ``bad_request`` or None."""
    if any(isinstance(e, ElasticsearchUnavailable) for e in _chain(exc)):
        return "unavailable"
    failure = classify_chain(exc)
    if failure is None:
        return None
    if failure.kind in ("index_not_found", "not_found"):
        return "not_found"
    if failure.unavailable or failure.kind == "pit_lost":
        return "unavailable"  # down, overloaded, or our credentials towards it are wrong
    return "bad_request"


def _chain(exc: BaseException | None, depth: int = 10) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and len(out) < depth:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _summary(exc: BaseException) -> str:
    """What a client may see of an Elasticsearch failure: its class and status, never its reason text
    (which can name other indices); the reason is logged instead."""
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", None)
    if status:  # an answer from Elasticsearch, whose reason only the log may see
        body = getattr(exc, "body", None)
        logger.warning("Elasticsearch answered %s (status %s): %s", type(exc).__name__, status,
                       str(body if body is not None else exc)[:1000])
        return f"{type(exc).__name__}, status {status}"
    return type(exc).__name__


def _jsonable(value: Any) -> Any:
    """Turn dataclasses, tuples and non-finite floats into plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return _jsonable(value.to_dict())
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


# ---------------------------------------------------------------------------------------------- app
def create_app(settings: ServiceSettings):
    """Build the FastAPI application for ``settings``.

    Args:
        settings: validated :class:`ServiceSettings`.

    Returns:
        A ``fastapi.FastAPI`` app (an ASGI callable); run it with uvicorn or :func:`serve`.

    Raises:
        ConfigError: the serve extra is missing.
        ModelError / FingerprintError: the model folder is missing, broken or modified.
    """
    _require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from pydantic import BaseModel, ConfigDict, Field, model_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.routing import Match

    metrics = ServiceMetrics()
    state = ServiceState(settings, metrics)
    s = settings

    # ------------------------------------------------------------------ schemas
    # the schema says exactly what this configuration accepts (arms, whether a reranker exists)
    if state.reranker is not None:
        rerank_type: Any = bool | None
        rerank_doc = "rerank with the teacher (true/false); null lets the A/B arm decide"
    else:
        rerank_type = Literal[False] | None
        rerank_doc = "this service has no reranker: only false or null"
    if state.ab is not None:
        arm_type: Any = Literal[tuple(a.name for a in state.ab.arms)] | None  # type: ignore[misc]
        arm_doc = "force this A/B arm (a per-request override of the assignment)"
    else:
        arm_type = None
        arm_doc = "this service runs no A/B test: only null"

    # one Elasticsearch query clause: an object with exactly one key, the query type; the allow-list
    # (checked recursively by the route, so that a refusal is a 400 naming the clause) is in the schema
    Clause = Annotated[dict[str, Any], Field(
        min_length=1, max_length=1,
        json_schema_extra={"propertyNames": {"enum": list(ALLOWED_CLAUSES)}},
        description="one query clause of type " + ", ".join(ALLOWED_CLAUSES) + " (terms without a lookup; "
                    "bool, constant_score, dis_max and nested of allowed clauses)")]

    class SearchRequest(BaseModel):
        """A search. ``filters`` are Elasticsearch query clauses applied as filters."""

        model_config = ConfigDict(extra="forbid")
        query: str = Field(min_length=1, max_length=s.max_query_chars, description="the query text")
        k: int = Field(10, ge=1, le=s.max_k, description="hits to return")
        mode: Literal["auto", "knn", "hybrid", "bm25"] = Field(
            "auto", description="retrieval mode; auto (the default) runs what `esdistill tune` stored for the "
                                "index, knn when it was never tuned or tuned for another model")
        filters: list[Clause] | Clause | None = Field(  # type: ignore[valid-type]
            None, max_length=100,
            description="Elasticsearch query clause(s) every hit must match, e.g. {\"term\": {\"lang\": \"en\"}}; "
                        "clauses that read other indices or run scripts are refused (400)")
        rerank: rerank_type = Field(None, description=rerank_doc)  # type: ignore[valid-type]
        ab_key: str | None = Field(None, min_length=1, max_length=256,
                                   description="user or session id that picks the A/B arm")
        arm: arm_type = Field(None, description=arm_doc)  # type: ignore[valid-type]
        budget_ms: float | None = Field(None, gt=0, le=60_000, description="rerank time budget in ms")
        num_candidates: int | None = Field(None, ge=1, le=s.max_num_candidates,
                                           description="kNN candidates per shard (>= k)")
        fusion: Literal["rrf", "linear"] | None = Field(
            None, description="hybrid fusion: rrf (score kind rrf) or linear (score kind linear, in [0, 1]); "
                              "default: the service's setting")
        alpha: float | None = Field(None, ge=0.0, le=1.0,
                                    description="kNN weight of linear fusion (the lexical leg gets 1 - alpha)")

        @model_validator(mode="after")
        def _candidates_cover_k(self):
            if self.num_candidates is not None and self.num_candidates < self.k:
                raise ValueError(f"num_candidates ({self.num_candidates}) must be >= k ({self.k})")
            if not self.query.strip():
                raise ValueError("query is blank: send some text to search for")
            return self

    class Hit(BaseModel):
        id: str
        score: float = Field(description="retrieval score, on the scale score_kind names")
        score_kind: str = Field(description="knn_cosine01 ((1 + cos) / 2), bm25 (the lexical query's _score), "
                                            "rrf (sum of 1 / (60 + rank)) or linear (normalised, in [0, 1])")
        rank: int = Field(description="1-based position; after a rerank the order follows the teacher")
        source: dict[str, Any] = Field(description="the stored fields (the vector left out)")
        rerank_score: float | None = Field(None, description="the teacher's score, when it scored this hit")
        team: str | None = Field(None, description="for an interleaved list, which ranking contributed the hit")

    class RerankInfo(BaseModel):
        reranked: Literal["full", "partial", "none"]
        count: int = Field(description="candidates the teacher scored")
        candidates: int = Field(description="candidates offered to the teacher")
        reason: str = Field(description="complete, budget_exhausted, circuit_open, error, not_requested, ...")
        error: str | None = None
        ms: float

    class SearchResponse(BaseModel):
        query_id: str = Field(description="join clicks to the exposure log on it")
        query: str
        score_kind: str = Field(description="the scale of every hit's score (see Hit.score_kind)")
        mode: Literal["knn", "hybrid", "bm25"]
        k: int
        variant: str = Field(description="student, student+rerank or interleaved")
        arm: str | None = Field(description="the A/B arm, or null outside an experiment")
        hits: list[Hit]
        rerank: RerankInfo
        timings_ms: dict[str, float] = Field(description="embed, es, fuse, rerank, total")
        embedding_cached: bool
        mode_reason: str = Field("", description="for mode auto, why mode ran: tuned, untuned or other_model "
                                                 "(knn); empty for an explicit mode")

    class IngestRequest(BaseModel):
        """Documents to embed and index (BEIR layout: ``_id``, ``title``, ``text``; other fields are stored)."""

        model_config = ConfigDict(extra="forbid")
        documents: list[dict[str, Any]] = Field(min_length=1, max_length=s.max_documents)
        refresh: bool = Field(True, description="make the documents searchable before answering")

    class RefusedDocument(BaseModel):
        position: int | None = Field(None, description="0-based position of the document in the request")
        id: Any = None
        stage: str | None = None
        reason: str | None = None

    class IngestResponse(BaseModel):
        model_config = ConfigDict(extra="allow")
        index: str
        read: int
        indexed: int
        unchanged: int
        failed: int
        truncated: int
        complete: bool
        errors: list[RefusedDocument] = Field(description=f"why documents were refused (first {_MAX_ERRORS})")

    class ErrorDetail(BaseModel):
        type: str
        message: str
        details: Any = None

    class ErrorResponse(BaseModel):
        error: ErrorDetail

    class Health(BaseModel):
        status: str

    class Readiness(BaseModel):
        ready: bool
        checks: dict[str, bool]
        reason: str | None
        index: str
        model: dict[str, str]
        vectors: dict[str, Any] | None = Field(
            None, description="missing_vectors, stale_vectors (exact, or sampled: see counts) of the served index")

    class Deleted(BaseModel):
        index: str
        id: str
        deleted: bool

    def err(code: int, description: str) -> dict[int, dict[str, Any]]:
        return {code: {"model": ErrorResponse, "description": description}}

    common = {**err(422, "the request does not match the schema"), **err(413, "body too large"),
              **err(429, "rate limit exceeded"), **err(503, "Elasticsearch unavailable")}
    if s.auth_enabled:
        common.update({**err(401, "no API key"), **err(403, "wrong API key")})

    # ------------------------------------------------------------------ app
    @asynccontextmanager
    async def lifespan(app):
        logger.info("esdistill service ready to accept requests (index %s, model %s %s…, auth %s)",
                    s.index, state.manifest.name, state.manifest.short_fingerprint,
                    "on" if s.auth_enabled else "off")
        try:
            yield
        finally:
            logger.info("esdistill service shutting down; closing the Elasticsearch client")
            state.close()

    app = FastAPI(
        title="esdistill",
        version=API_VERSION,
        description="Search and ingest with a distilled ONNX student over Elasticsearch.",
        lifespan=lifespan,
        # no Swagger/ReDoc pages: they load scripts from a public CDN; /openapi.json stays
        docs_url=None,
        redoc_url=None,
    )
    app.state.esdistill = state

    def json_error(code: int, kind: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None):
        return JSONResponse(error_body(kind, message, _jsonable(details)), status_code=code, headers=headers)

    def map_exception(exc: Exception, route: str):
        """The JSON answer for a failure of a hook; re-raises what is a bug."""
        if isinstance(exc, FingerprintError):  # first: it may be raised while handling a refused search
            return json_error(503, "model_mismatch", str(exc), headers={"Retry-After": _RETRY_AFTER_S})
        kind = _es_failure(exc)
        message = str(exc) if isinstance(exc, EsdistillError) else _summary(exc)
        retry = {"Retry-After": _RETRY_AFTER_S}
        if kind == "unavailable":
            metrics.es_unavailable.inc(route=route)
            logger.warning("Elasticsearch unavailable during %s: %s", route, message)
            return json_error(503, "elasticsearch_unavailable",
                              f"Elasticsearch is unavailable; retry later ({message[:300]})", headers=retry)
        if kind == "not_found":
            metrics.es_unavailable.inc(route=route)
            return json_error(503, "index_unavailable",
                              f"index {s.index!r} is not available in Elasticsearch ({message[:300]}); "
                              f"create it with `esdistill index create {s.index} --model DIR`", headers=retry)
        if kind == "bad_request":
            return json_error(400, "bad_request", message)
        if isinstance(exc, ConfigError):
            # the hooks say "bad request" both for a bad filter and for a missing index: ask ES which
            present = state.index_present()
            if present is None:
                metrics.es_unavailable.inc(route=route)
                return json_error(503, "elasticsearch_unavailable", "Elasticsearch is unavailable; retry later",
                                  headers={"Retry-After": _RETRY_AFTER_S})
            if not present:
                metrics.es_unavailable.inc(route=route)
                return json_error(503, "index_unavailable", str(exc), headers={"Retry-After": _RETRY_AFTER_S})
            return json_error(400, "bad_request", str(exc))
        if isinstance(exc, ModelError):
            return json_error(503, "model_unavailable", str(exc), headers={"Retry-After": _RETRY_AFTER_S})
        raise exc

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))} for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in details[:5])
        return json_error(422, "validation_error", f"invalid request: {summary}", details)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        kinds = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be read as JSON; send UTF-8 encoded JSON"
        return json_error(exc.status_code, kinds.get(exc.status_code, "http_error"), message,
                          headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):  # pragma: no cover - a bug
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_error(500, "internal_error", f"unexpected error ({type(exc).__name__}); see the service log")

    # ------------------------------------------------------------------ routes
    @app.post(f"/{API_VERSION}/search", response_model=SearchResponse, responses={**common, **err(400, "refused")},
              tags=["search"], summary="Search the index")
    def search(body: SearchRequest):
        started = time.perf_counter()
        try:
            filters = validate_filters(body.filters)
        except ConfigError as exc:
            return json_error(400, "bad_request", str(exc), getattr(exc, "problems", None))
        try:
            result = state.query.search(
                body.query, k=body.k, mode=body.mode, filters=filters, rerank=body.rerank,
                ab_key=body.ab_key, arm=body.arm, budget_ms=body.budget_ms, num_candidates=body.num_candidates,
                fusion=body.fusion, alpha=body.alpha,
            )
        except Exception as exc:  # noqa: BLE001 - mapped to a JSON answer, or re-raised
            return map_exception(exc, "/v1/search")
        payload = _search_payload(result)
        arm = payload["arm"] or "none"
        metrics.search_latency.observe(time.perf_counter() - started, arm=arm, mode=payload["mode"])
        metrics.rerank.inc(arm=arm, outcome=payload["rerank"]["reranked"])
        for stage, ms in payload["timings_ms"].items():
            if stage != "total":
                metrics.stage_latency.observe(ms / 1000.0, stage=stage)
        return payload

    @app.post(f"/{API_VERSION}/ingest", response_model=IngestResponse,
              responses={**common, **err(400, "refused")}, tags=["ingest"], summary="Embed and index documents")
    def ingest(body: IngestRequest):
        logger.info("ingest request: %d document(s)", len(body.documents))
        try:
            payload = state.ingest(body.documents, refresh=body.refresh)
        except Exception as exc:  # noqa: BLE001
            return map_exception(exc, "/v1/ingest")
        metrics.ingested.inc(payload.get("indexed", 0), result="indexed")
        metrics.ingested.inc(payload.get("failed", 0), result="failed")
        return payload

    @app.delete(f"/{API_VERSION}/documents/{{doc_id}}", response_model=Deleted,
                responses={**common, **err(404, "no such document"), **err(400, "refused")}, tags=["ingest"],
                summary="Delete one document")
    def delete_document(doc_id: Annotated[str, PathParam(min_length=1, max_length=512)], refresh: bool = True):
        try:
            payload = state.delete(doc_id, refresh=refresh)
        except Exception as exc:  # noqa: BLE001
            return map_exception(exc, "/v1/documents/{doc_id}")
        if not payload["deleted"]:
            return json_error(404, "not_found", f"no document with id {doc_id[:100]!r} in index {s.index!r}")
        logger.info("deleted document %r", doc_id[:100])
        return payload

    @app.get(f"/{API_VERSION}/index/{{name}}", responses={**common, **err(404, "not this service's index")},
             tags=["index"], summary="The index, its versions and their models")
    def index_info(name: str) -> dict[str, Any]:
        if name != s.index:
            return json_error(404, "not_found", f"this service serves index {s.index!r}, not {name[:100]!r}")
        try:
            return _jsonable(state.index.info())
        except Exception as exc:  # noqa: BLE001
            return map_exception(exc, "/v1/index/{name}")

    @app.get("/healthz", response_model=Health, tags=["ops"], summary="The process is alive")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}},
             tags=["ops"], summary="Elasticsearch, index and model are usable")
    def readyz():
        report = state.readiness()
        return JSONResponse(report, status_code=200 if report["ready"] else 503,
                            headers=None if report["ready"] else {"Retry-After": _RETRY_AFTER_S})

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"], summary="Prometheus metrics")
    def metrics_route():
        state.refresh_ready_gauge()
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    # OpenAI-shaped /v1/embeddings and /v1/rerank, for Elasticsearch's inference API
    from esdistill.plugin._service_openai import add_openai_routes

    add_openai_routes(app, state, max_inputs=s.max_documents, max_total_chars=s.max_documents * s.max_query_chars)

    # ------------------------------------------------------------------ guards, OpenAPI security
    def route_of(scope) -> str | None:
        """The template of the route the request matches (its path alone, when only the method is
        wrong), or None: a closed set of labels whatever the client sends."""
        partial = None
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", None)
            if match == Match.PARTIAL and partial is None:
                partial = getattr(route, "path", None)
        return partial

    def protect(path: str) -> bool:
        return path.startswith(f"/{API_VERSION}/") or (s.metrics_require_key and path == "/metrics")

    limiter = (TokenBucketLimiter(s.rate_limit_per_s, int(s.rate_limit_burst or 1))
               if s.rate_limit_per_s > 0 else None)
    app.add_middleware(GuardMiddleware, metrics=metrics, route_of=route_of, guard=ApiKeyGuard(s.key_digests),
                       limiter=limiter, max_body_bytes=s.max_body_bytes, protect=protect)

    if s.auth_enabled:
        def openapi_with_security():
            if app.openapi_schema is None:
                from fastapi.openapi.utils import get_openapi

                schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                     routes=app.routes)
                schema.setdefault("components", {})["securitySchemes"] = {
                    "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
                    "Bearer": {"type": "http", "scheme": "bearer"}}
                for path, ops in schema.get("paths", {}).items():
                    if protect(path):
                        for op in ops.values():
                            op["security"] = [{"ApiKey": []}, {"Bearer": []}]
                app.openapi_schema = schema
            return app.openapi_schema

        app.openapi = openapi_with_security  # type: ignore[method-assign]
    return app


def _search_payload(result: Any) -> dict[str, Any]:
    """The API's search answer: :meth:`esdistill.plugin.query.SearchResponse.to_dict`, the one shape
    the CLI's ``--json`` and the Python API share, made JSON-safe."""
    return _jsonable(result.to_dict())


def serve(settings: ServiceSettings) -> None:
    """Run the service with uvicorn until SIGTERM/SIGINT, then shut down gracefully.

    In-flight requests get ``settings.shutdown_grace_s`` seconds to finish; the lifespan hook then
    closes the Elasticsearch client.

    Raises:
        ConfigError: the serve extra is missing.
        ModelError: the model folder is unusable.
    """
    _require_serve_extra()
    import uvicorn

    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s or None, lifespan="on",
        limit_concurrency=None, server_header=False,
    )
    server = uvicorn.Server(config)
    logger.info("serving on http://%s:%d (index %s)", settings.host, settings.port, settings.index)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler that was in
    # place before it: make that a no-op, so that a clean stop exits 0 (`docker stop` included)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    logger.info("service stopped")
