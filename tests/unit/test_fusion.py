"""Fusion of ranked lists in pure Python: reciprocal rank fusion, min-max and the linear combination
(no torch, no Elasticsearch)."""

from __future__ import annotations

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.fusion import fuse, linear_combination, min_max, reciprocal_rank_fusion


def test_rrf_matches_the_formula():
    bm25 = [("a", 12.0), ("b", 9.0), ("c", 1.0)]
    knn = [("c", 0.9), ("a", 0.8), ("d", 0.7)]
    got = dict(reciprocal_rank_fusion([bm25, knn], k=60))
    assert got["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert got["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert got["b"] == pytest.approx(1 / 62)
    assert got["d"] == pytest.approx(1 / 63)
    order = [d for d, _ in reciprocal_rank_fusion([bm25, knn])]
    assert order == ["a", "c", "b", "d"]


def test_rrf_ignores_scores_and_counts_a_repeated_id_once():
    one = reciprocal_rank_fusion([[("x", 1e9), ("y", -5.0)]])
    two = reciprocal_rank_fusion([[("x", 0.0), ("y", 0.0), ("x", 0.0)]])
    assert one == two


def test_rrf_weights_and_ties():
    got = reciprocal_rank_fusion([[("a", 1.0)], [("b", 1.0)]], weights=[1.0, 3.0])
    assert [d for d, _ in got] == ["b", "a"]
    tie = reciprocal_rank_fusion([[("b", 1.0)], [("a", 1.0)]])
    assert [d for d, _ in tie] == ["a", "b"]  # equal score, equal best rank: by id


def test_min_max_and_linear_combination():
    assert min_max([("a", 5.0), ("b", 5.0)]) == {"a": 1.0, "b": 1.0}
    assert min_max([]) == {}
    bm25 = [("a", 20.0), ("b", 10.0), ("c", 0.0)]
    knn = [("c", 0.95), ("b", 0.90), ("d", 0.50)]
    got = dict(linear_combination([bm25, knn], weights=[0.3, 0.7]))
    assert got["a"] == pytest.approx(0.3 * 1.0)
    assert got["b"] == pytest.approx(0.3 * 0.5 + 0.7 * (0.40 / 0.45))
    assert got["c"] == pytest.approx(0.7 * 1.0)
    assert got["d"] == pytest.approx(0.0)
    # weight 1 on kNN only reproduces the kNN order
    assert [d for d, _ in linear_combination([bm25, knn], weights=[0.0, 1.0])][:2] == ["c", "b"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "nope"}, "unknown"),
        ({"method": "rrf", "rrf_k": 0}, "must be > 0"),
        ({"method": "linear", "weights": [1.0]}, "2 ranked lists but 1 weights"),
        ({"method": "linear", "weights": [0.0, 0.0]}, "all 0"),
        ({"method": "linear", "weights": [-1.0, 2.0]}, ">= 0"),
    ],
)
def test_fusion_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        fuse([[("a", 1.0)], [("b", 1.0)]], **kwargs)


def test_linear_rejects_nan():
    with pytest.raises(ConfigError, match="finite"):
        linear_combination([[("a", float("nan"))]])
