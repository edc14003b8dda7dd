"""Teacher vectors stored at ingest, against the real node: every writer (ingest, sync, adopt in place
and by copy, reindex) stores the teacher's own document vector of each document's text; the rerank
that reads them orders the candidates as the rerank that embeds their texts, with one teacher query
embedding and no document embedding; the field never shows in a hit; a cross-encoder is refused."""

from __future__ import annotations

import base64
import json
import logging

import numpy as np
import pytest
from adopt_helpers import make_team_index
from esdistill.plugin import IndexManager, IngestHook, QueryHook
from esdistill.plugin.documents import TEACHER_VECTOR_FIELD, document_text
from esdistill.plugin.encoder import l2_normalize
from esdistill.plugin.index import IndexSpec
from esdistill.plugin.rerank import BiEncoderReranker
from esdistill.plugin.sync import sync_index
from esdistill.plugin.teacher_vectors import StoredTeacherReranker, describe_teacher, with_stored_vectors
from esdt_helpers import TINY_COLLECTION
from esdt_onnx import model_folder

CORPUS = [json.loads(x) for x in (TINY_COLLECTION / "corpus.jsonl").read_text().splitlines()]
QUERIES = [json.loads(x)["text"] for x in (TINY_COLLECTION / "queries.jsonl").read_text().splitlines()]


class CountingTeacher:
    """A real encoder that counts the texts it embeds, by kind."""

    def __init__(self, encoder) -> None:
        self.inner, self.manifest, self.fingerprint, self.dims = encoder, encoder.manifest, encoder.fingerprint, \
            encoder.dims
        self.calls: dict[str, int] = {"query": 0, "document": 0}

    def encode(self, texts, *, kind="document", **kw):
        self.calls[kind] += len(texts)
        return self.inner.encode(texts, kind=kind, **kw)


def _vector(value) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype=">f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def stored(client, name: str) -> dict[str, dict]:
    client.indices.refresh(index=name)
    resp = client.search(index=name, size=1000, query={"match_all": {}}, source={"exclude_vectors": False})
    return {h["_id"]: h["_source"] for h in resp["hits"]["hits"]}


def assert_teacher_vectors(client, name: str, teacher, text_fields=("title", "text")) -> dict[str, dict]:
    """Every document holds the teacher's own unit vector of its text."""
    docs = stored(client, name)
    assert docs
    ids = sorted(docs)
    texts = [document_text(docs[i], text_fields) for i in ids]
    want = l2_normalize(np.asarray(teacher.encode(texts, kind="document"), dtype=np.float32))
    for i, doc_id in enumerate(ids):
        assert TEACHER_VECTOR_FIELD in docs[doc_id], doc_id
        got = _vector(docs[doc_id][TEACHER_VECTOR_FIELD])
        assert got.shape == (teacher.dims,)
        assert float(got @ want[i] / np.linalg.norm(got)) >= 0.999, doc_id
    return docs


@pytest.fixture
def teacher_info(encoder_b):
    return describe_teacher(model_folder(encoder_b))


def _create(es_client, name, encoder_a, teacher_info, **spec) -> IndexManager:
    mgr = IndexManager(es_client, name)
    mgr.create(encoder_a.manifest, IndexSpec(index_options="flat", **spec), teacher=teacher_info)
    return mgr


def test_create_records_the_teacher_and_ingest_fills_its_vectors(es_client, index_prefix, encoder_a, encoder_b,
                                                                 teacher_info):
    mgr = _create(es_client, index_prefix, encoder_a, teacher_info)
    meta = mgr.meta()
    assert (meta.teacher_fingerprint, meta.teacher_dims, meta.teacher_vector_field) == (
        encoder_b.fingerprint, encoder_b.dims, TEACHER_VECTOR_FIELD)
    assert meta.teacher_model == str(model_folder(encoder_b).resolve()) and meta.teacher_name
    props = next(iter(es_client.indices.get_mapping(index=index_prefix).values()))["mappings"]["properties"]
    assert props[TEACHER_VECTOR_FIELD] == {"type": "dense_vector", "dims": encoder_b.dims, "index": False}
    summary = IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(CORPUS)
    assert summary.indexed == len(CORPUS)
    before = assert_teacher_vectors(es_client, index_prefix, encoder_b)
    # the teacher vector is bookkeeping: the same input again is unchanged, and keeps its teacher vectors
    again = IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(CORPUS)
    assert (again.unchanged, again.indexed) == (len(CORPUS), 0)
    assert stored(es_client, index_prefix) == before
    # an index made without teacher vectors still loads (its meta has no teacher)
    plain = IndexManager(es_client, f"{index_prefix}-plain")
    plain.create(encoder_a.manifest)
    assert plain.meta().teacher_fingerprint == ""


def test_sync_reembeds_both_vectors_of_a_changed_text(es_client, index_prefix, encoder_a, encoder_b, teacher_info):
    _create(es_client, index_prefix, encoder_a, teacher_info)
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(CORPUS)
    old = stored(es_client, index_prefix)["d02"]
    es_client.update(index=index_prefix, id="d02", doc={"text": "Glaciers carve valleys as the ice slowly flows"})
    es_client.index(index=index_prefix, id="new", document={"title": "Comets", "text": "Icy bodies with tails"})
    es_client.indices.refresh(index=index_prefix)
    summary = sync_index(es_client, index_prefix, encoder_a, progress=False)
    assert (summary.stale, summary.missing, summary.embedded) == (1, 1, 2)
    docs = assert_teacher_vectors(es_client, index_prefix, encoder_b)
    assert not np.allclose(_vector(docs["d02"][TEACHER_VECTOR_FIELD]), _vector(old[TEACHER_VECTOR_FIELD]))
    assert not np.allclose(_vector(docs["d02"]["embedding"]), _vector(old["embedding"]))
    assert sync_index(es_client, index_prefix, encoder_a, progress=False).embedded == 0


@pytest.mark.parametrize("mode", ["in-place", "copy"])
def test_adopt_and_reindex_fill_the_teacher_vectors(es_client, index_prefix, encoder_a, encoder_b, teacher_info,
                                                     mode):
    make_team_index(es_client, index_prefix)
    mgr = IndexManager(es_client, index_prefix)
    mgr.adopt(encoder_a, text_fields=("title", "body"), mode=mode, progress=False, teacher=teacher_info)
    assert mgr.meta().teacher_fingerprint == encoder_b.fingerprint
    assert_teacher_vectors(es_client, index_prefix, encoder_b, ("title", "body"))
    result = mgr.reindex(encoder_b, progress=False)
    assert result.summary.indexed == result.docs
    assert mgr.meta(result.new_index).teacher_fingerprint == encoder_b.fingerprint
    assert_teacher_vectors(es_client, result.new_index, encoder_b, ("title", "body"))


def test_stored_vectors_rerank_like_the_texts_and_embed_no_document(es_client, index_prefix, encoder_a, encoder_b,
                                                                    teacher_info, caplog):
    _create(es_client, index_prefix, encoder_a, teacher_info)
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(CORPUS)
    counted = CountingTeacher(encoder_b)
    stored_rr = with_stored_vectors(BiEncoderReranker(counted, cache_size=0))
    assert isinstance(stored_rr, StoredTeacherReranker)
    fast = QueryHook(es_client, index_prefix, encoder_a, reranker=stored_rr)
    slow = QueryHook(es_client, index_prefix, encoder_a, reranker=BiEncoderReranker(encoder_b, cache_size=0))
    with caplog.at_level(logging.INFO, logger="esdistill.plugin.teacher_vectors"):
        for query in QUERIES:
            a = fast.search(query, k=10, rerank=True)
            b = slow.search(query, k=10, rerank=True)
            assert a.rerank.reranked == b.rerank.reranked == "full"
            sa = [h.rerank_score for h in a.hits]
            sb = [h.rerank_score for h in b.hits]
            np.testing.assert_allclose(sa, sb, atol=1e-5)
            gaps = np.diff(sorted(sb, reverse=True))
            if np.all(np.abs(gaps) > 1e-5):  # no near-tie: the same order exactly
                assert a.ids == b.ids, query
            for hit in a.hits:
                assert TEACHER_VECTOR_FIELD not in hit.source and "embedding" not in hit.source
    assert counted.calls == {"query": len(QUERIES), "document": 0}
    assert sum("reads the stored teacher vectors" in r.getMessage() for r in caplog.records) == 1
    # a candidate without a stored vector is scored from its text (and only it)
    es_client.update(index=index_prefix, id="d02", doc={TEACHER_VECTOR_FIELD: None}, refresh=True)
    ids = ["d01", "d02", "d03", "d04"]
    texts = [document_text(stored(es_client, index_prefix)[i]) for i in ids]
    scores = stored_rr.score_candidates("Mitochondria", ids, texts)
    np.testing.assert_allclose(scores, BiEncoderReranker(encoder_b, cache_size=0).score("Mitochondria", texts),
                               atol=1e-5)
    assert counted.calls["document"] == 1


def test_an_index_without_this_teachers_vectors_falls_back_to_the_texts(es_client, index_prefix, encoder_a,
                                                                        encoder_b, caplog):
    mgr = IndexManager(es_client, index_prefix)
    mgr.create(encoder_a.manifest, IndexSpec(index_options="flat"))
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(CORPUS)
    counted = CountingTeacher(encoder_b)
    hook = QueryHook(es_client, index_prefix, encoder_a, reranker=with_stored_vectors(BiEncoderReranker(counted)))
    with caplog.at_level(logging.INFO, logger="esdistill.plugin.teacher_vectors"):
        hook.search(QUERIES[0], k=5, rerank=True)
        hook.search(QUERIES[1], k=5, rerank=True)
    assert counted.calls["document"] > 0
    assert sum("holds no teacher vectors" in r.getMessage() for r in caplog.records) == 1


def test_cli_refuses_a_cross_encoder_teacher(es_url, index_prefix, encoder_a, teacher_dir, encoder_b, monkeypatch,
                                             capsys, es_client):
    from esdistill.plugin.cli import main

    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    code = main(["index", "create", index_prefix, "--model", str(model_folder(encoder_a)),
                 "--teacher-vectors", str(teacher_dir)])
    err = capsys.readouterr().err
    assert code != 0 and "cross-encoder" in err and "budgeted rerank path" in err
    assert not es_client.indices.exists(index=f"{index_prefix}-000001")
    assert main(["index", "create", index_prefix, "--model", str(model_folder(encoder_a)), "--teacher-vectors",
                 str(model_folder(encoder_b)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["teacher"]["teacher_fingerprint"] == encoder_b.fingerprint
