"""Helpers for the service tests: the tiny student exported once per session, a served index filled
with the tiny collection, and an app built from real settings (no fakes: real ONNX, real ES)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from esdt_helpers import TINY_COLLECTION

#: a valid API key for the tests (never a real secret)
KEY = "test-key-" + "0123456789abcdef" * 2


def exported_student(tiny_bi_encoder: Path, base: Path) -> Path:
    """Export the tiny bi-encoder to int8 ONNX once per session (shared by the service test modules)."""
    out = base / "svc-student-int8"
    if (out / "manifest.json").is_file():
        return out
    from esdistill.export.onnx_export import export_model

    tmp = base / f".svc-student-{uuid.uuid4().hex[:6]}"
    export_model(str(tiny_bi_encoder), tmp, quantize="int8")
    if not out.exists():
        tmp.rename(out)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def corpus() -> list[dict]:
    return [json.loads(line) for line in (TINY_COLLECTION / "corpus.jsonl").read_text().splitlines()]


def queries() -> list[dict]:
    return [json.loads(line) for line in (TINY_COLLECTION / "queries.jsonl").read_text().splitlines()]


def make_index(client, alias: str, model_dir: Path) -> str:
    """Create an esdistill index for ``model_dir`` and ingest the tiny corpus with the real hooks."""
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.index import IndexManager
    from esdistill.plugin.ingest import IngestHook

    encoder = OnnxEncoder(model_dir)
    IndexManager(client, alias).create(encoder.manifest)
    summary = IngestHook(client, alias, encoder, progress=False).ingest(corpus())
    assert summary.indexed == len(corpus()) and summary.failed == 0, summary
    return alias


def drop_indices(client, prefix: str) -> None:
    found = client.indices.get(index=f"{prefix}*", allow_no_indices=True, expand_wildcards="all")
    for index in found:
        client.indices.delete(index=index, ignore_unavailable=True)


def settings(alias: str, model_dir: Path, es_url: str, **kw):
    from esdistill.plugin.service_settings import ServiceSettings

    return ServiceSettings(index=alias, model=str(model_dir), es_url=es_url, **kw)
