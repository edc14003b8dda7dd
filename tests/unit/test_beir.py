"""The one BEIR/TREC reader (plugin.beir): evaluation, training and the benchmarks read qrels alike."""

from __future__ import annotations

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.beir import load_qrels, load_queries, write_qrels


def test_qrels_accept_beir_tsv_trec_and_spaces_and_round_trip(tmp_path):
    p = tmp_path / "q.tsv"
    write_qrels(p, {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}})
    assert load_qrels(p) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    p.write_text("q1 0 d1 1\nq1 0 d2 0\nq2 d3 1.0\n")
    assert load_qrels(p) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 1}}


def test_a_bad_score_is_named_even_on_the_first_line(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("q1\td01\tx\n")  # not a header: it must not be skipped silently
    with pytest.raises(ConfigError, match=r"q.tsv:1: score 'x' is not a number"):
        load_qrels(p)
    p.write_text("query-id\tcorpus-id\tscore\nq1\td01\thigh\n")
    with pytest.raises(ConfigError, match=r"q.tsv:2: score 'high' is not a number"):
        load_qrels(p)


def test_queries_read_jsonl_or_tsv_and_name_a_bad_line(tmp_path):
    p = tmp_path / "queries.jsonl"
    p.write_text('{"_id": 1, "text": "why"}\nq2\thow\n')
    assert load_queries(p) == {"1": "why", "q2": "how"}
    p.write_text('{"_id": "q1"}\n')
    with pytest.raises(ConfigError, match=r"queries.jsonl:1: expected"):
        load_queries(p)
