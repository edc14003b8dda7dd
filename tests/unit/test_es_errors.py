"""The one classifier of Elasticsearch failures (plugin/es_errors.py), on the client's own exception
classes built the way the transport builds them."""

from __future__ import annotations

import pytest
from elastic_transport import (
    ApiResponseMeta,
    ConnectionError,
    ConnectionTimeout,
    HttpHeaders,
    NodeConfig,
    TlsError,
)
from elasticsearch import ApiError
from esdistill.plugin._bulk import is_retryable
from esdistill.plugin.es_errors import KINDS, classify, classify_chain, failure_of_answer


def _api_error(status: int, body) -> ApiError:
    meta = ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("http", "localhost", 9200))
    return ApiError(message="error", meta=meta, body=body)


def _body(kind: str, reason: str) -> dict:
    return {"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason}, "status": 0}


@pytest.mark.parametrize("status, body, kind, retryable, unavailable", [
    (404, _body("index_not_found_exception", "no such index [secret-index]"), "index_not_found", False, False),
    (404, {"_index": "docs", "_id": "1", "found": False}, "not_found", False, False),
    (404, _body("search_context_missing_exception", "No search context found for id [12]"), "pit_lost", False, False),
    (400, _body("query_shard_exception", "failed to create query on [other-index]"), "bad_request", False, False),
    (401, _body("security_exception", "unable to authenticate user"), "unauthorized", False, True),
    (403, _body("security_exception", "action unauthorized"), "forbidden", False, True),
    (409, _body("version_conflict_engine_exception", "version conflict"), "conflict", False, False),
    (413, "Request Entity Too Large", "too_large", False, False),
    (429, _body("es_rejected_execution_exception", "rejected"), "throttled", True, True),
    (503, _body("unavailable_shards_exception", "primary shard is not active"), "server", True, True),
])
def test_answers_are_classified_by_status_and_type(status, body, kind, retryable, unavailable):
    failure = classify(_api_error(status, body))
    assert failure is not None and failure.kind == kind and failure.kind in KINDS
    assert (failure.retryable, failure.unavailable, failure.status) == (retryable, unavailable, status)
    assert is_retryable(_api_error(status, body)) is retryable
    # the same answer as a _msearch / _bulk item (a status and a body, no exception)
    assert failure_of_answer(status, body).kind == kind


def test_the_error_type_is_an_identifier_and_the_reason_stays_in_the_reason():
    failure = classify(_api_error(400, _body("query_shard_exception", "failed on [other-index]")))
    assert failure.error_type == "query_shard_exception"
    assert "other-index" in failure.reason  # for the log; messages use error_type only
    odd = classify(_api_error(400, _body("Not An Identifier; DROP", "x")))
    assert odd.error_type == ""


def test_transport_failures_are_retryable_except_tls():
    assert classify(ConnectionTimeout("timed out")).kind == "timeout"
    assert classify(ConnectionError("refused")).kind == "unreachable"
    assert classify(ConnectionError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")).kind == "tls"
    assert classify(TlsError("handshake")).kind == "tls"
    assert is_retryable(ConnectionTimeout("t")) and is_retryable(ConnectionError("c"))
    assert not is_retryable(TlsError("handshake")) and not is_retryable(ValueError("x"))


def test_a_wrapped_failure_is_found_through_its_cause():
    try:
        try:
            raise _api_error(404, _body("index_not_found_exception", "no such index [x]"))
        except ApiError as inner:
            raise RuntimeError("the search failed") from inner
    except RuntimeError as outer:
        assert classify(outer) is None
        assert classify_chain(outer).kind == "index_not_found"
