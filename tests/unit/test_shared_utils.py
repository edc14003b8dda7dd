"""Utilities with one home: the LRU cache (query vectors, reranker embeddings) and the user cache folder."""

from __future__ import annotations

import os

from esdistill.plugin._lru import LRUCache
from esdistill.plugin.models import model_cache_dir, user_cache_dir


def test_lru_drops_the_least_recently_used_and_counts_lookups():
    c: LRUCache[str, int] = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # "a" is now the most recent
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3
    assert (c.hits, c.misses, len(c)) == (3, 1, 2)


def test_a_cache_of_size_zero_keeps_nothing():
    c: LRUCache[bytes, int] = LRUCache(0)
    c.put(b"k", 1)
    assert c.get(b"k") is None and len(c) == 0


def test_every_cache_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("ESDISTILL_MODELS", raising=False)
    assert user_cache_dir("bench") == tmp_path / "esdistill" / "bench"
    assert model_cache_dir() == tmp_path / "esdistill" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(user_cache_dir()) == os.path.join(os.path.expanduser("~"), ".cache", "esdistill")
