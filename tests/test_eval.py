"""Evaluation of a live index: ``evaluate`` on the hook, `esdistill eval` and `esdistill search` (loading,
metrics and latency alone: tests/unit/test_metrics_math.py)."""

from __future__ import annotations

import json

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.cli import main
from esdistill.plugin.evaluate import evaluate, load_beir
from esdistill.plugin.query import QueryHook
from qh_helpers import build_index, export_once


# --------------------------------------------------------------------------- on a real index
@pytest.fixture(scope="module")
def models(tiny_bi_encoder, tiny_cross_encoder, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "qh-exports"
    return export_once(tiny_bi_encoder, root, "student"), export_once(tiny_cross_encoder, root, "teacher-ce")


@pytest.fixture
def live(es_client, es_url, index_prefix, models, monkeypatch):
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    alias = f"{index_prefix}-eval"
    build_index(es_client, alias, models[0])
    return alias


def test_evaluate_scores_what_the_hook_returns(es_client, live, models, tiny_collection):
    import ir_measures
    from esdistill.plugin.encoder import OnnxEncoder
    from ir_measures import nDCG

    hook = QueryHook(es_client, live, OnnxEncoder(models[0]))
    coll = load_beir(tiny_collection)
    report = evaluate(hook, coll, mode="hybrid", k=10, per_query=True, warmup=1, progress=False)
    assert report.queries == 8 and report.mode == "hybrid" and set(report.per_query) == set(coll.queries)
    run = {}
    for qid, text in coll.queries.items():
        ids = hook.search(text, k=10, mode="hybrid").ids
        run[qid] = {d: float(10 - i) for i, d in enumerate(ids)}
    assert report.metrics["ndcg@10"] == pytest.approx(ir_measures.calc_aggregate([nDCG @ 10], coll.qrels, run)[nDCG @ 10])
    lat = report.latency_ms
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert set(report.stage_ms) == {"embed", "es", "fuse", "rerank", "total"}
    assert evaluate(hook, coll, mode="bm25", limit=3, warmup=0, progress=False).queries == 3
    with pytest.raises(ConfigError, match="limit=0"):
        evaluate(hook, coll, limit=0)


@pytest.mark.parametrize("mode, rerank", [("bm25", False), ("knn", False), ("hybrid", False), ("knn", True)])
def test_eval_cli_json_last_line(es_client, live, models, tiny_collection, capsys, mode, rerank):
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.rerank import load_reranker

    argv = ["eval", "--collection", str(tiny_collection), "--split", "test", "--index", live,
            "--model", str(models[0]), "--mode", mode, "--k", "100", "--json", "--no-progress"]
    if rerank:
        argv += ["--rerank", str(models[1])]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    out = json.loads(last)
    # the CLI scores what the hook returns for the same index, mode and teacher
    hook = QueryHook(es_client, live, OnnxEncoder(models[0]), reranker=load_reranker(models[1]) if rerank else None)
    direct = evaluate(hook, load_beir(tiny_collection), mode=mode, k=100, rerank=rerank, warmup=0, progress=False)
    for key in ("ndcg@10", "recall@100", "mrr@10"):
        assert out[key] == pytest.approx(direct.metrics[key]), key
    assert out["recall@100"] == 1.0 or mode == "bm25"  # 24 documents: every one is in a kNN top 100
    assert out["queries"] == 8 and out["mode"] == mode and out["rerank"] is rerank
    assert out["latency_ms"]["p50"] <= out["latency_ms"]["p95"] <= out["latency_ms"]["p99"]
    if rerank:
        assert out["rerank_outcomes"] == {"full": 8}


def test_eval_cli_text_and_search_cli(live, models, tiny_collection, capsys):
    assert main(["eval", "--collection", str(tiny_collection), "--index", live, "--mode", "bm25", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "nDCG@10" in text and "p99" in text and "8 queries" in text
    assert main(["search", "--index", live, "--model", str(models[0]), "antibiotics resistance", "--k", "3",
                 "--json", "--rerank", str(models[1])]) == 0
    resp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(resp["hits"]) == 3 and resp["rerank"]["reranked"] == "full" and resp["mode"] == "knn"
    assert main(["search", "--index", live, "--mode", "bm25", "antibiotics", "--filter", '{"term": {"lang": "de"}}']) == 0
    assert "d04" in capsys.readouterr().out
    assert main(["search", "--index", live, "q", "--mode", "knn"]) == 2  # no --model: a ConfigError
    assert "needs --model" in capsys.readouterr().err
    assert main(["search", "--index", live, "q", "--mode", "bm25", "--filter", "{oops"]) == 2
