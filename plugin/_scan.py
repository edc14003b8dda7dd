"""Reading every document of an index, page by page, through a point-in-time, surviving restarts.

:func:`scan` yields the hits of a point-in-time search sorted by ``_shard_doc`` (the cheapest
order). Transient failures (429, 5xx, lost connections) are retried with backoff. When the
point-in-time itself is lost (the node restarted, or it expired), a new one is opened and the pass
starts again from the first document, after a warning: every caller is idempotent per document
(it checks before it writes), so a document seen twice costs a lookup, never a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from esdistill.plugin._bulk import RetryPolicy, call_with_retry
from esdistill.plugin.es_errors import classify

__all__ = ["PointInTimeLost", "scan"]

logger = logging.getLogger(__name__)

_KEEP_ALIVE = "10m"
_MAX_RESTARTS = 20


class PointInTimeLost(Exception):
    """The point-in-time of a scan is gone (node restart, expiry)."""


def _pit_lost(exc: BaseException) -> bool:
    failure = classify(exc)
    return failure is not None and failure.kind == "pit_lost"


def scan(client: Any, index: str, *, policy: RetryPolicy, page_size: int = 500, query: dict[str, Any] | None = None,
         source: Any = True, source_excludes: list[str] | None = None, seq_no_primary_term: bool = False,
         version: bool = False, restart: bool = True, what: str = "scan") -> Iterator[dict[str, Any]]:
    """Every hit of ``index`` (matching ``query``), one page at a time.

    Args:
        client: an ``elasticsearch.Elasticsearch`` client.
        index: the index or alias to read.
        policy: backoff for transient failures.
        page_size: hits per request.
        query: an Elasticsearch query (default: every document).
        source: ``_source`` filter: ``True``, ``False`` or a list of fields to include.
        source_excludes: fields left out of ``_source`` (the vector, say).
        seq_no_primary_term / version: return ``_seq_no``/``_primary_term`` and ``_version``.
        restart: when the point-in-time is lost, start again from the first document
            (otherwise raise :class:`PointInTimeLost`).
        what: a label for log lines.

    Raises:
        PointInTimeLost: the point-in-time was lost and ``restart`` is false.
        IngestError: Elasticsearch kept failing for the policy's ``give_up_after``.
    """
    restarts = 0
    while True:
        try:
            yield from _one_pass(client, index, policy=policy, page_size=page_size, query=query, source=source,
                                 source_excludes=source_excludes, seq_no_primary_term=seq_no_primary_term,
                                 version=version, what=what)
            return
        except PointInTimeLost:
            restarts += 1
            if not restart or restarts > _MAX_RESTARTS:
                raise
            logger.warning("%s of %s: the point-in-time was lost (node restart?); starting the pass again "
                           "(documents already handled are only looked up)", what, index)


def _one_pass(client: Any, index: str, *, policy: RetryPolicy, page_size: int, query: dict[str, Any] | None,
              source: Any, source_excludes: list[str] | None, seq_no_primary_term: bool, version: bool,
              what: str) -> Iterator[dict[str, Any]]:
    pit = call_with_retry(lambda: client.open_point_in_time(index=index, keep_alive=_KEEP_ALIVE)["id"],
                          what=f"{what}: open point-in-time on {index}", policy=policy)
    try:
        after: list[Any] | None = None
        while True:
            kwargs: dict[str, Any] = {"search_after": after} if after is not None else {}
            if query is not None:
                kwargs["query"] = query
            if source_excludes:
                kwargs["source_excludes"] = source_excludes
            pit_now = pit

            def page(kwargs: dict[str, Any] = kwargs, pit_now: str = pit_now) -> Any:
                try:
                    return client.search(pit={"id": pit_now, "keep_alive": _KEEP_ALIVE}, size=page_size,
                                         sort=[{"_shard_doc": "asc"}], track_total_hits=False, source=source,
                                         seq_no_primary_term=seq_no_primary_term, version=version, **kwargs)
                except Exception as exc:
                    if _pit_lost(exc):
                        raise PointInTimeLost(str(exc)) from exc
                    raise

            resp = call_with_retry(page, what=f"{what} of {index}", policy=policy)
            pit = resp.get("pit_id", pit)
            hits = resp["hits"]["hits"]
            if not hits:
                return
            yield from hits
            after = hits[-1]["sort"]
    finally:
        try:
            client.close_point_in_time(id=pit)
        except Exception:  # noqa: BLE001 - the point-in-time expires by itself
            logger.debug("could not close the point-in-time on %s", index)
