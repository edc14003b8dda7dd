"""The parity gate's arithmetic without a model: thresholds and their overrides, nDCG@10, the
bi-encoder metrics on synthetic vectors, and the parity sample of a collection (no torch, no
Elasticsearch; ``esdistill.export.parity`` imports no torch)."""

from __future__ import annotations

import numpy as np
import pytest
from esdistill.export.parity import (
    ParitySample,
    ParityThresholds,
    bi_encoder_metrics,
    check_variant,
    ndcg_at_10,
    parse_threshold_overrides,
)
from esdistill.plugin import ConfigError


# ----------------------------------------------------------------------------------- metrics
def test_thresholds_are_validated_and_overridable():
    with pytest.raises(ConfigError, match="int8_min_cosine"):
        ParityThresholds(int8_min_cosine=1.5)
    t = parse_threshold_overrides(["int8_min_cosine=0.95", "int8-max-ndcg10-drop=0.02"])
    assert t.int8_min_cosine == 0.95 and t.int8_max_ndcg10_drop == 0.02
    assert t.fp32_min_cosine == ParityThresholds().fp32_min_cosine
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_threshold_overrides(["nonsense=1"])
    with pytest.raises(ConfigError, match="not a number"):
        parse_threshold_overrides(["int8_min_cosine=high"])


def test_ndcg_at_10_matches_a_hand_computation():
    # relevant at ranks 1 and 3 (grades 2 and 1); ideal: grades 2, 1 at ranks 1, 2
    got = ndcg_at_10(["a", "x", "b"], {"a": 2, "b": 1})
    want = (2 + 1 / np.log2(4)) / (2 + 1 / np.log2(3))
    assert got == pytest.approx(want)
    assert ndcg_at_10(["x", "y"], {"a": 1}) == 0.0


def test_bi_encoder_metrics_detect_a_degraded_candidate():
    rng = np.random.default_rng(0)
    docs = {f"d{i}": f"text {i}" for i in range(40)}
    queries = {f"q{i}": f"query {i}" for i in range(8)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(8)}
    sample = ParitySample(docs=docs, queries=queries, qrels=qrels)
    ref_d = rng.standard_normal((40, 16))
    ref_q = ref_d[:8] + 0.1 * rng.standard_normal((8, 16))  # each query is near its relevant doc
    same = bi_encoder_metrics(sample, ref_d, ref_d.copy(), ref_q, ref_q.copy())
    assert same["cosine_min"] == pytest.approx(1.0) and same["top10_overlap"] == 1.0
    assert same["ndcg10_delta"] == 0.0 and same["ndcg10_source"] > 0.9
    noisy = bi_encoder_metrics(sample, ref_d, ref_d + 1.5 * rng.standard_normal(ref_d.shape),
                               ref_q, ref_q + 1.5 * rng.standard_normal(ref_q.shape))
    assert noisy["cosine_min"] < 0.9 and noisy["top10_overlap"] < 0.9
    failures = check_variant("int8", "bi-encoder", noisy, ParityThresholds())
    assert any("int8_min_cosine" in f for f in failures)
    assert any("int8_min_top10_overlap" in f for f in failures)
    assert check_variant("int8", "bi-encoder", same, ParityThresholds()) == []


def test_parity_sample_from_collection_keeps_relevant_documents(tiny_collection):
    sample = ParitySample.from_collection(tiny_collection, max_docs=12, max_queries=3)
    assert 0 < len(sample.queries) <= 3 and len(sample.docs) == 12
    for q, rels in sample.qrels.items():
        assert q in sample.queries
        assert all(d in sample.docs for d in rels)
    with pytest.raises(ConfigError, match="at least 2"):
        ParitySample(docs={"only": "one"})
