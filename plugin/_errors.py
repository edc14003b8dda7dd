"""The exceptions esdistill raises.

Every error esdistill raises on purpose derives from :class:`EsdistillError`, and its message says
what went wrong *and what to do about it*. Errors carry their payload as attributes, so callers can
act on them without parsing text::

    EsdistillError
    ├── ConfigError            bad argument, option or input file (the message names it)
    │   └── IndexNotFound      the index or alias does not exist
    ├── ModelError             a model folder is missing, incomplete or fails its checks
    │   └── FingerprintError   files do not match the manifest, or model does not match an index
    ├── ElasticsearchUnavailable  the cluster cannot be reached (or refuses our credentials)
    ├── LauncherError          the local Elasticsearch could not be fetched, started or stopped
    ├── IngestError            ingestion could not continue (carries the summary so far)
    └── ParityError            an export broke a parity threshold (carries every failure)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "ElasticsearchUnavailable",
    "EsdistillError",
    "FingerprintError",
    "IndexNotFound",
    "IngestError",
    "LauncherError",
    "ModelError",
    "ParityError",
]


class EsdistillError(Exception):
    """Base class of every error esdistill raises on purpose."""

    #: process exit code the CLI uses for this kind of error
    exit_code: int = 1


class ConfigError(EsdistillError, ValueError):
    """A bad argument, option or input; the message names it and the fix."""

    exit_code = 2


class IndexNotFound(ConfigError):
    """The index (or alias) does not exist; the message says how to create and fill it.

    Attributes:
        index: the name that was asked for.
    """

    def __init__(self, index: str, message: str | None = None) -> None:
        super().__init__(message or f"index {index!r} does not exist; create and fill it with "
                                    f"`esdistill index create {index} --model DIR` and `esdistill ingest`")
        self.index = index


class ModelError(EsdistillError):
    """A model folder is missing, incomplete or fails its checks."""

    exit_code = 3


class FingerprintError(ModelError):
    """Model files do not match their manifest, or the model does not match an index.

    Attributes:
        expected: the fingerprint that was required.
        actual: the fingerprint that was found.
    """

    def __init__(self, message: str, *, expected: str | None = None, actual: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class ElasticsearchUnavailable(EsdistillError):
    """Elasticsearch cannot be reached, is not healthy, or refused our credentials."""

    exit_code = 4


class LauncherError(EsdistillError):
    """The local Elasticsearch node could not be fetched, started, or stopped.

    Attributes:
        log_tail: the last lines of the node's log, when there is one.
    """

    exit_code = 5

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        if log_tail:
            message = f"{message}\n--- last lines of the Elasticsearch log ---\n{log_tail}"
        super().__init__(message)
        self.log_tail = log_tail


class IngestError(EsdistillError):
    """Ingestion stopped before the end of its input.

    Attributes:
        summary: what had been done when it stopped (an ``IngestSummary`` or ``None``).
    """

    exit_code = 6

    def __init__(self, message: str, *, summary: Any = None) -> None:
        super().__init__(message)
        self.summary = summary


class ParityError(EsdistillError):
    """An exported model broke one or more parity thresholds.

    Attributes:
        failures: one human-readable line per broken threshold (all of them, not just the first).
        report: the full parity report (a dict, as written to ``parity.json``).
    """

    exit_code = 7

    def __init__(self, failures: list[str], *, report: dict[str, Any] | None = None) -> None:
        lines = "\n".join(f"  - {f}" for f in failures)
        super().__init__(
            f"the exported model failed {len(failures)} parity check(s):\n{lines}\n"
            "Inspect parity.json, loosen the thresholds on purpose, or pass --force to export anyway."
        )
        self.failures = list(failures)
        self.report = report or {}
