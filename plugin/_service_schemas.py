"""The request and answer models of the service's search, ingest, index and ops routes.

They are what ``/openapi.json`` publishes. The answers' models are fixed; the two request models are
built per app by :func:`request_models`, because they say exactly what that configuration accepts:
its limits (``max_query_chars``, ``max_k``, ``max_num_candidates``, ``max_documents``), whether
``rerank: true`` is possible (only with a reranker) and which A/B ``arm`` names exist (none without
an A/B test). A search's ``filters`` are described by the allow-list of
:mod:`esdistill.plugin.filters`; the route checks each clause again, recursively, so that a refused
one is a 400 naming its path.

Needs pydantic (the serve extra); only :func:`esdistill.plugin.service.create_app` imports it.
"""

# No ``from __future__ import annotations``: the request models are built inside a function (their
# limits come from the settings), and pydantic must see real types.

from typing import Annotated, Any, Literal, NamedTuple

from esdistill.plugin._service_state import MAX_ERRORS
from esdistill.plugin.filters import ALLOWED_CLAUSES
from esdistill.plugin.service_settings import ServiceSettings
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Deleted", "ErrorResponse", "Health", "IngestResponse", "Readiness", "RequestModels", "SearchResponse",
           "request_models"]


# ---------------------------------------------------------------------------------------------- answers
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
    errors: list[RefusedDocument] = Field(description=f"why documents were refused (first {MAX_ERRORS})")


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


# ---------------------------------------------------------------------------------------------- requests
class RequestModels(NamedTuple):
    """The request models of one configuration (see :func:`request_models`): pydantic classes."""

    search: Any
    ingest: Any


def request_models(settings: ServiceSettings, *, reranker: bool, arms: tuple[str, ...] | None) -> RequestModels:
    """Build the search and ingest request models for one service configuration.

    Args:
        settings: the service's settings (their limits become the schema's).
        reranker: whether the service has a reranker (without one, ``rerank`` accepts only false or null).
        arms: the names of the A/B arms, or None without an A/B test (``arm`` then accepts only null).

    Returns:
        The models, named ``SearchRequest`` and ``IngestRequest`` in the OpenAPI schema.
    """
    s = settings
    if reranker:
        rerank_type: Any = bool | None
        rerank_doc = "rerank with the teacher (true/false); null lets the A/B arm decide"
    else:
        rerank_type = Literal[False] | None
        rerank_doc = "this service has no reranker: only false or null"
    if arms is not None:
        arm_type: Any = Literal[arms] | None  # type: ignore[valid-type]
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

    class IngestRequest(BaseModel):
        """Documents to embed and index (BEIR layout: ``_id``, ``title``, ``text``; other fields are stored)."""

        model_config = ConfigDict(extra="forbid")
        documents: list[dict[str, Any]] = Field(min_length=1, max_length=s.max_documents)
        refresh: bool = Field(True, description="make the documents searchable before answering")

    return RequestModels(search=SearchRequest, ingest=IngestRequest)
