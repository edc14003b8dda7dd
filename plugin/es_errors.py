"""One reading of Elasticsearch's failures, for every caller in esdistill.

:func:`classify` turns an exception raised by ``elasticsearch-py`` (or its transport) into an
:class:`EsFailure`: what kind of failure it is, the HTTP status, Elasticsearch's error ``type`` and
its reason text. The callers decide what to do with the kind: the ingest and copy paths retry
:attr:`EsFailure.retryable` ones, the query hook and the HTTP service answer "unavailable" for
:attr:`EsFailure.unavailable` ones, and :class:`~esdistill.plugin._errors.IndexNotFound` is raised
for a missing index.

Elasticsearch's reason text can name other indices and quote their documents (a terms lookup in a
filter, for example), so :attr:`EsFailure.reason` is for logs only; messages shown to a client use
:attr:`EsFailure.error_type` (a plain identifier) at most.

Example::

    >>> from elastic_transport import ConnectionTimeout
    >>> classify(ConnectionTimeout("timed out")).kind
    'timeout'
    >>> classify(ValueError("not an Elasticsearch error")) is None
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "EsFailure", "classify", "classify_chain", "error_type", "failure_of_answer", "reason_text"]

#: every kind :func:`classify` returns
KINDS = (
    "tls",              # the TLS handshake failed (an untrusted certificate, or http:// against https)
    "timeout",          # no answer within the client's request timeout
    "unreachable",      # no connection (refused, reset, DNS)
    "transport",        # another failure below HTTP
    "unauthorized",     # 401: the credentials were rejected
    "forbidden",        # 403: the user lacks a privilege (or the index is write-blocked)
    "index_not_found",  # 404 index_not_found_exception
    "not_found",        # another 404 (a document, an alias)
    "pit_lost",         # a point-in-time or scroll context is gone (node restart, expiry)
    "conflict",         # 409: a version or sequence-number check failed
    "too_large",        # 413: the request body is too large
    "throttled",        # 429: the cluster pushes back
    "server",           # 5xx
    "bad_request",      # another 4xx: the request is not valid for this index
)
_RETRYABLE = frozenset({"timeout", "unreachable", "transport", "throttled", "server"})
_UNAVAILABLE = _RETRYABLE | {"tls", "unauthorized", "forbidden"}
_TYPE_NAME = re.compile(r"^[a-z_]{1,80}$")


@dataclass(frozen=True)
class EsFailure:
    """What an Elasticsearch failure was.

    Attributes:
        kind: one of :data:`KINDS`.
        status: the HTTP status of Elasticsearch's answer (``None`` when none came).
        error_type: Elasticsearch's error ``type`` of the root cause (an identifier such as
            ``query_shard_exception``), or ``""``.
        reason: Elasticsearch's reason text, or the exception's class: for logs only.
    """

    kind: str
    status: int | None = None
    error_type: str = ""
    reason: str = ""

    @property
    def retryable(self) -> bool:
        """May it go away by itself (a lost connection, a timeout, 429, 5xx)?"""
        return self.kind in _RETRYABLE

    @property
    def unavailable(self) -> bool:
        """Does it mean Elasticsearch cannot serve esdistill now (down, overloaded, or our credentials)?"""
        return self.kind in _UNAVAILABLE


def _root(body: Any) -> Mapping[str, Any]:
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if not isinstance(body, Mapping):
        return {}
    root = body.get("root_cause") or []
    return root[0] if root and isinstance(root[0], Mapping) else body


def error_type(body: Any) -> str:
    """The ``type`` of an Elasticsearch error body (its root cause's), when it is a plain identifier."""
    kind = str(_root(body).get("type") or "")
    return kind if _TYPE_NAME.match(kind) else ""


def reason_text(body: Any) -> str:
    """Elasticsearch's reason text of an error body, for the log only (never for a message)."""
    root = _root(body)
    if root.get("reason"):
        return f"{root.get('type', 'error')}: {root['reason']}"
    return str(body)


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", None)
    try:
        return int(status) if status else None
    except (TypeError, ValueError):
        return None


def _kind_of(status: int | None, etype: str, text: str) -> str:
    if "search_context_missing" in text or "No search context found" in text or (
            status == 404 and "point in time" in text.lower()):
        return "pit_lost"
    if status == 404:
        return "index_not_found" if etype == "index_not_found_exception" else "not_found"
    kind = {401: "unauthorized", 403: "forbidden", 409: "conflict", 413: "too_large", 429: "throttled"}.get(status or 0)
    if kind:
        return kind
    return "server" if status is None or status >= 500 else "bad_request"


def failure_of_answer(status: int | None, body: Any) -> EsFailure:
    """The failure an error *answer* describes (an item of ``_msearch`` or ``_bulk``: a status and
    an error body, no exception)."""
    etype = error_type(body)
    return EsFailure(_kind_of(status, etype, str(body)), status or None, etype, reason_text(body))


def classify(exc: BaseException) -> EsFailure | None:
    """Classify one exception; ``None`` when it is not an Elasticsearch client error."""
    try:
        from elastic_transport import ApiError, ConnectionTimeout, TlsError, TransportError
        from elastic_transport import ConnectionError as TransportConnectionError
    except ImportError:  # pragma: no cover - elasticsearch-py is a dependency
        return None
    name = type(exc).__name__
    if isinstance(exc, TlsError):
        return EsFailure("tls", reason=name)
    if isinstance(exc, ConnectionTimeout):
        return EsFailure("timeout", reason=name)
    if isinstance(exc, TransportConnectionError):
        text = f"{exc} {exc!r}"
        kind = "tls" if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower() else "unreachable"
        return EsFailure(kind, reason=name)
    if isinstance(exc, TransportError):
        return EsFailure("transport", reason=f"{name}: {exc}")
    if not isinstance(exc, ApiError):
        return None
    status = _status(exc)
    body = getattr(exc, "body", None)
    etype = error_type(body)
    reason = reason_text(body) if body is not None else str(exc)
    return EsFailure(_kind_of(status, etype, str(body if body is not None else exc)), status, etype, reason)


def classify_chain(exc: BaseException | None, *, depth: int = 10) -> EsFailure | None:
    """:func:`classify` of ``exc`` or, when it is not an Elasticsearch error, of what caused it."""
    seen = 0
    while exc is not None and seen < depth:
        failure = classify(exc)
        if failure is not None:
            return failure
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
