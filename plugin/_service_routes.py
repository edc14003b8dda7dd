"""The service's search, ingest and index routes under ``/v1``, and the ops routes.

=============================  ===================================================================
``POST /v1/search``            kNN / hybrid / BM25 search, optional teacher rerank, A/B arms; a
                               filter outside the allow-list is a 400 naming its path
``POST /v1/ingest``            embed and index a batch; the answer lists why documents were refused
``DELETE /v1/documents/{id}``  delete one document (404 when it is not there)
``GET /v1/index/{name}``       the alias, its physical indices and their models (404 for any other
                               name than the served index)
``GET /healthz``               the process is alive (no Elasticsearch call)
``GET /readyz``                200 when Elasticsearch, the index and the model are usable, else 503
                               with ``Retry-After`` (the same report either way)
``GET /metrics``               Prometheus text format (re-runs a readiness check older than 5 s)
=============================  ===================================================================

A failure of a hook is answered by :func:`esdistill.plugin._service_errors.map_exception`. A search
is counted in the latency, rerank and stage metrics by A/B arm and mode; an ingest in the ingested
counter, indexed and failed. The routes read the service's state through the :func:`service_state`
dependency; they are added to the app's own router (as :mod:`._service_openai` does), so that every
route of the app is a plain route with a path template, by which the guard middleware labels its
metrics. Needs FastAPI (the serve extra); only :func:`esdistill.plugin.service.create_app` imports it.
"""

# No ``from __future__ import annotations``: FastAPI must see the real types of the request models,
# which are built per app.

import logging
import time
from typing import TYPE_CHECKING, Annotated, Any

from esdistill.plugin._errors import ConfigError
from esdistill.plugin._service_errors import RETRY_AFTER_S, json_error, jsonable, map_exception
from esdistill.plugin._service_schemas import (
    Deleted,
    ErrorResponse,
    Health,
    IngestResponse,
    Readiness,
    RequestModels,
    SearchResponse,
)
from esdistill.plugin._service_state import API_VERSION, ServiceState
from esdistill.plugin.filters import validate_filters
from esdistill.plugin.metrics import CONTENT_TYPE
from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse

__all__ = ["add_api_routes", "add_ops_routes", "service_state"]

logger = logging.getLogger(__name__)


async def service_state(request: Request) -> ServiceState:
    """The app's :class:`ServiceState` (a FastAPI dependency)."""
    return request.app.state.esdistill


State = Annotated[ServiceState, Depends(service_state)]

if TYPE_CHECKING:  # the request models are built per configuration (request_models): only pydantic knows them
    SearchRequest = Any
    IngestRequest = Any


def _documented(code: int, description: str) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": description}}


def add_api_routes(router: APIRouter, models: RequestModels, *, auth: bool) -> None:
    """Add the ``/v1`` search, ingest, delete and index routes to ``router``.

    Args:
        router: the app's own router (``app.router``).
        models: the request models of this configuration (:func:`._service_schemas.request_models`).
        auth: whether an API key is required (the schema then documents 401 and 403).
    """
    if not TYPE_CHECKING:  # for a type checker they are Any (see above)
        SearchRequest, IngestRequest = models.search, models.ingest
    common = {**_documented(422, "the request does not match the schema"), **_documented(413, "body too large"),
              **_documented(429, "rate limit exceeded"), **_documented(503, "Elasticsearch unavailable")}
    if auth:
        common.update({**_documented(401, "no API key"), **_documented(403, "wrong API key")})

    @router.post(f"/{API_VERSION}/search", response_model=SearchResponse,
                 responses={**common, **_documented(400, "refused")}, tags=["search"], summary="Search the index")
    def search(body: SearchRequest, state: State):
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
            return map_exception(exc, "/v1/search", state)
        # the one shape the CLI's --json and the Python API share (SearchResponse.to_dict), JSON-safe
        payload = jsonable(result.to_dict())
        arm = payload["arm"] or "none"
        metrics = state.metrics
        metrics.search_latency.observe(time.perf_counter() - started, arm=arm, mode=payload["mode"])
        metrics.rerank.inc(arm=arm, outcome=payload["rerank"]["reranked"])
        for stage, ms in payload["timings_ms"].items():
            if stage != "total":
                metrics.stage_latency.observe(ms / 1000.0, stage=stage)
        return payload

    @router.post(f"/{API_VERSION}/ingest", response_model=IngestResponse,
                 responses={**common, **_documented(400, "refused")}, tags=["ingest"], summary="Embed and index documents")
    def ingest(body: IngestRequest, state: State):
        logger.info("ingest request: %d document(s)", len(body.documents))
        try:
            payload = state.ingest(body.documents, refresh=body.refresh)
        except Exception as exc:  # noqa: BLE001
            return map_exception(exc, "/v1/ingest", state)
        state.metrics.ingested.inc(payload.get("indexed", 0), result="indexed")
        state.metrics.ingested.inc(payload.get("failed", 0), result="failed")
        return payload

    @router.delete(f"/{API_VERSION}/documents/{{doc_id}}", response_model=Deleted,
                   responses={**common, **_documented(404, "no such document"), **_documented(400, "refused")},
                   tags=["ingest"], summary="Delete one document")
    def delete_document(doc_id: Annotated[str, PathParam(min_length=1, max_length=512)], state: State,
                        refresh: bool = True):
        try:
            payload = state.delete(doc_id, refresh=refresh)
        except Exception as exc:  # noqa: BLE001
            return map_exception(exc, "/v1/documents/{doc_id}", state)
        if not payload["deleted"]:
            return json_error(404, "not_found",
                              f"no document with id {doc_id[:100]!r} in index {state.settings.index!r}")
        logger.info("deleted document %r", doc_id[:100])
        return payload

    @router.get(f"/{API_VERSION}/index/{{name}}", responses={**common, **_documented(404, "not this service's index")},
                tags=["index"], summary="The index, its versions and their models")
    def index_info(name: str, state: State) -> dict[str, Any]:
        index = state.settings.index
        if name != index:
            return json_error(404, "not_found", f"this service serves index {index!r}, not {name[:100]!r}")
        try:
            return jsonable(state.index.info())
        except Exception as exc:  # noqa: BLE001
            return map_exception(exc, "/v1/index/{name}", state)


def add_ops_routes(router: APIRouter) -> None:
    """Add ``/healthz``, ``/readyz`` and ``/metrics`` to ``router`` (the app's own router)."""

    @router.get("/healthz", response_model=Health, tags=["ops"], summary="The process is alive")
    def healthz():
        return {"status": "ok"}

    @router.get("/readyz", response_model=Readiness,
                responses={503: {"model": Readiness, "description": "not ready"}},
                tags=["ops"], summary="Elasticsearch, index and model are usable")
    def readyz(state: State):
        report = state.readiness()
        return JSONResponse(report, status_code=200 if report["ready"] else 503,
                            headers=None if report["ready"] else {"Retry-After": RETRY_AFTER_S})

    @router.get("/metrics", response_class=PlainTextResponse, tags=["ops"], summary="Prometheus metrics")
    def metrics_route(state: State):
        state.refresh_ready_gauge()
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)
