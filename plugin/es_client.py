"""Connect to Elasticsearch the way elasticsearch-py users expect, with credentials from the
environment (never from the repository, never logged).

Environment variables (all optional):

========================== ==========================================================
``ESDISTILL_ES_URL``        cluster URL (default ``http://127.0.0.1:9200``)
``ESDISTILL_ES_API_KEY``    an API key (``id:key`` or the encoded form)
``ESDISTILL_ES_USER``       basic-auth user (with ``ESDISTILL_ES_PASSWORD``)
``ESDISTILL_ES_PASSWORD``   basic-auth password; ``ESDISTILL_ES_PASSWORD_FILE`` reads it from a file
``ESDISTILL_ES_CA_CERTS``   CA bundle to verify the cluster's TLS certificate
``ESDISTILL_ES_TIMEOUT``    seconds to wait for one answer (default 30)
========================== ==========================================================

The HTTP client logs a warning each time it retries a failed request, with the failure's whole
traceback; :func:`connect` makes that one line (the failure's class and message) unless its logger
is at DEBUG (``-vv``), where the traceback is kept.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from esdistill.plugin._errors import ConfigError, ElasticsearchUnavailable
from esdistill.plugin.es_errors import classify

__all__ = ["DEFAULT_URL", "check_cluster", "connect", "redact", "server_version"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:9200"
DEFAULT_TIMEOUT_S = 30.0


def _timeout_from_env() -> float:
    raw = os.environ.get("ESDISTILL_ES_TIMEOUT")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(f"ESDISTILL_ES_TIMEOUT={raw!r} is not a positive number of seconds (e.g. 30)")
    return value


class _OneLineRetries(logging.Filter):
    """Turns the transport's retry warnings into one line unless its logger is at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            text = str(exc).splitlines()[0][:300] if str(exc) else ""
            record.msg = f"{record.getMessage()}: {type(exc).__name__}{f' ({text})' if text else ''}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_RETRY_FILTER = _OneLineRetries()


def _quiet_retries() -> None:
    """Install the one-line filter on the transport's logger (once)."""
    transport = logging.getLogger("elastic_transport.transport")
    if _RETRY_FILTER not in transport.filters:
        transport.addFilter(_RETRY_FILTER)


def redact(url: str) -> str:
    """Hide a password embedded in a URL (``https://u:secret@host`` -> ``https://u:***@host``)."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def connect(
    url: str | None = None,
    *,
    api_key: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    ca_certs: str | None = None,
    request_timeout: float | None = None,
    check: bool = True,
    **kwargs: Any,
):
    """Return an ``elasticsearch.Elasticsearch`` client; settings default to the environment.

    Args:
        url: cluster URL; default ``ESDISTILL_ES_URL`` or ``http://127.0.0.1:9200``.
        api_key: API key; default ``ESDISTILL_ES_API_KEY``.
        basic_auth: (user, password); default from ``ESDISTILL_ES_USER`` / ``..._PASSWORD[_FILE]``.
        ca_certs: CA bundle path; default ``ESDISTILL_ES_CA_CERTS``.
        request_timeout: per-request timeout in seconds; default ``ESDISTILL_ES_TIMEOUT`` or 30.
        check: ping the cluster now and raise a clear error when it cannot be used.

    Raises:
        ElasticsearchUnavailable: the cluster is unreachable, or refuses the credentials or
            certificate (the message says which, never the secret).
        ConfigError: a credentials file cannot be read, ``ESDISTILL_ES_TIMEOUT`` is not a number, the
            URL is malformed, or a CA file is given for a plain-HTTP URL.
    """
    from elasticsearch import Elasticsearch

    _quiet_retries()
    url = url or os.environ.get("ESDISTILL_ES_URL") or DEFAULT_URL
    api_key = api_key or os.environ.get("ESDISTILL_ES_API_KEY") or None
    if basic_auth is None and os.environ.get("ESDISTILL_ES_USER"):
        password = os.environ.get("ESDISTILL_ES_PASSWORD")
        pw_file = os.environ.get("ESDISTILL_ES_PASSWORD_FILE")
        if password is None and pw_file:
            try:
                password = Path(pw_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"ESDISTILL_ES_PASSWORD_FILE={pw_file} cannot be read: {exc}") from None
        basic_auth = (os.environ["ESDISTILL_ES_USER"], password or "")
    ca_certs = ca_certs or os.environ.get("ESDISTILL_ES_CA_CERTS") or None
    if request_timeout is None:
        request_timeout = _timeout_from_env()
    opts: dict[str, Any] = dict(request_timeout=request_timeout, **kwargs)
    if api_key:
        opts["api_key"] = api_key
    if basic_auth:
        opts["basic_auth"] = basic_auth
    if ca_certs:
        opts["ca_certs"] = ca_certs
    if ca_certs and not url.lower().startswith("https://"):
        raise ConfigError(f"a CA file is given (ESDISTILL_ES_CA_CERTS) but the URL {redact(url)} is not https://: "
                          "use the cluster's https:// URL, or unset ESDISTILL_ES_CA_CERTS for a plain-HTTP cluster")
    try:
        client = Elasticsearch(url, **opts)
    except ValueError as exc:  # a malformed URL or contradictory options (the text may quote the URL)
        reason = str(exc).replace(url, redact(url))
        raise ConfigError(f"cannot build an Elasticsearch client for {redact(url)}: {reason}. Check "
                          "ESDISTILL_ES_URL and the other ESDISTILL_ES_* settings") from None
    if check:
        check_cluster(client, url, timeout=request_timeout)
    return client


def check_cluster(client: Any, url: str, *, timeout: float | None = None) -> dict:
    """Ask for cluster health; translate every failure into :class:`ElasticsearchUnavailable`.

    ``timeout`` (the client's request timeout, in seconds) only goes into the message.
    """
    shown = redact(url)
    try:
        return dict(client.cluster.health(timeout="5s"))
    except Exception as exc:
        failure = classify(exc)
        if failure is None:
            raise
    if failure.kind == "unauthorized":
        raise ElasticsearchUnavailable(
            f"Elasticsearch at {shown} rejected the credentials (401). Check ESDISTILL_ES_API_KEY or "
            "ESDISTILL_ES_USER/ESDISTILL_ES_PASSWORD."
        ) from None
    if failure.kind == "forbidden":
        raise ElasticsearchUnavailable(
            f"Elasticsearch at {shown} accepted the credentials but refused cluster health (403); "
            "grant the user the 'monitor' cluster privilege."
        ) from None
    if failure.kind == "timeout":
        waited = timeout if timeout is not None else DEFAULT_TIMEOUT_S
        raise ElasticsearchUnavailable(
            f"Elasticsearch at {shown} did not answer within {waited:g} s: it is overloaded, stuck, or "
            "something else listens there. Check the cluster, or wait longer with ESDISTILL_ES_TIMEOUT=SECONDS."
        ) from None
    if failure.kind == "tls":
        # the client reports a failed handshake as TlsError, often without the cause in its text
        raise ElasticsearchUnavailable(
            f"the TLS handshake with {shown} failed: its certificate is not trusted. Point "
            "ESDISTILL_ES_CA_CERTS at the cluster's CA file (for a local node: <node>/config/certs/ca.crt)."
        ) from None
    if failure.kind == "unreachable":
        hint = " If the cluster uses TLS, the URL must start with https://." if shown.startswith("http://") else ""
        raise ElasticsearchUnavailable(
            f"cannot reach Elasticsearch at {shown}: {failure.reason}. Is it running?{hint} "
            "Start a local node with `esdistill es start`, or set ESDISTILL_ES_URL."
        ) from None
    raise ElasticsearchUnavailable(f"Elasticsearch at {shown} answered with an error ({failure.kind}, status "
                                   f"{failure.status})") from None


def server_version(client: Any) -> str:
    """The Elasticsearch version of the node answering (``GET /`` may be absent on some builds)."""
    info = client.nodes.info(node_id="_local", filter_path="nodes.*.version")
    return next(iter(info["nodes"].values()))["version"]


#: from this Elasticsearch version on, dense vectors are left out of ``_source`` unless asked for
EXCLUDES_VECTORS_FROM = (9, 1)


def server_version_tuple(client: Any) -> tuple[int, int] | None:
    """``(major, minor)`` of the node answering, or ``None`` when it cannot be read."""
    try:
        major, minor = (int(x) for x in server_version(client).split(".")[:2])
    except Exception:  # noqa: BLE001 - callers choose what an unknown version means
        return None
    return major, minor


def source_with_vectors(client: Any, includes: list[str] | None = None) -> dict[str, Any]:
    """``_source`` filtering that returns dense vectors too (Elasticsearch >= 9.1 leaves them out
    unless ``exclude_vectors`` is false; older versions do not know that key). An unknown version is
    taken to be a recent one."""
    version = server_version_tuple(client)
    out: dict[str, Any] = {"includes": list(includes)} if includes else {}
    if version is None or version >= EXCLUDES_VECTORS_FROM:
        out["exclude_vectors"] = False
    return out or {"includes": ["*"]}
