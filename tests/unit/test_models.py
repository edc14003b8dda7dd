"""Model references: a folder, a hub id and a missing folder, and an unknown packaged name (no torch,
no Elasticsearch, nothing fetched)."""

from __future__ import annotations

import pytest
from esdistill.plugin import ConfigError, ModelError, resolve_model


def test_model_references(tmp_path):
    assert resolve_model(tmp_path) == tmp_path
    assert resolve_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"  # hub id, untouched
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_unknown_packaged_model_is_a_clear_error():
    from esdistill.plugin import fetch_model

    with pytest.raises(ConfigError, match="minilm"):
        fetch_model("gpt-17")
