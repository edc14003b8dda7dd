"""How the service's failures become answers: one JSON error shape and one mapping of hook failures.

Every error answer is ``{"error": {"type", "message", "details"}}`` (:func:`json_error`). The
exception handlers (:func:`add_exception_handlers`) answer:

- 422 ``validation_error`` for a request that does not match the schema (``details`` lists every
  problem, the message the first five);
- 400 ``bad_request`` for a body that is not JSON, 404 ``not_found`` for an unknown path, 405
  ``method_not_allowed`` for a wrong method (with FastAPI's ``Allow`` header);
- 500 ``internal_error`` for anything else, which is a bug: the traceback goes to the service log only.

A route hands a failure of a hook to :func:`map_exception`:

=====================================  ===============================================================
model no longer matches the index      503 ``model_mismatch``
Elasticsearch down, overloaded, or     503 ``elasticsearch_unavailable`` (counted in
  our credentials towards it wrong       ``esdistill_es_unavailable_total{route}``)
the served index missing               503 ``index_unavailable`` (counted too)
a request Elasticsearch refuses        400 ``bad_request``
a request the hooks refuse             400 ``bad_request``, after asking Elasticsearch whether the
                                       index is there (a missing index is a 503 as above)
the model cannot run                   503 ``model_unavailable``
anything else                          re-raised: a bug, answered 500 by the handler
=====================================  ===============================================================

Every 503 carries ``Retry-After: 5``. Elasticsearch's own error text never reaches a client (it can
name other indices): an answer carries the failure's class and status (:func:`client_summary`), and
the service log has the reason.

This module imports the web framework only when it builds an answer, so that the service's state
(whose readiness check classifies failures with :func:`es_failure`) imports without the serve extra.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from esdistill.plugin._errors import (
    ConfigError,
    ElasticsearchUnavailable,
    EsdistillError,
    FingerprintError,
    ModelError,
)
from esdistill.plugin._service_guards import error_body
from esdistill.plugin.es_errors import classify_chain

__all__ = ["RETRY_AFTER_S", "add_exception_handlers", "client_summary", "es_failure", "json_error", "jsonable",
           "map_exception"]

logger = logging.getLogger(__name__)

#: the ``Retry-After`` of every 503 answer, in seconds
RETRY_AFTER_S = "5"


def es_failure(exc: BaseException) -> str | None:
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


def client_summary(exc: BaseException) -> str:
    """What a client may see of an Elasticsearch failure: its class and status, never its reason text
    (which can name other indices); the reason is logged instead."""
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", None)
    if status:  # an answer from Elasticsearch, whose reason only the log may see
        body = getattr(exc, "body", None)
        logger.warning("Elasticsearch answered %s (status %s): %s", type(exc).__name__, status,
                       str(body if body is not None else exc)[:1000])
        return f"{type(exc).__name__}, status {status}"
    return type(exc).__name__


def jsonable(value: Any) -> Any:
    """Turn dataclasses, tuples and non-finite floats into plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return jsonable(value.to_dict())
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return jsonable(value.item())
    return value


def json_error(code: int, kind: str, message: str, details: Any = None, headers: dict[str, str] | None = None) -> Any:
    """The service's JSON error answer (a ``JSONResponse``) with status ``code``."""
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(kind, message, jsonable(details)), status_code=code, headers=headers)


def map_exception(exc: Exception, route: str, state: Any) -> Any:
    """The JSON answer for a failure of a hook; re-raises what is a bug.

    Args:
        exc: what the hook raised.
        route: the route's template, the label of ``esdistill_es_unavailable_total``.
        state: the service's :class:`~esdistill.plugin._service_state.ServiceState`.

    Returns:
        The error answer (see the table in this module's docstring).

    Raises:
        Exception: ``exc`` itself when it is none of the failures above.
    """
    metrics, index = state.metrics, state.settings.index
    retry = {"Retry-After": RETRY_AFTER_S}
    if isinstance(exc, FingerprintError):  # first: it may be raised while handling a refused search
        return json_error(503, "model_mismatch", str(exc), headers=retry)
    kind = es_failure(exc)
    message = str(exc) if isinstance(exc, EsdistillError) else client_summary(exc)
    if kind == "unavailable":
        metrics.es_unavailable.inc(route=route)
        logger.warning("Elasticsearch unavailable during %s: %s", route, message)
        return json_error(503, "elasticsearch_unavailable",
                          f"Elasticsearch is unavailable; retry later ({message[:300]})", headers=retry)
    if kind == "not_found":
        metrics.es_unavailable.inc(route=route)
        return json_error(503, "index_unavailable",
                          f"index {index!r} is not available in Elasticsearch ({message[:300]}); "
                          f"create it with `esdistill index create {index} --model DIR`", headers=retry)
    if kind == "bad_request":
        return json_error(400, "bad_request", message)
    if isinstance(exc, ConfigError):
        # the hooks say "bad request" both for a bad filter and for a missing index: ask ES which
        present = state.index_present()
        if present is None:
            metrics.es_unavailable.inc(route=route)
            return json_error(503, "elasticsearch_unavailable", "Elasticsearch is unavailable; retry later",
                              headers=retry)
        if not present:
            metrics.es_unavailable.inc(route=route)
            return json_error(503, "index_unavailable", str(exc), headers=retry)
        return json_error(400, "bad_request", str(exc))
    if isinstance(exc, ModelError):
        return json_error(503, "model_unavailable", str(exc), headers=retry)
    raise exc


def add_exception_handlers(app: Any) -> None:
    """Answer schema mismatches, HTTP errors and bugs of ``app`` (a FastAPI app) with the JSON error shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc: RequestValidationError):
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))} for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in details[:5])
        return json_error(422, "validation_error", f"invalid request: {summary}", details)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, exc: StarletteHTTPException):
        kinds = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be read as JSON; send UTF-8 encoded JSON"
        return json_error(exc.status_code, kinds.get(exc.status_code, "http_error"), message,
                          headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request, exc: Exception):  # pragma: no cover - a bug
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_error(500, "internal_error", f"unexpected error ({type(exc).__name__}); see the service log")
