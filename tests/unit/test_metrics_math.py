"""Evaluation without an index: BEIR loading, the metrics against ir-measures, the latency summary,
and the install command when ir-measures is missing (no torch, no Elasticsearch)."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.evaluate import compute_metrics, latency_summary, load_beir, require_ir_measures


# ------------------------------------------------------------------------------------ loading
def test_load_beir_reads_the_judged_queries(tiny_collection):
    coll = load_beir(tiny_collection, split="test")
    assert coll.name == tiny_collection.name and coll.split == "test"
    assert list(coll.queries) == [f"q{i}" for i in range(1, 9)]
    assert coll.qrels["q3"] == {"d04": 1}
    assert coll.queries["q1"] == "how do plants make glucose from sunlight"


def test_load_beir_errors_name_the_file_and_line(tiny_collection, tmp_path):
    with pytest.raises(ConfigError, match=r"qrels/dev.tsv does not exist.*splits here: \['test'\]"):
        load_beir(tiny_collection, split="dev")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_collection, bad)
    (bad / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td01\n")
    with pytest.raises(ConfigError, match=r"test.tsv:2: expected"):
        load_beir(bad)
    (bad / "qrels" / "test.tsv").write_text("q1\td01\tx\n")
    with pytest.raises(ConfigError, match="is not a number"):
        load_beir(bad)
    (bad / "qrels" / "test.tsv").write_text("q404\td01\t1\n")
    with pytest.raises(ConfigError, match="not in .*queries.jsonl"):
        load_beir(bad)
    (bad / "qrels" / "test.tsv").write_text("q1\td01\t0\n")
    with pytest.raises(ConfigError, match="no query with a relevant document"):
        load_beir(bad)


# ------------------------------------------------------------------------------------ metrics
def test_metrics_agree_with_ir_measures_and_count_unanswered_queries_as_zero():
    import ir_measures
    from ir_measures import RR, R, nDCG

    rng = np.random.default_rng(0)
    qrels = {f"q{i}": {f"d{j}": int(rng.integers(1, 3)) for j in rng.choice(50, 3, replace=False)} for i in range(20)}
    run = {q: {f"d{j}": float(s) for j, s in zip(range(50), rng.random(50))} for q in qrels}
    agg, per_query = compute_metrics(run, qrels)
    ref = ir_measures.calc_aggregate([nDCG @ 10, R @ 100, RR @ 10], qrels, run)
    assert agg["ndcg@10"] == pytest.approx(ref[nDCG @ 10])
    assert agg["recall@100"] == pytest.approx(ref[R @ 100]) == pytest.approx(1.0)
    assert agg["mrr@10"] == pytest.approx(ref[RR @ 10])
    assert set(per_query) == set(qrels)
    # a query with no answer scores 0 instead of vanishing from the mean
    partial = dict(run)
    partial["q0"] = {}
    agg2, pq2 = compute_metrics(partial, qrels)
    assert pq2["q0"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    assert agg2["ndcg@10"] == pytest.approx((agg["ndcg@10"] * 20 - per_query["q0"]["ndcg@10"]) / 20)


def test_latency_summary_matches_numpy():
    ms = np.random.default_rng(1).gamma(2.0, 5.0, size=300)
    s = latency_summary(ms)
    assert [s["p50"], s["p95"], s["p99"]] == pytest.approx(np.percentile(ms, [50, 95, 99]).tolist())
    assert s["max"] == pytest.approx(ms.max()) and s["mean"] == pytest.approx(ms.mean())
    assert latency_summary([])["p99"] == 0.0


def test_missing_ir_measures_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ir_measures", None)
    with pytest.raises(ConfigError, match=r"pip install 'esdistill\[eval\]'"):
        require_ir_measures()
