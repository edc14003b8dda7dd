"""Bulk writes whose callers need each item's outcome: conditional updates, versioned copies, deletes.

:func:`bulk_outcomes` sends pre-serialised bulk items (``action\\n`` or ``action\\nsource\\n``),
retries the whole request and single items on transient failures (429, 5xx, lost connections),
and returns every item's final HTTP status and reason, so that the caller can tell a write that
lost a race (409: re-read and try again), a document that is gone (404) and a refusal for good
apart. :func:`delete_documents` is the one place esdistill deletes documents.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from esdistill.plugin._bulk import RetryPolicy, send_items
from esdistill.plugin._errors import ConfigError

__all__ = ["DeleteResult", "ItemOutcome", "action_line", "bulk_outcomes", "delete_documents"]

logger = logging.getLogger(__name__)

_MAX_ITEMS = 1000


@dataclass(frozen=True)
class ItemOutcome:
    """The final answer for one bulk item: its HTTP status and, when it failed, why."""

    status: int
    reason: str = ""
    seq_no: int | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _reason(result: dict[str, Any]) -> str:
    err = result.get("error") or {}
    if isinstance(err, dict):
        return f"{err.get('type', 'error')}: {err.get('reason', '')}"
    return str(err)


def bulk_outcomes(client: Any, index: str, items: Sequence[bytes], *, policy: RetryPolicy,
                  stop: threading.Event | None = None, request_timeout: float = 120.0,
                  refresh: bool = False) -> list[ItemOutcome]:
    """Send ``items`` to ``index`` and return one :class:`ItemOutcome` per item, in order.

    Items pushed back with 429/5xx are sent again with backoff until the policy gives up.

    Raises:
        IngestError: the cluster kept refusing for ``policy.give_up_after`` seconds.
    """
    outcomes: list[ItemOutcome | None] = [None] * len(items)
    bulk = client.options(request_timeout=request_timeout).bulk
    for start in range(0, len(items), _MAX_ITEMS):
        chunk = range(start, min(start + _MAX_ITEMS, len(items)))
        for pos, result in send_items(bulk, index, items, chunk, policy=policy, stop=stop, refresh=refresh).items():
            status = int(result.get("status", 500))
            outcomes[pos] = ItemOutcome(status=status, reason="" if status < 300 else _reason(result),
                                        seq_no=result.get("_seq_no"))
    return [o if o is not None else ItemOutcome(status=500, reason="no answer") for o in outcomes]


def action_line(action: str, doc_id: str, *, source: dict[str, Any] | None = None,
                **meta: Any) -> bytes:
    """One serialised bulk item: ``{action: {_id, **meta}}`` and its source line, if any."""
    head = {"_id": doc_id, **{k: v for k, v in meta.items() if v is not None}}
    line = json.dumps({action: head}, ensure_ascii=False) + "\n"
    if source is not None:
        line += json.dumps(source, ensure_ascii=False, separators=(",", ":")) + "\n"
    return line.encode("utf-8")


@dataclass
class DeleteResult:
    """What a delete did.

    Attributes:
        index: the index (alias) deleted from.
        deleted: documents that existed and are gone now.
        not_found: ids that were not in the index (nothing to do).
        failed: ``(id, reason)`` for deletes Elasticsearch refused.
    """

    index: str
    deleted: int = 0
    not_found: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "deleted": self.deleted, "not_found": list(self.not_found),
                "failed": [{"id": i, "reason": r} for i, r in self.failed]}


def delete_documents(client: Any, index: str, ids: Iterable[Any], *, policy: RetryPolicy | None = None,
                     refresh: bool = True) -> DeleteResult:
    """Delete documents by id from ``index`` (an alias writes to its write index).

    Deleting an id that is not there is not an error: it is listed in ``not_found``.

    Raises:
        ConfigError: an id is empty or not a string/integer.
    """
    wanted: list[str] = []
    for raw in ids:
        if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
            raise ConfigError(f"document id {raw!r} is not valid: give non-empty string ids")
        wanted.append(str(raw))
    result = DeleteResult(index=index)
    if not wanted:
        return result
    wanted = list(dict.fromkeys(wanted))
    lines = [action_line("delete", i) for i in wanted]
    outcomes = bulk_outcomes(client, index, lines, policy=policy or RetryPolicy(), refresh=refresh)
    for doc_id, outcome in zip(wanted, outcomes):
        if outcome.ok:
            result.deleted += 1
        elif outcome.status == 404:
            result.not_found.append(doc_id)
        else:
            result.failed.append((doc_id, outcome.reason))
    return result
