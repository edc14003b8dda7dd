"""``manifest.json``: what an exported model folder is, exactly.

Every model folder esdistill serves (a student bi-encoder or a cross-encoder reranker) carries a
manifest written by the exporter. The runtime refuses a folder whose files do not match the
manifest's fingerprint, and an index refuses a model whose fingerprint differs from the one its
vectors were made with.

The **fingerprint** is the sha256 over the names and sha256 digests of the files that determine the
model's outputs (the ONNX graph and external data, the tokenizer files), so the same export gives
the same fingerprint on any machine::

    >>> m = Manifest.load("runs/student-onnx")        # doctest: +SKIP
    >>> m.fingerprint[:12], m.dims, m.similarity      # doctest: +SKIP
    ('3f2a9c0d1b7e', 384, 'cosine')
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from esdistill.plugin._errors import FingerprintError, ModelError

__all__ = ["MANIFEST_NAME", "TOKENIZER_FILES", "Manifest", "compute_fingerprint"]

MANIFEST_NAME = "manifest.json"
#: tokenizer files that take part in the fingerprint when present
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_KINDS = ("bi-encoder", "cross-encoder")
_POOLINGS = ("mean", "cls", "max", "lasttoken")
_SIMILARITIES = ("cosine", "dot_product", "l2_norm", "max_inner_product")
_QUANT = ("none", "int8-dynamic", "int8-static")


def compute_fingerprint(folder: str | os.PathLike[str], files: list[str]) -> str:
    """sha256 over ``name\\0sha256(content)\\n`` for each file, in sorted order.

    Raises:
        ModelError: a listed file is missing.
    """
    root = Path(folder)
    outer = hashlib.sha256()
    for name in sorted(files):
        path = root / name
        if not path.is_file():
            raise ModelError(f"model folder {root} lacks {name}, which its manifest lists; re-export it")
        inner = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                inner.update(block)
        outer.update(f"{name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


@dataclass
class Manifest:
    """Everything the runtime must know to reproduce the source model's outputs.

    Attributes:
        name: a human name for the model (e.g. ``all-MiniLM-L6-v2-distilled``).
        kind: ``bi-encoder`` (embeds texts) or ``cross-encoder`` (scores query-document pairs).
        onnx_file: the ONNX graph to run, relative to the folder.
        files: every file that takes part in :attr:`fingerprint` (ONNX, external data, tokenizer).
        fingerprint: :func:`compute_fingerprint` of ``files``.
        dims: embedding size (bi-encoder) or number of logits (cross-encoder).
        pooling: ``mean``, ``cls``, ``max`` or ``lasttoken`` (bi-encoder).
        normalize: L2-normalise embeddings after pooling.
        max_seq_length: tokens per input (longer inputs are truncated, and counted).
        query_prefix / document_prefix: text prepended before encoding (e.g. ``"query: "``).
        lowercase: lower-case texts before tokenizing (sentence-transformers ``do_lower_case``).
        similarity: Elasticsearch ``dense_vector`` similarity to index with.
        quantization: ``none``, ``int8-dynamic`` or ``int8-static``.
        output_name: the ONNX output to read (``token_embeddings``/``last_hidden_state``, or
            ``sentence_embedding`` when pooling is in the graph; ``logits`` for cross-encoders).
        pooled_in_graph: True when the graph already pools (and normalises when ``normalize``).
        activation: cross-encoder score activation: ``none`` or ``sigmoid``.
        source_model: what was exported (folder, hub id or packaged name).
        source_sha256: sha256 of the source weights file.
        libraries: versions of the export libraries.
        extra: free-form details (parity summary, training run id, ...).
        document_fingerprint: set on a *query encoder* trained with the document tower frozen
            (query-side-only adaptation): the fingerprint of the export whose document vectors it
            searches. Such a model may query an index built by that export, never embed documents
            into it. Empty for an ordinary model (it embeds both).
    """

    name: str
    kind: str
    onnx_file: str
    files: list[str]
    fingerprint: str
    dims: int
    max_seq_length: int
    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = ""
    document_prefix: str = ""
    lowercase: bool = False
    similarity: str = "cosine"
    quantization: str = "none"
    output_name: str = "last_hidden_state"
    pooled_in_graph: bool = False
    activation: str = "none"
    source_model: str = ""
    source_sha256: str = ""
    libraries: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1
    document_fingerprint: str = ""

    def queries_index_of(self, fingerprint: str) -> bool:
        """Whether this model may embed the queries for vectors made by ``fingerprint``: it made
        them itself, or it is a query encoder paired with that document model."""
        return fingerprint in (self.fingerprint, self.document_fingerprint)

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in _KINDS:
            problems.append(f"kind={self.kind!r} (expected one of {_KINDS})")
        if self.kind == "bi-encoder" and self.pooling not in _POOLINGS:
            problems.append(f"pooling={self.pooling!r} (expected one of {_POOLINGS})")
        if self.similarity not in _SIMILARITIES:
            problems.append(f"similarity={self.similarity!r} (expected one of {_SIMILARITIES})")
        if self.quantization not in _QUANT:
            problems.append(f"quantization={self.quantization!r} (expected one of {_QUANT})")
        if int(self.dims) <= 0:
            problems.append(f"dims={self.dims!r} (expected a positive integer)")
        if int(self.max_seq_length) <= 0:
            problems.append(f"max_seq_length={self.max_seq_length!r} (expected a positive integer)")
        if self.onnx_file not in self.files:
            problems.append(f"onnx_file={self.onnx_file!r} is not among files")
        outside = [f for f in self.files if Path(f).is_absolute() or ".." in Path(f).parts]
        if outside:
            problems.append(f"files {outside} point outside the model folder")
        if problems:
            raise ModelError("invalid manifest: " + "; ".join(problems) + ". Re-export the model.")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
        """Read ``folder/manifest.json``; with ``verify`` recompute and check the fingerprint.

        Raises:
            ModelError: no manifest, or it is unreadable or invalid.
            FingerprintError: the files do not match the manifest's fingerprint.
        """
        root = Path(folder)
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise ModelError(
                f"{root} has no {MANIFEST_NAME}: it is not an esdistill model folder. "
                "Export one with `esdistill export MODEL --out DIR`."
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path} cannot be read as JSON ({exc}); re-export the model") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"{path} has fields this esdistill does not know: {unknown}; upgrade esdistill")
        try:
            manifest = cls(**raw)
        except TypeError as exc:
            raise ModelError(f"{path} is incomplete ({exc}); re-export the model") from None
        if verify:
            manifest.verify(root)
        return manifest

    def verify(self, folder: str | os.PathLike[str]) -> None:
        """Recompute the fingerprint of ``folder`` and compare.

        Raises:
            FingerprintError: the files changed since export.
        """
        actual = compute_fingerprint(folder, self.files)
        if actual != self.fingerprint:
            raise FingerprintError(
                f"the files in {folder} do not match its manifest (fingerprint {actual[:12]}…, manifest "
                f"says {self.fingerprint[:12]}…): the model was modified or corrupted. Re-export it; "
                "never edit an exported folder by hand.",
                expected=self.fingerprint,
                actual=actual,
            )

    @property
    def short_fingerprint(self) -> str:
        """The first 12 hex digits, for index names and logs."""
        return self.fingerprint[:12]
