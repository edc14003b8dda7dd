"""A content-addressed cache of teacher scores, so nothing is ever scored twice.

The key of a score is ``sha256(teacher fingerprint, query text, document text)``: a rerun, a new
negative pool, a new loss or a new ensemble weighting reuses every score already computed, and a
changed teacher (new fingerprint) or changed text never hits a stale entry. Scores live in one
SQLite file (safe for one writer; reads are cheap)::

    >>> cache = ScoreCache("runs/cache/scores.sqlite")          # doctest: +SKIP
    >>> teacher = CachedTeacher(BiEncoderTeacher("mpnet"), cache)  # doctest: +SKIP
    >>> teacher.score("query", ["doc a", "doc b"])              # doctest: +SKIP
    >>> cache.hits, cache.misses                                # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from esdistill.plugin._errors import ConfigError

__all__ = ["CachedTeacher", "ScoreCache", "score_key"]

logger = logging.getLogger(__name__)


def score_key(fingerprint: str, query: str, doc: str) -> bytes:
    """The cache key: sha256 over the fingerprint, query and document, NUL-separated."""
    h = hashlib.sha256()
    for part in (fingerprint, query, doc):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.digest()


class ScoreCache:
    """Teacher scores on disk (SQLite), keyed by :func:`score_key`, with hit/miss counters.

    Args:
        path: the SQLite file (created with its folder), or ``":memory:"``.

    Attributes:
        hits: lookups answered from the cache since it was opened.
        misses: lookups that were not.

    Raises:
        ConfigError: the file cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS scores (key BLOB PRIMARY KEY, score REAL NOT NULL)")
            self._db.commit()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the score cache {self.path}: {exc}; pass another --cache path") from None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        """Look up many keys; ``None`` where missing. Updates the counters."""
        found: dict[bytes, float] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for key, score in self._db.execute(f"SELECT key, score FROM scores WHERE key IN ({marks})", chunk):
                found[bytes(key)] = float(score)
        out = [found.get(k) for k in keys]
        n_hit = sum(v is not None for v in out)
        self.hits += n_hit
        self.misses += len(out) - n_hit
        return out

    def put_many(self, items: Sequence[tuple[bytes, float]]) -> None:
        """Store ``(key, score)`` pairs (replacing equal keys) and commit."""
        self._db.executemany("INSERT OR REPLACE INTO scores (key, score) VALUES (?, ?)",
                             [(k, float(v)) for k, v in items])
        self._db.commit()

    def stats(self) -> dict[str, int]:
        """``{"entries", "hits", "misses"}``."""
        return {"entries": len(self), "hits": self.hits, "misses": self.misses}

    def close(self) -> None:
        self._db.close()


class CachedTeacher:
    """Wrap a teacher so every score goes through a :class:`ScoreCache`.

    Only the documents whose key is missing are sent to the wrapped teacher, in one call per query.
    It has the wrapped teacher's fingerprint, so it is a drop-in replacement.

    Args:
        teacher: any object with ``fingerprint`` and ``score(query, docs) -> np.ndarray``.
        cache: the cache to read and fill.
    """

    def __init__(self, teacher, cache: ScoreCache) -> None:
        self.teacher = teacher
        self.cache = cache

    @property
    def fingerprint(self) -> str:
        return self.teacher.fingerprint

    @property
    def name(self) -> str:
        return getattr(self.teacher, "name", type(self.teacher).__name__)

    def __repr__(self) -> str:
        return f"CachedTeacher({self.teacher!r})"

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        """Scores of ``docs`` for ``query``: from the cache where known, else from the teacher."""
        fp = self.teacher.fingerprint
        keys = [score_key(fp, query, d) for d in docs]
        got = self.cache.get_many(keys)
        missing = [i for i, v in enumerate(got) if v is None]
        if missing:
            fresh = np.asarray(self.teacher.score(query, [docs[i] for i in missing]), dtype=np.float64)
            self.cache.put_many([(keys[i], fresh[j]) for j, i in enumerate(missing)])
            for j, i in enumerate(missing):
                got[i] = float(fresh[j])
        return np.asarray(got, dtype=np.float32)
