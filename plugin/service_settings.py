"""Settings of the HTTP service (``esdistill serve``), validated on construction.

Settings come from, in increasing order of precedence: the defaults below, a settings file (JSON or
TOML, keys = field names), environment variables ``ESDISTILL_SERVE_<FIELD>`` and explicit overrides
(the command line). Elasticsearch connection settings stay where the rest of esdistill reads them
(``ESDISTILL_ES_URL``, ``ESDISTILL_ES_API_KEY``, ... see :mod:`esdistill.plugin.es_client`).

API keys are secrets: they are kept only as SHA-256 digests after validation, never appear in
``repr()``/:meth:`ServiceSettings.public_dict`, and are never logged::

    >>> s = ServiceSettings(index="docs", model="runs/student-onnx",
    ...                     api_keys=("a-long-enough-secret-key",))
    >>> "secret" in repr(s)
    False
    >>> s.auth_enabled
    True

This module imports no web framework (the service itself lives in :mod:`esdistill.plugin.service`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from esdistill.plugin._errors import ConfigError

__all__ = ["ENV_PREFIX", "MIN_API_KEY_LENGTH", "ServiceSettings"]

logger = logging.getLogger(__name__)

#: environment variables for the service are ``ENV_PREFIX + FIELD.upper()``
ENV_PREFIX = "ESDISTILL_SERVE_"
#: shortest API key accepted (a key is a bearer secret: make it long and random)
MIN_API_KEY_LENGTH = 16
_KEY_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
# fields that are never read from the environment or a file under their own name
_INTERNAL = {"_key_digests"}


def _read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with ``#`` are ignored."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"the API key file {path} cannot be read ({exc.strerror or exc}); "
                          "check the path and its permissions") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class ServiceSettings:
    """Everything ``esdistill serve`` needs; every knob is checked in ``__post_init__``.

    Attributes:
        index: the Elasticsearch index (or alias) to search and ingest into.
        model: the exported student model folder (ONNX, with ``manifest.json``).
        rerank: the teacher to rerank with (:func:`~esdistill.plugin.rerank.load_reranker`): an exported
            cross- or bi-encoder folder, a distillation run folder (its chosen teacher) or a teacher
            spec such as ``0.5*mpnet+0.5*bm25``; None: no rerank.
        host: interface to bind (``127.0.0.1``; ``0.0.0.0`` inside a container).
        port: TCP port to listen on.
        es_url: Elasticsearch URL; None: ``ESDISTILL_ES_URL`` or the default.
        es_timeout_s: per-request timeout towards Elasticsearch.
        es_max_retries: retries of a failed Elasticsearch request before answering 503.
        ingest_retry_s: how long an ingest request retries transient Elasticsearch failures (429,
            5xx, lost connections) before answering 503; nothing confirmed is lost.
        api_keys: accepted API keys (secret; kept as digests). Empty with no file: auth is off.
        api_key_file: a file with one API key per line (``#`` comments allowed).
        max_body_bytes: largest request body accepted (413 above it).
        rate_limit_per_s: sustained requests per second per client on ``/v1`` (0: no limit); every
            other path is limited at the same rate from a bucket of its own.
        rate_limit_burst: bucket size of the rate limit (default: the per-second rate, at least 1).
        max_k: largest ``k`` a search may ask for.
        max_query_chars: longest query text accepted.
        max_documents: most documents in one ``/v1/ingest`` request.
        max_num_candidates: largest kNN ``num_candidates`` a search may ask for.
        default_budget_ms: rerank budget when a request gives none (None: the query hook's default).
        threads: ONNX Runtime intra-op threads (None: onnxruntime decides).
        rerank_top_n: how many hits the reranker sees (None: the query hook's default).
        lexical_template: a JSON file with the team's lexical query (``{{query}}`` where the text
            goes), the lexical leg of ``bm25`` and ``hybrid`` search; checked against the allow-list
            when the settings load (see :mod:`esdistill.plugin.lexical`). None: ``multi_match``.
        fusion: default hybrid fusion, ``rrf`` or ``linear`` (a request may choose its own).
        alpha: default kNN weight of ``linear`` fusion (the lexical leg gets ``1 - alpha``).
        ab_rerank_share: share of A/B keys assigned to the student+rerank arm (None: no A/B).
        ab_salt: salt of the A/B assignment (changing it reshuffles the keys).
        exposure_log: JSONL file for the A/B exposure log (None: the logger only).
        shutdown_grace_s: seconds in-flight requests get to finish after SIGTERM.
        metrics_require_key: also protect ``/metrics`` with the API key.
    """

    index: str
    model: str
    rerank: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    es_url: str | None = None
    es_timeout_s: float = 10.0
    es_max_retries: int = 1
    ingest_retry_s: float = 30.0
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: str | None = None
    max_body_bytes: int = 1 << 20
    rate_limit_per_s: float = 0.0
    rate_limit_burst: int | None = None
    max_k: int = 100
    max_query_chars: int = 4096
    max_documents: int = 500
    max_num_candidates: int = 10_000
    default_budget_ms: float | None = None
    threads: int | None = None
    rerank_top_n: int | None = None
    lexical_template: str | None = None
    fusion: str = "rrf"
    alpha: float = 0.5
    ab_rerank_share: float | None = None
    ab_salt: str = "esdistill"
    exposure_log: str | None = None
    shutdown_grace_s: float = 10.0
    metrics_require_key: bool = False
    _key_digests: tuple[bytes, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems: list[str] = []

        def need(cond: bool, message: str) -> None:
            if not cond:
                problems.append(message)

        need(isinstance(self.index, str) and bool(self.index.strip()),
             "index is empty: pass --index NAME (or ESDISTILL_SERVE_INDEX)")
        if isinstance(self.index, str) and self.index.strip():
            need(self.index == self.index.lower() and not any(c in self.index for c in ' "*\\<>|,/?#:')
                 and not self.index.startswith(("-", "_", "+")),
                 f"index={self.index!r} is not a valid Elasticsearch index name (lowercase, no spaces, "
                 "no * \\ < > | , / ? # : or quotes, not starting with - _ +)")
        need(isinstance(self.model, str) and bool(str(self.model).strip()),
             "model is empty: pass --model DIR (or ESDISTILL_SERVE_MODEL), an exported student folder")
        need(bool(self.host), "host is empty: use 127.0.0.1, or 0.0.0.0 inside a container")
        need(isinstance(self.port, int) and 0 <= self.port <= 65535,
             f"port={self.port!r} is not a TCP port: use 1..65535 (0 picks a free one)")
        need(_positive(self.es_timeout_s), f"es_timeout_s={self.es_timeout_s!r} must be a positive number")
        need(_positive(self.ingest_retry_s), f"ingest_retry_s={self.ingest_retry_s!r} must be a positive number")
        need(isinstance(self.es_max_retries, int) and 0 <= self.es_max_retries <= 10,
             f"es_max_retries={self.es_max_retries!r} must be an integer in 0..10")
        need(isinstance(self.max_body_bytes, int) and 1024 <= self.max_body_bytes <= 1 << 30,
             f"max_body_bytes={self.max_body_bytes!r} must be an integer between 1024 and 1 GiB")
        need(isinstance(self.rate_limit_per_s, (int, float)) and math.isfinite(self.rate_limit_per_s)
             and self.rate_limit_per_s >= 0,
             f"rate_limit_per_s={self.rate_limit_per_s!r} must be >= 0 (0 turns the limit off)")
        need(self.rate_limit_burst is None or (isinstance(self.rate_limit_burst, int)
                                               and self.rate_limit_burst >= 1),
             f"rate_limit_burst={self.rate_limit_burst!r} must be a positive integer")
        for name, hi in (("max_k", 10_000), ("max_query_chars", 1_000_000), ("max_documents", 100_000),
                         ("max_num_candidates", 10_000)):
            v = getattr(self, name)
            need(isinstance(v, int) and 1 <= v <= hi, f"{name}={v!r} must be an integer in 1..{hi}")
        need(self.default_budget_ms is None or _positive(self.default_budget_ms),
             f"default_budget_ms={self.default_budget_ms!r} must be a positive number of milliseconds")
        need(self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
             f"threads={self.threads!r} must be a positive integer")
        need(self.rerank_top_n is None or (isinstance(self.rerank_top_n, int) and self.rerank_top_n >= 1),
             f"rerank_top_n={self.rerank_top_n!r} must be a positive integer")
        need(self.fusion in ("rrf", "linear"), f"fusion={self.fusion!r} must be rrf or linear")
        need(isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
             and 0.0 <= float(self.alpha) <= 1.0, f"alpha={self.alpha!r} must be a weight between 0 and 1")
        if self.lexical_template:
            from esdistill.plugin.lexical import LexicalTemplate

            try:
                LexicalTemplate.load(self.lexical_template)
            except ConfigError as exc:
                problems.append(str(exc))
        need(self.ab_rerank_share is None or (isinstance(self.ab_rerank_share, (int, float))
                                              and 0.0 <= self.ab_rerank_share <= 1.0),
             f"ab_rerank_share={self.ab_rerank_share!r} must be a share between 0 and 1")
        need(self.ab_rerank_share is None or self.rerank is not None,
             "ab_rerank_share is set but no reranker is: pass --rerank DIR, or drop the A/B share")
        need(_positive(self.shutdown_grace_s) or self.shutdown_grace_s == 0,
             f"shutdown_grace_s={self.shutdown_grace_s!r} must be >= 0")

        keys = list(self.api_keys or ())
        if isinstance(self.api_keys, str):  # a single key given as a string
            keys = [self.api_keys]
        if self.api_key_file:
            try:
                keys.extend(_read_key_file(Path(self.api_key_file)))
            except ConfigError as exc:
                problems.append(str(exc))
        short = sum(1 for k in keys if len(k) < MIN_API_KEY_LENGTH)
        if short:
            # never print the key itself, only how many and why
            problems.append(f"{short} API key(s) are shorter than {MIN_API_KEY_LENGTH} characters; {_KEY_HINT}")
        if any(any(c.isspace() for c in k) for k in keys):
            problems.append("an API key contains whitespace; keys must be single tokens")
        if self.api_key_file and not keys and not problems:
            problems.append(f"the API key file {self.api_key_file} holds no key; put one key per line")
        if problems:
            raise ConfigError("invalid service settings: " + "; ".join(problems))
        # keep only digests: the plain keys are dropped from the object
        self.api_keys = ()
        self._key_digests = tuple(hashlib.sha256(k.encode()).digest() for k in dict.fromkeys(keys))
        if self.rate_limit_burst is None and self.rate_limit_per_s > 0:
            self.rate_limit_burst = max(1, math.ceil(self.rate_limit_per_s))

    # ----------------------------------------------------------------------------- derived
    @property
    def auth_enabled(self) -> bool:
        """True when at least one API key is configured."""
        return bool(self._key_digests)

    @property
    def key_digests(self) -> tuple[bytes, ...]:
        """SHA-256 digests of the accepted API keys (what the service compares against)."""
        return self._key_digests

    def public_dict(self) -> dict[str, Any]:
        """The settings as a dict safe to log or show: secrets become a count."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _INTERNAL}
        out.pop("api_keys")
        out["api_keys"] = f"<{len(self._key_digests)} configured>"
        return out

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        *,
        file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> ServiceSettings:
        """Merge a settings file, the environment and overrides (in that order of precedence).

        Args:
            file: a ``.json`` or ``.toml`` file; None: ``ESDISTILL_SERVE_CONFIG`` when set.
            env: the environment to read (default ``os.environ``).
            overrides: explicit values (None values are ignored), e.g. from the command line.

        Returns:
            Validated settings.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or an invalid setting (all problems
                are reported at once).

        Example:
            >>> ServiceSettings.load(env={"ESDISTILL_SERVE_INDEX": "docs",
            ...                           "ESDISTILL_SERVE_MODEL": "m", "ESDISTILL_SERVE_PORT": "9000"}).port
            9000
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        file = file or env.get(ENV_PREFIX + "CONFIG") or None
        if file:
            values.update(cls._from_file(Path(file)))
        values.update(cls._from_env(env))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = cls._field_types()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown service setting(s) {unknown}; known: {sorted(known)}")
        missing = [n for n in ("index", "model") if not values.get(n)]
        if missing:
            raise ConfigError(
                "the service needs " + " and ".join(missing) + ": pass "
                + " ".join(f"--{n} ..." for n in missing) + " (or set "
                + ", ".join(ENV_PREFIX + n.upper() for n in missing) + ")"
            )
        return cls(**values)

    @classmethod
    def _field_types(cls) -> dict[str, str]:
        return {f.name: str(f.type) for f in fields(cls) if f.init and f.name not in _INTERNAL}

    @classmethod
    def _from_env(cls, env: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        problems = []
        for name, typ in cls._field_types().items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            try:
                out[name] = _coerce(raw, typ)
            except ValueError:
                shown = "<secret>" if name == "api_keys" else repr(raw)
                problems.append(f"{ENV_PREFIX}{name.upper()}={shown} is not a valid {typ}")
        if problems:
            raise ConfigError("; ".join(problems))
        return out

    @classmethod
    def _from_file(cls, path: Path) -> dict[str, Any]:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"the service settings file {path} cannot be read ({exc.strerror or exc})") from None
        try:
            if path.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"the service settings file {path} is not valid "
                              f"{'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"the service settings file {path} must hold one object of settings")
        if isinstance(data.get("api_keys"), list):
            data["api_keys"] = tuple(str(k) for k in data["api_keys"])
        return data


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _coerce(raw: str, typ: str) -> Any:
    """Turn an environment string into the field's type (``typ`` is the annotation's text)."""
    base = typ.replace(" | None", "").strip()
    if base == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if base == "int":
        return int(raw)
    if base == "float":
        return float(raw)
    if base.startswith("tuple"):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return raw
