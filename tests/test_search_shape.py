"""One JSON shape for a search result: ``esdistill search --json``, ``SearchResponse.to_dict()`` and
``POST /v1/search`` carry the same keys (real node, real student, FastAPI's in-process client)."""

from __future__ import annotations

import json
import uuid

import pytest
from esdistill.plugin.cli import main
from esdistill.plugin.encoder import OnnxEncoder
from esdistill.plugin.query import QueryHook
from svc_fixtures import KEY, drop_indices, exported_student, make_index, settings

pytest.importorskip("fastapi")
from esdistill.plugin.service import create_app
from fastapi.testclient import TestClient

BOOKKEEPING = {"content_hash", "model_fingerprint", "embedding"}


def _keys(payload: dict) -> tuple[set, set, set]:
    return set(payload), set(payload["hits"][0]), set(payload["rerank"])


@pytest.mark.parametrize("mode", ["knn", "hybrid"])
def test_cli_python_and_http_share_one_shape(es_client, es_url, tiny_bi_encoder, tmp_path_factory, capsys,
                                             monkeypatch, mode):
    student = exported_student(tiny_bi_encoder, tmp_path_factory.getbasetemp())
    prefix = f"esdt-shape-{uuid.uuid4().hex[:8]}"
    alias = make_index(es_client, f"{prefix}-docs", student)
    try:
        query = "antibiotics resistance"
        monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
        assert main(["search", query, "--index", alias, "--model", str(student), "--mode", mode, "--k", "3",
                     "--json"]) == 0
        cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

        py = QueryHook(es_client, alias, OnnxEncoder(student)).search(query, k=3, mode=mode).to_dict()
        py = json.loads(json.dumps(py))  # JSON-ready as it is

        app = create_app(settings(alias, student, es_url, api_keys=(KEY,)))
        with TestClient(app) as client:
            resp = client.post("/v1/search", json={"query": query, "k": 3, "mode": mode}, headers={"X-API-Key": KEY})
        assert resp.status_code == 200, resp.text
        http = resp.json()

        assert _keys(cli) == _keys(py) == _keys(http)
        assert "timings_ms" in http and "timings" not in cli
        kind = "knn_cosine01" if mode == "knn" else "rrf"
        for payload in (cli, py, http):
            assert payload["score_kind"] == kind and {h["score_kind"] for h in payload["hits"]} == {kind}
            assert [h["id"] for h in payload["hits"]] == [h["id"] for h in http["hits"]]
            for h in payload["hits"]:
                assert not BOOKKEEPING & set(h["source"]) and h["source"]["text"]
    finally:
        drop_indices(es_client, prefix)
