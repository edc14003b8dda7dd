"""The runtime ONNX bi-encoder: texts in, the exported model's embeddings out (no torch).

:class:`OnnxEncoder` loads a model folder written by ``esdistill export``, checks its files against
the manifest's fingerprint, tokenizes with `tokenizers`, sorts the inputs by length so that each
batch carries as little padding as possible, runs onnxruntime on the CPU, and pools and normalises
exactly as the source sentence-transformers model did::

    >>> enc = OnnxEncoder("runs/student-onnx", threads=2)          # doctest: +SKIP
    >>> enc.encode_queries(["what causes tides?"]).shape           # doctest: +SKIP
    (1, 384)
    >>> res = enc.encode_with_info(["a very long document ..."])   # doctest: +SKIP
    >>> res.truncated                                               # doctest: +SKIP
    array([False])

**Batch independence.** A dynamically quantised (``int8-dynamic``) graph scales its activations
per tensor, over every text of an ONNX call (padding included), so a text's int8 vector would
depend on the texts it is batched with, and a document (embedded in batches at ingestion) would
see another quantisation than a query (embedded alone). Such a model therefore runs one text per
ONNX call (:func:`independent_batch_size`): a text gets the same vector whatever it is embedded
with. fp32 and statically quantised graphs are batch-independent and keep their batches.

The helpers at the bottom (tokenizer loading, session options, batch padding) are shared with
:mod:`esdistill.plugin.cross_encoder`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.plugin._errors import ConfigError, ModelError
from esdistill.plugin.manifest import Manifest

__all__ = ["EncodeResult", "OnnxEncoder", "independent_batch_size", "load_tokenizer", "make_session", "pool"]

logger = logging.getLogger(__name__)

_KINDS = ("query", "document")


@dataclass
class EncodeResult:
    """Embeddings and which inputs were cut to the model's maximum length.

    Attributes:
        embeddings: float32 ``(n, dims)``, in input order.
        truncated: bool ``(n,)``, True where the tokenized input exceeded ``max_seq_length``.
    """

    embeddings: np.ndarray
    truncated: np.ndarray


# ---------------------------------------------------------------------------------------- helpers
def _check_threads(threads: int | None) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r}: expected a positive integer, or None for all cores")
    return threads


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: expected a positive integer")
    return batch_size


def independent_batch_size(quantization: str, batch_size: int) -> int:
    """How many texts one ONNX call may take so that each text's output is independent of the others.

    A dynamically quantised graph (``int8-dynamic``) computes its activation scales over the whole
    input tensor, so it gets one text per call; any other graph keeps ``batch_size``.

    Example:
        >>> independent_batch_size("int8-dynamic", 32), independent_batch_size("none", 32)
        (1, 32)
    """
    return 1 if quantization == "int8-dynamic" else batch_size


def make_session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with all graph optimisations and ``threads`` intra-op threads.

    Args:
        path: the ONNX file.
        threads: intra-op threads (``None``: onnxruntime's default, one per physical core).

    Raises:
        ConfigError: ``threads`` is not a positive integer.
        ModelError: onnxruntime cannot load the file.
    """
    import onnxruntime as ort

    n = _check_threads(threads)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = n
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types
        raise ModelError(f"onnxruntime cannot load {path} ({exc}); re-export the model") from None


def open_model_folder(model: Any, model_dir: str | os.PathLike[str], *, kind: str, other: str,
                      threads: int | None, batch_size: int, verify: bool) -> None:
    """Load an exported folder onto ``model`` (an encoder or a cross-encoder being constructed).

    Sets ``batch_size``, ``threads``, ``folder``, ``manifest`` (fingerprint verified when ``verify``),
    ``max_seq_length``, the tokenizer, the onnxruntime session and its input names.

    Raises:
        ConfigError: bad ``threads`` or ``batch_size``.
        ModelError / FingerprintError: the folder holds another kind of model, fails its manifest, or
            its graph lacks the manifest's output.
    """
    model.batch_size = _check_batch_size(batch_size)
    _check_threads(threads)
    model.threads = threads
    model.folder = Path(model_dir)
    model.manifest = Manifest.load(model.folder, verify=verify)
    if model.manifest.kind != kind:
        raise ModelError(f"{model.folder} holds a {model.manifest.kind}, not a {kind}; load it with {other}")
    model.max_seq_length = int(model.manifest.max_seq_length)
    model._tokenizer, model._pad_id = load_tokenizer(model.folder, model.max_seq_length)
    model._session = make_session(model.folder / model.manifest.onnx_file, threads=threads)
    model._input_names = {i.name for i in model._session.get_inputs()}
    outputs = [o.name for o in model._session.get_outputs()]
    if model.manifest.output_name not in outputs:
        raise ModelError(f"{model.folder}: the ONNX graph has no output {model.manifest.output_name!r} "
                         f"(it has {outputs}); re-export the model")


def load_tokenizer(folder: str | os.PathLike[str], max_length: int) -> tuple[Any, int]:
    """Load ``tokenizer.json`` with truncation to ``max_length`` tokens and no padding.

    Returns:
        The tokenizer and the id of its padding token.

    Raises:
        ModelError: the folder has no usable ``tokenizer.json``.
    """
    from tokenizers import Tokenizer

    root = Path(folder)
    path = root / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise ModelError(f"cannot load {path} ({exc}); re-export the model") from None
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    return tok, _pad_id(root, tok)


def _pad_id(root: Path, tok: Any) -> int:
    pad_token = None
    cfg = root / "tokenizer_config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text()).get("pad_token")
        except ValueError:
            value = None
        pad_token = value.get("content") if isinstance(value, dict) else value
    for candidate in (pad_token, "[PAD]", "<pad>"):
        if isinstance(candidate, str) and tok.token_to_id(candidate) is not None:
            return int(tok.token_to_id(candidate))
    return 0


def pad_batch(encodings: Sequence[Any], pad_id: int, *, with_type_ids: bool) -> dict[str, np.ndarray]:
    """Right-pad token ids (and type ids) of one batch to its longest member.

    Returns:
        ``input_ids``, ``attention_mask`` and, when asked, ``token_type_ids`` as int64 arrays.
    """
    lengths = [len(e.ids) for e in encodings]
    width = max(lengths)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64) if with_type_ids else None
    for row, (enc, n) in enumerate(zip(encodings, lengths)):
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = enc.type_ids
    out = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        out["token_type_ids"] = types
    return out


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Indices grouped into batches of similar length, longest first (so padding stays small)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def session_feed(session: Any, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the arrays the graph asks for, cast to the dtypes it declares."""
    feed = {}
    for inp in session.get_inputs():
        if inp.name not in arrays:
            raise ModelError(f"the ONNX graph expects an input {inp.name!r} this runtime does not "
                             "provide; re-export the model with esdistill")
        arr = arrays[inp.name]
        feed[inp.name] = arr.astype(np.int32) if inp.type == "tensor(int32)" else arr
    return feed


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Pool token embeddings ``(b, L, h)`` under an attention mask ``(b, L)`` like sentence-transformers.

    Args:
        hidden: token embeddings.
        mask: 1 for real tokens, 0 for padding (right padding).
        mode: ``mean``, ``cls``, ``max`` or ``lasttoken``.

    Raises:
        ModelError: an unknown mode.
    """
    if mode == "mean":
        m = mask.astype(hidden.dtype)
        summed = np.matmul(m[:, None, :], hidden)[:, 0, :]
        return summed / np.maximum(m.sum(axis=1, keepdims=True), 1e-9)
    if mode == "cls":
        return hidden[:, 0, :]
    if mode == "max":
        return np.where(mask[:, :, None] > 0, hidden, -np.inf).max(axis=1)
    if mode == "lasttoken":
        last = np.maximum(mask.sum(axis=1) - 1, 0)
        return hidden[np.arange(hidden.shape[0]), last, :]
    raise ModelError(f"pooling {mode!r} is not supported by this runtime; upgrade esdistill")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (floored at 1e-12, as torch's ``F.normalize``)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """Return ``texts`` as a list of strings, or raise a :class:`ConfigError` naming the bad item."""
    if isinstance(texts, (str, bytes)):
        raise ConfigError(f"{what} must be a sequence of strings, not a single {type(texts).__name__}; "
                          "wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ConfigError(f"{what}[{i}] is a {type(t).__name__}, expected str")
    return out


def progress(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar on stderr, shown only when asked and stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="text", disable=not (enabled and sys.stderr.isatty()))


# ---------------------------------------------------------------------------------------- encoder
class OnnxEncoder:
    """Embed texts with an exported bi-encoder folder, exactly like its source model did.

    Args:
        model_dir: a folder written by ``esdistill export`` (``manifest.json``, ONNX, tokenizer).
        threads: onnxruntime intra-op threads (``None``: one per physical core).
        batch_size: texts per ONNX call (texts are sorted by length first). A batch-dependent model
            (``int8-dynamic``) runs one text per call whatever this says, unless
            ``batch_independent`` is False.
        verify: recompute the fingerprint of the folder's files and refuse a mismatch.
        batch_independent: give each text the vector it gets alone (default: True). False lets an
            ``int8-dynamic`` model share its activation scales across a batch (faster on many
            cores, but a text's vector then depends on its batch-mates; for measurements).

    Attributes:
        manifest: the folder's :class:`~esdistill.plugin.manifest.Manifest`.
        dims: embedding size.
        max_seq_length: tokens per text; longer texts are truncated and flagged.
        batch_independent: whether a text's vector is independent of the texts embedded with it.

    Raises:
        ModelError: no manifest, a cross-encoder folder, or an ONNX file onnxruntime cannot load.
        FingerprintError: the files differ from the manifest's fingerprint.
        ConfigError: bad ``threads`` or ``batch_size``.

    Example:
        >>> enc = OnnxEncoder("runs/student-onnx")                # doctest: +SKIP
        >>> enc.encode(["a document"], kind="document").dtype    # doctest: +SKIP
        dtype('float32')
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, threads: int | None = None,
                 batch_size: int = 32, verify: bool = True, batch_independent: bool = True) -> None:
        open_model_folder(self, model_dir, kind="bi-encoder", other="esdistill.plugin.cross_encoder.OnnxCrossEncoder",
                          threads=threads, batch_size=batch_size, verify=verify)
        self.dims = int(self.manifest.dims)
        self._independent = bool(batch_independent)
        logger.debug("loaded %s (%s, %d dims, fingerprint %s)", self.folder, self.manifest.quantization,
                     self.dims, self.manifest.short_fingerprint)

    @property
    def fingerprint(self) -> str:
        """The manifest's fingerprint: which model made a vector."""
        return self.manifest.fingerprint

    @property
    def batch_independent(self) -> bool:
        """True when a text's vector does not depend on the texts embedded with it."""
        return self._independent or independent_batch_size(self.manifest.quantization, 2) == 2

    def __repr__(self) -> str:
        return (f"OnnxEncoder({str(self.folder)!r}, dims={self.dims}, "
                f"quantization={self.manifest.quantization!r}, fingerprint={self.manifest.short_fingerprint!r})")

    # ------------------------------------------------------------------ public
    def encode(self, texts: Sequence[str], *, kind: str = "document", batch_size: int | None = None,
               show_progress_bar: bool = False) -> np.ndarray:
        """Embed ``texts`` (the query or document prefix is prepended according to ``kind``).

        Args:
            texts: the texts (a list, not a single string).
            kind: ``query`` or ``document``.
            batch_size: texts per ONNX call (default: the encoder's).
            show_progress_bar: a progress bar on a terminal.

        Returns:
            float32 ``(len(texts), dims)`` in input order.

        Raises:
            ConfigError: a bad ``kind``, ``batch_size`` or a non-string text.
        """
        return self._encode(texts, kind=kind, batch_size=batch_size, show_progress_bar=show_progress_bar).embeddings

    def encode_with_info(self, texts: Sequence[str], *, kind: str = "document",
                         batch_size: int | None = None) -> EncodeResult:
        """Like :meth:`encode`, and also which texts were truncated to ``max_seq_length``."""
        return self._encode(texts, kind=kind, batch_size=batch_size, show_progress_bar=False)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries (with the query prefix)."""
        return self.encode(texts, kind="query")

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed documents (with the document prefix)."""
        return self.encode(texts, kind="document")

    # ------------------------------------------------------------------ internals
    def _prepare(self, texts: Sequence[str], kind: str) -> list[str]:
        if kind not in _KINDS:
            raise ConfigError(f"kind={kind!r}: expected one of {_KINDS}")
        items = check_texts(texts)
        prefix = self.manifest.query_prefix if kind == "query" else self.manifest.document_prefix
        if prefix:
            items = [prefix + t for t in items]
        if self.manifest.lowercase:
            items = [t.lower() for t in items]
        return items

    def _encode(self, texts: Sequence[str], *, kind: str, batch_size: int | None,
                show_progress_bar: bool) -> EncodeResult:
        items = self._prepare(texts, kind)
        bs = self.batch_size if batch_size is None else _check_batch_size(batch_size)
        if self._independent:
            bs = independent_batch_size(self.manifest.quantization, bs)
        n = len(items)
        out = np.empty((n, self.dims), dtype=np.float32)
        truncated = np.zeros(n, dtype=bool)
        if n == 0:
            return EncodeResult(out, truncated)
        encodings = self._tokenizer.encode_batch(items, add_special_tokens=True)
        with progress(n, show_progress_bar, "encode") as bar:
            for idx in length_batches([len(e.ids) for e in encodings], bs):
                batch = [encodings[i] for i in idx]
                truncated[idx] = [bool(e.overflowing) for e in batch]
                out[idx] = self._run(batch)
                bar.update(len(idx))
        return EncodeResult(out, truncated)

    def _run(self, batch: Sequence[Any]) -> np.ndarray:
        arrays = pad_batch(batch, self._pad_id, with_type_ids="token_type_ids" in self._input_names)
        (hidden,) = self._session.run([self.manifest.output_name], session_feed(self._session, arrays))
        if self.manifest.pooled_in_graph:
            vectors = hidden
        else:
            vectors = pool(hidden, arrays["attention_mask"], self.manifest.pooling)
            if self.manifest.normalize:
                vectors = l2_normalize(vectors)
        return np.asarray(vectors, dtype=np.float32)
