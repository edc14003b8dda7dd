"""Rerank with a run's teacher spec: members, per-query normalisation, BM25 from the index, loading.

The bi-encoder member is the tiny bi-encoder's ONNX export (``encoder_b``); the index is the tiny
collection built with the tiny student on the real node; BM25 reference scores come from a direct
Elasticsearch query.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from esdistill.plugin import ConfigError, ModelError
from esdistill.plugin.documents import document_text
from esdistill.plugin.fusion import normalize_scores
from esdistill.plugin.lexical import LexicalTemplate
from esdistill.plugin.query import QueryConfig, QueryHook
from esdistill.plugin.rerank import BiEncoderReranker, RerankConfig, RerankStage, load_reranker
from esdistill.plugin.teacher_rerank import Bm25Member, SpecReranker, is_teacher_spec, parse_teacher_spec
from qh_helpers import build_index

QUERY = "why do bacteria stop responding to antibiotics"


@pytest.fixture
def tiny_index(es_client, index_prefix, student_dir):
    alias = f"{index_prefix}-docs"
    return alias, build_index(es_client, alias, student_dir)


@pytest.fixture
def b_dir(encoder_b) -> Path:
    return Path(encoder_b.folder)


def _direct_bm25(client, index, clause) -> dict[str, float]:
    hits = client.search(index=index, query=clause, size=100)["hits"]["hits"]
    return {h["_id"]: float(h["_score"]) for h in hits}


# ---------------------------------------------------------------------------------- end to end
def test_spec_reranks_the_student_top_n_like_zscores_by_hand(es_client, tiny_index, student_dir, b_dir):
    alias, docs = tiny_index
    spec = f"0.5*{b_dir}+0.5*bm25"
    hook = QueryHook.open(alias, student_dir, rerank_model=spec, client=es_client,
                          config=QueryConfig(rerank=RerankConfig(top_n=10)))
    assert isinstance(hook.reranker, SpecReranker) and hook.reranker.whole_list
    student = hook.search(QUERY, k=10, rerank=False).ids
    r = hook.search(QUERY, k=10, rerank=True)
    assert r.rerank.reranked == "full" and r.rerank.count == r.rerank.candidates == 10

    by_id = {d["_id"]: d for d in docs}
    texts = [document_text(by_id[i]) for i in student]
    bi = BiEncoderReranker(b_dir).score(QUERY, texts)
    lexical = _direct_bm25(es_client, alias, {"multi_match": {"query": QUERY, "fields": ["title", "text"],
                                                              "type": "cross_fields"}})
    bm25 = np.array([lexical.get(i, 0.0) for i in student])
    assert (bm25 > 0).any() and (bm25 == 0).any()  # matched and unmatched candidates both present
    want = 0.5 * normalize_scores(bi) + 0.5 * normalize_scores(bm25)
    order = sorted(range(10), key=lambda i: (-want[i], i))
    assert r.ids == [student[i] for i in order]
    assert [h.rerank_score for h in r.hits] == pytest.approx([float(want[i]) for i in order], abs=1e-4)
    # the ensemble is not just one of its members: its order differs from the bi-encoder's or BM25's
    assert order != sorted(range(10), key=lambda i: (-bi[i], i)) or order != sorted(range(10), key=lambda i: (-bm25[i], i))


def test_bm25_member_reads_the_hooks_lexical_template(es_client, tiny_index, student_dir):
    alias, docs = tiny_index
    ids = [d["_id"] for d in docs[:12]] + ["no-such-id"]
    texts = ["?"] * len(ids)
    query = "antibiotic resistance of bacteria"  # matches a title and texts

    def scores(boost: float) -> np.ndarray:
        clause = {"bool": {"should": [{"match": {"title": {"query": "{{query}}", "boost": boost}}},
                                      {"match": {"text": "{{query}}"}}]}}
        member = Bm25Member()
        member.attach(QueryHook(es_client, alias, None, config=QueryConfig(lexical_template=LexicalTemplate(clause))))
        got = member.score_candidates(query, ids, texts)
        direct = _direct_bm25(es_client, alias, LexicalTemplate(clause).render(query))
        assert got == pytest.approx([direct.get(i, 0.0) for i in ids], rel=1e-5)
        return got

    plain, boosted = scores(1.0), scores(5.0)
    assert plain[-1] == 0.0 and boosted[-1] == 0.0               # an id not in the index scores 0
    assert (plain > 0).sum() >= 2 and not np.allclose(plain, boosted)
    # the title boost changes the scores, not by one factor: the normalised scores move too
    assert not np.allclose(normalize_scores(plain), normalize_scores(boosted), atol=1e-3)
    with pytest.raises(ConfigError, match="QueryHook"):
        Bm25Member().score_candidates(QUERY, ids, texts)      # never attached to a hook


# --------------------------------------------------------------------------------------- loading
def test_a_run_folder_serves_its_chosen_teacher(tmp_path, b_dir):
    spec = f"0.7*{b_dir}+0.3*bm25"
    (tmp_path / "run.json").write_text(json.dumps({"teacher": {"chosen": spec, "scores": {spec: 0.5}}}))
    rr = load_reranker(tmp_path)
    assert isinstance(rr, SpecReranker) and rr.spec == spec and rr.normalization == "zscore"
    assert [w for w, _ in rr.members] == [0.7, 0.3] and isinstance(rr.members[1][1], Bm25Member)
    (tmp_path / "run.json").write_text(json.dumps({"teacher": {"chosen": spec, "normalization": "minmax"}}))
    again = load_reranker(tmp_path)
    assert again.normalization == "minmax" and again.fingerprint != rr.fingerprint
    (tmp_path / "run.json").write_text(json.dumps({"gate": {}}))
    with pytest.raises(ConfigError, match="teacher.chosen"):
        load_reranker(tmp_path)


def test_a_spec_without_bm25_scores_texts_and_a_single_member_is_unnormalised(b_dir):
    bi = BiEncoderReranker(b_dir)
    docs = ["Bacteria evolve resistance to antibiotics.", "Black holes bend light.", "Plants make glucose."]
    one = load_reranker(f"1*{b_dir}")
    assert isinstance(one, SpecReranker) and not one.whole_list
    assert one.score(QUERY, docs) == pytest.approx(bi.score(QUERY, docs), abs=1e-6)
    two = SpecReranker.from_spec(f"0.5*{b_dir}+0.5*bi:{b_dir}", normalization="minmax")
    assert two.whole_list and two.score(QUERY, docs) == pytest.approx(normalize_scores(bi.score(QUERY, docs), "minmax"),
                                                                      abs=1e-5)
    with_bm25 = SpecReranker.from_spec(f"0.5*{b_dir}+0.5*bm25")
    assert with_bm25.needs_ids
    with pytest.raises(ConfigError, match="bm25 member"):
        with_bm25.score(QUERY, docs)


def test_bad_specs_name_the_input_and_the_fix(tmp_path, b_dir, tiny_bi_encoder):
    for spec, match in [("", "empty"), ("x*bm25", "bad teacher weight 'x'"), ("-1*bm25", ">= 0"),
                        ("0*bm25", "all 0"), ("0.5*+bm25", "empty teacher name"), ("bm25+ce:", "names no model")]:
        with pytest.raises(ConfigError, match=match):
            parse_teacher_spec(spec)
    with pytest.raises(ModelError, match="neither an exported model folder nor a packaged"):
        load_reranker("0.5*no-such-model+0.5*bm25")
    with pytest.raises(ModelError, match=r"esdistill export .* --out"):
        load_reranker(f"0.5*{tiny_bi_encoder}+0.5*bm25")      # a model folder, not exported
    with pytest.raises(ModelError, match="is an exported bi-encoder, not a cross-encoder"):
        load_reranker(f"ce:{b_dir}+bm25")
    with pytest.raises(ModelError, match="not an esdistill model folder"):
        load_reranker(tmp_path)                                # a folder with neither manifest nor run.json
    with pytest.raises(ModelError, match="neither a folder"):
        load_reranker(tmp_path / "missing")
    assert is_teacher_spec("0.5*mpnet+0.5*bm25") and is_teacher_spec("bm25") and is_teacher_spec("mpnet")
    assert not is_teacher_spec("runs/teacher-onnx")


def test_the_plugin_serves_specs_without_importing_export_or_torch():
    code = ("import sys, esdistill.plugin.teacher_rerank, esdistill.plugin.rerank; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('esdistill.export')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ the rerank stage
class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _WholeList:
    """Scores = the number in ``doc-N``; each call advances the clock by ``per_doc_s`` per document."""

    name, fingerprint, whole_list = "whole", "fake", True

    def __init__(self, clock: _Clock, per_doc_s: float) -> None:
        self.clock, self.per_doc_s, self.calls = clock, per_doc_s, []

    def score(self, query, documents):
        self.calls.append(len(documents))
        self.clock.t += self.per_doc_s * len(documents)
        return np.array([float(d.split("-")[1]) for d in documents])


def test_a_whole_list_reranker_gets_the_whole_list_or_nothing_never_a_head():
    clock = _Clock()
    rr = _WholeList(clock, 0.010)
    stage = RerankStage(rr, config=RerankConfig(chunk_size=2, remeasure_s=10.0), clock=clock)
    docs = [f"doc-{i}" for i in range(10)]
    res = stage.run("q", docs, deadline=clock() + 1.0)
    assert res.outcome.reranked == "full" and rr.calls == [10]          # one call despite chunk_size=2
    res = stage.run("q", docs, deadline=clock() + 0.050)                # 5 of 10 would fit: none is scored
    assert res.outcome.reranked == "none" and res.outcome.reason == "budget_exhausted" and rr.calls == [10]
    assert res.order == list(range(10))
    clock.t += 10.0                                                     # re-measured with the whole list
    res = stage.run("q", docs, deadline=clock() + 0.050)
    assert rr.calls == [10, 10] and res.outcome.reranked == "full"
