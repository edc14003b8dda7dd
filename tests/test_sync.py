"""Vectors stay true when others write, against the real node: outside writes (new documents,
partial text updates, deletes, whole-document overwrites) through plain Elasticsearch are counted
as missing/stale by ``index info`` and fixed by ``sync``; a write that races the sync is never
overwritten with a vector of the old text; a sync over an unchanged index embeds nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from adopt_helpers import knn_ids, make_team_index, own_vector, stored_vectors
from esdistill.plugin import IndexManager
from esdistill.plugin.sync import sync_index, vector_health
from esdt_onnx import model_folder


class Counting:
    """Wraps a real encoder and counts the texts it embeds."""

    def __init__(self, encoder) -> None:
        self.inner, self.manifest, self.texts = encoder, encoder.manifest, []

    def encode_with_info(self, texts, **kw):
        self.texts.extend(texts)
        return self.inner.encode_with_info(texts, **kw)


NEW_DOC = {"title": "Aurora borealis", "body": "Charged solar particles strike the upper atmosphere and glow green "
                                               "over polar skies", "category": "phys"}


@pytest.mark.parametrize("mode", ["in-place", "copy"])
def test_outside_writes_are_counted_then_synced(es_client, index_prefix, encoder_b, mode):
    docs = make_team_index(es_client, index_prefix)
    mgr = IndexManager(es_client, index_prefix)
    mgr.adopt(encoder_b, text_fields=("title", "body"), mode=mode, progress=False)
    name = index_prefix
    # the team's writers, with plain elasticsearch-py, through the name they always used
    es_client.index(index=name, id="new-1", document=NEW_DOC)
    es_client.index(index=name, id="new-2", document={"title": "Sea ice", "body": "Arctic sea ice shrinks",
                                                      "category": "geo"})
    es_client.update(index=name, id=docs[1]["_id"], doc={"body": "Mitochondria are the powerhouse, now rewritten"})
    es_client.update(index=name, id=docs[2]["_id"], doc={"title": "Vaccines, revised"})
    es_client.index(index=name, id=docs[3]["_id"], document={**{k: v for k, v in docs[3].items() if k != "_id"},
                                                             "body": "overwritten whole, vector gone"})
    es_client.update(index=name, id=docs[5]["_id"], doc={"views": 1000})  # not a text field: vector stays true
    es_client.delete(index=name, id=docs[6]["_id"])
    es_client.indices.refresh(index=name)

    health = vector_health(es_client, name)
    assert health.missing_vectors == 3  # two new documents, one overwritten whole
    assert health.stale_vectors == 2 and health.stale_vectors_exact and health.docs == len(docs) + 1
    info = mgr.info(vectors=True).to_dict()
    assert (info["missing_vectors"], info["stale_vectors"]) == (3, 2)

    counting = Counting(encoder_b)
    summary = sync_index(es_client, name, counting, progress=False)
    assert (summary.missing, summary.stale, summary.embedded) == (3, 2, 5)
    assert len(counting.texts) == 5 and summary.checked == len(docs) + 1
    health = vector_health(es_client, name)
    assert (health.missing_vectors, health.stale_vectors) == (0, 0)
    # the new document is found by kNN with its own text, at rank 1
    top = knn_ids(es_client, name, own_vector(encoder_b, NEW_DOC), k=3)
    assert top[0][0] == "new-1" and top[0][1] > 0.99
    vectors = stored_vectors(es_client, name)
    rewritten = {"title": docs[1]["title"], "body": "Mitochondria are the powerhouse, now rewritten"}
    assert float(np.dot(vectors[docs[1]["_id"]], own_vector(encoder_b, rewritten))) > 0.99
    assert docs[6]["_id"] not in vectors
    # the team's fields came through the partial updates untouched
    got = es_client.get(index=name, id=docs[5]["_id"])["_source"]
    assert got["views"] == 1000 and got["category"] == docs[5]["category"]

    # a sync over an unchanged index embeds nothing
    counting = Counting(encoder_b)
    again = sync_index(es_client, name, counting, progress=False)
    assert again.embedded == 0 and counting.texts == [] and again.current == len(docs) + 1


class UpdatesDuringTheSync:
    """Wraps a real encoder: while the first batch is being embedded, the team rewrites one of its
    documents and deletes another, so the sync's writes of those two race real writes."""

    def __init__(self, encoder, client, index, changed_id, deleted_id, new_body) -> None:
        self.inner, self.manifest = encoder, encoder.manifest
        self.client, self.index, self.changed_id, self.deleted_id, self.new_body = (client, index, changed_id,
                                                                                    deleted_id, new_body)
        self.calls = 0

    def encode_with_info(self, texts, **kw):
        self.calls += 1
        if self.calls == 1:
            self.client.update(index=self.index, id=self.changed_id, doc={"body": self.new_body}, refresh=True)
            self.client.delete(index=self.index, id=self.deleted_id, refresh=True)
        return self.inner.encode_with_info(texts, **kw)


def test_a_write_racing_the_sync_is_never_overwritten_with_a_vector_of_old_text(es_client, index_prefix, encoder_b):
    docs = make_team_index(es_client, index_prefix)
    changed, deleted = docs[0], docs[1]
    new_body = "Tidal forces of the moon stretch the oceans twice a day"
    # in-place adoption of an index whose documents have no vectors yet: the backfill races the writer
    from esdistill.plugin.adopt import _add_fields, _mapping

    mgr = IndexManager(es_client, index_prefix)
    _add_fields(mgr, index_prefix, _mapping(es_client, index_prefix), encoder_b, text_fields=("title", "body"),
                vector_field="embedding", index_options="int8_hnsw")
    racer = UpdatesDuringTheSync(encoder_b, es_client, index_prefix, changed["_id"], deleted["_id"], new_body)
    summary = sync_index(es_client, index_prefix, racer, batch_size=64, progress=False)  # one batch: both race
    assert summary.conflicts == 1  # the write of the rewritten document was refused (409), read again, re-embedded
    assert summary.gone == 1 and summary.still_changing == 0  # the deleted one: refused (404), not recreated
    assert summary.embedded == len(docs) - 1
    vectors = stored_vectors(es_client, index_prefix)
    now = {"title": changed["title"], "body": new_body}
    old = {"title": changed["title"], "body": changed["body"]}
    # the vector is the new text's, not the old one's
    # (compared element-wise: the tiny random model puts any two texts above 0.99 cosine)
    assert np.allclose(vectors[changed["_id"]], own_vector(encoder_b, now), atol=1e-4)
    assert not np.allclose(vectors[changed["_id"]], own_vector(encoder_b, old), atol=1e-4)
    assert es_client.get(index=index_prefix, id=changed["_id"])["_source"]["body"] == new_body
    # the deleted document was not brought back by the sync's write
    assert not es_client.exists(index=index_prefix, id=deleted["_id"])
    health = vector_health(es_client, index_prefix)
    assert (health.missing_vectors, health.stale_vectors) == (0, 0)


def test_vector_health_samples_above_its_limit_and_says_so(es_client, index_prefix, encoder_b):
    docs = make_team_index(es_client, index_prefix)
    IndexManager(es_client, index_prefix).adopt(encoder_b, text_fields=("title", "body"), progress=False)
    for d in docs[:12]:
        es_client.update(index=index_prefix, id=d["_id"], doc={"body": d["body"] + " (edited)"})
    es_client.indices.refresh(index=index_prefix)
    exact = vector_health(es_client, index_prefix)
    assert exact.stale_vectors == 12 and exact.stale_vectors_exact and exact.checked == len(docs)
    sampled = vector_health(es_client, index_prefix, exact_limit=10, sample=16)
    assert not sampled.stale_vectors_exact and sampled.checked == 16
    assert 0 < sampled.stale_vectors < len(docs)  # 12 of 24 stale: the estimate is between
    assert "sampled" in sampled.to_dict()["counts"]


def test_documents_without_text_are_left_alone(es_client, index_prefix, encoder_b):
    make_team_index(es_client, index_prefix)
    es_client.index(index=index_prefix, id="no-text", document={"category": "geo", "views": 3}, refresh=True)
    summary = IndexManager(es_client, index_prefix).adopt(encoder_b, text_fields=("title", "body"),
                                                          progress=False).backfill
    assert summary.no_text == 1 and summary.embedded == 24
    health = vector_health(es_client, index_prefix)
    assert (health.missing_vectors, health.no_text) == (0, 1)
    assert es_client.get(index=index_prefix, id="no-text")["_source"] == {"category": "geo", "views": 3}


def test_sync_watch_keeps_syncing(es_client, es_url, index_prefix, encoder_b):
    make_team_index(es_client, index_prefix)
    IndexManager(es_client, index_prefix).adopt(encoder_b, text_fields=("title", "body"), progress=False)
    cmd = [sys.executable, "-m", "esdistill.plugin.cli", "-q", "sync", "--index", index_prefix, "--model",
           str(model_folder(encoder_b)), "--watch", "0.5", "--json", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, ESDISTILL_ES_URL=es_url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["embedded"] == 0 and first["complete"]
        es_client.index(index=index_prefix, id="late", document={"title": "Late", "body": "arrives later"},
                        refresh=True)
        deadline = time.monotonic() + 120
        while True:
            line = json.loads(proc.stdout.readline())
            if line["embedded"]:
                break
            assert time.monotonic() < deadline
        assert line["missing"] == 1 and line["embedded"] == 1
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
