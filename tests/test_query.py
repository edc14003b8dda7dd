"""The query hook: kNN / BM25 / hybrid search, rerank and A/B on a real Elasticsearch (fusion alone:
tests/unit/test_fusion.py)."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
from esdistill.plugin import ConfigError, ElasticsearchUnavailable, FingerprintError, connect
from esdistill.plugin.ab import ABTest, ExposureLog, Interleaving, attribute_clicks, read_exposures
from esdistill.plugin.fusion import reciprocal_rank_fusion
from esdistill.plugin.query import QueryConfig, QueryHook
from esdistill.plugin.rerank import RerankConfig, load_reranker
from esdt_helpers import free_port
from qh_helpers import BlackHole, build_index

# ------------------------------------------------------------------- the hook on a real node
QUERY = "why do bacteria stop responding to antibiotics"


@pytest.fixture(scope="module")
def encoder(student_dir):
    from esdistill.plugin.encoder import OnnxEncoder

    return OnnxEncoder(student_dir)


@pytest.fixture
def tiny_index(es_client, index_prefix, student_dir):
    alias = f"{index_prefix}-docs"
    return alias, build_index(es_client, alias, student_dir)


def _cosine_order(encoder, docs, query, keep=lambda d: True):
    docs = [d for d in docs if keep(d)]
    dv = encoder.encode([f"{d['title']} {d['text']}" for d in docs], kind="document")
    qv = encoder.encode([query], kind="query")[0]
    sims = dv @ qv
    order = np.argsort(-sims, kind="stable")
    return [docs[i]["_id"] for i in order], {docs[i]["_id"]: float(sims[i]) for i in order}


def test_knn_returns_the_exact_cosine_order_with_timings(es_client, tiny_index, encoder):
    alias, docs = tiny_index
    hook = QueryHook(es_client, alias, encoder)
    r = hook.search(QUERY, k=5)
    expected, sims = _cosine_order(encoder, docs, QUERY)
    assert r.ids == expected[:5]
    for h in r.hits:  # Elasticsearch's cosine score is (1 + cos) / 2
        assert h.score == pytest.approx((1 + sims[h.id]) / 2, abs=1e-4)
        assert "embedding" not in h.source and h.source["title"]
    assert [h.rank for h in r.hits] == [1, 2, 3, 4, 5]
    assert r.mode == "knn" and r.variant == "student" and r.arm is None and r.k == 5
    assert r.rerank.reranked == "none" and r.rerank.reason == "not_requested"
    assert set(r.timings) == {"embed", "es", "fuse", "rerank", "total"}
    assert r.timings["total"] >= r.timings["es"] + r.timings["embed"] > 0
    assert json.loads(json.dumps(r.to_dict()))["hits"][0]["id"] == expected[0]
    assert hook.text_fields == ("title", "text") and hook.vector_field == "embedding"


def test_filters_reach_knn_bm25_and_hybrid(es_client, tiny_index, encoder):
    alias, docs = tiny_index
    hook = QueryHook(es_client, alias, encoder)
    en = {"term": {"lang": "en"}}
    expected, _ = _cosine_order(encoder, docs, QUERY, keep=lambda d: d["lang"] == "en")
    r = hook.search(QUERY, k=4, filters=en)
    assert r.ids == expected[:4]
    for mode in ("bm25", "hybrid"):
        r = hook.search(QUERY, k=10, mode=mode, filters=[en])
        assert r.hits and {h.source["lang"] for h in r.hits} == {"en"}
    unfiltered = hook.search("antibiotics resistance", k=3, mode="bm25")
    assert unfiltered.ids[0] == "d04"
    assert next(d for d in docs if d["_id"] == "d04")["lang"] == "de"
    assert "d04" not in hook.search("antibiotics resistance", k=3, mode="bm25", filters=en).ids


def test_hybrid_is_the_fusion_of_bm25_and_knn(es_client, tiny_index, encoder):
    alias, _ = tiny_index
    hook = QueryHook(es_client, alias, encoder)
    depth = hook.config.fusion_depth
    bm25 = [(h.id, h.score) for h in hook.search(QUERY, k=depth, mode="bm25").hits]
    knn = [(h.id, h.score) for h in hook.search(QUERY, k=depth, mode="knn").hits]
    assert bm25 and knn
    r = hook.search(QUERY, k=8, mode="hybrid")
    fused = reciprocal_rank_fusion([bm25, knn])
    assert r.ids == [d for d, _ in fused[:8]]
    assert [h.score for h in r.hits] == pytest.approx([s for _, s in fused[:8]])
    assert r.timings["fuse"] > 0
    # linear fusion with all the weight on kNN reproduces the kNN order
    linear = QueryHook(es_client, alias, encoder, config=QueryConfig(fusion="linear", linear_weight=1.0))
    assert linear.search(QUERY, k=8, mode="hybrid").ids == [d for d, _ in knn[:8]]


def test_query_embedding_cache_is_bounded(es_client, tiny_index, encoder):
    alias, _ = tiny_index
    hook = QueryHook(es_client, alias, encoder, config=QueryConfig(cache_size=2))
    first = hook.search("plants and sunlight", k=3)
    again = hook.search("plants and sunlight", k=3)
    assert not first.embedding_cached and again.embedding_cached and again.ids == first.ids
    hook.search("black holes", k=3)
    hook.search("jet engines", k=3)
    info = hook.cache_info
    assert info["size"] == 2 and info["hits"] == 1 and info["misses"] == 3
    assert not hook.search("plants and sunlight", k=3).embedding_cached  # evicted (least recently used)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k=0 must be an integer between 1 and 1000"),
        ({"k": 1001}, "between 1 and 1000"),
        ({"k": 2.5}, "k=2.5"),
        ({"mode": "dense"}, "mode='dense' is unknown"),
        ({"budget_ms": 0}, "budget_ms=0"),
        ({"budget_ms": -5.0}, "budget_ms=-5.0"),
        ({"num_candidates": 3, "k": 5}, "num_candidates=3 must be an integer between k=5"),
        ({"filters": "lang:en"}, "filters must be an Elasticsearch query clause"),
        ({"filters": ["lang:en"]}, "each filter must be"),
        ({"arm": "student"}, "runs no A/B test"),
        ({"rerank": True}, "has no reranker"),
    ],
)
def test_bad_arguments_raise_config_error(es_client, encoder, kwargs, match):
    hook = QueryHook(es_client, "esdt-never-created", encoder)
    with pytest.raises(ConfigError, match=match):
        hook.search("query", **kwargs)


def test_empty_text_and_missing_encoder(es_client, encoder):
    with pytest.raises(ConfigError, match="non-empty string"):
        QueryHook(es_client, "x", encoder).search("   ")
    with pytest.raises(ConfigError, match="needs a query encoder"):
        QueryHook(es_client, "x", None).search("q", mode="hybrid")
    with pytest.raises(ConfigError, match="invalid query configuration: .*fusion='max'"):
        QueryConfig(fusion="max")


def test_missing_index_is_a_clear_config_error(es_client, index_prefix, encoder):
    from esdistill.plugin import IndexNotFound

    hook = QueryHook(es_client, f"{index_prefix}-absent", encoder)
    with pytest.raises(IndexNotFound, match="does not exist.*esdistill index create") as err:
        hook.search("q")
    assert isinstance(err.value, ConfigError) and err.value.index == f"{index_prefix}-absent"


def test_model_that_did_not_make_the_vectors_is_refused(es_client, index_prefix, encoder):
    from esdistill.plugin.index import IndexManager

    alias = f"{index_prefix}-other"
    other = dataclasses.replace(encoder.manifest, fingerprint="0" * 64)
    IndexManager(es_client, alias).create(other)
    hook = QueryHook(es_client, alias, encoder)
    with pytest.raises(FingerprintError, match="did not make the vectors") as err:
        hook.search("q")
    assert err.value.expected == "0" * 64 and err.value.actual == encoder.fingerprint
    with pytest.raises(FingerprintError):  # checked again, not cached as a success
        hook.search("q", mode="bm25")
    assert QueryHook(es_client, alias, None).search("q", mode="bm25").hits == []  # BM25 alone needs no model


def test_unreachable_elasticsearch(encoder):
    client = connect(f"http://127.0.0.1:{free_port()}", check=False)
    hook = QueryHook(client, "idx", encoder, config=QueryConfig(max_retries=0))
    with pytest.raises(ElasticsearchUnavailable, match="cannot reach Elasticsearch"):
        hook.search("q")


def test_hung_elasticsearch_times_out_clearly(encoder):
    hole = BlackHole()
    try:
        client = connect(hole.url, check=False)
        hook = QueryHook(client, "idx", encoder, config=QueryConfig(request_timeout_s=0.3, max_retries=0))
        t = time.perf_counter()
        with pytest.raises(ElasticsearchUnavailable, match="did not answer .* within 0.3 s"):
            hook.search("q")
        assert time.perf_counter() - t < 5
    finally:
        hole.close()


# ------------------------------------------------------------------------------------- rerank
class _Raises:
    name, fingerprint = "broken", "x"

    def __init__(self):
        self.calls = 0

    def score(self, query, documents):
        self.calls += 1
        raise RuntimeError("teacher is down")


class _Sleepy:
    name, fingerprint = "sleepy", "x"

    def __init__(self, inner, seconds):
        self.inner, self.seconds = inner, seconds

    def score(self, query, documents):
        time.sleep(self.seconds)
        return self.inner.score(query, documents)


def test_rerank_follows_the_cross_encoder_teacher(es_client, tiny_index, encoder, teacher_dir):
    from esdistill.plugin.cross_encoder import OnnxCrossEncoder

    alias, docs = tiny_index
    text = {d["_id"]: f"{d['title']} {d['text']}" for d in docs}
    reranker = load_reranker(teacher_dir)
    assert type(reranker).__name__ == "CrossEncoderReranker"
    hook = QueryHook(es_client, alias, encoder, reranker=reranker, config=QueryConfig(rerank=RerankConfig(top_n=10)))
    student = hook.search(QUERY, k=10, rerank=False).ids
    scores = OnnxCrossEncoder(teacher_dir).score(QUERY, [text[d] for d in student])
    expected = [student[i] for i in np.argsort(-scores, kind="stable")]
    r = hook.search(QUERY, k=6, rerank=True)
    assert r.ids == expected[:6]
    assert r.rerank.reranked == "full" and r.rerank.count == r.rerank.candidates == 10
    assert r.rerank.reason == "complete" and r.variant == "student+rerank" and r.timings["rerank"] > 0
    assert [h.rerank_score for h in r.hits] == pytest.approx(sorted(scores.tolist(), reverse=True)[:6], abs=1e-5)


def test_bi_encoder_teacher_equal_to_the_student_keeps_the_knn_order(es_client, tiny_index, encoder, student_dir):
    alias, _ = tiny_index
    reranker = load_reranker(student_dir)
    assert type(reranker).__name__ == "BiEncoderReranker"
    hook = QueryHook(es_client, alias, encoder, reranker=reranker)
    plain = hook.search(QUERY, k=10, rerank=False)
    r = hook.search(QUERY, k=10, rerank=True)
    assert r.rerank.reranked == "full" and r.ids == plain.ids
    for h, p in zip(r.hits, plain.hits):
        assert (1 + h.rerank_score) / 2 == pytest.approx(p.score, abs=1e-4)


def test_one_ms_budget_returns_the_student_order_flagged(es_client, tiny_index, encoder, teacher_dir):
    alias, _ = tiny_index
    slow = _Sleepy(load_reranker(teacher_dir), 0.02)
    hook = QueryHook(es_client, alias, encoder, reranker=slow, config=QueryConfig(rerank=RerankConfig(top_n=20)))
    student = hook.search(QUERY, k=20, rerank=False).ids
    r = hook.search(QUERY, k=20, rerank=True, budget_ms=1)
    assert r.rerank.reranked in ("partial", "none") and r.rerank.reason == "budget_exhausted"
    m = r.rerank.count
    assert m < 20
    assert r.ids[m:] == student[m:] and sorted(r.ids[:m]) == sorted(student[:m])
    assert all(h.rerank_score is None for h in r.hits[m:])
    assert r.variant == ("student+rerank" if m else "student")
    # with a generous budget the same request reranks fully
    full = hook.search(QUERY, k=20, rerank=True, budget_ms=30_000)
    assert full.rerank.reranked == "full"


def test_a_raising_reranker_never_fails_the_query_and_opens_the_breaker(es_client, tiny_index, encoder):
    alias, _ = tiny_index
    broken = _Raises()
    config = QueryConfig(rerank=RerankConfig(failure_threshold=2, cooldown_s=600))
    hook = QueryHook(es_client, alias, encoder, reranker=broken, config=config)
    student = hook.search(QUERY, k=5, rerank=False).ids
    for _ in range(2):
        r = hook.search(QUERY, k=5, rerank=True)
        assert r.ids == student and r.rerank.reranked == "none" and r.rerank.reason == "error"
        assert "teacher is down" in r.rerank.error
    assert hook.rerank_stage.breaker.state == "open"
    r = hook.search(QUERY, k=5, rerank=True)
    assert r.ids == student and r.rerank.reason == "circuit_open" and broken.calls == 2


# ---------------------------------------------------------------------------------------- A/B
def _key_for(ab, arm):
    return next(f"user-{i}" for i in range(10_000) if ab.assign(f"user-{i}").name == arm)


def test_ab_arms_decide_the_rerank_and_every_answer_is_logged(es_client, tiny_index, encoder, teacher_dir, tmp_path):
    alias, _ = tiny_index
    ab = ABTest.from_shares({"student": 0.5, "student+rerank": 0.5}, salt="test-salt")
    log = ExposureLog(tmp_path / "exposure.jsonl", to_logger=False)
    hook = QueryHook(es_client, alias, encoder, reranker=load_reranker(teacher_dir), ab=ab, exposure_log=log)
    k_student, k_rerank = _key_for(ab, "student"), _key_for(ab, "student+rerank")
    a = hook.search(QUERY, k=5, ab_key=k_student)
    b = hook.search(QUERY, k=5, ab_key=k_rerank)
    assert (a.arm, a.variant, a.rerank.reranked) == ("student", "student", "none")
    assert (b.arm, b.variant, b.rerank.reranked) == ("student+rerank", "student+rerank", "full")
    c = hook.search(QUERY, k=5, ab_key=k_student, arm="student+rerank")  # per-request override
    assert c.arm == "student+rerank" and c.rerank.reranked == "full"
    d = hook.search(QUERY, k=5, ab_key=k_rerank, rerank=False)           # rerank switched off
    assert d.arm == "student+rerank" and d.rerank.reranked == "none" and d.ids == a.ids
    e = hook.search(QUERY, k=5)                                           # no key: no experiment
    assert e.arm is None
    log.close()
    recs = read_exposures(tmp_path / "exposure.jsonl")
    assert [r["query_id"] for r in recs] == [x.query_id for x in (a, b, c, d, e)]
    assert [r["shown"] for r in recs] == [x.ids for x in (a, b, c, d, e)]
    assert [r["arm"] for r in recs] == ["student", "student+rerank", "student+rerank", "student+rerank", None]
    assert recs[0]["key"] not in (k_student, None) and recs[4]["key"] is None
    assert recs[1]["reranked"] == "full" and recs[0]["mode"] == "knn"


def test_interleaving_arm_shows_both_rankings_and_clicks_credit_them(es_client, tiny_index, encoder, teacher_dir,
                                                                    tmp_path):
    alias, _ = tiny_index
    ab = ABTest.from_shares({"interleaved": 1.0}, salt="s")
    log = ExposureLog(tmp_path / "e.jsonl", to_logger=False)
    hook = QueryHook(es_client, alias, encoder, reranker=load_reranker(teacher_dir), ab=ab, exposure_log=log,
                     config=QueryConfig(rerank=RerankConfig(top_n=10)))
    student = hook.search(QUERY, k=10, rerank=False, arm="interleaved").ids
    explicit = hook.search(QUERY, k=10, rerank=True, ab_key="someone")
    assert explicit.variant == "interleaved"  # the arm interleaves even when rerank=True is explicit
    r = hook.search(QUERY, k=8, ab_key="someone")
    assert r.variant == "interleaved" and r.arm == "interleaved" and len(r.ids) == 8
    assert {h.team for h in r.hits} <= {"student", "rerank"}
    assert set(r.ids) <= set(student)
    log.close()
    rec = read_exposures(tmp_path / "e.jsonl")[-1]
    il = Interleaving.from_exposure(rec)
    assert list(il.ids) == r.ids and list(il.teams) == [h.team for h in r.hits]
    clicked = [h.id for h in r.hits if h.team == "rerank"][:1]
    if clicked:
        assert attribute_clicks(il, clicked).winner == "rerank"


def test_alias_moved_to_another_models_index_is_noticed_at_once(es_client, tiny_index, encoder, index_prefix):
    from esdistill.plugin.index import IndexManager

    alias, _ = tiny_index
    hook = QueryHook(es_client, alias, encoder)  # meta_refresh_s = 60: no periodic re-read in this test
    assert hook.search(QUERY, k=3).hits
    other_alias = f"{index_prefix}-swap"
    physical = IndexManager(es_client, other_alias).create(dataclasses.replace(encoder.manifest, fingerprint="1" * 64))
    es_client.index(index=physical, id="x", document={"title": "t", "text": "bacteria antibiotics",
                                                      "embedding": [0.1] * encoder.dims}, refresh=True)
    old = IndexManager(es_client, alias).current()
    es_client.indices.update_aliases(actions=[{"remove": {"index": old, "alias": alias}},
                                              {"add": {"index": physical, "alias": alias}}])
    with pytest.raises(FingerprintError, match="did not make the vectors"):
        hook.search(QUERY, k=3)
