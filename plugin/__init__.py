"""esdistill runtime: what runs next to Elasticsearch in production.

Imports no torch and no transformers: only onnxruntime, tokenizers, numpy and the Elasticsearch
client. Training and export live in :mod:`esdistill.export`.

Example:
    >>> from esdistill.plugin import connect, OnnxEncoder, IndexManager, IngestHook, QueryHook
    >>> es = connect()                                       # doctest: +SKIP
    >>> encoder = OnnxEncoder("runs/student-int8")           # doctest: +SKIP
    >>> IndexManager(es, "docs").create(encoder.manifest)    # doctest: +SKIP
    >>> IngestHook(es, "docs", encoder).ingest_jsonl("corpus.jsonl")  # doctest: +SKIP
    >>> IndexManager(es, "articles").adopt(encoder, text_fields=("title", "body"))  # doctest: +SKIP
    >>> sync_index(es, "articles", encoder).embedded       # doctest: +SKIP
    >>> QueryHook(es, "docs", encoder).search("what is a black hole?", mode="hybrid")  # doctest: +SKIP
"""

from __future__ import annotations

from esdistill.plugin._errors import (
    ConfigError,
    ElasticsearchUnavailable,
    EsdistillError,
    FingerprintError,
    IndexNotFound,
    IngestError,
    LauncherError,
    ModelError,
    ParityError,
)
from esdistill.plugin._writes import DeleteResult
from esdistill.plugin.ab import ABTest, Arm, ExposureLog
from esdistill.plugin.adopt import AdoptResult
from esdistill.plugin.cross_encoder import OnnxCrossEncoder
from esdistill.plugin.encoder import EncodeResult, OnnxEncoder
from esdistill.plugin.es_client import connect
from esdistill.plugin.index import IndexManager, IndexSpec
from esdistill.plugin.ingest import IngestHook, IngestSummary, RetryPolicy
from esdistill.plugin.manifest import Manifest
from esdistill.plugin.models import PACKAGED_MODELS, exported_model, fetch_model, resolve_model
from esdistill.plugin.query import QueryConfig, QueryHook, SearchResponse
from esdistill.plugin.rerank import load_reranker
from esdistill.plugin.sync import SyncSummary, VectorHealth, sync_index, vector_health

__all__ = [
    "PACKAGED_MODELS",
    "ABTest",
    "AdoptResult",
    "Arm",
    "ConfigError",
    "DeleteResult",
    "ElasticsearchUnavailable",
    "EncodeResult",
    "EsdistillError",
    "ExposureLog",
    "FingerprintError",
    "IndexManager",
    "IndexNotFound",
    "IndexSpec",
    "IngestError",
    "IngestHook",
    "IngestSummary",
    "LauncherError",
    "Manifest",
    "ModelError",
    "OnnxCrossEncoder",
    "OnnxEncoder",
    "ParityError",
    "QueryConfig",
    "QueryHook",
    "RetryPolicy",
    "SearchResponse",
    "SyncSummary",
    "VectorHealth",
    "connect",
    "exported_model",
    "fetch_model",
    "load_reranker",
    "resolve_model",
    "sync_index",
    "vector_health",
]
