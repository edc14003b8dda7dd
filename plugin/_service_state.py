"""The service's shared state: the Elasticsearch client, the model, the hooks and the metrics.

One :class:`ServiceState` per app, built before the app binds its port: the model is loaded and its
fingerprint verified up front, so a broken model folder stops the service at start. Elasticsearch is
not needed at start: :meth:`ServiceState.readiness` reports it unreachable, the index missing or the
model not matching the index's vectors, and turns true by itself once all three are fine. Routes reach
the state through ``app.state.esdistill``.

Imports no web framework (the CLI and the runtime import it without the serve extra).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from esdistill.plugin._errors import ConfigError, EsdistillError, FingerprintError
from esdistill.plugin._service_errors import client_summary, es_failure, jsonable
from esdistill.plugin.metrics import ServiceMetrics
from esdistill.plugin.service_settings import ServiceSettings

__all__ = ["API_VERSION", "MAX_ERRORS", "ServiceState"]

logger = logging.getLogger(__name__)

#: the version prefix of the API's paths (``/v1/search``...)
API_VERSION = "v1"
#: refused documents listed in one ingest answer (the counts are always complete)
MAX_ERRORS = 100
#: a scrape of /metrics re-runs the readiness check when the last one is older than this
_READY_MAX_AGE_S = 5.0
#: how long /readyz reuses its count of missing and stale vectors
_VECTORS_MAX_AGE_S = 30.0


class ServiceState:
    """Everything the routes share: the client, the model, the hooks and the metrics.

    Built once by :func:`esdistill.plugin.service.create_app`; the model is loaded (and its
    fingerprint verified) up front, so a broken model folder stops the service before it binds its
    port. Elasticsearch is *not* needed at start: the service starts while it is down, reports
    not-ready, and recovers by itself.
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
            summary = jsonable(hook.ingest(documents, source="http"))
            errors = []
            if dead.exists():
                for line in dead.read_text(encoding="utf-8", errors="replace").splitlines()[:MAX_ERRORS]:
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
            kind = es_failure(exc)
            reason = (f"Elasticsearch is unavailable ({type(exc).__name__})" if kind == "unavailable"
                      else f"Elasticsearch answered with an error ({client_summary(exc)})")
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
