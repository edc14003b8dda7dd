"""``manifest.json``: what an exported model folder is, exactly.

Every model folder esdistill serves (a student bi-encoder or a cross-encoder reranker) carries a
manifest written by the exporter. The runtime refuses a folder whose files do not match the
manifest's fingerprint, and an index refuses a model whose fingerprint differs from the one its
vectors were made with.

The **fingerprint** says which vectors a model makes. It is the sha256 over the names and sha256
digests of the files that determine the model's outputs (the ONNX graph and external data, the
tokenizer files) *and* over the manifest fields that change those outputs (:data:`RECIPE_FIELDS`:
dims, pooling, normalisation, prefixes, lower-casing, maximum length, similarity, ...), so the
same export gives the same fingerprint on any machine, and two exports whose vectors differ never
share one.

The **seal** (``manifest_sha256``) is the sha256 of the canonical JSON of every manifest field
except the informational ones (:data:`INFORMATIONAL_FIELDS`: ``name``, ``source_model``,
``source_sha256``, ``libraries``, ``extra``). A ``manifest.json`` edited by hand after export
(``max_seq_length``, ``pooling``, a prefix, the pairing of a query encoder, ...) fails it and the
folder is refused; the informational fields may be edited freely::

    >>> m = Manifest.load("runs/student-onnx")        # doctest: +SKIP
    >>> m.fingerprint[:12], m.dims, m.similarity      # doctest: +SKIP
    ('3f2a9c0d1b7e', 384, 'cosine')

Folders written by esdistill before the seal existed (``format_version`` 1: the fingerprint covers
the files only) still load, with one warning per folder asking for a re-export: their files are
checked, their manifest cannot be.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from esdistill.plugin._errors import FingerprintError, ModelError

__all__ = [
    "FORMAT_VERSION",
    "INFORMATIONAL_FIELDS",
    "MANIFEST_NAME",
    "RECIPE_FIELDS",
    "TOKENIZER_FILES",
    "Manifest",
    "compute_fingerprint",
    "files_digest",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
#: tokenizer files that take part in the fingerprint when present
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_KINDS = ("bi-encoder", "cross-encoder")
_POOLINGS = ("mean", "cls", "max", "lasttoken")
_SIMILARITIES = ("cosine", "dot_product", "l2_norm", "max_inner_product")
_QUANT = ("none", "int8-dynamic", "int8-static")
#: the manifest layout this esdistill writes: 2 = fingerprint over files and recipe, and a seal
FORMAT_VERSION = 2
#: the first layout: the fingerprint covers the files only, nothing covers the manifest
_LEGACY_FORMAT = 1
#: manifest fields that change what the model outputs; they take part in the fingerprint
RECIPE_FIELDS = ("kind", "onnx_file", "dims", "max_seq_length", "pooling", "normalize", "query_prefix",
                 "document_prefix", "lowercase", "similarity", "quantization", "output_name", "pooled_in_graph",
                 "activation")
#: manifest fields that only describe the model; the seal leaves them out, so they may be edited
INFORMATIONAL_FIELDS = ("name", "source_model", "source_sha256", "libraries", "extra")
_SEAL_FIELD = "manifest_sha256"
_warned_legacy: set[str] = set()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def files_digest(folder: str | os.PathLike[str], files: list[str]) -> str:
    """sha256 over ``name\\0sha256(content)\\n`` for each file, in sorted order.

    This alone was the fingerprint of ``format_version`` 1 manifests.

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


def compute_fingerprint(folder: str | os.PathLike[str], files: list[str], *, recipe: dict[str, Any]) -> str:
    """The fingerprint of a model: sha256 over the files' digest and the canonical JSON of ``recipe``.

    Args:
        folder: the model folder.
        files: the files that determine the outputs (relative to ``folder``).
        recipe: the manifest fields that change the outputs (:meth:`Manifest.recipe`).

    Raises:
        ModelError: a listed file is missing.

    Example:
        >>> m = Manifest.load("runs/student-onnx")                                    # doctest: +SKIP
        >>> compute_fingerprint("runs/student-onnx", m.files, recipe=m.recipe()) == m.fingerprint  # doctest: +SKIP
        True
    """
    outer = hashlib.sha256()
    outer.update(f"files\0{files_digest(folder, files)}\n".encode())
    outer.update(b"recipe\0" + _canonical(recipe) + b"\n")
    return outer.hexdigest()


@dataclass
class Manifest:
    """Everything the runtime must know to reproduce the source model's outputs.

    Attributes:
        name: a human name for the model (e.g. ``all-MiniLM-L6-v2-distilled``).
        kind: ``bi-encoder`` (embeds texts) or ``cross-encoder`` (scores query-document pairs).
        onnx_file: the ONNX graph to run, relative to the folder.
        files: every file that takes part in :attr:`fingerprint` (ONNX, external data, tokenizer).
        fingerprint: :func:`compute_fingerprint` of ``files`` and :meth:`recipe`.
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
        format_version: the manifest layout (:data:`FORMAT_VERSION`; 1 for older exports).
        manifest_sha256: the seal: :meth:`compute_seal` at export time.
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
    format_version: int = FORMAT_VERSION
    document_fingerprint: str = ""
    manifest_sha256: str = ""

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

    # ------------------------------------------------------------------ digests
    def recipe(self) -> dict[str, Any]:
        """The fields that change the model's outputs (:data:`RECIPE_FIELDS`), as the fingerprint sees them."""
        return {name: getattr(self, name) for name in RECIPE_FIELDS}

    def compute_seal(self) -> str:
        """sha256 of the canonical JSON of every field but the informational ones and the seal itself."""
        sealed = {k: v for k, v in self.to_dict().items() if k not in INFORMATIONAL_FIELDS and k != _SEAL_FIELD}
        return hashlib.sha256(_canonical(sealed)).hexdigest()

    def seal(self, folder: str | os.PathLike[str]) -> Manifest:
        """Fingerprint ``folder``'s files with this recipe, seal, and write ``manifest.json`` there.

        Only the exporter calls this: a manifest sealed anywhere else vouches for whatever it says.

        Returns:
            The sealed manifest (a copy, in the current :data:`FORMAT_VERSION`).

        Raises:
            ModelError: a listed file is missing.
        """
        sealed = replace(self, format_version=FORMAT_VERSION, manifest_sha256="")
        sealed.fingerprint = compute_fingerprint(folder, sealed.files, recipe=sealed.recipe())
        sealed.manifest_sha256 = sealed.compute_seal()
        sealed.save(folder)
        return sealed

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/manifest.json`` as it is (:meth:`seal` fingerprints and seals first)."""
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
        """Read ``folder/manifest.json``; with ``verify`` check its seal and recompute the fingerprint.

        Raises:
            ModelError: no manifest, or it is unreadable or invalid.
            FingerprintError: the manifest was edited after export, or the files do not match its
                fingerprint.
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
        if not isinstance(raw, dict):
            raise ModelError(f"{path} is not a JSON object; re-export the model")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"{path} has fields this esdistill does not know: {unknown}; upgrade esdistill")
        raw.setdefault("format_version", _LEGACY_FORMAT)
        if raw["format_version"] not in (_LEGACY_FORMAT, FORMAT_VERSION):
            raise ModelError(f"{path} has format_version {raw['format_version']!r}, which this esdistill does not "
                             f"know (it reads {_LEGACY_FORMAT} and {FORMAT_VERSION}); upgrade esdistill")
        try:
            manifest = cls(**raw)
        except TypeError as exc:
            raise ModelError(f"{path} is incomplete ({exc}); re-export the model") from None
        if verify:
            manifest.verify(root)
        return manifest

    def reexport_command(self, folder: str | os.PathLike[str]) -> str:
        """The ``esdistill export`` command line that rebuilds ``folder`` from its source."""
        cmd = f"esdistill export {self.source_model or 'MODEL'} --out {folder}"
        if self.quantization == "none":
            cmd += " --quantize none"
        paired = self.extra.get("document_model") if isinstance(self.extra, dict) else None
        if self.document_fingerprint and isinstance(paired, dict) and paired.get("folder"):
            cmd += f" --document-model {paired['folder']}"
        return cmd

    def verify(self, folder: str | os.PathLike[str]) -> None:
        """Check the seal of the manifest, then recompute the fingerprint of ``folder`` and compare.

        Raises:
            FingerprintError: ``manifest.json`` was edited after export, or the files changed since.
        """
        if self.format_version == _LEGACY_FORMAT:
            self._verify_legacy(folder)
            return
        seal = self.compute_seal()
        if seal != self.manifest_sha256:
            raise FingerprintError(
                f"{Path(folder) / MANIFEST_NAME} was edited after export (its seal {seal[:12]}…, the manifest "
                f"says {self.manifest_sha256[:12] or 'nothing'}…): the model would not make the vectors its "
                f"fingerprint promises. Re-export with `{self.reexport_command(folder)}`; edit only "
                f"{', '.join(INFORMATIONAL_FIELDS)} by hand.",
                expected=self.manifest_sha256,
                actual=seal,
            )
        actual = compute_fingerprint(folder, self.files, recipe=self.recipe())
        if actual != self.fingerprint:
            raise self._mismatch(folder, actual)

    def _verify_legacy(self, folder: str | os.PathLike[str]) -> None:
        actual = files_digest(folder, self.files)
        if actual != self.fingerprint:
            raise self._mismatch(folder, actual)
        key = str(Path(folder).resolve())
        if key not in _warned_legacy:
            _warned_legacy.add(key)
            logger.warning("%s was exported by an older esdistill: its files are checked, but edits to its %s are "
                           "not detected. Re-export with `%s` (its fingerprint changes: reindex after)",
                           folder, MANIFEST_NAME, self.reexport_command(folder))

    def _mismatch(self, folder: str | os.PathLike[str], actual: str) -> FingerprintError:
        return FingerprintError(
            f"the files in {folder} do not match its manifest (fingerprint {actual[:12]}…, manifest "
            f"says {self.fingerprint[:12]}…): the model was modified or corrupted. Re-export it with "
            f"`{self.reexport_command(folder)}`; never edit an exported folder by hand.",
            expected=self.fingerprint,
            actual=actual,
        )

    @property
    def short_fingerprint(self) -> str:
        """The first 12 hex digits, for index names and logs."""
        return self.fingerprint[:12]
