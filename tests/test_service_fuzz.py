"""Schema fuzz of the service API with schemathesis: cases generated from the app's own OpenAPI schema,
valid ones (positive) and invalid ones (negative), sent to the real app over a real index.

Every answer must be documented in the schema and match it, invalid input must be rejected with a 4xx
(schemathesis' checks), and nothing may answer 5xx: Elasticsearch is up, so not even the documented 503.
Another run fuzzes the same app while Elasticsearch is unreachable: there the only 5xx allowed is 503.
The number of cases is bounded (see ``CASES``) so the module runs in well under a minute.
"""

from __future__ import annotations

import uuid

import pytest
from esdt_helpers import free_port
from svc_fixtures import KEY, drop_indices, make_index, settings

schemathesis = pytest.importorskip("schemathesis")
from esdistill.plugin.service import create_app
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

#: hypothesis examples per operation and generation mode
CASES = 30
#: operations that take no input at all (no negative cases exist for them)
NO_INPUT = ("/healthz", "/readyz", "/metrics")


@pytest.fixture(scope="module")
def fuzz_index(es_client, student):
    prefix = f"esdt-svcfuzz-{uuid.uuid4().hex[:8]}"
    yield make_index(es_client, f"{prefix}-docs", student)
    drop_indices(es_client, prefix)


def _fuzz_operation(operation, mode, *, cases: int, allowed_5xx: set[int], counts: dict[str, int],
                    failures: list[str]) -> None:
    """Send ``cases`` generated requests for one operation and generation mode, and check each answer."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @hsettings(max_examples=cases, deadline=None, database=None, derandomize=True,
               suppress_health_check=list(HealthCheck))
    def run(case):
        headers = {"X-API-Key": KEY}  # auth failures are tested in test_service.py
        response = case.call(headers=headers)
        counts[str(response.status_code)] = counts.get(str(response.status_code), 0) + 1
        if response.status_code >= 500:
            if response.status_code not in allowed_5xx:
                failures.append(f"{operation.label} [{mode}] -> {response.status_code}: {response.text[:300]}")
            body = response.json()
            if operation.path == "/readyz":
                assert body["ready"] is False and body["reason"], body
            else:
                assert body["error"]["message"], body
        if mode == GenerationMode.POSITIVE and response.status_code == 400:
            # the ways a schema-valid request is refused: a filter the allow-list refuses (the schema
            # names the allowed clause types, not their whole grammar), or one Elasticsearch rejects
            filters = case.body.get("filters") if isinstance(case.body, dict) else None
            message = response.json()["error"]["message"]
            refused = message.startswith("filter refused: filters")
            # a service started without --rerank refuses /v1/rerank by configuration, not by input
            # the inference routes refuse inputs their schema cannot express (an empty input list, no
            # reranker configured) with a 400 that names the fix
            no_reranker = operation.path in ("/v1/embeddings", "/v1/rerank")
            if not no_reranker and not (filters and (refused or "Elasticsearch rejected" in message)):
                failures.append(f"{operation.label}: valid request refused: {message[:300]}")
        excluded = [schemathesis.checks.positive_data_acceptance]
        if allowed_5xx:
            excluded.append(schemathesis.checks.not_a_server_error)
        case.validate_response(response, headers=headers, excluded_checks=excluded)

    run()


def _fuzz(app, *, allowed_5xx: set[int], cases: int = CASES) -> dict[str, int]:
    """Run every operation in both generation modes; return status-code counts."""
    from fastapi.testclient import TestClient

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    counts: dict[str, int] = {}
    failures: list[str] = []
    no_negative: list[str] = []
    with TestClient(app):  # runs the app's lifespan around the whole fuzz
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    _fuzz_operation(operation, mode, cases=cases, allowed_5xx=allowed_5xx, counts=counts,
                                    failures=failures)
                except Unsatisfiable:
                    # an operation without inputs has no invalid request to make
                    assert mode == GenerationMode.NEGATIVE and operation.path in NO_INPUT, operation.label
                    no_negative.append(operation.label)
    assert sorted(no_negative) == sorted(f"GET {p}" for p in NO_INPUT), no_negative
    assert not failures, "\n".join(failures[:10])
    return counts


def test_schema_fuzz_with_elasticsearch_up(fuzz_index, student, es_url, capsys):
    app = create_app(settings(fuzz_index, student, es_url, api_keys=(KEY,), max_documents=20))
    counts = _fuzz(app, allowed_5xx=set())
    total = sum(counts.values())
    with capsys.disabled():
        print(f"\n[fuzz] ES up: {total} cases, status codes {dict(sorted(counts.items()))}")
    assert total >= 6 * CASES  # every operation in both modes was exercised
    assert counts.get("200", 0) > 0 and sum(v for k, v in counts.items() if k.startswith("4")) > 0
    assert not any(k.startswith("5") for k in counts)


def test_schema_fuzz_with_elasticsearch_down_answers_only_503(student, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    app = create_app(settings("esdt-svcfuzz-down", student, dead, api_keys=(KEY,), es_timeout_s=1.0,
                              ingest_retry_s=0.5, max_documents=20))
    counts = _fuzz(app, allowed_5xx={503}, cases=8)
    with capsys.disabled():
        print(f"\n[fuzz] ES down: {sum(counts.values())} cases, status codes {dict(sorted(counts.items()))}")
    assert counts.get("503", 0) > 0
    assert set(counts) - {"503"} <= {"200", "400", "401", "403", "404", "405", "413", "422"}
