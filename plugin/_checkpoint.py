"""Checkpoints of an ingestion: how far an input is done, and proof that it is still the same input.

A checkpoint records the records done (count, byte offset, line), the dead-letter file's size and
the sha256 of the input consumed up to the end of the last record done: the raw bytes of a file or
stream, the canonical JSON of in-memory documents (:class:`ConsumedInput`). A resumed run hashes
that part again and skips it only when the hash matches (and, for a file, the offset starts a
line); otherwise the input changed and the caller starts again or refuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from esdistill.plugin._errors import ConfigError

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "ConsumedInput", "rehash_prefix"]

logger = logging.getLogger(__name__)

#: 2: the hash of the consumed input replaced a hash of the file's first 64 kB
CHECKPOINT_FORMAT = 2


class Checkpoint:
    """How far an input is done; written atomically after every confirmed chunk."""

    def __init__(self, path: Path | None, identity: dict[str, Any]) -> None:
        self.path = path
        self.identity = identity
        self.position, self.offset, self.line, self.dead_letter_size = 0, 0, 0, 0
        self.consumed_sha256 = ""
        self.resumed = False
        if path is None or not path.exists():
            return
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from None
        if state.get("format") != CHECKPOINT_FORMAT or state.get("identity") != identity:
            logger.warning("checkpoint %s belongs to another input, index or model (or an older esdistill); starting "
                           "from the beginning (safe: ids are stable and unchanged documents are skipped)", path)
            return
        self.position, self.offset = int(state["position"]), int(state["offset"])
        self.line, self.dead_letter_size = int(state["line"]), int(state["dead_letter_size"])
        self.consumed_sha256 = str(state.get("consumed_sha256", ""))
        self.resumed = self.position > 0
        logger.info("resuming from checkpoint %s: %d records already done", path, self.position)

    def restart(self) -> None:
        self.position, self.offset, self.line, self.dead_letter_size = 0, 0, 0, 0
        self.consumed_sha256 = ""
        self.resumed = False

    def save(self, *, position: int, offset: int | None, line: int | None, dead_letter_size: int,
             consumed_sha256: str) -> None:
        self.position, self.dead_letter_size = position, dead_letter_size
        self.offset = offset if offset is not None else self.offset
        self.line = line if line is not None else self.line
        self.consumed_sha256 = consumed_sha256
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        state = {"format": CHECKPOINT_FORMAT, "identity": self.identity, "position": self.position,
                 "offset": self.offset, "line": self.line, "dead_letter_size": self.dead_letter_size,
                 "consumed_sha256": self.consumed_sha256}
        with open(tmp, "w") as f:
            f.write(json.dumps(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class ConsumedInput:
    """sha256 of the input read so far, as of the end of the last record (what a checkpoint vouches for).

    Bytes go in as they are read; :meth:`mark` notes the state at the end of a record, so blank lines
    read after the last record of a chunk are not counted in its checkpoint.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        self._marked: tuple[int, Any] = (0, self._hash.copy())

    def update(self, data: bytes, *, mark: bool = True) -> None:
        self._hash.update(data)
        self._size += len(data)
        if mark:
            self._marked = (self._size, self._hash.copy())

    @property
    def marked_size(self) -> int:
        """Bytes up to the end of the last record."""
        return self._marked[0]

    def marked_hexdigest(self) -> str:
        """sha256 of the input up to the end of the last record."""
        return self._marked[1].hexdigest()

    def lines(self, stream: Iterable[bytes]) -> Iterator[bytes]:
        """The lines of ``stream``, hashed as they are handed on (blank lines are not records)."""
        for raw in stream:
            self.update(raw, mark=bool(raw.strip()))
            yield raw

    def documents(self, docs: Iterable[Any]) -> Iterator[Any]:
        """The documents of ``docs``, each hashed as its canonical JSON when it is handed on."""
        for doc in docs:
            self.update(_document_bytes(doc))
            yield doc


def _document_bytes(doc: Any) -> bytes:
    try:
        text = json.dumps(doc, sort_keys=True, ensure_ascii=False, default=repr, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):  # keys of mixed types, or nested too deeply
        try:
            text = repr(doc)
        except RecursionError:
            text = f"<{type(doc).__name__} nested too deeply>"
    return text.encode("utf-8", "surrogatepass") + b"\n"


def rehash_prefix(stream: IO[bytes], ckpt: Checkpoint, consumed: ConsumedInput) -> bool:
    """Hash the first ``ckpt.offset`` bytes of ``stream`` (at its start) into ``consumed``.

    Returns:
        True when they are the bytes the checkpoint vouches for and end a line (``stream`` is then at
        the offset); False when the file changed there, is shorter, or the offset is mid-line.
    """
    remaining, last = ckpt.offset, b""
    while remaining > 0:
        block = stream.read(min(remaining, 1 << 20))
        if not block:
            return False
        consumed.update(block, mark=False)
        last, remaining = block[-1:], remaining - len(block)
    consumed.update(b"")
    return last == b"\n" and consumed.marked_hexdigest() == ckpt.consumed_sha256
