"""Index management against a real Elasticsearch: mapping from a manifest, versions behind an alias,
the model check, blue/green re-embedding, rollback, prune, and the ``esdistill index`` CLI (with
``index create --mapping``); the index body alone: tests/unit/test_index_body.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from esdistill.plugin import ConfigError, FingerprintError, IngestError
from esdistill.plugin.index import INDEX_OPTIONS, IndexManager, IndexSpec
from esdistill.plugin.ingest import IngestHook
from esdistill.plugin.manifest import Manifest
from esdt_helpers import TINY_COLLECTION
from esdt_onnx import model_folder

CORPUS = TINY_COLLECTION / "corpus.jsonl"


def _manifest(dims: int = 64, fingerprint: str = "ab" * 32, name: str = "m") -> Manifest:
    """A manifest value (no model behind it): enough to create and check indices."""
    return Manifest(name=name, kind="bi-encoder", onnx_file="model.onnx", files=["model.onnx"],
                    fingerprint=fingerprint, dims=dims, max_seq_length=128, similarity="cosine")


def _alias_targets(es_client, alias: str) -> list[str]:
    return sorted(es_client.indices.get_alias(name=alias))


def test_bad_alias_names_are_refused(es_client):
    for bad in ("UPPER", "a b", "_x", "a*", ""):
        with pytest.raises(ConfigError, match="not valid"):
            IndexManager(es_client, bad)


# ---------------------------------------------------------------------- real node
def test_create_versions_behind_an_alias_and_refuses_twice(es_client, index_prefix):
    mgr = IndexManager(es_client, index_prefix)
    physical = mgr.create(_manifest())
    assert physical == f"{index_prefix}-000001"
    assert _alias_targets(es_client, index_prefix) == [physical]
    mapping = es_client.indices.get_mapping(index=physical)[physical]["mappings"]
    assert mapping["_meta"]["model_fingerprint"] == "ab" * 32
    assert mapping["properties"]["embedding"]["index_options"]["type"] == "int8_hnsw"
    settings = es_client.indices.get_settings(index=physical)[physical]["settings"]["index"]
    assert settings["number_of_replicas"] == "0"
    with pytest.raises(ConfigError, match="exists already"):
        mgr.create(_manifest())
    info = mgr.info()
    assert info.current == physical and [v.index for v in info.versions] == [physical]
    assert info.versions[0].docs == 0 and info.versions[0].current


@pytest.mark.parametrize("option", INDEX_OPTIONS)
def test_every_index_option_is_accepted_by_elasticsearch(es_client, index_prefix, option):
    mgr = IndexManager(es_client, index_prefix)
    physical = mgr.create(_manifest(dims=64), IndexSpec(index_options=option))
    vec = es_client.indices.get_mapping(index=physical)[physical]["mappings"]["properties"]["embedding"]
    assert vec["index_options"]["type"] == option


def test_elasticsearch_refusal_becomes_a_config_error(es_client, index_prefix):
    # int4 needs an even number of dims: Elasticsearch refuses, and the message says so
    with pytest.raises(ConfigError, match="refused to create"):
        IndexManager(es_client, index_prefix).create(_manifest(dims=33), IndexSpec(index_options="int4_hnsw"))


def test_check_model_refuses_other_fingerprints_and_dims(es_client, index_prefix):
    mgr = IndexManager(es_client, index_prefix)
    mgr.create(_manifest(dims=64, fingerprint="ab" * 32))
    assert mgr.check_model(_manifest(dims=64, fingerprint="ab" * 32)).dims == 64
    with pytest.raises(FingerprintError, match="index reindex") as err:
        mgr.check_model(_manifest(dims=64, fingerprint="cd" * 32, name="other"))
    assert err.value.expected == "ab" * 32 and err.value.actual == "cd" * 32
    with pytest.raises(FingerprintError, match="dims 32 vs the index's 64"):
        mgr.check_model(_manifest(dims=32, fingerprint="ab" * 32))


def test_check_model_refuses_foreign_and_missing_indices(es_client, index_prefix):
    es_client.indices.create(index=f"{index_prefix}-plain", settings={"number_of_replicas": 0})
    with pytest.raises(ConfigError, match="not created by esdistill"):
        IndexManager(es_client, f"{index_prefix}-plain").check_model(_manifest())
    with pytest.raises(ConfigError, match="index create"):
        IndexManager(es_client, f"{index_prefix}-missing").check_model(_manifest())


def _knn_top(es_client, index: str, vector: np.ndarray) -> tuple[str, float]:
    hit = es_client.search(index=index, knn={"field": "embedding", "query_vector": vector.tolist(), "k": 1,
                                             "num_candidates": 50}, source=False)["hits"]["hits"][0]
    return hit["_id"], hit["_score"]


def test_blue_green_reindex_then_rollback(es_client, index_prefix, encoder_a, encoder_b):
    mgr = IndexManager(es_client, index_prefix)
    first = mgr.create(encoder_a.manifest, IndexSpec(index_options="hnsw"))
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest_jsonl(CORPUS)
    with pytest.raises(FingerprintError):
        IngestHook(es_client, index_prefix, encoder_b)

    result = mgr.reindex(encoder_b, batch_size=7)
    assert (result.old_index, result.new_index) == (first, f"{index_prefix}-000002")
    assert result.docs == 24 and result.summary.indexed == 24 and result.summary.failed == 0
    assert _alias_targets(es_client, index_prefix) == [result.new_index]
    assert mgr.check_model(encoder_b.manifest).previous_index == first
    assert mgr.spec_of().index_options == "hnsw"  # carried over
    # the new index holds model b's vectors: a document's own b-vector finds it with score ~1
    doc = json.loads(CORPUS.read_text().splitlines()[5])
    vec_b = encoder_b.encode_with_info([f"{doc['title']} {doc['text']}"]).embeddings[0]
    hit_id, score = _knn_top(es_client, index_prefix, vec_b)
    assert hit_id == doc["_id"] and score > 0.99
    # the stored text and ids came through unchanged
    got = es_client.get(index=index_prefix, id=doc["_id"])["_source"]
    assert got["title"] == doc["title"] and got["text"] == doc["text"]
    assert got["model_fingerprint"] == encoder_b.manifest.fingerprint
    # the old version is kept, with its own model
    assert mgr.count(first) == 24 and mgr.meta(first).model_fingerprint == encoder_a.manifest.fingerprint

    assert mgr.rollback() == (result.new_index, first)
    assert _alias_targets(es_client, index_prefix) == [first]
    mgr.check_model(encoder_a.manifest)
    with pytest.raises(ConfigError, match="no previous index"):
        mgr.rollback()
    assert mgr.rollback(to=result.new_index) == (first, result.new_index)
    assert [v.docs for v in mgr.info().versions] == [24, 24]
    assert mgr.prune(keep=0) == [first]
    assert mgr.versions() == [result.new_index]
    with pytest.raises(ConfigError, match="not one of its versions"):
        mgr.rollback(to=first)


class _WritesDuringReindex:
    """Wraps a real encoder; on its first call, writes a new document into the old index."""

    def __init__(self, encoder, client, old_index):
        self.inner, self.client, self.old_index, self.done = encoder, client, old_index, False
        self.manifest = encoder.manifest

    def encode_with_info(self, texts, **kw):
        if not self.done:
            self.done = True
            self.client.index(index=self.old_index, id="late", document={"title": "late", "text": "arrival"},
                              refresh=True)
        return self.inner.encode_with_info(texts, **kw)


def test_reindex_carries_over_a_write_made_during_the_copy(es_client, index_prefix, encoder_a, encoder_b):
    """A document written into the old index while the copy runs is in the new one after the swap
    (the old code refused the swap, or lost updates that kept the count the same)."""
    mgr = IndexManager(es_client, index_prefix)
    first = mgr.create(encoder_a.manifest)
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest_jsonl(CORPUS)
    result = mgr.reindex(_WritesDuringReindex(encoder_b, es_client, first))
    assert _alias_targets(es_client, index_prefix) == [result.new_index]
    assert result.docs == 25 and result.summary.caught_up >= 1 and result.summary.verified == 25
    late = es_client.get(index=index_prefix, id="late")["_source"]
    assert late["title"] == "late" and late["model_fingerprint"] == encoder_b.manifest.fingerprint


def test_reindex_after_rollback_and_a_delete_makes_a_fresh_version(es_client, index_prefix, encoder_a, encoder_b):
    """A version that once took the alias is never 'resumed': after rollback plus one delete, the
    old code resumed into the stale newer version and refused the swap (counts differ) until prune."""
    mgr = IndexManager(es_client, index_prefix)
    first = mgr.create(encoder_a.manifest)
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest_jsonl(CORPUS)
    second = mgr.reindex(encoder_b).new_index
    assert mgr.rollback() == (second, first)
    es_client.delete(index=index_prefix, id="d03", refresh=True)
    result = mgr.reindex(encoder_b)
    assert result.new_index == f"{index_prefix}-000003" and result.old_index == first
    assert result.docs == 23 and _alias_targets(es_client, index_prefix) == [result.new_index]
    assert not es_client.exists(index=index_prefix, id="d03")
    assert mgr.count(second) == 24  # the stale version is left as it was, for prune


def test_reindex_can_change_index_options(es_client, index_prefix, encoder_a):
    mgr = IndexManager(es_client, index_prefix)
    mgr.create(encoder_a.manifest, IndexSpec(index_options="int8_hnsw", number_of_replicas=0))
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest_jsonl(CORPUS)
    result = mgr.reindex(encoder_a, index_options="flat")
    assert mgr.spec_of(result.new_index).index_options == "flat"
    assert mgr.count() == 24


def test_cli_index_create_info_reindex_rollback(es_client, es_url, index_prefix, encoder_a, encoder_b,
                                                monkeypatch, capsys):
    from esdistill.plugin.cli import main

    model_dir = model_folder(encoder_a)
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    assert main(["index", "create", index_prefix, "--model", str(model_dir), "--index-options", "flat",
                 "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["index"] == f"{index_prefix}-000001"
    assert created["model_fingerprint"] == encoder_a.manifest.fingerprint
    assert main(["index", "info", index_prefix, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["current"] == created["index"] and info["versions"][0]["index_options"] == "flat"
    assert main(["index", "rollback", index_prefix]) == ConfigError.exit_code  # no previous index
    assert "no previous index" in capsys.readouterr().err
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(json.loads(x) for x in
                                                                           CORPUS.read_text().splitlines())
    assert main(["index", "reindex", index_prefix, "--model", str(model_folder(encoder_b)), "--no-progress",
                 "--json"]) == 0
    swapped = json.loads(capsys.readouterr().out)
    assert swapped["new_index"] == f"{index_prefix}-000002" and swapped["docs"] == 24
    assert swapped["summary"]["model_fingerprint"] == encoder_b.manifest.fingerprint
    assert main(["index", "rollback", index_prefix, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"alias": index_prefix, "from": swapped["new_index"],
                                                   "to": created["index"]}
    assert main(["index", "prune", index_prefix, "--keep", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == [swapped["new_index"]]
    assert main(["index", "create", index_prefix, "--model", str(model_dir)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_dataclass_round_trip_of_meta(es_client, index_prefix):
    mgr = IndexManager(es_client, index_prefix)
    mgr.create(_manifest(dims=16), IndexSpec(text_fields=("body",), extra_properties={"year": {"type": "integer"}}))
    meta = mgr.meta()
    assert meta.text_fields == ("body",) and meta.dims == 16 and meta.index_options == "int8_hnsw"
    spec = mgr.spec_of()
    assert spec.extra_properties == {"year": {"type": "integer"}}
    assert dataclasses.replace(spec, index_options="flat", m=None, ef_construction=None).index_options == "flat"


class _CrashesOnCall:
    """Wraps a real encoder and raises on its n-th call (an interrupted reindex)."""

    def __init__(self, encoder, n):
        self.inner, self.manifest, self.n, self.calls = encoder, encoder.manifest, n, 0

    def encode_with_info(self, texts, **kw):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("simulated crash")
        return self.inner.encode_with_info(texts, **kw)


def test_an_interrupted_reindex_resumes_into_the_same_new_index(es_client, index_prefix, encoder_a, encoder_b):
    mgr = IndexManager(es_client, index_prefix)
    first = mgr.create(encoder_a.manifest)
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest_jsonl(CORPUS)
    with pytest.raises(IngestError, match="run the same command again to resume"):
        mgr.reindex(_CrashesOnCall(encoder_b, 3), batch_size=5)
    assert _alias_targets(es_client, index_prefix) == [first]
    partial = mgr.count(f"{index_prefix}-000002")
    assert partial == 10  # two chunks confirmed before the crash
    result = mgr.reindex(encoder_b, batch_size=5)
    assert result.new_index == f"{index_prefix}-000002" and mgr.versions() == [first, result.new_index]
    assert (result.summary.unchanged, result.summary.indexed) == (partial, 24 - partial)
    assert _alias_targets(es_client, index_prefix) == [result.new_index] and result.docs == 24


def test_cli_index_create_merges_a_mapping_file(es_client, es_url, index_prefix, encoder_a, tmp_path, monkeypatch,
                                                capsys):
    from esdistill.plugin.cli import main

    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    model = str(model_folder(encoder_a))
    bad = tmp_path / "bad.json"
    bad.write_text('{"properties": {"category": "keyword"}}')
    assert main(["index", "create", index_prefix, "--model", model, "--mapping", str(bad)]) == 2
    assert "--mapping" in capsys.readouterr().err and not es_client.indices.exists_alias(name=index_prefix)
    good = tmp_path / "mapping.json"
    good.write_text(json.dumps({"properties": {"category": {"type": "keyword"}, "year": {"type": "integer"}}}))
    assert main(["index", "create", index_prefix, "--model", model, "--mapping", str(good), "--json"]) == 0
    physical = json.loads(capsys.readouterr().out)["index"]
    props = es_client.indices.get_mapping(index=physical)[physical]["mappings"]["properties"]
    assert props["category"] == {"type": "keyword"} and props["year"] == {"type": "integer"}
    docs = [dict(json.loads(line), category="odd" if i % 2 else "even") for i, line in
            enumerate(CORPUS.read_text().splitlines())]
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(docs)
    # a filter on the keyword field works from the first document
    hits = es_client.search(index=index_prefix, query={"term": {"category": "odd"}}, size=100)["hits"]["hits"]
    assert len(hits) == 12 and {h["_source"]["category"] for h in hits} == {"odd"}
