"""The index body and settings without a node: the mapping follows the manifest, and bad index settings
are refused by name (no torch, no Elasticsearch)."""

from __future__ import annotations

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.index import IndexSpec, build_index_body
from esdistill.plugin.manifest import Manifest


def _manifest(dims: int = 64, fingerprint: str = "ab" * 32, name: str = "m") -> Manifest:
    """A manifest value (no model behind it): enough to create and check indices."""
    return Manifest(name=name, kind="bi-encoder", onnx_file="model.onnx", files=["model.onnx"],
                    fingerprint=fingerprint, dims=dims, max_seq_length=128, similarity="cosine")


def test_index_body_follows_the_manifest():
    m = _manifest(dims=48)
    body = build_index_body(m, IndexSpec(text_fields=("headline", "body"), index_options="hnsw", m=24,
                                         ef_construction=128, number_of_replicas=1), alias="news")
    props = body["mappings"]["properties"]
    assert props["embedding"] == {"type": "dense_vector", "dims": 48, "index": True, "similarity": "cosine",
                                  "index_options": {"type": "hnsw", "m": 24, "ef_construction": 128}}
    assert props["headline"] == props["body"] == {"type": "text", "analyzer": "standard"}
    assert props["content_hash"] == props["model_fingerprint"] == {"type": "keyword"}
    meta = body["mappings"]["_meta"]
    assert meta["model_fingerprint"] == m.fingerprint and meta["dims"] == 48 and meta["model_name"] == "m"
    assert meta["text_fields"] == ["headline", "body"] and meta["vector_field"] == "embedding"
    assert meta["alias"] == "news"
    assert body["mappings"]["dynamic"] is False
    assert body["settings"]["index"]["number_of_replicas"] == 1


@pytest.mark.parametrize("kwargs, needle", [
    ({"index_options": "ivf"}, "index_options"),
    ({"index_options": "flat", "m": 16}, "HNSW"),
    ({"m": 1}, "m=1"),
    ({"number_of_replicas": -1}, "number_of_replicas"),
    ({"text_fields": ("title", "content_hash")}, "reserved"),
    ({"vector_field": "_vec"}, "vector_field"),
    ({"text_fields": ()}, "text_fields"),
])
def test_index_spec_rejects_bad_settings(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        IndexSpec(**kwargs)
