"""The HTTP service behind ``esdistill serve``: search, ingest and index info over a versioned JSON API.

Needs the ``serve`` extra (FastAPI and uvicorn), imported only when :func:`create_app` runs;
``import esdistill.plugin`` never imports a web framework. Routes:

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

:func:`create_app` assembles the parts: the shared state (:mod:`._service_state`: client, model,
hooks, metrics, readiness), the request and answer models (:mod:`._service_schemas`), the routes
(:mod:`._service_routes`, :mod:`._service_openai`), the error answers (:mod:`._service_errors`), the
guard middleware in front of every request (:mod:`._service_guards`: rate limit, API key, body size,
request metrics) and, with API keys configured, the OpenAPI security schemes on the protected paths
(``/v1/...``, and ``/metrics`` when ``metrics_require_key`` is set).

Example:
    >>> from esdistill.plugin.service import create_app                  # doctest: +SKIP
    >>> app = create_app(ServiceSettings(index="docs", model="runs/student-int8"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from esdistill.plugin._errors import ConfigError
from esdistill.plugin._service_guards import API_KEY_HEADER, ApiKeyGuard, GuardMiddleware, TokenBucketLimiter
from esdistill.plugin._service_state import API_VERSION, ServiceState
from esdistill.plugin.metrics import ServiceMetrics
from esdistill.plugin.service_settings import ServiceSettings

__all__ = ["API_VERSION", "ServiceState", "create_app", "serve"]

logger = logging.getLogger(__name__)


def _require_serve_extra():
    try:
        import fastapi
    except ImportError as exc:  # pragma: no cover - the test environment has the extra
        raise ConfigError(f"the HTTP service needs the serve extra ({exc}); install it with "
                          "`pip install 'esdistill[serve]'`") from None
    return fastapi


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
    fastapi = _require_serve_extra()
    from esdistill.plugin._service_errors import add_exception_handlers
    from esdistill.plugin._service_openai import add_openai_routes
    from esdistill.plugin._service_routes import add_api_routes, add_ops_routes
    from esdistill.plugin._service_schemas import request_models

    s = settings
    state = ServiceState(settings, ServiceMetrics())
    app = fastapi.FastAPI(
        title="esdistill",
        version=API_VERSION,
        description="Search and ingest with a distilled ONNX student over Elasticsearch.",
        lifespan=_lifespan,
        # no Swagger/ReDoc pages: they load scripts from a public CDN; /openapi.json stays
        docs_url=None,
        redoc_url=None,
    )
    app.state.esdistill = state
    add_exception_handlers(app)

    # the schema says exactly what this configuration accepts (arms, whether a reranker exists)
    arms = None if state.ab is None else tuple(arm.name for arm in state.ab.arms)
    models = request_models(s, reranker=state.reranker is not None, arms=arms)
    add_api_routes(app.router, models, auth=s.auth_enabled)
    add_ops_routes(app.router)
    # OpenAI-shaped /v1/embeddings and /v1/rerank, for Elasticsearch's inference API
    add_openai_routes(app.router, state, max_inputs=s.max_documents,
                      max_total_chars=s.max_documents * s.max_query_chars)

    protect = partial(_protected, metrics_require_key=s.metrics_require_key)
    limiter = (TokenBucketLimiter(s.rate_limit_per_s, int(s.rate_limit_burst or 1))
               if s.rate_limit_per_s > 0 else None)
    app.add_middleware(GuardMiddleware, metrics=state.metrics, route_of=partial(_route_of, app),
                       guard=ApiKeyGuard(s.key_digests), limiter=limiter, max_body_bytes=s.max_body_bytes,
                       protect=protect)
    if s.auth_enabled:
        app.openapi = partial(_openapi_with_security, app, protect)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: Any):
    state = app.state.esdistill
    logger.info("esdistill service ready to accept requests (index %s, model %s %s…, auth %s)",
                state.settings.index, state.manifest.name, state.manifest.short_fingerprint,
                "on" if state.settings.auth_enabled else "off")
    try:
        yield
    finally:
        logger.info("esdistill service shutting down; closing the Elasticsearch client")
        state.close()


def _protected(path: str, *, metrics_require_key: bool) -> bool:
    """Whether ``path`` needs the API key: the API, and ``/metrics`` when the settings say so."""
    return path.startswith(f"/{API_VERSION}/") or (metrics_require_key and path == "/metrics")


def _route_of(app: Any, scope: Any) -> str | None:
    """The template of the route the request matches (its path alone, when only the method is
    wrong), or None: a closed set of labels whatever the client sends."""
    from starlette.routing import Match

    partial_match = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", None)
        if match == Match.PARTIAL and partial_match is None:
            partial_match = getattr(route, "path", None)
    return partial_match


def _openapi_with_security(app: Any, protect: Any) -> dict[str, Any]:
    """The app's OpenAPI schema with the API key (header or bearer) required on the protected paths."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
            "Bearer": {"type": "http", "scheme": "bearer"}}
        for path, ops in schema.get("paths", {}).items():
            if protect(path):
                for op in ops.values():
                    op["security"] = [{"ApiKey": []}, {"Bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


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
