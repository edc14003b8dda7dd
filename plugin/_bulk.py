"""Bulk writes and lookups that survive a busy or flapping Elasticsearch.

Transient failures (HTTP 429 and 5xx, connection errors and timeouts, and the same statuses on
single items of a bulk response) are retried with exponential backoff and jitter until a request
makes no progress for :attr:`RetryPolicy.give_up_after` seconds. Writes use ``index`` actions with
stable ids, so a retry can never duplicate a document. Items Elasticsearch refuses for good (a
mapping error, say) are returned with their reason, never silently dropped.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from esdistill.plugin._errors import ConfigError, IngestError
from esdistill.plugin.es_errors import classify

__all__ = ["BulkOutcome", "RetryPolicy", "Stopped", "call_with_retry", "is_retryable", "send_bulk", "send_items"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class Stopped(Exception):
    """Raised inside a retry loop when the caller asked to stop."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient Elasticsearch failures.

    Attributes:
        initial_delay: seconds before the first retry.
        max_delay: cap on one wait.
        give_up_after: stop (raise :class:`IngestError`) when a request has made no progress for
            this many seconds; nothing is lost, a re-run with the same checkpoint resumes.
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    give_up_after: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_delay <= self.max_delay:
            raise ConfigError(f"retry delays: need 0 < initial_delay ({self.initial_delay}) <= max_delay "
                              f"({self.max_delay})")
        if self.give_up_after <= 0:
            raise ConfigError(f"give_up_after={self.give_up_after} (expected > 0 seconds)")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based), with jitter in [50%, 100%]."""
        base = min(self.max_delay, self.initial_delay * (2 ** min(attempt - 1, 30)))
        return base * (0.5 + random.random() / 2)


def is_retryable(exc: BaseException) -> bool:
    """True for errors that may go away by themselves: 429/5xx answers, lost connections, timeouts
    (:attr:`esdistill.plugin.es_errors.EsFailure.retryable`)."""
    failure = classify(exc)
    return failure is not None and failure.retryable


def _wait(seconds: float, stop: threading.Event | None) -> None:
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise Stopped()


def call_with_retry(fn: Callable[[], T], *, what: str, policy: RetryPolicy,
                    stop: threading.Event | None = None, on_retry: Callable[[], None] | None = None) -> T:
    """Call ``fn`` until it succeeds, retrying transient Elasticsearch errors with backoff.

    Raises:
        IngestError: no success within ``policy.give_up_after`` seconds.
        Exception: a non-transient error from ``fn``, unchanged.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # classified below
            if not is_retryable(exc):
                raise
            attempt += 1
            delay = policy.delay(attempt)
            if time.monotonic() - started + delay > policy.give_up_after:
                raise IngestError(
                    f"{what} kept failing for {time.monotonic() - started:.0f} s ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); stopping. Nothing was lost: run again with the same checkpoint "
                    "to resume."
                ) from exc
            logger.warning("%s failed (%s), retry %d in %.1f s", what, type(exc).__name__, attempt, delay)
            if on_retry:
                on_retry()
            _wait(delay, stop)


@dataclass
class BulkOutcome:
    """What happened to the items of one bulk write.

    Attributes:
        ok: how many items were written.
        rejected: ``(item position, reason)`` for items Elasticsearch refused for good.
        retries: how many retry rounds it took.
    """

    ok: int
    rejected: list[tuple[int, str]]
    retries: int


def _item_reason(result: dict[str, Any]) -> str:
    err = result.get("error") or {}
    if isinstance(err, dict):
        reason = f"{err.get('type', 'error')}: {err.get('reason', '')}"
        cause = err.get("caused_by")
        if isinstance(cause, dict) and cause.get("reason"):
            reason += f" (caused by {cause.get('type', '')}: {cause['reason']})"
        return f"Elasticsearch refused the document (HTTP {result.get('status')}): {reason}"
    return f"Elasticsearch refused the document (HTTP {result.get('status')}): {err}"


def _groups(pending: list[int], lines: Sequence[bytes], max_bytes: int) -> list[list[int]]:
    """Split item positions into requests of at most ``max_bytes`` (at least one item each)."""
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for pos in pending:
        n = len(lines[pos])
        if current and size + n > max_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(pos)
        size += n
    if current:
        groups.append(current)
    return groups


def _too_large(exc: BaseException) -> bool:
    failure = classify(exc)
    return failure is not None and failure.kind == "too_large"


def send_bulk(client: Any, index: str, lines: Sequence[bytes], *, policy: RetryPolicy,
              stop: threading.Event | None = None, request_timeout: float = 120.0,
              on_retry: Callable[[], None] | None = None, max_bytes: int = 16 << 20) -> BulkOutcome:
    """Write pre-serialised ``index`` actions (one ``action\\nsource\\n`` per item), retrying
    transient failures of the whole request and of single items.

    Requests are kept under ``max_bytes``; when Elasticsearch still answers 413 (request too large
    for its ``http.max_content_length``) the request is halved, and a single document that is too
    large on its own is returned as rejected, with that reason.

    Raises:
        IngestError: the cluster made no progress for ``policy.give_up_after`` seconds.
    """
    if max_bytes < 1:
        raise ConfigError(f"max_bytes={max_bytes} (expected a positive number of bytes)")
    outcome = BulkOutcome(ok=0, rejected=[], retries=0)
    bulk = client.options(request_timeout=request_timeout).bulk

    def note_retry() -> None:
        outcome.retries += 1
        if on_retry:
            on_retry()

    work = _groups(list(range(len(lines))), lines, max_bytes)
    while work:
        group = work.pop(0)
        try:
            _send_group(bulk, index, lines, group, outcome, policy=policy, stop=stop, note_retry=note_retry)
        except Exception as exc:
            if not _too_large(exc):
                raise
            if len(group) == 1:
                reason = (f"Elasticsearch refused the document (HTTP 413): it is larger ({len(lines[group[0]])} "
                          "bytes with its vector) than the cluster's http.max_content_length")
                outcome.rejected.append((group[0], reason))
            else:
                half = len(group) // 2
                logger.warning("bulk write to %s: request too large (413), splitting %d items in two",
                               index, len(group))
                work[:0] = [group[:half], group[half:]]
    return outcome


def _send_group(bulk: Callable[..., Any], index: str, lines: Sequence[bytes], pending: list[int],
                outcome: BulkOutcome, *, policy: RetryPolicy, stop: threading.Event | None,
                note_retry: Callable[[], None]) -> None:
    for pos, result in send_items(bulk, index, lines, pending, policy=policy, stop=stop,
                                  on_retry=note_retry).items():
        if 200 <= int(result.get("status", 500)) < 300:
            outcome.ok += 1
        else:
            outcome.rejected.append((pos, _item_reason(result)))


def send_items(bulk: Callable[..., Any], index: str, lines: Sequence[bytes], pending: Sequence[int], *,
               policy: RetryPolicy, stop: threading.Event | None = None,
               on_retry: Callable[[], None] | None = None, **params: Any) -> dict[int, dict[str, Any]]:
    """Send the bulk items ``lines[pending]`` to ``index`` and resend those answered 429/5xx, with
    backoff, until each has a final answer; returns position -> the item's result (``status``,
    ``error``, ``_seq_no`` ...).

    Args:
        bulk: the client's ``bulk`` method (with the request timeout set).
        params: more ``bulk`` parameters (``refresh``).

    Raises:
        IngestError: items kept being refused for ``policy.give_up_after`` seconds without progress.
    """
    answers: dict[int, dict[str, Any]] = {}
    pending = list(pending)
    started = time.monotonic()
    attempt = 0
    while pending:
        body = [lines[i] for i in pending]
        resp = call_with_retry(lambda body=body: bulk(index=index, operations=body, **params),
                               what=f"bulk write to {index}", policy=policy, stop=stop, on_retry=on_retry)
        items = resp["items"]
        if len(items) != len(pending):
            raise IngestError(f"bulk write to {index}: sent {len(pending)} items, the answer has {len(items)}")
        again = []
        for pos, item in zip(pending, items):
            result = next(iter(item.values()))
            if int(result.get("status", 500)) in _RETRY_STATUS:
                again.append(pos)
            else:
                answers[pos] = result
        if len(again) < len(pending):
            started, attempt = time.monotonic(), 0  # progress: reset the give-up clock
        pending = again
        if pending:
            attempt += 1
            delay = policy.delay(attempt)
            if time.monotonic() - started + delay > policy.give_up_after:
                raise IngestError(f"bulk write to {index}: {len(pending)} item(s) kept being refused with "
                                  "429/5xx; stopping. Nothing was lost: run again with the same checkpoint.")
            logger.warning("bulk write to %s: %d item(s) pushed back, retry %d in %.1f s",
                           index, len(pending), attempt, delay)
            if on_retry:
                on_retry()
            _wait(delay, stop)
    return answers
