"""Credentials refused before anything connects: a node password that is too short, and a malformed URL
with a password in it; neither error shows the secret (no torch, no Elasticsearch)."""

from __future__ import annotations

import pytest
from esdistill.plugin import ConfigError, connect
from esdt_helpers import free_port


def test_a_short_node_password_is_refused_without_showing_it(monkeypatch, tmp_path):
    from esdistill.deploy import LocalElasticsearch

    with pytest.raises(ConfigError, match="at least 8 characters") as err:
        LocalElasticsearch(port=free_port(), security=True, password="abc12")
    assert "abc12" not in str(err.value)
    with pytest.raises(ConfigError, match="secure node"):
        LocalElasticsearch(port=free_port(), password="long-enough-password")


def test_a_malformed_url_with_a_password_is_refused_without_showing_it():
    with pytest.raises(ConfigError, match="cannot build") as err:
        connect("https://elastic:hunter2-secret@127.0.0.1:notaport", check=False)
    assert "hunter2-secret" not in str(err.value) and "elastic:***@" in str(err.value)
