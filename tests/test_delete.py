"""Deleting documents, against the real node: ``esdistill delete``, ``IngestHook.delete``, JSONL lines
``{"_id": ..., "_op": "delete"}`` in ``ingest`` (in input order), and ``DELETE /v1/documents/{id}``
of the service; and the service's ``/readyz`` counts of missing and stale vectors."""

from __future__ import annotations

import json

import pytest
from esdistill.plugin import IndexManager
from esdistill.plugin.documents import BadDocument, DocumentSpec, delete_target, prepare
from esdistill.plugin.ingest import IngestHook
from esdt_helpers import TINY_COLLECTION
from esdt_onnx import make_encoder, model_folder

CORPUS = TINY_COLLECTION / "corpus.jsonl"
DOCS = [json.loads(line) for line in CORPUS.read_text().splitlines()]


@pytest.fixture(scope="session")
def encoder_a(tiny_bi_encoder, tmp_path_factory):
    return make_encoder(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "esdt-onnx", "a")


@pytest.fixture
def index(es_client, index_prefix, encoder_a):
    IndexManager(es_client, index_prefix).create(encoder_a.manifest)
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(DOCS)
    return index_prefix


def _ids(es_client, index):
    es_client.indices.refresh(index=index)
    return {h["_id"] for h in es_client.search(index=index, size=100, source=False)["hits"]["hits"]}


def test_delete_records_are_recognised():
    spec = DocumentSpec()
    assert delete_target({"_id": "d1", "_op": "delete"}, spec) == "d1"
    assert delete_target({"_id": 7, "_op": "delete"}, spec) == "7"
    assert delete_target({"_id": "d1", "title": "t"}, spec) is None
    assert delete_target({"_id": "d1", "_op": "index", "title": "t"}, spec) is None
    # "_op": "index" is the default and is not stored
    assert "_op" not in prepare({"_id": "d1", "_op": "index", "title": "t"}, spec).source
    with pytest.raises(BadDocument, match="needs the id field"):
        delete_target({"_op": "delete"}, spec)
    with pytest.raises(BadDocument, match='"index" .* or "delete"'):
        delete_target({"_id": "d1", "_op": "upsert"}, spec)


def test_hook_delete(es_client, index, encoder_a):
    hook = IngestHook(es_client, index, encoder_a, progress=False)
    result = hook.delete(["d01", "d02", "nope"])
    assert result.deleted == 2 and result.not_found == ["nope"] and result.failed == []
    assert _ids(es_client, index) == {d["_id"] for d in DOCS} - {"d01", "d02"}


def test_ingest_applies_delete_lines_in_input_order(es_client, index, encoder_a, tmp_path):
    lines = [
        {"_id": "d03", "_op": "delete"},
        {"_id": "d04", "_op": "delete"},
        {"_id": "d04", "title": "Back again", "text": "d04 is indexed again after its delete"},  # ends indexed
        {"_id": "n1", "title": "New", "text": "a new document"},
        {"_id": "n1", "_op": "delete"},  # ends deleted
        {"_id": "d05", "_op": "upsert"},  # refused: dead-lettered
        {"_op": "delete"},  # refused: no id
        {"_id": "d06", "_op": "delete"},
        {"_id": "gone-already", "_op": "delete"},  # not there: fine
    ]
    src = tmp_path / "ops.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    dead = tmp_path / "dead.jsonl"
    summary = IngestHook(es_client, index, encoder_a, progress=False, batch_size=2, dead_letter=dead).ingest_jsonl(src)
    assert summary.deleted == 5 and summary.failed == 2 and summary.indexed == 2
    assert summary.read == summary.indexed + summary.unchanged + summary.failed + summary.deleted
    assert _ids(es_client, index) == {d["_id"] for d in DOCS} - {"d03", "d06"}
    assert es_client.get(index=index, id="d04")["_source"]["title"] == "Back again"
    reasons = [json.loads(x)["reason"] for x in dead.read_text().splitlines()]
    assert any("upsert" in r for r in reasons) and any("needs the id field" in r for r in reasons)


def test_ingest_reindexing_a_deleted_unchanged_document_is_not_skipped(es_client, index, encoder_a):
    """Delete then index the same, unchanged document in one run: the lookup that skips unchanged
    documents must not skip it because the delete was not written yet."""
    doc = DOCS[7]
    summary = IngestHook(es_client, index, encoder_a, progress=False, batch_size=1).ingest(
        [{"_id": doc["_id"], "_op": "delete"}, doc])
    assert summary.deleted == 1 and summary.indexed == 1 and summary.unchanged == 0
    assert es_client.exists(index=index, id=doc["_id"])


def test_cli_delete(es_client, es_url, index, monkeypatch, capsys):
    from esdistill.plugin.cli import main

    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    assert main(["delete", "--index", index, "d09", "d10", "missing-one", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deleted"] == 2 and out["not_found"] == ["missing-one"]
    assert {"d09", "d10"}.isdisjoint(_ids(es_client, index))
    assert main(["delete", "--index", f"{index}-nope", "d01"]) == 2
    assert "no index or alias" in capsys.readouterr().err


def test_service_delete_route_and_readyz_vector_counts(es_client, es_url, index, encoder_a):
    pytest.importorskip("fastapi")
    from esdistill.plugin.service import create_app
    from esdistill.plugin.service_settings import ServiceSettings
    from fastapi.testclient import TestClient
    from svc_fixtures import KEY

    settings = ServiceSettings(index=index, model=str(model_folder(encoder_a)), es_url=es_url, api_keys=(KEY,))
    with TestClient(create_app(settings)) as c:
        assert c.delete("/v1/documents/d11").status_code == 401  # a key is needed, as for ingest
        resp = c.delete("/v1/documents/d11", headers={"X-API-Key": KEY})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"index": index, "id": "d11", "deleted": True}
        assert not es_client.exists(index=index, id="d11")
        resp = c.delete("/v1/documents/d11", headers={"X-API-Key": KEY})
        assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found"
        ready = c.get("/readyz").json()
        assert ready["ready"] and ready["vectors"]["missing_vectors"] == 0 and ready["vectors"]["stale_vectors"] == 0
        assert ready["vectors"]["counts"] == "exact"
        # a document written by someone else, without a vector, is counted (after the cache expires)
        es_client.index(index=index, id="outside", document={"title": "Outside", "text": "written by a team"},
                        refresh=True)
        c.app.state.esdistill._vectors = None
        ready = c.get("/readyz").json()
        assert ready["ready"] and ready["vectors"]["missing_vectors"] == 1
