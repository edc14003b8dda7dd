"""``/v1/embeddings`` and ``/v1/rerank`` through a real HTTP server (uvicorn on a free local port),
called with the official ``openai`` client and with httpx in the shape Elasticsearch's rerank
services send. Real ONNX models, no fakes."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import numpy as np
import pytest
from esdt_helpers import free_port
from svc_fixtures import KEY, corpus, queries, settings

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
import uvicorn
from esdistill.plugin.encoder import OnnxEncoder
from esdistill.plugin.rerank import load_reranker
from esdistill.plugin.service import create_app
from fastapi.testclient import TestClient

MAX_INPUTS, MAX_CHARS = 12, 400


@pytest.fixture(scope="module")
def base_url(student_dir, teacher_dir, es_url):
    app = create_app(settings("esdt-openai-unused", student_dir, es_url, api_keys=(KEY,), rerank=str(teacher_dir),
                              max_documents=MAX_INPUTS, max_query_chars=MAX_CHARS))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def encoder(student_dir):
    return OnnxEncoder(student_dir)


def _texts(n: int) -> list[str]:
    return [f"{d['title']} {d['text']}"[:150] for d in corpus()[:n]]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_openai_client_embeds_a_batch_like_the_onnx_encoder(base_url, encoder):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    texts = _texts(10)
    resp = client.embeddings.create(input=texts, model=encoder.manifest.name)
    assert [d.index for d in resp.data] == list(range(len(texts)))
    got = np.array([d.embedding for d in resp.data])
    want = encoder.encode(texts, kind="document")
    assert got.shape == want.shape == (len(texts), encoder.dims)
    assert _cos(got, want).min() >= 0.999
    assert resp.model == encoder.manifest.name
    assert resp.usage.prompt_tokens == resp.usage.total_tokens >= len(texts)

    # base64 (little-endian float32), the model named by its short fingerprint, dimensions equal to the model's
    raw = client.embeddings.create(input=texts[:3], model=encoder.manifest.short_fingerprint,
                                   encoding_format="base64", dimensions=encoder.dims)
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data])
    assert _cos(decoded, want[:3]).min() >= 0.999

    # a single string, and the query side on request (what Elasticsearch's custom service can send)
    one = client.embeddings.create(input=texts[0], model=encoder.manifest.fingerprint,
                                   extra_body={"input_type": "query"})
    assert len(one.data) == 1
    assert _cos(np.array(one.data[0].embedding), encoder.encode([texts[0]], kind="query")[0]) >= 0.999


def test_openai_client_errors_are_clear(base_url, encoder):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    name = encoder.manifest.name
    with pytest.raises(openai.BadRequestError, match=f"{encoder.dims}-dimensional"):
        client.embeddings.create(input=["a"], model=name, dimensions=encoder.dims // 2)
    with pytest.raises(openai.NotFoundError, match="this service serves model"):
        client.embeddings.create(input=["a"], model="text-embedding-3-small")
    with pytest.raises(openai.BadRequestError, match=f"the limit is {MAX_INPUTS}"):
        client.embeddings.create(input=["a"] * (MAX_INPUTS + 1), model=name)
    with pytest.raises(openai.BadRequestError, match=f"the limit is {MAX_INPUTS * MAX_CHARS}"):
        client.embeddings.create(input=["x" * MAX_CHARS] * 2 + ["y" * (MAX_INPUTS * MAX_CHARS)], model=name)
    with pytest.raises(openai.UnprocessableEntityError):  # token arrays are not accepted: send text
        client.embeddings.create(input=[[1, 2, 3]], model=name)


def test_bearer_and_api_key_auth(base_url, encoder):
    body = {"input": ["a text"], "model": encoder.manifest.name}
    url = f"{base_url}/v1/embeddings"
    bad = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY + "x", max_retries=0)
    with pytest.raises(openai.AuthenticationError):  # a wrong bearer token is a 401 (RFC 6750)
        bad.embeddings.create(input=["a"], model=encoder.manifest.name)
    wrong = httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}x"})
    assert wrong.status_code == 401 and "invalid_token" in wrong.headers["www-authenticate"]
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.post(url, json=body, headers={"authorization": f"bearer {KEY}"}).status_code == 200
    assert httpx.post(url, json=body, headers={"X-API-Key": KEY}).status_code == 200
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and "Bearer" in missing.headers["www-authenticate"]
    assert httpx.post(url, json=body, headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert httpx.post(url, json=body, headers={"X-API-Key": KEY + "x"}).status_code == 403
    # one wrong credential is refused even next to a right one
    assert httpx.post(url, json=body, headers={"X-API-Key": KEY + "x",
                                               "Authorization": f"Bearer {KEY}"}).status_code == 403
    assert httpx.post(url, json=body, headers={"X-API-Key": KEY,
                                               "Authorization": f"Bearer {KEY}x"}).status_code == 401


def test_rerank_in_elasticsearch_request_shape(base_url, teacher_dir):
    teacher = load_reranker(teacher_dir)
    query = queries()[0]["text"]
    docs = _texts(8)
    want = np.asarray(teacher.score(query, docs), dtype=np.float64)
    expected = sorted(range(len(docs)), key=lambda i: -want[i])
    auth = {"Authorization": f"Bearer {KEY}"}
    resp = httpx.post(f"{base_url}/v1/rerank", headers=auth,
                      json={"query": query, "documents": docs, "top_n": 3, "return_documents": True})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["index"] for r in results] == expected[:3]
    assert np.allclose([r["relevance_score"] for r in results], want[expected[:3]], atol=1e-4)
    assert [r["document"]["text"] for r in results] == [docs[i] for i in expected[:3]]
    everything = httpx.post(f"{base_url}/v1/rerank", headers=auth, json={"query": query, "documents": docs}).json()
    assert [r["index"] for r in everything["results"]] == expected
    assert all("document" not in r for r in everything["results"])
    scores = [r["relevance_score"] for r in everything["results"]]
    assert scores == sorted(scores, reverse=True)
    too_many = httpx.post(f"{base_url}/v1/rerank", headers=auth, json={"query": query, "documents": ["d"] * 13})
    assert too_many.status_code == 400 and "the limit is 12" in too_many.json()["error"]["message"]
    assert httpx.post(f"{base_url}/v1/rerank", json={"query": query, "documents": docs}).status_code == 401
    other = httpx.post(f"{base_url}/v1/rerank", headers=auth, json={"query": query, "documents": docs, "model": "x"})
    assert other.status_code == 404


def test_routes_are_counted_by_template(base_url, encoder):
    auth = {"Authorization": f"Bearer {KEY}"}
    httpx.post(f"{base_url}/v1/embeddings", headers=auth, json={"input": "a", "model": encoder.manifest.name})
    httpx.post(f"{base_url}/v1/embeddings/../x", headers=auth, json={})
    httpx.post(f"{base_url}/v1/embeddings", json={})  # refused before routing: still labelled by its template
    text = httpx.get(f"{base_url}/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("esdistill_http_requests_total{")]
    assert any('route="/v1/embeddings"' in line and 'status="200"' in line for line in lines)
    assert any('route="/v1/embeddings"' in line and 'status="401"' in line for line in lines)
    assert any('route="/v1/rerank"' in line for line in lines)
    assert not any("../" in line for line in lines)


def test_rerank_without_a_reranker_is_a_clear_400(student_dir, es_url, encoder):
    app = create_app(settings("esdt-openai-unused", student_dir, es_url, api_keys=(KEY,)))
    with TestClient(app) as c:
        resp = c.post("/v1/rerank", headers={"Authorization": f"Bearer {KEY}"},
                      json={"query": "q", "documents": ["a", "b"]})
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["type"] == "no_reranker" and "--rerank" in error["message"]
        schema = c.get("/openapi.json").json()
        assert "Bearer" in schema["components"]["securitySchemes"]
        assert {"/v1/embeddings", "/v1/rerank"} <= set(schema["paths"])
