"""A real HTTP proxy in front of the real Elasticsearch node that misbehaves on purpose.

It forwards every request unchanged, except ``_bulk`` requests, which it can answer with HTTP 429,
drop (close the connection without an answer), answer partly (the first half of the items is *not*
forwarded and gets a per-item 429), or delay. It records when each bulk request started and ended.
Elasticsearch itself is never faked: every document that ends up indexed went through the node.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FlakyProxy:
    """Start with ``FlakyProxy(upstream_url, ...)``; use ``.url``; ``.close()`` when done.

    Args:
        upstream: the real node's URL.
        bulk_429: answer this many bulk requests with a whole-request 429.
        bulk_drop: close the connection on this many bulk requests (after the 429s).
        bulk_item_429: on this many bulk requests (after those), forward only the second half of the
            items and answer the first half with per-item 429s.
        bulk_delay: seconds to wait before forwarding each bulk request.
        always_503: answer every bulk request with 503 (to test giving up).
        max_body: answer 413 to bulk requests larger than this many bytes (like a small
            ``http.max_content_length``).
    """

    def __init__(self, upstream: str, *, bulk_429: int = 0, bulk_drop: int = 0, bulk_item_429: int = 0,
                 bulk_delay: float = 0.0, always_503: bool = False, max_body: int | None = None) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname, parts.port
        self.plan = ["429"] * bulk_429 + ["drop"] * bulk_drop + ["item429"] * bulk_item_429
        self.bulk_delay = bulk_delay
        self.always_503 = always_503
        self.max_body = max_body
        self.bulk_sizes: list[int] = []
        self.bulk_spans: list[tuple[float, float]] = []
        self.faults: dict[str, int] = {"429": 0, "drop": 0, "item429": 0, "503": 0, "413": 0}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if "/_bulk" in self.path:
                    proxy._bulk(self, body)
                else:
                    proxy._forward(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ internals
    def _upstream(self, method: str, path: str, headers, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
            conn.request(method, path, body=body or None, headers=fwd)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    @staticmethod
    def _reply(handler, status: int, headers, body: bytes) -> None:
        handler.send_response(status)
        sent = set()
        for k, v in headers:
            if k.lower() in ("content-length", "transfer-encoding", "connection"):
                continue
            handler.send_header(k, v)
            sent.add(k.lower())
        if "x-elastic-product" not in sent:
            handler.send_header("X-Elastic-Product", "Elasticsearch")
        if "content-type" not in sent:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _forward(self, handler, body: bytes) -> None:
        status, headers, payload = self._upstream(handler.command, handler.path, handler.headers, body)
        self._reply(handler, status, headers, payload)

    def _bulk(self, handler, body: bytes) -> None:
        started = time.monotonic()
        with self._lock:
            self.bulk_sizes.append(len(body))
            if self.max_body is not None and len(body) > self.max_body:
                action = "413"
            else:
                action = "503" if self.always_503 else (self.plan.pop(0) if self.plan else "pass")
            if action != "pass":
                self.faults[action] += 1
        try:
            if self.bulk_delay:
                time.sleep(self.bulk_delay)
            if action in ("429", "503", "413"):
                err = {"error": {"type": "es_rejected_execution_exception", "reason": "injected by the test"},
                       "status": int(action)}
                self._reply(handler, int(action), [], json.dumps(err).encode())
            elif action == "drop":
                handler.close_connection = True
                handler.connection.shutdown(2)
            elif action == "item429":
                lines = body.split(b"\n")
                pairs = [lines[i] + b"\n" + lines[i + 1] + b"\n" for i in range(0, len(lines) - 1, 2)]
                cut = len(pairs) // 2
                status, headers, payload = self._upstream(handler.command, handler.path, handler.headers,
                                                          b"".join(pairs[cut:]))
                answer = json.loads(payload)
                rejected = [{"index": {"status": 429, "error": {"type": "es_rejected_execution_exception",
                                                                  "reason": "injected by the test"}}}] * cut
                answer["items"] = rejected + answer["items"]
                answer["errors"] = True
                self._reply(handler, status, headers, json.dumps(answer).encode())
            else:
                self._forward(handler, body)
        finally:
            with self._lock:
                self.bulk_spans.append((started, time.monotonic()))
