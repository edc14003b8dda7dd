"""esdistill runtime: what runs next to Elasticsearch in production.

Imports no torch and no transformers: only onnxruntime, tokenizers, numpy and the Elasticsearch
client. Training and export live in :mod:`esdistill.export`.
"""

from __future__ import annotations

from esdistill.plugin._errors import (
    ConfigError,
    ElasticsearchUnavailable,
    EsdistillError,
    FingerprintError,
    IngestError,
    LauncherError,
    ModelError,
    ParityError,
)
from esdistill.plugin.es_client import connect
from esdistill.plugin.models import PACKAGED_MODELS, fetch_model, resolve_model

__all__ = [
    "ConfigError",
    "ElasticsearchUnavailable",
    "EsdistillError",
    "FingerprintError",
    "IngestError",
    "LauncherError",
    "ModelError",
    "PACKAGED_MODELS",
    "ParityError",
    "connect",
    "fetch_model",
    "resolve_model",
]
