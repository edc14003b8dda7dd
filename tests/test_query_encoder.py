"""A query encoder trained query-side only is paired with the export that embedded the index's
documents: the query hook accepts it on that index, the ingestion hook refuses it, and an unpaired
model with the same files is still refused."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from esdistill.export.onnx_export import export_model
from esdistill.plugin import ConfigError, FingerprintError, IndexManager, IngestHook, OnnxEncoder, QueryHook
from esdt_helpers import TINY_COLLECTION, tiny_texts
from esdt_onnx import exported_tiny

DOCS = [json.loads(line) for line in (TINY_COLLECTION / "corpus.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def paired(tiny_bi_encoder, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "esdt-onnx"
    documents = exported_tiny(tiny_bi_encoder, root, "a")  # int8: what the index is built with
    unpaired = exported_tiny(tiny_bi_encoder, root, "b")  # fp32, the same weights, no pairing
    query_dir = tmp_path_factory.mktemp("query-encoder") / "q"
    export_model(str(tiny_bi_encoder), query_dir, quantize="none", parity_texts=tiny_texts(),
                 document_model=documents)
    return OnnxEncoder(documents), OnnxEncoder(query_dir), OnnxEncoder(unpaired)


def test_a_paired_query_encoder_queries_the_index_and_never_ingests(es_client, index_prefix, paired):
    documents, queries, unpaired = paired
    assert queries.manifest.document_fingerprint == documents.fingerprint
    assert queries.fingerprint == unpaired.fingerprint  # same files: only the pairing differs
    IndexManager(es_client, index_prefix).create(documents.manifest)
    IngestHook(es_client, index_prefix, documents, progress=False).ingest(DOCS)

    manager = IndexManager(es_client, index_prefix)
    assert manager.check_model(queries.manifest, queries_only=True).model_fingerprint == documents.fingerprint
    text = "ocean acidification harms corals"
    got = QueryHook(es_client, index_prefix, queries).search(text, k=5, mode="knn")
    ref = QueryHook(es_client, index_prefix, documents).search(text, k=5, mode="knn")
    assert len(got.hits) == 5 and got.hits[0].id == ref.hits[0].id  # fp32 queries on int8 documents

    with pytest.raises(FingerprintError, match="query encoder"):
        IngestHook(es_client, index_prefix, queries, progress=False)
    with pytest.raises(FingerprintError, match="query encoder"):
        manager.check_model(queries.manifest)
    with pytest.raises(ConfigError, match="query encoder"):
        IndexManager(es_client, index_prefix + "-new").create(queries.manifest)
    with pytest.raises(FingerprintError, match="did not make the vectors"):
        QueryHook(es_client, index_prefix, unpaired).search(text, k=5, mode="knn")


def test_pairing_is_checked_at_export(tiny_bi_encoder, tiny_cross_encoder, tmp_path):
    ce = tmp_path / "ce"
    export_model(str(tiny_cross_encoder), ce, quantize="none", parity_texts=tiny_texts())
    with pytest.raises(ConfigError, match="not a bi-encoder"):
        export_model(str(tiny_bi_encoder), tmp_path / "q", quantize="none", parity_texts=tiny_texts(),
                     document_model=ce)
