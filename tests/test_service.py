"""The HTTP service against a real Elasticsearch node, with the tiny student exported to ONNX and the
real query, ingest and index hooks. No fakes: requests go through FastAPI's TestClient (in-process
ASGI) or, for the CLI and graceful shutdown, through a real ``esdistill serve`` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from deploy_parse import parse_dockerfile
from esdt_helpers import free_port
from svc_fixtures import KEY, corpus, drop_indices, make_index, queries, settings

pytest.importorskip("fastapi")
from esdistill.plugin.service import create_app
from fastapi.testclient import TestClient

H = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def served_index(es_client, student):
    prefix = f"esdt-svc-{uuid.uuid4().hex[:8]}"
    alias = make_index(es_client, f"{prefix}-docs", student)
    yield alias
    drop_indices(es_client, prefix)


@pytest.fixture(scope="module")
def client(served_index, student, es_url):
    app = create_app(settings(served_index, student, es_url, api_keys=(KEY,), max_k=50, max_documents=20,
                              max_body_bytes=64 * 1024))
    with TestClient(app) as c:
        yield c


def _error(resp, status: int, kind: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()["error"]
    assert body["message"], body
    if kind is not None:
        assert body["type"] == kind, body
    return body


# ---------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("mode", ["knn", "hybrid", "bm25"])
def test_search_returns_ranked_hits_from_the_index(client, mode):
    ids = {d["_id"] for d in corpus()}
    q = queries()[0]["text"]
    resp = client.post("/v1/search", json={"query": q, "k": 5, "mode": mode}, headers=H)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["mode"] == mode and body["k"] == 5 and body["variant"] == "student" and body["arm"] is None
    assert 1 <= len(body["hits"]) <= 5
    assert [h["rank"] for h in body["hits"]] == list(range(1, len(body["hits"]) + 1))
    assert all(h["id"] in ids for h in body["hits"])
    assert all("embedding" not in h["source"] and h["source"].get("text") for h in body["hits"])
    assert body["rerank"]["reranked"] == "none" and body["rerank"]["reason"] == "not_requested"
    assert body["timings_ms"]["total"] >= body["timings_ms"]["es"] > 0
    if mode != "bm25":
        assert body["timings_ms"]["embed"] > 0 or body["embedding_cached"]
    if mode == "bm25":  # BM25 scores come sorted; the top hit shares a word with the query
        scores = [h["score"] for h in body["hits"]]
        assert scores == sorted(scores, reverse=True)


def test_search_filters_reach_elasticsearch(client):
    allowed = [d["_id"] for d in corpus()[:3]]
    for mode in ("knn", "hybrid", "bm25"):
        resp = client.post("/v1/search", headers=H, json={
            "query": queries()[1]["text"], "k": 10, "mode": mode, "filters": {"ids": {"values": allowed}}})
        assert resp.status_code == 200, resp.text
        got = [h["id"] for h in resp.json()["hits"]]
        assert got and set(got) <= set(allowed), (mode, got)


def test_same_query_is_answered_from_the_embedding_cache(client):
    body = {"query": "a query asked twice " + uuid.uuid4().hex[:6], "k": 3}
    first = client.post("/v1/search", json=body, headers=H).json()
    second = client.post("/v1/search", json=body, headers=H).json()
    assert not first["embedding_cached"] and second["embedding_cached"]
    assert [h["id"] for h in first["hits"]] == [h["id"] for h in second["hits"]]


@pytest.mark.parametrize("payload, where", [
    ({"query": "x", "k": 0}, "k"),
    ({"query": "x", "k": 51}, "k"),
    ({"query": "", "k": 3}, "query"),
    ({"query": "   ", "k": 3}, "blank"),
    ({"query": "x", "mode": "semantic"}, "mode"),
    ({"query": "x", "k": "ten"}, "k"),
    ({"query": "x", "budget_ms": 0}, "budget_ms"),
    ({"query": "x", "budget_ms": 1e9}, "budget_ms"),
    ({"query": "x", "k": 20, "num_candidates": 10}, "num_candidates"),
    ({"query": "x", "colour": "red"}, "colour"),
    ({"k": 3}, "query"),
    ({"query": ["a", "b"]}, "query"),
    ({"query": "x", "filters": "lang:en"}, "filters"),
    ({"query": "x", "filters": {}}, "filters"),
    ({"query": "x", "filters": [{"term": {"a": 1}, "range": {"b": {"gt": 1}}}]}, "filters"),
    ({"query": "x", "rerank": True}, "rerank"),
    ({"query": "x", "arm": "student"}, "arm"),
])
def test_invalid_search_requests_get_422_naming_the_problem(client, payload, where):
    body = _error(client.post("/v1/search", json=payload, headers=H), 422, "validation_error")
    assert where in body["message"], body["message"]
    assert body["details"] and all({"loc", "msg", "type"} <= set(d) for d in body["details"])


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2, 3]", b"null", b"", b'{"query": "x", "k": 1e999}'])
def test_malformed_bodies_get_422(client, raw):
    resp = client.post("/v1/search", content=raw, headers={**H, "content-type": "application/json"})
    _error(resp, 422, "validation_error")


def test_binary_body_gets_400_saying_why(client):
    resp = client.post("/v1/search", content=b"\xff\xfe\x00binary", headers={**H, "content-type": "application/json"})
    assert "JSON" in _error(resp, 400, "bad_request")["message"]


def test_a_filter_outside_the_allow_list_is_a_400_naming_it(client):
    resp = client.post("/v1/search", headers=H, json={"query": "x", "filters": {"no_such_query": {"a": 1}}})
    body = _error(resp, 400, "bad_request")
    assert "filters: 'no_such_query' is not an allowed filter clause" in body["message"]
    assert body["details"] == [p for p in body["details"] if p.startswith("filters")]


def test_a_filter_elasticsearch_rejects_is_a_400_in_esdistills_words(client):
    resp = client.post("/v1/search", headers=H, json={"query": "x", "filters": {"term": {"embedding": "x"}}})
    body = _error(resp, 400, "bad_request")
    assert "Elasticsearch rejected" in body["message"] and "query_shard_exception" in body["message"]
    assert "dense_vector" not in body["message"]  # Elasticsearch's reason text stays in the log


def test_mixed_script_and_huge_queries(client):
    for text in ("Ünïcödé ✓ 中文 العربية Ελληνικά 🙂", "x" * 4000, "\u0000 nul and \t tabs"):
        resp = client.post("/v1/search", headers=H, json={"query": text, "k": 2})
        assert resp.status_code == 200, (text[:20], resp.text[:300])
    _error(client.post("/v1/search", headers=H, json={"query": "x" * 5000}), 422)


# ---------------------------------------------------------------------------------------- auth, limits
def test_api_key_auth_401_403_and_open_ops_routes(client):
    q = {"query": "anything"}
    missing = client.post("/v1/search", json=q)
    _error(missing, 401, "unauthorized")
    assert "X-API-Key" in missing.headers["www-authenticate"]
    _error(client.post("/v1/search", json=q, headers={"X-API-Key": KEY + "x"}), 403, "forbidden")
    _error(client.post("/v1/search", json=q, headers={"X-API-Key": ""}), 401)
    _error(client.get("/v1/index/whatever"), 401)
    # auth is checked before the body is parsed: a bad body without a key is still a 401
    _error(client.post("/v1/search", content=b"{bad", headers={"content-type": "application/json"}), 401)
    assert client.post("/v1/search", json=q, headers=H).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header",
                                                                 "name": "X-API-Key"}
    # either scheme: the X-API-Key header or Authorization: Bearer
    assert schema["paths"]["/v1/search"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_bodies_above_the_limit_get_413(client):
    big = {"documents": [{"_id": "big", "text": "word " * 20_000}]}  # ~100 KB > 64 KB
    _error(client.post("/v1/ingest", json=big, headers=H), 413, "payload_too_large")

    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(100):
            yield b" " * 1024

    resp = client.post("/v1/search", content=chunks(), headers={**H, "content-type": "application/json"})
    _error(resp, 413, "payload_too_large")
    _error(client.post("/v1/search", content=b"{}", headers={**H, "content-length": "nope",
                                                             "content-type": "application/json"}), 400)


def test_rate_limit_answers_429_with_retry_after(served_index, student, es_url):
    app = create_app(settings(served_index, student, es_url, rate_limit_per_s=0.5, rate_limit_burst=2))
    with TestClient(app) as c:
        codes = [c.post("/v1/search", json={"query": "rate"}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        limited = c.post("/v1/search", json={"query": "rate"})
        _error(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert c.get("/healthz").status_code == 200  # ops routes are not limited
        from prometheus_client.parser import text_string_to_metric_families

        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(c.get("/metrics").text) for s in f.samples}
        key = ("esdistill_http_requests_total", (("method", "POST"), ("route", "/v1/search"), ("status", "429")))
        assert samples[key] == 2.0


# ---------------------------------------------------------------------------------------- ingest, index
def test_ingest_indexes_documents_and_reports_each_refused_one(client):
    docs = [
        {"_id": "svc-new-1", "title": "Zebrafish fins", "text": "zebrafish regrow their fins after injury"},
        {"_id": "svc-new-2", "text": "something else entirely"},
        {"_id": "svc-bad-1", "title": 42, "text": ["not", "a", "string"]},
        {"_id": "svc-bad-2", "meta": "no text field at all"},
    ]
    resp = client.post("/v1/ingest", json={"documents": docs}, headers=H)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["read"], body["indexed"], body["failed"], body["complete"]) == (4, 2, 2, True)
    refused = {e["position"]: e for e in body["errors"]}
    assert set(refused) == {2, 3} and all(e["reason"] for e in refused.values())
    found = client.post("/v1/search", headers=H, json={"query": "zebrafish regrow fins", "mode": "bm25", "k": 3})
    assert found.json()["hits"][0]["id"] == "svc-new-1"
    again = client.post("/v1/ingest", json={"documents": docs[:2]}, headers=H).json()
    assert again["unchanged"] == 2 and again["indexed"] == 0  # stable ids: nothing duplicated


def test_ingest_validation(client):
    _error(client.post("/v1/ingest", json={"documents": []}, headers=H), 422)
    _error(client.post("/v1/ingest", json={"documents": [{"text": "x"}] * 21}, headers=H), 422)
    _error(client.post("/v1/ingest", json={"documents": ["just a string"]}, headers=H), 422)
    _error(client.post("/v1/ingest", json={"docs": [{"text": "x"}]}, headers=H), 422)


def test_index_info_lists_versions_and_the_model(client, served_index, student):
    manifest = json.loads((student / "manifest.json").read_text())
    info = client.get(f"/v1/index/{served_index}", headers=H)
    assert info.status_code == 200, info.text
    body = info.json()
    assert body["alias"] == served_index and body["current"] == f"{served_index}-000001"
    assert body["versions"][0]["model_fingerprint"] == manifest["fingerprint"]
    assert body["versions"][0]["docs"] >= len(corpus())
    _error(client.get("/v1/index/some-other-index", headers=H), 404, "not_found")


# ---------------------------------------------------------------------------------------- ops
def test_health_readiness_and_metrics(client, student):
    from prometheus_client.parser import text_string_to_metric_families

    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["checks"] == {"elasticsearch": True, "index": True, "model": True}
    client.post("/v1/search", json={"query": "metrics please", "mode": "hybrid"}, headers=H)
    client.post("/v1/search", json={"query": "x"})  # a 401, counted too
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    reqs = {(s.labels["route"], s.labels["status"]): s.value for s in families["esdistill_http_requests"].samples
            if s.name.endswith("_total")}
    assert reqs[("/v1/search", "200")] >= 1 and reqs[("/v1/search", "401")] >= 1
    latency = [s for s in families["esdistill_search_duration_seconds"].samples
               if s.name.endswith("_count") and s.labels == {"arm": "none", "mode": "hybrid"}]
    assert latency and latency[0].value >= 1
    rerank = {(s.labels["arm"], s.labels["outcome"]) for s in families["esdistill_rerank"].samples}
    assert ("none", "none") in rerank
    stages = {s.labels["stage"] for s in families["esdistill_search_stage_duration_seconds"].samples}
    assert {"embed", "es", "fuse"} <= stages
    assert families["esdistill_ready"].samples[0].value == 1.0


def test_unknown_routes_and_methods_answer_json(client):
    _error(client.get("/nope"), 404, "not_found")
    _error(client.get("/v1/search", headers=H), 405, "method_not_allowed")


def test_wrong_model_is_not_ready_and_searches_get_503(served_index, es_url, tiny_bi_encoder, tmp_path):
    """A model that did not make the index's vectors: readiness says why, searches are refused."""
    from esdistill.export.onnx_export import export_model

    other = tmp_path / "fp32"
    export_model(str(tiny_bi_encoder), other, quantize="none")  # same weights, another fingerprint
    with TestClient(create_app(settings(served_index, other, es_url))) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["model"] is False
        assert "does not match" in ready.json()["reason"]
        _error(c.post("/v1/search", json={"query": "x"}), 503, "model_mismatch")


def test_elasticsearch_unreachable_gives_503_json_and_not_ready(student, es_url):
    dead = f"http://127.0.0.1:{free_port()}"
    app = create_app(settings("esdt-svc-nowhere", student, dead, es_timeout_s=2.0, ingest_retry_s=1.0))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["elasticsearch"] is False
        for path, body in (("/v1/search", {"query": "x"}), ("/v1/ingest", {"documents": [{"text": "x"}]}),
                           ("/v1/index/esdt-svc-nowhere", None)):
            resp = c.post(path, json=body) if body else c.get(path)
            err = _error(resp, 503)
            assert err["type"] == "elasticsearch_unavailable" and resp.headers["retry-after"]
        assert 'esdistill_es_unavailable_total{route="/v1/search"} 1.0' in c.get("/metrics").text


def test_missing_index_is_503_not_400(student, es_client, es_url, index_prefix):
    with TestClient(create_app(settings(f"{index_prefix}-absent", student, es_url))) as c:
        assert c.get("/readyz").json()["checks"] == {"elasticsearch": True, "index": False, "model": False}
        _error(c.post("/v1/search", json={"query": "x"}), 503, "index_unavailable")
        _error(c.post("/v1/ingest", json={"documents": [{"text": "x"}]}), 503)


# ---------------------------------------------------------------------------------------- the CLI
def _wait_http(url: str, timeout: float = 60.0, proc=None) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the service exited with {proc.returncode}")
        try:
            return httpx.get(url, timeout=2)
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def test_esdistill_serve_runs_passes_the_image_healthcheck_and_stops_gracefully(
        served_index, student, es_url, tmp_path):
    port = free_port()
    key_file = tmp_path / "keys"
    key_file.write_text(KEY + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESDISTILL_SERVE_")}
    env.update(ESDISTILL_ES_URL=es_url, ESDISTILL_SERVE_INDEX=served_index)
    proc = subprocess.Popen(
        [sys.executable, "-m", "esdistill.plugin.cli", "serve", "--model", str(student), "--port", str(port),
         "--api-key-file", str(key_file), "--shutdown-grace", "20"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        base = f"http://127.0.0.1:{port}"
        assert _wait_http(f"{base}/healthz", proc=proc).status_code == 200
        # the image's HEALTHCHECK command, run as written (only the port differs)
        hc = next(i for i in parse_dockerfile() if i.name == "HEALTHCHECK")
        probe = json.loads(hc.args[hc.args.index("CMD ") + 4:])
        probe = [sys.executable if p == "python" else p.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                 for p in probe]
        assert subprocess.run(probe, timeout=30, check=False).returncode == 0
        assert httpx.post(f"{base}/v1/search", json={"query": "x"}).status_code == 401
        # an ingest in flight when SIGTERM arrives still completes
        docs = [{"_id": f"grace-{i}", "text": f"graceful shutdown document number {i} " * 20} for i in range(400)]
        result: dict = {}

        def slow_ingest():
            result["resp"] = httpx.post(f"{base}/v1/ingest", json={"documents": docs}, headers=H, timeout=60)

        # the default max_documents (500) admits 400 documents; the body (~250 KB) is under 1 MiB
        t = threading.Thread(target=slow_ingest)
        t.start()
        deadline = time.monotonic() + 30
        while not any("ingest request: 400" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # while the ingest is being processed
        t.join(60)
        rc = proc.wait(timeout=60)
        reader.join(10)
        err = "".join(lines)
        assert rc == 0, err[-3000:]
        assert result["resp"].status_code == 200, result["resp"].text[:300]
        assert result["resp"].json()["indexed"] + result["resp"].json()["unchanged"] == 400
        assert "service stopped" in err and "closing the Elasticsearch client" in err
        assert KEY not in err  # secrets never reach the log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_serve_refuses_bad_settings_with_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "serve", "--model", str(tmp_path)],
                          capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("ESDISTILL_SERVE_")})
    assert proc.returncode == 2 and "--index" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "serve", "--index", "i", "--model",
                           str(tmp_path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 3 and "manifest.json" in proc.stderr  # ModelError: not an exported folder


# ---------------------------------------------------------------------------------------- rerank, A/B
@pytest.fixture(scope="module")
def teacher(tiny_cross_encoder, tmp_path_factory):
    from esdistill.export.onnx_export import export_model

    out = tmp_path_factory.mktemp("svc-teacher") / "ce"
    export_model(str(tiny_cross_encoder), out, quantize="none")
    return out


def test_rerank_and_ab_arms_are_served_and_measured(served_index, student, teacher, es_url, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    exposure = tmp_path / "exposure.jsonl"
    app = create_app(settings(served_index, student, es_url, rerank=str(teacher), rerank_top_n=10,
                              ab_rerank_share=0.5, ab_salt="svc-test", exposure_log=str(exposure)))
    q = queries()[3]["text"]
    with TestClient(app) as c:
        forced = c.post("/v1/search", json={"query": q, "k": 5, "rerank": True}).json()
        assert forced["rerank"]["reranked"] == "full" and forced["variant"] == "student+rerank"
        assert forced["rerank"]["count"] == forced["rerank"]["candidates"] == 10
        assert all(h["rerank_score"] is not None for h in forced["hits"])
        assert [h["rerank_score"] for h in forced["hits"]] == sorted((h["rerank_score"] for h in forced["hits"]),
                                                                     reverse=True)
        tight = c.post("/v1/search", json={"query": q, "k": 5, "rerank": True, "budget_ms": 0.001}).json()
        assert tight["rerank"]["reranked"] in ("partial", "none") and tight["rerank"]["reason"] == "budget_exhausted"
        assert len(tight["hits"]) == 5  # the student's order fills in: the query never fails
        arms = {}
        for i in range(40):
            body = c.post("/v1/search", json={"query": q, "k": 3, "ab_key": f"user-{i}"}).json()
            arms[f"user-{i}"] = body["arm"]
            assert (body["rerank"]["reranked"] != "none") == (body["arm"] == "student+rerank")
        assert set(arms.values()) == {"student", "student+rerank"}
        again = c.post("/v1/search", json={"query": q, "ab_key": "user-7"}).json()
        assert again["arm"] == arms["user-7"]  # the same key always gets the same arm
        override = c.post("/v1/search", json={"query": q, "ab_key": "user-7", "arm": "student"}).json()
        assert override["arm"] == "student"
        schema = c.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]["arm"]
        assert {"student", "student+rerank"} <= set(json.dumps(schema).replace('"', " ").split())
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    per_arm = {s.labels["arm"]: s.value for s in families["esdistill_search_duration_seconds"].samples
               if s.name.endswith("_count")}
    assert per_arm["student"] >= 1 and per_arm["student+rerank"] >= 1
    outcomes = {(s.labels["arm"], s.labels["outcome"]): s.value for s in families["esdistill_rerank"].samples}
    assert outcomes[("student+rerank", "full")] >= 1 and outcomes[("student", "none")] >= 1
    logged = [json.loads(line) for line in exposure.read_text().splitlines()]
    assert forced["query_id"] in {r["query_id"] for r in logged}
    assert all(r["key"] != "user-7" for r in logged)  # keys are hashed in the exposure log
