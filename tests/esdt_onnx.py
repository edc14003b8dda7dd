"""Tiny exported ONNX models for the index and ingest tests, exported once per test session.

Model ``a`` is the tiny bi-encoder (``tiny_bi_encoder`` fixture) exported with int8 quantization,
model ``b`` the same weights exported without quantization: same dims, different fingerprint, which
is what blue/green re-embedding and the model check need. Both go through the real exporter and are
loaded by the real :class:`~esdistill.plugin.encoder.OnnxEncoder`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

_QUANTIZE = {"a": "int8", "b": "none"}


@cache
def exported_tiny(source: Path, out_root: Path, variant: str) -> Path:
    """Export ``source`` (a sentence-transformers folder) once per variant; return the folder."""
    from esdistill.export.onnx_export import export_model
    from esdt_helpers import tiny_texts

    out = out_root / f"tiny-onnx-{variant}"
    export_model(str(source), out, quantize=_QUANTIZE[variant], parity_texts=tiny_texts())
    return out


@cache
def make_encoder(source: Path, out_root: Path, variant: str) -> Any:
    """The real ONNX encoder on the exported tiny model ``variant`` (``a`` or ``b``)."""
    from esdistill.plugin.encoder import OnnxEncoder

    return OnnxEncoder(exported_tiny(source, out_root, variant))


def model_folder(encoder: Any) -> Path:
    """The exported folder an encoder was loaded from (for the CLI tests)."""
    return Path(encoder.folder)
