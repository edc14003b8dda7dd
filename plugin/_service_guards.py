"""What stands in front of every service request: rate limit, API key, body size, metrics.

Plain ASGI, no web framework, so that it is checked *before* a body is parsed or a route runs, and
every rejection is a small JSON body the same shape as the service's own errors::

    {"error": {"type": "unauthorized", "message": "...", "details": null}}

Order for a protected path (``/v1/...``, and ``/metrics`` when asked): the rate limit (so that keys
cannot be guessed at full speed), then the API key (401 without one, 403 with a wrong one), then the
body size (413; bodies without ``Content-Length`` are counted while read). Every other path is
rate-limited too, from a bucket of its own per client (so that probes of ``/healthz`` never eat the
API's budget, and a flood of junk requests gets 429s). Every request, rejected or not, is counted in
the metrics by route template, method and status, with labels from closed sets: a method outside
:data:`METHODS` and a path that matches no route are both counted as ``other``, so junk requests
cannot add series.

The key is read from the ``X-API-Key`` header or from ``Authorization: Bearer <key>`` (what the
OpenAI clients and Elasticsearch's ``openai`` inference service send). Every credential presented is
checked, and one wrong credential is refused even when the other is right: 403 for a wrong
``X-API-Key``, 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` for a wrong bearer token
(RFC 6750). An ``Authorization`` header of another scheme (``Basic``...) is not a key.

API keys are compared in constant time: the presented key is hashed with SHA-256 and compared with
:func:`hmac.compare_digest` against *every* configured digest, without stopping at a match, so the
time taken depends neither on the key's length nor on which key (if any) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from esdistill.plugin.metrics import ServiceMetrics

__all__ = ["API_KEY_HEADER", "METHODS", "ApiKeyGuard", "GuardMiddleware", "TokenBucketLimiter", "error_body"]

logger = logging.getLogger(__name__)

#: the header that carries the API key
API_KEY_HEADER = "X-API-Key"
_KEY_HEADER_BYTES = API_KEY_HEADER.lower().encode()
_AUTHORIZATION = b"authorization"
_BEARER = b"bearer"
_WWW_AUTHENTICATE = f'ApiKey header="{API_KEY_HEADER}", Bearer realm="esdistill"'.encode()
#: HTTP methods counted under their own name in the metrics; any other is counted as ``other``
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})
#: the metrics label of a method outside :data:`METHODS` and of a path that matches no route
OTHER = "other"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(kind: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON error shape every non-2xx answer of the service uses."""
    return {"error": {"type": kind, "message": message, "details": details}}


class ApiKeyGuard:
    """Checks presented API keys against configured SHA-256 digests, in constant time.

    Args:
        digests: SHA-256 digests of the accepted keys (``ServiceSettings.key_digests``).

    Example:
        >>> g = ApiKeyGuard((hashlib.sha256(b"k" * 20).digest(),))
        >>> g.check(b"k" * 20), g.check(None), g.check(b"wrong")
        (200, 401, 403)
    """

    def __init__(self, digests: tuple[bytes, ...]) -> None:
        if any(len(d) != 32 for d in digests):
            raise ValueError("API key digests must be 32-byte SHA-256 digests")
        self._digests = tuple(digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: bytes | None) -> int:
        """200 when the key is accepted (or auth is off), 401 when none was given, 403 when wrong."""
        if not self._digests:
            return 200
        if not presented:
            return 401
        digest = hashlib.sha256(presented).digest()
        matched = False
        for expected in self._digests:  # no early exit: every digest is compared
            matched |= hmac.compare_digest(expected, digest)
        return 200 if matched else 403


class TokenBucketLimiter:
    """One token bucket per client: ``rate`` tokens per second, at most ``burst`` saved up.

    Args:
        rate: tokens added per second (> 0).
        burst: bucket size (>= 1).
        max_clients: buckets kept (least recently seen ones are dropped first).
        clock: monotonic clock in seconds (injectable for tests).

    Example:
        >>> lim = TokenBucketLimiter(rate=1.0, burst=2)
        >>> [lim.acquire("a") == 0.0 for _ in range(3)]
        [True, True, False]
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (rate > 0 and math.isfinite(rate)) or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """Take one token. Returns 0.0 when allowed, else the seconds until a token is available."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                wait = 0.0
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


class GuardMiddleware:
    """ASGI middleware: metrics and the rate limit for every request; API key and body size where protected.

    Args:
        app: the wrapped ASGI application.
        metrics: where requests are counted.
        route_of: maps a request scope to its route template (``/v1/index/{name}``), or ``None``.
        guard: the API-key check.
        limiter: the rate limit, or ``None``; protected and other paths use separate buckets per client.
        max_body_bytes: the largest accepted body.
        protect: decides from the path whether a request needs the key (and counts against the API's
            rate-limit bucket rather than the open paths' one).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServiceMetrics,
        route_of: Callable[[Scope], str | None],
        guard: ApiKeyGuard,
        limiter: TokenBucketLimiter | None,
        max_body_bytes: int,
        protect: Callable[[str], bool],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of
        self.guard = guard
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.protect = protect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            rejection = self._precheck(scope)
            if rejection is None:
                receive, rejection = await self._limit_body(scope, receive)
            if rejection is not None:
                code, kind, message, headers = rejection
                await _send_json(send_wrapper, code, error_body(kind, message), headers)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = self._route_label(scope)
            method = scope.get("method", "")
            self.metrics.requests.inc(route=route, method=method if method in METHODS else OTHER,
                                      status=str(status["code"]))
            self.metrics.request_latency.observe(time.perf_counter() - started, route=route)

    def _route_label(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        try:
            return self.route_of(scope) or OTHER
        except Exception:  # noqa: BLE001 - a label must never fail a request
            return OTHER

    def _precheck(self, scope: Scope) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        path = scope.get("path", "")
        protected = self.protect(path)
        if self.limiter is not None:
            client = str((scope.get("client") or ("unknown", 0))[0])
            wait = self.limiter.acquire(client if protected else f"{client} (open paths)")
            if wait > 0:
                retry = str(max(1, math.ceil(wait)))
                message = (f"too many requests: the limit is {self.limiter.rate:g}/s with bursts of "
                           f"{self.limiter.burst}; retry after {retry}s")
                return (429, "rate_limited", message, [(b"retry-after", retry.encode())])
        if not protected:
            return None
        if self.guard.enabled:
            api_key, bearer = _presented_keys(scope)
            if not api_key and not bearer:
                message = (f"this endpoint needs an API key in the {API_KEY_HEADER} header or as "
                           "Authorization: Bearer <key>")
                return (401, "unauthorized", message, [(b"www-authenticate", _WWW_AUTHENTICATE)])
            # check every credential presented (no early exit), then refuse if any is wrong
            key_ok = self.guard.check(api_key) == 200 if api_key else True
            bearer_ok = self.guard.check(bearer) == 200 if bearer else True
            if not key_ok:
                return (403, "forbidden", f"the API key in the {API_KEY_HEADER} header is not valid", [])
            if not bearer_ok:
                return (401, "unauthorized", "the bearer token in the Authorization header is not a valid API key",
                        [(b"www-authenticate", b'Bearer realm="esdistill", error="invalid_token"')])
        return None

    async def _limit_body(self, scope: Scope, receive: Receive):
        """Reject a declared or actual body above the limit; otherwise replay what was read."""
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return receive, (400, "bad_request", "the Content-Length header is not a number", [])
                if declared < 0:
                    return receive, (400, "bad_request", "the Content-Length header is negative", [])
                break
        limit = self.max_body_bytes
        message = (f"the request body is larger than the limit of {limit} bytes; send fewer or smaller "
                   "documents per request (the limit is the service's max_body_bytes setting)")
        too_large = (413, "payload_too_large", message, [])
        if declared is not None and declared > limit:
            return receive, too_large
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE") and declared in (None, 0):
            return receive, None
        # read the body now (it is at most `limit` bytes) and replay it to the application
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _replay([], receive, disconnected=True), None
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return receive, too_large
            chunks.append(body)
            more = message.get("more_body", False)
        return _replay(chunks, receive), None


def _presented_keys(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """The ``X-API-Key`` header and the token of an ``Authorization: Bearer`` header (first of each)."""
    api_key = bearer = None
    seen_auth = False
    for name, value in scope.get("headers", ()):
        if name == _KEY_HEADER_BYTES and api_key is None:
            api_key = value
        elif name == _AUTHORIZATION and not seen_auth:
            seen_auth = True
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == _BEARER:
                bearer = token.strip()
    return api_key, bearer


def _replay(chunks: list[bytes], original: Receive, *, disconnected: bool = False) -> Receive:
    """A ``receive`` that first returns the buffered body, then defers to the server's."""
    sent = {"done": False}

    async def receive() -> Message:
        if disconnected:
            return {"type": "http.disconnect"}
        if sent["done"]:
            return await original()  # returns when the client goes away
        sent["done"] = True
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    return receive


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    *(headers or [])],
    })
    await send({"type": "http.response.body", "body": payload})
