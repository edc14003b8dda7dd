"""Hostile input against the real service and query hook, on a real Elasticsearch node (``-m security``).

Each attack is reproduced as a client would send it:

- filters that read *another* index with the service's credentials: ``geo_shape`` with
  ``indexed_shape`` (the other document's value came back in Elasticsearch's error text), a ``terms``
  lookup and ``more_like_this`` with a ``like`` document (both answered with hits chosen by the
  other index's content);
- index-name enumeration: a lookup into a missing index and into an existing one must get the same
  answer;
- Elasticsearch's reason text (and the names in it) never reaches the client, from the service or from
  the exception ``QueryHook.search`` raises; it goes to the service log instead;
- 300 requests with junk methods and paths do not add series to ``/metrics``, and unprotected paths
  are rate-limited too when a limit is configured;
- ``/readyz`` shows a short fingerprint only, ``/docs`` loads nothing from a CDN, ``esdistill_ready``
  is fresh on a scrape, and a service whose alias moved to a model of other dims says
  ``model_mismatch`` on the first request.

Then property-based fuzzing of the filter allow-list (:mod:`esdistill.plugin.filters`): random nested
clause trees pass unchanged exactly when they contain nothing forbidden.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import string
import uuid

import pytest
from esdistill.plugin import ConfigError, FingerprintError
from esdistill.plugin.filters import ALLOWED_CLAUSES, MAX_DEPTH, FilterNotAllowed, validate_filters
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from svc_fixtures import KEY, corpus, drop_indices, make_index, settings

pytest.importorskip("fastapi")
from esdistill.plugin.service import create_app
from fastapi.testclient import TestClient

pytestmark = pytest.mark.security

H = {"X-API-Key": KEY}
SECRET_VALUE = "TOPSECRET-" + uuid.uuid4().hex[:10]
MODES = ("knn", "hybrid", "bm25")


@pytest.fixture(scope="module")
def world(es_client, student):
    """The served alias, filled with the tiny corpus, and another index the client must never read."""
    prefix = f"esdt-atk-{uuid.uuid4().hex[:8]}"
    alias = make_index(es_client, f"{prefix}-docs", student)
    secret = f"{prefix}-secret"
    leaked_ids = [d["_id"] for d in corpus()[:2]]
    es_client.indices.create(index=secret, mappings={"properties": {"path": {"type": "keyword"},
                                                                    "ids": {"type": "keyword"}}})
    es_client.index(index=secret, id="1", refresh=True, document={
        "path": SECRET_VALUE, "ids": leaked_ids, "text": corpus()[0]["text"]})
    yield {"alias": alias, "secret": secret, "missing": f"{prefix}-nosuchindex", "leaked_ids": leaked_ids}
    drop_indices(es_client, prefix)


@pytest.fixture(scope="module")
def client(world, student, es_url):
    app = create_app(settings(world["alias"], student, es_url, api_keys=(KEY,)))
    with TestClient(app) as c:
        yield c


def _search(client, filters, mode="knn"):
    return client.post("/v1/search", headers=H, json={"query": "bacteria and antibiotics", "k": 5, "mode": mode,
                                                      "filters": filters})


def _refused(resp, clause: str) -> str:
    assert resp.status_code == 400, (resp.status_code, resp.text[:500])
    body = resp.json()["error"]
    assert body["type"] == "bad_request", body
    assert clause in body["message"], body["message"]
    return body["message"]


def _leaks(text: str, world) -> list[str]:
    """What of the other index shows in ``text``: its value, its name, a missing index's name."""
    found = [s for s in (SECRET_VALUE, SECRET_VALUE.lower(), world["secret"], world["missing"]) if s in text]
    return found


# ---------------------------------------------------------------------------------- reading another index
def _geo(world, index):
    return {"geo_shape": {"title": {"indexed_shape": {"index": index, "id": "1", "path": "path"}}}}


def _terms_lookup(world, index):
    return {"terms": {"_id": {"index": index, "id": "1", "path": "ids"}}}


def _mlt(world, index):
    return {"more_like_this": {"fields": ["text"], "like": [{"_index": index, "_id": "1"}],
                               "min_term_freq": 1, "min_doc_freq": 1}}


@pytest.mark.parametrize("mode", MODES)
def test_geo_shape_indexed_shape_cannot_read_another_index(client, world, mode):
    resp = _search(client, _geo(world, world["secret"]), mode)
    _refused(resp, "geo_shape")
    assert not _leaks(resp.text, world), resp.text


@pytest.mark.parametrize("mode", MODES)
def test_terms_lookup_into_another_index_is_refused(client, world, mode):
    resp = _search(client, [{"exists": {"field": "text"}}, _terms_lookup(world, world["secret"])], mode)
    message = _refused(resp, "terms lookup")
    assert "filters[1].terms._id" in message
    assert not _leaks(resp.text, world)


@pytest.mark.parametrize("mode", MODES)
def test_more_like_this_with_a_document_of_another_index_is_refused(client, world, mode):
    nested = {"bool": {"filter": [{"term": {"title": "x"}}], "should": [_mlt(world, world["secret"])]}}
    resp = _search(client, nested, mode)
    message = _refused(resp, "more_like_this")
    assert "filters.bool.should" in message
    assert not _leaks(resp.text, world)


@pytest.mark.parametrize("attack", [_geo, _terms_lookup, _mlt])
def test_index_names_cannot_be_enumerated(client, world, attack):
    """A lookup into an existing index and into a missing one get the very same answer."""
    answers = []
    for index in (world["secret"], world["missing"]):
        resp = _search(client, attack(world, index))
        assert not _leaks(resp.text, world), resp.text
        answers.append((resp.status_code, resp.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 400


@pytest.mark.parametrize("clause", [
    {"script": {"script": {"source": "true"}}},
    {"percolate": {"field": "q", "index": "x", "id": "1"}},
    {"wrapper": {"query": "eyJtYXRjaF9hbGwiOnt9fQ=="}},
    {"function_score": {"query": {"match_all": {}}, "script_score": {"script": "1"}}},
    {"terms_set": {"tags": {"terms": ["a"], "minimum_should_match_script": {"source": "1"}}}},
    {"has_child": {"type": "c", "query": {"match_all": {}}}},
    {"nested": {"path": "p", "query": {"match_all": {}}, "inner_hits": {"script_fields": {}}}},
    {"shape": {"geometry": {"indexed_shape": {"index": "x", "id": "1", "path": "p"}}}},
])
def test_other_clauses_that_run_scripts_or_read_elsewhere_are_refused(client, clause):
    resp = _search(client, {"bool": {"must": [{"match_all": {}}, clause]}})
    kind = next(iter(clause))
    _refused(resp, "filters.bool.must[1]")
    assert kind in resp.json()["error"]["message"] or "inner_hits" in resp.json()["error"]["message"]


def test_query_hook_refuses_the_same_filters_in_python(es_client, world, student):
    """The Python API is protected too, not only the HTTP schema."""
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.query import QueryHook

    hook = QueryHook(es_client, world["alias"], OnnxEncoder(student))
    for attack in (_geo, _terms_lookup, _mlt):
        with pytest.raises(FilterNotAllowed) as err:
            hook.search("bacteria", k=3, filters=attack(world, world["secret"]))
        assert isinstance(err.value, ConfigError)
        assert not _leaks(str(err.value), world)
    with pytest.raises(FilterNotAllowed, match=r"filters\[0\]\.bool\.must\[1\]: 'more_like_this'"):
        hook.search("bacteria", filters=[{"bool": {"must": [{"match_all": {}}, _mlt(world, world["secret"])]}}])
    # an allowed filter still filters
    ids = world["leaked_ids"]
    got = hook.search("bacteria", k=10, filters={"ids": {"values": ids}}).ids
    assert got and set(got) <= set(ids)


# ---------------------------------------------------------------------------------- Elasticsearch's words
REJECTED = [  # allowed filters that Elasticsearch itself refuses on this index, and words of its reason
    ({"term": {"embedding": "x"}}, ("dense_vector", "doesn't support")),
    ({"prefix": {"embedding": "1"}}, ("dense_vector", "Can only use prefix")),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("filters, reason_words", REJECTED)
def test_elasticsearch_reason_text_never_reaches_the_client(client, filters, reason_words, mode, caplog):
    caplog.set_level(logging.WARNING, logger="esdistill")
    resp = _search(client, filters, mode)
    assert resp.status_code == 400, resp.text
    body = resp.json()["error"]
    assert body["type"] == "bad_request"
    assert "filter" in body["message"]
    for word in reason_words:
        assert word not in resp.text, resp.text
    assert not re.search(rf"{re.escape(client.app.state.esdistill.settings.index)}-\d{{6}}", resp.text)
    # the service log has the reason for the operator
    assert any(all(w in r.getMessage() for w in reason_words) for r in caplog.records), caplog.text


def test_query_hook_exception_text_has_no_elasticsearch_reason(es_client, world, student):
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.query import QueryHook

    hook = QueryHook(es_client, world["alias"], OnnxEncoder(student))
    for mode in MODES:
        with pytest.raises(ConfigError) as err:
            hook.search("bacteria", mode=mode, filters={"term": {"embedding": "x"}})
        text = str(err.value)
        assert "doesn't support" not in text and "dense_vector" not in text, text
        assert "rejected" in text and world["alias"] in text
        assert not re.search(rf"{re.escape(world['alias'])}-\d{{6}}", text), text


# ---------------------------------------------------------------------------------- metrics and limits
def _series(text: str, metric: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(metric + "{")]


def test_junk_methods_and_paths_do_not_grow_metrics(world, student, es_url):
    app = create_app(settings(world["alias"], student, es_url, api_keys=(KEY,)))
    rng = random.Random(7)
    with TestClient(app) as c:
        c.get("/healthz")
        before = c.get("/metrics").text
        for i in range(300):
            method = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(3, 40)))
            path = rng.choice(["/nope", "/v1/search", f"/junk/{uuid.uuid4().hex}", "/metrics"])
            assert c.request(method, path).status_code in (401, 404, 405)
        for i in range(50):  # and plain methods on junk paths
            assert c.get(f"/x/{i}/{uuid.uuid4().hex}").status_code == 404
        after = c.get("/metrics").text
    requests = _series(after, "esdistill_http_requests_total")
    methods = {re.search(r'method="([^"]*)"', s).group(1) for s in requests}
    routes = {re.search(r'route="([^"]*)"', s).group(1) for s in requests}
    assert methods <= {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other"}, methods
    assert routes <= {r.path for r in app.routes} | {"other"}, routes
    assert len(requests) <= 12, requests
    assert len(after) - len(before) < 8_000, len(after) - len(before)


def test_unprotected_paths_are_rate_limited_when_a_limit_is_set(world, student, es_url):
    app = create_app(settings(world["alias"], student, es_url, api_keys=(KEY,), rate_limit_per_s=0.5,
                              rate_limit_burst=3))
    with TestClient(app) as c:
        codes = [c.request("JUNK", f"/nope/{i}").status_code for i in range(6)]
        assert codes[:3] == [404] * 3 and codes[3:] == [429] * 3, codes
        limited = c.get("/nope")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        # the API's own budget is separate: a client probing junk paths still gets its searches
        assert c.post("/v1/search", headers=H, json={"query": "bacteria"}).status_code == 200


# ---------------------------------------------------------------------------------- what shows without a key
def test_readyz_shows_a_short_fingerprint_and_docs_load_nothing_from_a_cdn(client):
    fingerprint = client.app.state.esdistill.manifest.fingerprint
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert fingerprint not in ready.text and fingerprint[:16] not in ready.text
    assert ready.json()["model"]["fingerprint"] == fingerprint[:12]
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        resp = client.get(path)
        assert resp.status_code == 404, (path, resp.status_code)
        assert "cdn" not in resp.text.lower() and "<script" not in resp.text.lower()
    assert client.get("/openapi.json").status_code == 200


def test_ready_gauge_is_fresh_on_a_scrape_without_any_readyz_call(world, student, es_url):
    app = create_app(settings(world["alias"], student, es_url))
    with TestClient(app) as c:
        text = c.get("/metrics").text
    assert "esdistill_ready 1.0" in text, [line for line in text.splitlines() if "ready" in line]


# ---------------------------------------------------------------------------------- alias swap
def test_alias_swap_to_a_model_of_other_dims_is_model_mismatch_on_the_first_request(es_client, student, es_url):
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.index import IndexManager

    prefix = f"esdt-atk-swap-{uuid.uuid4().hex[:6]}"
    try:
        alias = make_index(es_client, f"{prefix}-docs", student)
        app = create_app(settings(alias, student, es_url))
        manifest = OnnxEncoder(student).manifest
        with TestClient(app) as c:
            assert c.post("/v1/search", json={"query": "bacteria"}).status_code == 200
            other = dataclasses.replace(manifest, fingerprint="1" * 64, dims=manifest.dims * 2)
            physical = IndexManager(es_client, f"{prefix}-other").create(other)
            old = IndexManager(es_client, alias).current()
            es_client.indices.update_aliases(actions=[{"remove": {"index": old, "alias": alias}},
                                                      {"add": {"index": physical, "alias": alias}}])
            for mode in ("knn", "hybrid"):
                resp = c.post("/v1/search", json={"query": "bacteria", "mode": mode})
                assert resp.status_code == 503, (mode, resp.text[:300])
                assert resp.json()["error"]["type"] == "model_mismatch", resp.text[:300]
    finally:
        drop_indices(es_client, prefix)


def test_query_hook_sees_the_swap_before_searching(es_client, student):
    """Even when the search itself would succeed, the hook checks the physical index first."""
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.index import IndexManager
    from esdistill.plugin.query import QueryConfig, QueryHook

    prefix = f"esdt-atk-swap2-{uuid.uuid4().hex[:6]}"
    try:
        alias = make_index(es_client, f"{prefix}-docs", student)
        encoder = OnnxEncoder(student)
        # alias_check_s=0: look the alias up before every search, so the test does not depend on how
        # long the swap below takes (the default looks at most once a second)
        hook = QueryHook(es_client, alias, encoder, config=QueryConfig(alias_check_s=0))
        assert hook.search("bacteria", k=3).hits
        other = dataclasses.replace(encoder.manifest, fingerprint="2" * 64, dims=encoder.dims * 2)
        physical = IndexManager(es_client, f"{prefix}-other").create(other)
        old = IndexManager(es_client, alias).current()
        es_client.indices.update_aliases(actions=[{"remove": {"index": old, "alias": alias}},
                                                  {"add": {"index": physical, "alias": alias}}])
        with pytest.raises(FingerprintError, match="did not make the vectors"):
            hook.search("bacteria", k=3, mode="bm25")  # BM25 works on any dims: only the check can say it
    finally:
        drop_indices(es_client, prefix)


# ---------------------------------------------------------------------------------- the validator, fuzzed
_FIELD = st.text(alphabet=string.ascii_lowercase + "_.", min_size=1, max_size=10).filter(
    lambda s: s.strip(" ._") != "" and s not in ("boost", "_name"))
_SCALAR = st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False, width=32))
_SCALARS = st.lists(_SCALAR, max_size=4)


def _allowed_leaves():
    bounds = st.dictionaries(st.sampled_from(["gt", "gte", "lt", "lte"]), _SCALAR, min_size=1, max_size=2)
    return st.one_of(
        st.builds(lambda f, v: {"term": {f: v}}, _FIELD, _SCALAR),
        st.builds(lambda f, v, b: {"term": {f: {"value": v, "boost": b}}}, _FIELD, _SCALAR,
                  st.floats(0.1, 10)),
        st.builds(lambda f, vs: {"terms": {f: vs}}, _FIELD, _SCALARS),
        st.builds(lambda f, vs: {"terms": {f: vs, "boost": 1.5}}, _FIELD, _SCALARS),
        st.builds(lambda f, b: {"range": {f: b}}, _FIELD, bounds),
        st.builds(lambda f: {"exists": {"field": f}}, _FIELD),
        st.builds(lambda f, v: {"prefix": {f: v}}, _FIELD, st.text(max_size=8)),
        st.builds(lambda f, v: {"wildcard": {f: {"value": v, "case_insensitive": True}}}, _FIELD,
                  st.text(max_size=8)),
        st.builds(lambda vs: {"ids": {"values": vs}}, _SCALARS),
        st.builds(lambda f, v: {"match": {f: v}}, _FIELD, _SCALAR),
        st.builds(lambda f, v: {"match_phrase": {f: {"query": v, "slop": 2}}}, _FIELD, st.text(max_size=8)),
        st.builds(lambda v, fs: {"multi_match": {"query": v, "fields": fs}}, st.text(max_size=8),
                  st.lists(_FIELD, max_size=3)),
        st.just({"match_all": {}}),
        st.just({"match_none": {"_name": "none"}}),
    )


def _forbidden_leaves():
    name = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=16).filter(
        lambda s: s not in ALLOWED_CLAUSES)
    return st.one_of(
        st.builds(lambda f, i: {"terms": {f: {"index": i, "id": "1", "path": "p"}}}, _FIELD, _FIELD),
        st.builds(lambda f, i: {"geo_shape": {f: {"indexed_shape": {"index": i, "id": "1", "path": "p"}}}},
                  _FIELD, _FIELD),
        st.builds(lambda i: {"more_like_this": {"like": [{"_index": i, "_id": "1"}]}}, _FIELD),
        st.just({"script": {"script": "true"}}),
        st.just({"percolate": {"field": "q", "index": "x", "id": "1"}}),
        st.just({"wrapper": {"query": "e30="}}),
        st.builds(lambda f: {"term": {f: {"value": 1, "script": "x"}}}, _FIELD),
        st.builds(lambda f: {"terms": {f: [{"nested": "object"}]}}, _FIELD),
        st.builds(lambda n: {n: {}}, name),
    )


def _compound(children):
    lists = st.lists(children, max_size=3)
    return st.one_of(
        st.fixed_dictionaries({}, optional={"must": lists, "filter": lists, "should": lists, "must_not": lists,
                                            "minimum_should_match": st.integers(0, 3)}).map(lambda b: {"bool": b}),
        st.builds(lambda c: {"bool": {"filter": c}}, children),
        children.map(lambda c: {"constant_score": {"filter": c}}),
        st.lists(children, min_size=1, max_size=3).map(lambda qs: {"dis_max": {"queries": qs}}),
        st.builds(lambda p, c: {"nested": {"path": p, "query": c}}, _FIELD, children),
    )


_COMPOUND_CHILDREN = {"bool": ("must", "filter", "should", "must_not"), "constant_score": ("filter",),
                      "dis_max": ("queries",), "nested": ("query",)}


def _walk(clause: dict, path: str, depth: int = 1):
    """Yield (path, clause, depth) for every clause of a tree built by the strategies above."""
    yield path, clause, depth
    (kind, body), = clause.items()
    for key in _COMPOUND_CHILDREN.get(kind, ()):
        if key not in body:
            continue
        value = body[key]
        if isinstance(value, list):
            for i, child in enumerate(value):
                yield from _walk(child, f"{path}.{kind}.{key}[{i}]", depth + 1)
        else:
            yield from _walk(value, f"{path}.{kind}.{key}", depth + 1)


def _is_forbidden(clause: dict) -> bool:
    (kind, body), = clause.items()
    if kind not in ALLOWED_CLAUSES:
        return True
    if kind == "terms":
        return any(isinstance(v, dict) or any(isinstance(x, dict) for x in v)
                   for k, v in body.items() if k not in ("boost", "_name"))
    if kind == "term":
        return any(isinstance(v, dict) and "script" in v for v in body.values())
    return False


_FUZZ = hsettings(max_examples=300, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(tree=st.recursive(_allowed_leaves(), _compound, max_leaves=14))
def test_fuzz_allowed_trees_pass_unchanged(tree):
    depth = max(d for _, _, d in _walk(tree, "filters"))
    if depth > MAX_DEPTH:
        with pytest.raises(FilterNotAllowed, match="deeper than"):
            validate_filters(tree)
        return
    out = validate_filters(tree)
    assert out == [tree]
    assert json.dumps(out, sort_keys=True) == json.dumps([tree], sort_keys=True)
    out[0].clear()  # a copy: changing it changes nothing the caller holds
    assert tree
    assert validate_filters([tree, tree]) == [tree, tree]


@_FUZZ
@given(tree=st.recursive(st.one_of(_allowed_leaves(), _forbidden_leaves()), _compound, max_leaves=14),
       as_list=st.booleans())
def test_fuzz_any_tree_with_a_forbidden_clause_is_refused_at_its_path(tree, as_list):
    top = "filters[0]" if as_list else "filters"
    nodes = list(_walk(tree, top))
    bad = [path for path, clause, depth in nodes if depth <= MAX_DEPTH and _is_forbidden(clause)]
    too_deep = any(depth > MAX_DEPTH for _, _, depth in nodes)
    if not bad and not too_deep:
        assert validate_filters([tree] if as_list else tree) == [tree]
        return
    with pytest.raises(FilterNotAllowed) as err:
        validate_filters([tree] if as_list else tree)
    assert isinstance(err.value, ConfigError)
    problems = err.value.problems
    for path in bad:  # every forbidden clause is named, at its own path (or a parameter below it)
        assert any(p.startswith((path + ":", path + ".")) for p in problems), (path, problems)
    assert str(err.value).startswith("filter refused: ")


@_FUZZ
@given(junk=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.floats()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=10))
def test_fuzz_arbitrary_json_is_either_refused_or_an_allowed_tree(junk):
    """Whatever is sent, the validator answers with a copy of an allowed tree or a ConfigError."""
    try:
        out = validate_filters(junk)
    except ConfigError as exc:
        assert str(exc)
        return
    assert out == ([] if junk is None else ([junk] if isinstance(junk, dict) else list(junk)))
    for clause in out:
        for _, node, _ in _walk(clause, "filters"):
            assert not _is_forbidden(node)


def test_bounds_on_depth_clauses_and_values():
    deep: dict = {"match_all": {}}
    for _ in range(MAX_DEPTH):
        deep = {"bool": {"filter": [deep]}}
    with pytest.raises(FilterNotAllowed, match=f"deeper than {MAX_DEPTH}"):
        validate_filters(deep)
    assert validate_filters(deep["bool"]["filter"][0])  # one level less is fine
    with pytest.raises(FilterNotAllowed, match="more than 5 clauses"):
        validate_filters([{"match_all": {}}] * 6, max_clauses=5)
    with pytest.raises(FilterNotAllowed, match="more than 10 values"):
        validate_filters([{"terms": {"a": list(range(6))}}, {"ids": {"values": list(range(6))}}], max_values=10)
    with pytest.raises(ConfigError, match="filters must be"):
        validate_filters("lang:en")
