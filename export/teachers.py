"""Teachers: anything that scores a query against a list of documents.

One protocol, ``score(query, docs) -> np.ndarray`` plus a stable ``fingerprint`` (the key of the
score cache). Implementations:

* :class:`CrossEncoderTeacher`: any Hugging Face sequence-classification model (a
  sentence-transformers ``CrossEncoder`` folder is one); the logit is the score.
* :class:`BiEncoderTeacher`: cosine similarity of a larger embedding model (``mpnet`` by default);
  document embeddings are computed once and kept (optionally on disk).
* :class:`BM25Teacher`: Elasticsearch BM25 scores over a :class:`~esdistill.export.mining.Bm25Index`.
* :class:`EnsembleTeacher`: a weighted sum of per-query normalised member scores (multi-teacher
  distillation, as in Hofstätter et al.'s Margin-MSE ensemble).

Example::

    >>> teacher = build_teacher("0.7*mpnet+0.3*bm25", bm25_index=index)   # doctest: +SKIP
    >>> teacher.score("how do plants make sugar", ["Photosynthesis ...", "Mitochondria ..."])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from esdistill.export._deps import require
from esdistill.plugin._errors import ConfigError, ModelError
from esdistill.plugin.fusion import SCORE_NORMALIZATIONS as _NORMALIZATIONS
from esdistill.plugin.fusion import normalize_scores
from esdistill.plugin.models import resolve_model
from esdistill.plugin.teacher_rerank import parse_teacher_spec

__all__ = [
    "BM25Teacher",
    "BiEncoderTeacher",
    "CrossEncoderTeacher",
    "EnsembleTeacher",
    "Teacher",
    "build_teacher",
    "model_fingerprint",
    "normalize_scores",
    "with_cache",
]

logger = logging.getLogger(__name__)
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".onnx")


@runtime_checkable
class Teacher(Protocol):
    """Scores a query against documents; higher is more relevant.

    Attributes:
        fingerprint: a stable id of everything that determines the scores (weights, settings);
            equal fingerprints must give equal scores for the same (query, document).
    """

    fingerprint: str

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        """Return one float score per document."""
        ...


def model_fingerprint(ref: str | os.PathLike[str], **settings: Any) -> str:
    """sha256 over a model folder's weight and config files plus ``settings``; hub ids hash by name.

    Args:
        ref: a model folder (or a hub id, hashed as text).
        settings: anything else that changes the scores (max length, prefixes, activation).
    """
    h = hashlib.sha256()
    path = Path(os.fspath(ref))
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file() and (f.suffix in _WEIGHT_FILES or f.name in ("config.json", "tokenizer.json",
                                                                        "modules.json")):
                h.update(str(f.relative_to(path)).encode())
                with open(f, "rb") as fh:
                    while block := fh.read(1 << 22):
                        h.update(block)
    else:
        h.update(os.fspath(ref).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class BiEncoderTeacher:
    """Cosine similarity of a (larger) sentence-transformers embedding model.

    Document embeddings are computed once per text and kept in memory; with ``embedding_cache``
    they are also stored in an ``.npz`` file and reused by the next run with the same fingerprint.

    Args:
        model: a model folder, packaged name (``mpnet``) or hub id.
        batch_size: encoding batch size.
        max_seq_length: token limit (default: the model's own).
        query_prefix: text prepended to queries (e.g. ``"query: "`` for E5 models).
        document_prefix: text prepended to documents.
        embedding_cache: optional folder for document embeddings (one ``.npz`` per fingerprint).
        show_progress: progress bar while encoding many documents.
    """

    name = "bi-encoder"

    def __init__(self, model: str | os.PathLike[str] = "mpnet", *, batch_size: int = 32,
                 max_seq_length: int | None = 256, query_prefix: str = "", document_prefix: str = "",
                 embedding_cache: str | os.PathLike[str] | None = None, show_progress: bool = False) -> None:
        self.ref = resolve_model(model)
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.show_progress = show_progress
        self.fingerprint = "bi:" + model_fingerprint(self.ref, max_seq_length=max_seq_length,
                                                     qp=query_prefix, dp=document_prefix)
        self._model: Any = None
        self._docs: dict[str, np.ndarray] = {}
        self._queries: dict[str, np.ndarray] = {}
        self._unsaved = 0
        self.embedding_cache = (Path(embedding_cache) / f"doc-embeddings-{self.fingerprint[3:19]}.npz"
                                if embedding_cache else None)
        if self.embedding_cache and self.embedding_cache.is_file():
            with np.load(self.embedding_cache) as npz:
                if str(npz["fingerprint"]) == self.fingerprint:
                    self._docs = dict(zip(npz["keys"].tolist(), npz["vectors"]))
                    logger.info("loaded %d cached document embeddings from %s", len(self._docs),
                                self.embedding_cache)

    def __repr__(self) -> str:
        return f"BiEncoderTeacher({os.fspath(self.ref)!r})"

    @property
    def model(self) -> Any:
        if self._model is None:
            st = require("sentence_transformers")
            self._model = st.SentenceTransformer(os.fspath(self.ref), device="cpu")
            if self.max_seq_length:
                self._model.max_seq_length = self.max_seq_length
        return self._model

    def _encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return np.asarray(self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=progress),
                          dtype=np.float32)

    def prepare(self, docs: Sequence[str]) -> None:
        """Embed every document not yet embedded (call once with the whole corpus).

        The ``embedding_cache`` file is rewritten after large batches; call :meth:`save_embeddings`
        at the end of a run to store the rest.
        """
        todo = list(dict.fromkeys(d for d in docs if _text_key(d) not in self._docs))
        if not todo:
            return
        order = sorted(range(len(todo)), key=lambda i: len(todo[i]))  # length-sorted: less padding
        vecs = self._encode([self.document_prefix + todo[i] for i in order], progress=self.show_progress)
        for j, i in enumerate(order):
            self._docs[_text_key(todo[i])] = vecs[j]
        self._unsaved += len(todo)
        if self.embedding_cache and (self._unsaved >= 512 or len(todo) >= 64):
            self.save_embeddings()

    def save_embeddings(self) -> None:
        """Write the document embeddings to ``embedding_cache``."""
        if not self.embedding_cache or not self._docs:
            return
        self._unsaved = 0
        self.embedding_cache.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._docs)
        tmp = self.embedding_cache.with_suffix(".tmp.npz")
        np.savez(tmp, fingerprint=np.array(self.fingerprint), keys=np.array(keys),
                 vectors=np.stack([self._docs[k] for k in keys]))
        tmp.replace(self.embedding_cache)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Normalised query embeddings (memoised per text)."""
        todo = [q for q in dict.fromkeys(queries) if q not in self._queries]
        if todo:
            for q, v in zip(todo, self._encode([self.query_prefix + q for q in todo])):
                self._queries[q] = v
        return np.stack([self._queries[q] for q in queries])

    def doc_vectors(self, docs: Sequence[str]) -> np.ndarray:
        """Normalised document embeddings (embedding what is missing)."""
        self.prepare(docs)
        return np.stack([self._docs[_text_key(d)] for d in docs])

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        if not docs:
            return np.zeros(0, dtype=np.float32)
        return self.doc_vectors(docs) @ self.embed_queries([query])[0]


class CrossEncoderTeacher:
    """A cross-encoder: a Hugging Face sequence-classification model over (query, document) pairs.

    With one logit the logit is the score; with two, the difference ``logit[1] - logit[0]``
    (the log-odds of "relevant").

    Args:
        model: a model folder (``AutoModelForSequenceClassification``, e.g. a sentence-transformers
            ``CrossEncoder`` save) or a hub id.
        max_length: token limit for the pair.
        batch_size: pairs per forward pass.
    """

    name = "cross-encoder"

    def __init__(self, model: str | os.PathLike[str], *, max_length: int = 256, batch_size: int = 16) -> None:
        self.ref = resolve_model(model)
        self.max_length = max_length
        self.batch_size = batch_size
        self.fingerprint = "ce:" + model_fingerprint(self.ref, max_length=max_length)
        self._model: Any = None
        self._tok: Any = None

    def __repr__(self) -> str:
        return f"CrossEncoderTeacher({os.fspath(self.ref)!r})"

    def _load(self) -> None:
        if self._model is not None:
            return
        tr = require("transformers")
        try:
            self._tok = tr.AutoTokenizer.from_pretrained(os.fspath(self.ref))
            self._model = tr.AutoModelForSequenceClassification.from_pretrained(os.fspath(self.ref)).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load a sequence-classification model from {self.ref}: {exc}") from None
        if self._model.config.num_labels > 2:
            raise ModelError(f"{self.ref} has {self._model.config.num_labels} labels; a cross-encoder "
                             "teacher needs 1 (a relevance logit) or 2 (not relevant / relevant)")

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        torch = require("torch")
        self._load()
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(docs), self.batch_size):
                chunk = list(docs[start:start + self.batch_size])
                enc = self._tok([query] * len(chunk), chunk, truncation="only_second", padding=True,
                                max_length=self.max_length, return_tensors="pt")
                logits = self._model(**enc).logits.float()
                s = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
                out.append(s.numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class BM25Teacher:
    """BM25 scores from Elasticsearch over a corpus indexed by :class:`~esdistill.export.mining.Bm25Index`.

    Documents are recognised by their text; a text that is not in the index gets score 0 (and a
    warning once).

    Args:
        index: the BM25 index of the corpus.
    """

    name = "bm25"

    def __init__(self, index: Any) -> None:
        self.index = index
        self.fingerprint = "bm25:" + index.fingerprint
        self._warned = False

    def __repr__(self) -> str:
        return f"BM25Teacher({self.index.name!r})"

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        ids = [self.index.id_of_text(d) for d in docs]
        if not self._warned and any(i is None for i in ids):
            logger.warning("BM25 teacher: some documents are not in index %s; they score 0", self.index.name)
            self._warned = True
        known = [i for i in ids if i is not None]
        found = self.index.score_ids(query, known) if known else {}
        return np.asarray([found.get(i, 0.0) if i is not None else 0.0 for i in ids], dtype=np.float32)


class EnsembleTeacher:
    """Weighted sum of per-query normalised member scores (multi-teacher distillation).

    The normalisation is over the list passed to :meth:`score`, so an ensemble score depends on
    the list: cache the *members* (see :func:`with_cache`), never the ensemble.

    Args:
        members: ``(weight, teacher)`` pairs; weights must be >= 0 and not all 0.
        normalization: per-query normalisation of each member's scores (``zscore``, ``minmax``,
            ``rank``; see :func:`normalize_scores`).

    Raises:
        ConfigError: no members, negative weights, or an unknown normalisation.
    """

    name = "ensemble"

    def __init__(self, members: Sequence[tuple[float, Any]], *, normalization: str = "zscore") -> None:
        if not members or any(w < 0 for w, _ in members) or sum(w for w, _ in members) <= 0:
            raise ConfigError(f"an ensemble needs members with weights >= 0, not all 0; got "
                              f"{[w for w, _ in members]}")
        if normalization not in _NORMALIZATIONS:
            raise ConfigError(f"unknown normalisation {normalization!r}; choose from {_NORMALIZATIONS}")
        self.members = [(float(w), t) for w, t in members]
        self.normalization = normalization
        fp = json.dumps([normalization] + [[w, t.fingerprint] for w, t in self.members])
        self.fingerprint = "ens:" + hashlib.sha256(fp.encode()).hexdigest()

    def __repr__(self) -> str:
        return "EnsembleTeacher(" + " + ".join(f"{w:g}*{t!r}" for w, t in self.members) + ")"

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        total = np.zeros(len(docs), dtype=np.float32)
        for w, t in self.members:
            if w > 0:
                total += w * normalize_scores(t.score(query, docs), self.normalization)
        return total


def with_cache(teacher: Any, cache: Any) -> Any:
    """Wrap ``teacher`` (or, for an ensemble, each member) in a :class:`CachedTeacher`."""
    from esdistill.export.score_cache import CachedTeacher

    if cache is None:
        return teacher
    if isinstance(teacher, EnsembleTeacher):
        return EnsembleTeacher([(w, with_cache(t, cache)) for w, t in teacher.members],
                               normalization=teacher.normalization)
    if isinstance(teacher, CachedTeacher):
        return teacher
    return CachedTeacher(teacher, cache)


def _is_cross_encoder(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file() or (path / "modules.json").is_file():
        return False
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or []
    except ValueError:
        return False
    return any("SequenceClassification" in a for a in archs)


def build_teacher(spec: str, *, bm25_index: Any = None, embedding_cache: str | os.PathLike[str] | None = None,
                  normalization: str = "zscore", show_progress: bool = False, max_seq_length: int = 256,
                  shared: dict[str, Any] | None = None) -> Any:
    """Build a teacher from a spec.

    Spec grammar (:func:`~esdistill.plugin.teacher_rerank.parse_teacher_spec`, which the query-time
    reranker of the same spec shares): members joined by ``+``, each ``[WEIGHT*]NAME`` where NAME is
    ``bm25``, ``bi:MODEL``, ``ce:MODEL`` or a bare MODEL (a folder holding a sequence-classification
    model is a cross-encoder, anything else a bi-encoder). Several members make an
    :class:`EnsembleTeacher`.

    Args:
        spec: e.g. ``mpnet``, ``ce:runs/teacher-ce``, ``0.7*mpnet+0.3*bm25``.
        bm25_index: the :class:`~esdistill.export.mining.Bm25Index` a ``bm25`` member needs.
        embedding_cache: folder for bi-encoder document embeddings.
        normalization: per-query normalisation of ensemble members.
        show_progress: progress bars when embedding documents.
        max_seq_length: token limit of bi-encoder and cross-encoder members.
        shared: a dict reused across calls so that equal members (same model and settings) are one
            object: several ensembles over ``mpnet`` then embed the corpus once.

    Raises:
        ConfigError: a bad spec, or ``bm25`` without an index.

    Example::

        >>> build_teacher("0.5*mpnet+0.5*bm25", bm25_index=index)   # doctest: +SKIP
    """
    members: list[tuple[float, Any]] = []
    pool = shared if shared is not None else {}

    def get(key: str, factory: Any) -> Any:
        if key not in pool:
            pool[key] = factory()
        return pool[key]

    for w, kind, ref_s in parse_teacher_spec(spec):
        if kind == "bm25":
            if bm25_index is None:
                raise ConfigError("the bm25 teacher needs an Elasticsearch BM25 index of the corpus")
            members.append((w, get(f"bm25:{id(bm25_index)}", lambda: BM25Teacher(bm25_index))))
            continue
        ref = resolve_model(ref_s)
        if not kind:
            kind = "ce" if isinstance(ref, Path) and _is_cross_encoder(ref) else "bi"
        if kind == "ce":
            members.append((w, get(f"ce:{ref}:{max_seq_length}",
                                   lambda ref=ref: CrossEncoderTeacher(ref, max_length=max_seq_length))))
        else:
            members.append((w, get(f"bi:{ref}:{max_seq_length}:{embedding_cache}", lambda ref=ref: BiEncoderTeacher(
                ref, embedding_cache=embedding_cache, show_progress=show_progress, max_seq_length=max_seq_length))))
    if len(members) == 1 and members[0][0] == 1.0:
        return members[0][1]
    return EnsembleTeacher(members, normalization=normalization)
