"""The team's lexical query template (BM25 and hybrid) and the score kinds, on a real Elasticsearch node
(the template alone: tests/unit/test_lexical.py)."""

from __future__ import annotations

import json

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.fusion import linear_combination, reciprocal_rank_fusion
from esdistill.plugin.query import QueryConfig, QueryHook

QUERY = "solar panels"

#: t1 matches the query in its title only; b1..b3 in their body, b1 most often; x* are filler
DOCS = [
    {"_id": "t1", "title": "solar panels", "text": "a guide for home owners about energy bills", "lang": "en"},
    {"_id": "b1", "title": "roof work", "text": "solar panels solar panels solar panels on the roof", "lang": "en"},
    {"_id": "b2", "title": "garden", "text": "lights with small solar panels in the garden", "lang": "en"},
    {"_id": "b3", "title": "weather", "text": "clouds and solar panels output", "lang": "de"},
    {"_id": "x1", "title": "cooking", "text": "bread dough and ovens", "lang": "en"},
    {"_id": "x2", "title": "travel", "text": "trains across the alps", "lang": "de"},
    {"_id": "x3", "title": "music", "text": "guitar strings and amplifiers", "lang": "en"},
    {"_id": "x4", "title": "sports", "text": "running shoes for long distances", "lang": "de"},
]

TITLE_BOOST = {"bool": {
    "should": [{"match": {"title": {"query": "{{query}}", "boost": 10}}}, {"match": {"text": "{{query}}"}}],
    "filter": [{"term": {"lang": "en"}}], "minimum_should_match": 1,
}}


@pytest.fixture(scope="module")
def encoder(student_dir):
    from esdistill.plugin.encoder import OnnxEncoder

    return OnnxEncoder(student_dir)


@pytest.fixture
def index(es_client, index_prefix, encoder):
    from esdistill.plugin.index import IndexManager, IndexSpec
    from esdistill.plugin.ingest import IngestHook

    alias = f"{index_prefix}-lex"
    IndexManager(es_client, alias).create(encoder.manifest, IndexSpec(index_options="flat",
                                                                      extra_properties={"lang": {"type": "keyword"}}))
    summary = IngestHook(es_client, alias, encoder, progress=False).ingest([dict(d) for d in DOCS])
    assert summary.indexed == len(DOCS)
    return alias


# ----------------------------------------------------------------------------- the real node
def test_template_boost_and_filter_change_the_bm25_leg(es_client, index, encoder):
    plain = QueryHook(es_client, index, encoder)
    before = plain.search(QUERY, k=8, mode="bm25")
    assert before.ids[0] == "b1", before.ids  # the body match wins the default multi_match
    assert "b3" in before.ids and before.score_kind == "bm25"

    hook = QueryHook(es_client, index, encoder, config=QueryConfig(lexical_template=TITLE_BOOST))
    after = hook.search(QUERY, k=8, mode="bm25")
    assert after.ids[0] == "t1", after.ids  # the title boost puts the title match first
    assert "b3" not in after.ids  # the template's own filter (lang en)
    assert set(after.ids) == {"t1", "b1", "b2"}  # only documents matching the template
    assert all(h.score_kind == "bm25" for h in after.hits)
    # request filters still apply around the template
    de_only = hook.search(QUERY, k=8, mode="bm25", filters={"term": {"title": "nothing-matches"}})
    assert de_only.ids == []
    only_b2 = hook.search(QUERY, k=8, mode="bm25", filters={"ids": {"values": ["b2", "b3"]}})
    assert only_b2.ids == ["b2"]
    # a query full of JSON syntax is searched as text
    weird = hook.search('solar" }} {"script": 1} \\', k=3, mode="bm25")
    assert weird.ids and weird.ids[0] == "t1"


def test_template_from_file_and_cli(es_client, es_url, index, tmp_path, capsys, monkeypatch):
    from esdistill.plugin.cli import main

    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    path = tmp_path / "lexical.json"
    path.write_text(json.dumps(TITLE_BOOST))
    assert main(["search", QUERY, "--index", index, "--mode", "bm25", "--lexical-template", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["hits"][0]["id"] == "t1" and out["score_kind"] == "bm25"
    assert {h["id"] for h in out["hits"]} == {"t1", "b1", "b2"}
    path.write_text('{"match": {"title": "no placeholder"}}')
    assert main(["search", QUERY, "--index", index, "--mode", "bm25", "--lexical-template", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    err = json.loads(captured.out.strip())
    assert err["error"] == "ConfigError" and "placeholder" in err["message"]
    assert captured.err == ""  # a --json error is printed once, as JSON


def test_hybrid_rrf_and_linear_fuse_the_template_leg_with_knn(es_client, index, encoder):
    cfg = QueryConfig(lexical_template=TITLE_BOOST)
    hook = QueryHook(es_client, index, encoder, config=cfg)
    depth = cfg.fusion_depth
    lexical = [(h.id, h.score) for h in hook.search(QUERY, k=depth, mode="bm25").hits]
    knn_r = hook.search(QUERY, k=depth, mode="knn")
    knn = [(h.id, h.score) for h in knn_r.hits]
    assert knn_r.score_kind == "knn_cosine01" and all(0.0 <= s <= 1.0 for _, s in knn)

    rrf = hook.search(QUERY, k=6, mode="hybrid")
    expected = reciprocal_rank_fusion([lexical, knn])[:6]
    assert rrf.score_kind == "rrf" and {h.score_kind for h in rrf.hits} == {"rrf"}
    assert rrf.ids == [d for d, _ in expected]
    assert [h.score for h in rrf.hits] == pytest.approx([s for _, s in expected])
    assert all(0 < h.score <= 2 / 61 for h in rrf.hits)

    lin = hook.search(QUERY, k=6, mode="hybrid", fusion="linear", alpha=0.3)
    expected = linear_combination([lexical, knn], weights=[0.7, 0.3])[:6]
    assert lin.score_kind == "linear" and {h.score_kind for h in lin.hits} == {"linear"}
    assert lin.ids == [d for d, _ in expected]
    assert [h.score for h in lin.hits] == pytest.approx([s for _, s in expected])
    assert all(0.0 <= h.score <= 1.0 for h in lin.hits)
    assert lin.hits[0].id == "t1"  # 0.7 of the weight on the title-boosted lexical leg
    with pytest.raises(ConfigError, match="alpha=1.5"):
        hook.search(QUERY, mode="hybrid", fusion="linear", alpha=1.5)
    with pytest.raises(ConfigError, match="fusion='max'"):
        hook.search(QUERY, mode="hybrid", fusion="max")


def test_bookkeeping_fields_never_reach_source(es_client, index, encoder):
    hook = QueryHook(es_client, index, encoder)
    raw = es_client.get(index=index, id="t1")["_source"]
    assert {"content_hash", "model_fingerprint"} <= set(raw)  # they are stored ...
    for mode in ("knn", "bm25", "hybrid"):
        for h in hook.search(QUERY, k=5, mode=mode).hits:  # ... and never shown
            assert not {"content_hash", "model_fingerprint", "embedding"} & set(h.source), (mode, h.source)
            assert h.source["title"]
