"""``esdistill serve``: the HTTP query/ingest service (needs the ``serve`` extra when run).

Every flag has an environment twin ``ESDISTILL_SERVE_<NAME>`` and may also come from a settings file
(``--config``, JSON or TOML); flags win over the environment, which wins over the file. The web
framework is imported only when the command runs, so ``esdistill --help`` works without the extra.
SIGTERM (and Ctrl-C) stop the service gracefully: it stops accepting connections, lets in-flight
requests finish for ``--shutdown-grace`` seconds, then closes its Elasticsearch client.
"""

from __future__ import annotations

import argparse
import logging

from esdistill.plugin.service_settings import ENV_PREFIX, ServiceSettings

__all__ = ["register", "settings_from_args", "with_exported_model"]

logger = logging.getLogger(__name__)

# flag dest -> settings field (only flags whose value is not None override the environment)
_FIELDS = (
    "index", "model", "rerank", "host", "port", "es_url", "es_timeout_s", "api_key_file", "max_body_bytes",
    "rate_limit_per_s", "rate_limit_burst", "max_k", "max_documents", "default_budget_ms", "threads",
    "rerank_top_n", "ab_rerank_share", "ab_salt", "exposure_log", "shutdown_grace_s",
)


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    """Merge ``--config``, the environment and the flags into validated settings.

    Raises:
        ConfigError: a setting is missing or invalid (the message names it).
    """
    overrides = {name: getattr(args, name, None) for name in _FIELDS}
    if getattr(args, "metrics_require_key", False):
        overrides["metrics_require_key"] = True
    return ServiceSettings.load(file=args.config, overrides=overrides)


def with_exported_model(settings: ServiceSettings) -> ServiceSettings:
    """``settings`` with ``model`` as an exported folder: a packaged name (``minilm``) is exported
    once into the cache, like ``esdistill search --model`` does.

    Raises:
        ModelError: ``model`` is neither an exported folder nor a packaged name (the message says what to run).
    """
    from dataclasses import replace

    from esdistill.plugin.models import exported_model

    return replace(settings, model=str(exported_model(settings.model)))


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    from esdistill.plugin.service import _require_serve_extra, serve

    _require_serve_extra()  # a missing extra is said first: nothing below works without it
    settings = with_exported_model(settings)

    logger.info("service settings: %s", settings.public_dict())
    serve(settings)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``esdistill serve`` to the ``esdistill`` parser."""
    p = sub.add_parser(
        "serve",
        help="run the HTTP search/ingest service (needs the serve extra)",
        description="Serve /v1/search, /v1/ingest, /v1/index/{name}, /healthz, /readyz and /metrics. "
                    f"Each flag can also be set as {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}INDEX).",
    )
    p.add_argument("--index", default=None, help="index or alias to search and ingest into")
    p.add_argument("--model", default=None, metavar="DIR", help="exported student folder (manifest.json + ONNX) or a packaged name (minilm)")
    p.add_argument("--rerank", default=None, metavar="TEACHER",
                   help="reranker (optional): an exported cross- or bi-encoder folder, a distillation run folder "
                        "(its chosen teacher) or a teacher spec such as '0.5*mpnet+0.5*bm25'")
    p.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8080)")
    p.add_argument("--config", default=None, metavar="FILE", help="settings file (.json or .toml)")
    p.add_argument("--es-url", dest="es_url", default=None, help="Elasticsearch URL (default ESDISTILL_ES_URL)")
    p.add_argument("--es-timeout", dest="es_timeout_s", type=float, default=None, metavar="S",
                   help="timeout of each Elasticsearch request in seconds (default 10)")
    p.add_argument("--api-key-file", dest="api_key_file", default=None, metavar="F",
                   help="file with accepted API keys, one per line; without it (and without "
                        f"{ENV_PREFIX}API_KEYS) the API is open")
    p.add_argument("--max-body-bytes", dest="max_body_bytes", type=int, default=None, metavar="N",
                   help="largest request body accepted (default 1 MiB)")
    p.add_argument("--rate-limit", dest="rate_limit_per_s", type=float, default=None, metavar="PER_S",
                   help="requests per second per client on /v1 (default 0: no limit)")
    p.add_argument("--rate-burst", dest="rate_limit_burst", type=int, default=None, metavar="N",
                   help="burst size of the rate limit (default: the rate)")
    p.add_argument("--max-k", dest="max_k", type=int, default=None, help="largest k a search may ask for")
    p.add_argument("--max-documents", dest="max_documents", type=int, default=None,
                   help="most documents per ingest request")
    p.add_argument("--budget-ms", dest="default_budget_ms", type=float, default=None,
                   help="rerank budget when a request gives none")
    p.add_argument("--rerank-top-n", dest="rerank_top_n", type=int, default=None, metavar="N",
                   help="candidates the reranker sees")
    p.add_argument("--ab-rerank-share", dest="ab_rerank_share", type=float, default=None, metavar="SHARE",
                   help="share of A/B keys in the student+rerank arm (needs --rerank)")
    p.add_argument("--ab-salt", dest="ab_salt", default=None, help="salt of the A/B assignment")
    p.add_argument("--exposure-log", dest="exposure_log", default=None, metavar="FILE",
                   help="JSONL file for the A/B exposure log")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    p.add_argument("--shutdown-grace", dest="shutdown_grace_s", type=float, default=None, metavar="S",
                   help="seconds in-flight requests get after SIGTERM (default 10)")
    p.add_argument("--metrics-require-key", dest="metrics_require_key", action="store_true",
                   help="protect /metrics with the API key too")
    p.set_defaults(func=_serve)
