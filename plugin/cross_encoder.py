"""The runtime ONNX cross-encoder: relevance scores for (query, document) pairs, without torch.

Loads a folder written by ``esdistill export --kind cross-encoder`` (a sequence-classification model
with one logit), checks its fingerprint, tokenizes each pair the way Hugging Face tokenizers do for
sentence pairs (``[CLS] query [SEP] document [SEP]``, longest-first truncation), and applies the same
activation sentence-transformers' ``CrossEncoder.predict`` applies (sigmoid for one logit unless the
source said otherwise)::

    >>> ce = OnnxCrossEncoder("runs/teacher-onnx", threads=2)            # doctest: +SKIP
    >>> ce.score("what causes tides?", ["the moon's gravity ...", "a recipe"])  # doctest: +SKIP
    array([0.97, 0.01], dtype=float32)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from esdistill.plugin._errors import ConfigError, ModelError
from esdistill.plugin.encoder import (
    _check_batch_size,
    check_texts,
    length_batches,
    open_model_folder,
    pad_batch,
    session_feed,
)

__all__ = ["OnnxCrossEncoder"]

logger = logging.getLogger(__name__)

_ACTIVATIONS = ("none", "sigmoid")


class OnnxCrossEncoder:
    """Score query-document pairs with an exported cross-encoder folder.

    Args:
        model_dir: a folder written by ``esdistill export`` for a cross-encoder.
        threads: onnxruntime intra-op threads (``None``: one per physical core).
        batch_size: pairs per ONNX call (pairs are sorted by length first).
        verify: recompute the fingerprint of the folder's files and refuse a mismatch.

    Attributes:
        manifest: the folder's :class:`~esdistill.plugin.manifest.Manifest`.
        max_seq_length: tokens per pair; longer pairs are truncated (longest part first).

    Raises:
        ModelError: no manifest, a bi-encoder folder, or an unusable ONNX file.
        FingerprintError: the files differ from the manifest's fingerprint.
        ConfigError: bad ``threads`` or ``batch_size``.

    Example:
        >>> ce = OnnxCrossEncoder("runs/teacher-onnx")       # doctest: +SKIP
        >>> ce.score("q", ["d1", "d2"]).shape                # doctest: +SKIP
        (2,)
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, threads: int | None = None,
                 batch_size: int = 32, verify: bool = True) -> None:
        open_model_folder(self, model_dir, kind="cross-encoder", other="esdistill.plugin.encoder.OnnxEncoder",
                          threads=threads, batch_size=batch_size, verify=verify)
        if self.manifest.activation not in _ACTIVATIONS:
            raise ModelError(f"{self.folder}: activation {self.manifest.activation!r} is not supported "
                             f"(expected one of {_ACTIVATIONS}); upgrade esdistill")

    @property
    def fingerprint(self) -> str:
        """The manifest's fingerprint: which model made a score."""
        return self.manifest.fingerprint

    def __repr__(self) -> str:
        return (f"OnnxCrossEncoder({str(self.folder)!r}, quantization={self.manifest.quantization!r}, "
                f"fingerprint={self.manifest.short_fingerprint!r})")

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Relevance of each document to ``query``.

        Args:
            query: the query text (the manifest's query prefix is prepended).
            documents: candidate texts.

        Returns:
            float32 ``(len(documents),)``; higher means more relevant.

        Raises:
            ConfigError: ``query`` is not a string or a document is not a string.
        """
        if not isinstance(query, str):
            raise ConfigError(f"query is a {type(query).__name__}, expected str")
        docs = check_texts(documents, "documents")
        q = self.manifest.query_prefix + query
        return self.score_pairs([(q, self.manifest.document_prefix + d) for d in docs], _prefixed=True)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, batch_size: int | None = None,
                    _prefixed: bool = False) -> np.ndarray:
        """Scores for arbitrary ``(query, document)`` pairs, in input order.

        Raises:
            ConfigError: a pair is not two strings, or a bad ``batch_size``.
        """
        bs = self.batch_size if batch_size is None else _check_batch_size(batch_size)
        items: list[tuple[str, str]] = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                    and all(isinstance(x, str) for x in pair)):
                raise ConfigError(f"pairs[{i}] must be a (query, document) pair of strings")
            q, d = pair
            if not _prefixed:
                q, d = self.manifest.query_prefix + q, self.manifest.document_prefix + d
            if self.manifest.lowercase:
                q, d = q.lower(), d.lower()
            items.append((q, d))
        out = np.empty(len(items), dtype=np.float32)
        if not items:
            return out
        encodings = self._tokenizer.encode_batch(items, add_special_tokens=True)
        for idx in length_batches([len(e.ids) for e in encodings], bs):
            out[idx] = self._run([encodings[i] for i in idx])
        return out

    def _run(self, batch: Sequence[Any]) -> np.ndarray:
        arrays = pad_batch(batch, self._pad_id, with_type_ids="token_type_ids" in self._input_names)
        (logits,) = self._session.run([self.manifest.output_name], session_feed(self._session, arrays))
        scores = np.asarray(logits, dtype=np.float32).reshape(len(batch), -1)[:, 0]
        if self.manifest.activation == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-scores))
        return scores.astype(np.float32)
