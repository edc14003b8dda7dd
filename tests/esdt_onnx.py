"""Tiny exported ONNX models for the index and ingest tests, built once per test session.

Model ``a`` is the tiny bi-encoder exported with int8 quantization, model ``b`` the same weights
exported without quantization: same dims, different fingerprint, which is all blue/green needs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def exported_tiny(source: Path, out_root: Path, variant: str) -> Path:
    """Export ``source`` (a sentence-transformers folder) once per variant; return the folder."""
    from esdistill.export.onnx_export import export_model

    quantize = {"a": "int8", "b": "none"}[variant]
    out = out_root / f"tiny-onnx-{variant}"
    export_model(str(source), out, quantize=quantize)
    return out


# --- TEMPORARY (development only, removed once plugin/encoder.py and export/onnx_export.py land) ---
class _FakeResult:
    def __init__(self, embeddings, truncated):
        self.embeddings, self.truncated = embeddings, truncated


class _FakeEncoder:
    def __init__(self, variant: str):
        import hashlib

        from esdistill.plugin.manifest import Manifest

        self.dims = 32
        self.max_seq_length = 64
        fp = hashlib.sha256(variant.encode()).hexdigest()
        self.manifest = Manifest(name=f"fake-{variant}", kind="bi-encoder", onnx_file="m.onnx", files=["m.onnx"],
                                 fingerprint=fp, dims=32, max_seq_length=64)
        self.fingerprint = fp
        self.variant = variant

    def encode_with_info(self, texts, *, kind="document", batch_size=None):
        import hashlib

        import numpy as np

        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256((self.variant + t).encode()).digest()[:4], "little")
            rows.append(np.random.default_rng(seed).standard_normal(32).astype(np.float32))
        out = np.stack(rows)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return _FakeResult(out, np.array([len(t.split()) > 40 for t in texts]))

    def encode(self, texts, *, kind="document", batch_size=None, show_progress_bar=False):
        return self.encode_with_info(texts, kind=kind).embeddings


def make_encoder(source: Path, out_root: Path, variant: str):
    try:
        from esdistill.plugin.encoder import OnnxEncoder
    except ImportError:
        return _FakeEncoder(variant)
    return OnnxEncoder(exported_tiny(source, out_root, variant))


def model_folder(encoder) -> Path:
    import pytest

    folder = getattr(encoder, "_esdt_folder", None)
    if folder is None:
        pytest.skip("TEMPORARY: the development stand-in encoder has no model folder")
    return folder
