"""Rerank with a distillation run's teacher: the spec the student learned from, served at query time.

A run chooses a teacher *spec* (``run.json`` -> ``teacher.chosen``, e.g. ``0.5*mpnet+0.5*bm25``), not
one model. :class:`SpecReranker` serves that spec as a query-time reranker, so an A/B test of the
rerank measures the teacher the student was distilled from:

* a bi-encoder member is the model's exported ONNX folder scored like
  :class:`~esdistill.plugin.rerank.BiEncoderReranker` (cosine, candidate embeddings cached);
* a cross-encoder member is an exported cross-encoder folder, scored by
  :class:`~esdistill.plugin.rerank.CrossEncoderReranker`;
* the ``bm25`` member is :class:`Bm25Member`: the index's own lexical query (the query hook's
  ``multi_match`` or the team's lexical template) restricted to the candidates' ids, in one
  ``_search``; a candidate the query does not match scores 0.

Several members are combined as at training time (:class:`~esdistill.export.teachers.EnsembleTeacher`):
each member's scores are normalised over the candidate list (:func:`~esdistill.plugin.fusion.normalize_scores`,
``zscore`` unless the run recorded another), weighted and summed. Because the normalisation depends
on the whole list, such a reranker says ``whole_list = True`` and the rerank stage scores all the
candidates in one call or none of them.

Spec grammar (:func:`parse_teacher_spec`, shared with :func:`~esdistill.export.teachers.build_teacher`):
members joined by ``+``, each ``[WEIGHT*]NAME`` where NAME is ``bm25``, ``bi:MODEL``, ``ce:MODEL`` or a
bare MODEL; at query time MODEL is an exported folder or a packaged name (``mpnet``, ``minilm``:
exported to fp32 ONNX once, so the teacher scores as it did at training, see
:func:`~esdistill.plugin.models.exported_model`).

Example::

    >>> rr = SpecReranker.from_run("runs/scifact")                        # doctest: +SKIP
    >>> rr.spec                                                           # doctest: +SKIP
    '0.5*mpnet+0.5*bm25'
    >>> hook = QueryHook(client, "scifact", student, reranker=rr)         # doctest: +SKIP
    >>> hook.search("vitamin D and bone density", rerank=True).rerank.reranked   # doctest: +SKIP
    'full'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from esdistill.plugin._errors import ConfigError, ModelError
from esdistill.plugin._spec import weighted_terms
from esdistill.plugin.fusion import SCORE_NORMALIZATIONS, normalize_scores
from esdistill.plugin.manifest import Manifest
from esdistill.plugin.models import PACKAGED_MODELS, _packaged_key, exported_model
from esdistill.plugin.rerank import BiEncoderReranker, CrossEncoderReranker, _score_part

__all__ = ["Bm25Member", "SpecMember", "SpecReranker", "is_teacher_spec", "parse_teacher_spec"]

logger = logging.getLogger(__name__)

_KINDS = {"bi": "bi-encoder", "ce": "cross-encoder"}


class SpecMember(NamedTuple):
    """One member of a teacher spec.

    Attributes:
        weight: its weight in the sum (>= 0).
        kind: ``bm25``, ``bi``, ``ce``, or ``""`` for a bare model (its kind comes from the model).
        ref: the model reference (``""`` for ``bm25``).
    """

    weight: float
    kind: str
    ref: str


def parse_teacher_spec(spec: str) -> list[SpecMember]:
    """Split a teacher spec into its members.

    Args:
        spec: members joined by ``+``, each ``[WEIGHT*]NAME`` (NAME: ``bm25``, ``bi:MODEL``,
            ``ce:MODEL`` or MODEL), e.g. ``0.7*mpnet+0.3*bm25``.

    Returns:
        The members, in the spec's order.

    Raises:
        ConfigError: an empty spec or name, a weight that is not a number or is negative, or all
            weights 0.

    Example:
        >>> parse_teacher_spec("0.7*mpnet+0.3*bm25")
        [SpecMember(weight=0.7, kind='', ref='mpnet'), SpecMember(weight=0.3, kind='bm25', ref='')]
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"teacher spec {spec!r} is empty; write e.g. 'mpnet' or '0.5*mpnet+0.5*bm25'")
    members: list[SpecMember] = []
    for w, name in weighted_terms(spec, what="teacher", example="0.7*mpnet+0.3*bm25"):
        if not np.isfinite(w) or w < 0:
            raise ConfigError(f"teacher weight {w!r} in {spec!r} must be a number >= 0 (weights)")
        if not name:
            raise ConfigError(f"empty teacher name in {spec!r}; write e.g. '0.7*mpnet+0.3*bm25'")
        if name == "bm25":
            members.append(SpecMember(w, "bm25", ""))
        elif name.startswith(("bi:", "ce:")):
            if not name[3:]:
                raise ConfigError(f"teacher member {name!r} in {spec!r} names no model; write e.g. 'ce:DIR'")
            members.append(SpecMember(w, name[:2], name[3:]))
        else:
            members.append(SpecMember(w, "", name))
    if sum(m.weight for m in members) <= 0:
        raise ConfigError(f"teacher spec {spec!r}: the weights are all 0; give at least one member a weight > 0")
    return members


def is_teacher_spec(text: str) -> bool:
    """Whether ``text`` reads as a teacher spec rather than a folder: it holds ``*`` or ``+``, names
    ``bm25`` or a ``bi:``/``ce:`` member, or is a packaged model name (``mpnet``).

    Example:
        >>> is_teacher_spec("0.5*mpnet+0.5*bm25"), is_teacher_spec("mpnet"), is_teacher_spec("runs/x")
        (True, True, False)
    """
    parts = text.replace(" ", "").split("+")
    return ("*" in text or len(parts) > 1 or any(p in ("bm25",) or p.startswith(("bi:", "ce:")) for p in parts)
            or _packaged_key(text) is not None)


class Bm25Member:
    """BM25 scores of the candidates from Elasticsearch: the index's lexical query restricted to their ids.

    The query is the hook's own (``QueryHook._bm25_body``: the ``multi_match`` over the index's text
    fields, or the team's lexical template) with an ``ids`` filter, one ``_search`` per list; the filter
    does not change the scores. A candidate the query does not match scores 0.
    """

    name = "bm25"
    fingerprint = "bm25"

    def __init__(self) -> None:
        self._hook: Any = None

    def attach(self, hook: Any) -> None:
        """Read the index through ``hook`` (a :class:`~esdistill.plugin.query.QueryHook`)."""
        self._hook = hook

    def score_candidates(self, query: str, ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """The BM25 score of each id for ``query`` (0 for ids the query does not match).

        Raises:
            ConfigError: no query hook was attached.
            ElasticsearchUnavailable: Elasticsearch failed the request.
        """
        hook = self._hook
        if hook is None:
            raise ConfigError("the bm25 teacher member reads the index: give the reranker to a QueryHook "
                              "(QueryHook(..., reranker=rr) attaches it)")
        ids = [str(i) for i in ids]
        if not ids:
            return np.zeros(0, dtype=np.float32)
        body = hook._bm25_body(query, len(ids), [{"ids": {"values": ids}}])
        body["_source"] = False
        hits = hook._es_call("BM25 teacher scores", lambda: hook._es.search(index=hook.index, **body))["hits"]["hits"]
        found = {h["_id"]: float(h["_score"]) for h in hits}
        return np.asarray([found.get(i, 0.0) for i in ids], dtype=np.float32)

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        raise ConfigError("the bm25 teacher member scores candidates by id from the index; call "
                          "score_candidates(query, ids, texts), or rerank through a QueryHook")


def _exported_folder(member: SpecMember) -> Path:
    """The exported ONNX folder of a model member (a packaged name is exported once)."""
    label = f"{member.kind}:{member.ref}" if member.kind else member.ref
    path = Path(member.ref).expanduser()
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return path
        kind = " --kind cross-encoder" if member.kind == "ce" else ""
        out = f"{member.ref.rstrip('/')}-onnx"
        raise ModelError(
            f"teacher member {label!r}: {member.ref} is not an exported model (no manifest.json); the query "
            f"side serves ONNX only. Export it once with `esdistill export {member.ref}{kind} --out {out} "
            f"--quantize none` and write '{member.kind + ':' if member.kind else ''}{out}' in the spec")
    if _packaged_key(member.ref) is not None:
        return exported_model(member.ref, quantize="none")  # fp32: the teacher scores as at training
    raise ModelError(f"teacher member {label!r} is neither an exported model folder nor a packaged model name "
                     f"({', '.join(sorted(PACKAGED_MODELS))}); pass an existing folder made by `esdistill export`")


def _load_member(member: SpecMember, *, threads: int | None, batch_size: int, cache_size: int) -> Any:
    if member.kind == "bm25":
        return Bm25Member()
    folder = _exported_folder(member)
    kind = Manifest.load(folder, verify=False).kind
    want = _KINDS.get(member.kind)
    if want is not None and kind != want:
        raise ModelError(f"teacher member '{member.kind}:{member.ref}': {folder} is an exported {kind}, not a "
                         f"{want}; write '{'ce' if kind == 'cross-encoder' else 'bi'}:{member.ref}' or name "
                         "another model")
    if kind == "cross-encoder":
        return CrossEncoderReranker(folder, threads=threads, batch_size=batch_size)
    if kind == "bi-encoder":
        return BiEncoderReranker(folder, threads=threads, batch_size=batch_size, cache_size=cache_size)
    raise ModelError(f"teacher member {member.ref!r}: {folder} is a {kind!r} model, which cannot rerank")


class SpecReranker:
    """A teacher spec served as a reranker: a weighted sum of per-query normalised member scores.

    Args:
        members: ``(weight, reranker)`` pairs (weights >= 0, not all 0); a reranker with
            ``score_candidates`` (:class:`Bm25Member`) gets the candidates' ids.
        spec: the spec the members came from (for the name and the fingerprint).
        normalization: per-query normalisation of each member's scores (``zscore``, ``minmax``,
            ``rank`` or ``none``); a single member of weight 1 is served unnormalised, as
            :func:`~esdistill.export.teachers.build_teacher` does.

    Attributes:
        name: ``teacher <spec>``.
        fingerprint: sha256 of the spec, the normalisation and each member's weight and fingerprint.
        whole_list: True when the scores depend on the whole candidate list (several members) or
            one request scores them all (``bm25``): the rerank stage never scores a head of the list.

    Raises:
        ConfigError: no members, bad weights, or an unknown normalisation.

    Example:
        >>> rr = SpecReranker.from_spec("0.5*mpnet+0.5*bm25")       # doctest: +SKIP
    """

    def __init__(self, members: Sequence[tuple[float, Any]], *, spec: str, normalization: str = "zscore") -> None:
        if not members or any(not w >= 0 for w, _ in members) or sum(w for w, _ in members) <= 0:
            raise ConfigError(f"teacher spec {spec!r}: members need weights >= 0, not all 0; got "
                              f"{[w for w, _ in members]}")
        if normalization not in SCORE_NORMALIZATIONS:
            raise ConfigError(f"teacher spec {spec!r}: unknown normalisation {normalization!r}; choose from "
                              f"{SCORE_NORMALIZATIONS}")
        self.members = [(float(w), m) for w, m in members]
        self.spec = spec
        self.normalization = normalization
        self.name = f"teacher {spec}"
        fp = json.dumps([spec, normalization] + [[w, str(m.fingerprint)] for w, m in self.members])
        self.fingerprint = "spec:" + hashlib.sha256(fp.encode()).hexdigest()
        self._single = len(self.members) == 1 and self.members[0][0] == 1.0
        self.whole_list = not self._single or self.needs_ids

    @property
    def needs_ids(self) -> bool:
        """Whether a member reads the index (``bm25``): scoring then needs the candidates' ids, and
        bare texts (:meth:`score`, the service's ``/v1/rerank``) are refused."""
        return any(w > 0 and hasattr(m, "score_candidates") for w, m in self.members)

    @classmethod
    def from_spec(cls, spec: str, *, normalization: str = "zscore", threads: int | None = None,
                  batch_size: int = 32, cache_size: int = 20_000,
                  loaded: Mapping[str, Any] | None = None) -> SpecReranker:
        """Load every member of ``spec`` (see :func:`parse_teacher_spec`).

        Args:
            spec: e.g. ``0.5*mpnet+0.5*bm25``, ``ce:runs/ce-onnx``, ``0.7*bi:runs/e5-onnx+0.3*bm25``.
            normalization: per-query normalisation of the members' scores.
            threads: onnxruntime intra-op threads of the model members.
            batch_size: texts (or pairs) per ONNX call.
            cache_size: candidate embeddings each bi-encoder member keeps.
            loaded: rerankers already loaded, by the model reference as the spec writes it
                (``{"mpnet": rr}``): used for those members instead of loading them again, so a
                benchmark's teacher rows share one model and its embedding cache.

        Raises:
            ConfigError: a bad spec. ModelError: a member is not an exported model (the message
                gives the export command) or has the wrong kind.
        """
        parsed = parse_teacher_spec(spec)
        try:
            members = [(m.weight, (loaded or {}).get(m.ref) or _load_member(m, threads=threads, batch_size=batch_size,
                                                                          cache_size=cache_size))
                       for m in parsed]
        except ModelError as exc:
            raise ModelError(f"teacher spec {spec!r}: {exc}") from None
        return cls(members, spec=spec, normalization=normalization)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], **kwargs: Any) -> SpecReranker:
        """The teacher a distillation run chose (``run.json``: ``teacher.chosen``, and
        ``teacher.normalization`` when recorded, else ``zscore``).

        Args:
            run_dir: the run's ``--out`` folder.
            kwargs: passed to :meth:`from_spec` (``threads``, ``batch_size``, ``cache_size``).

        Raises:
            ConfigError: no ``run.json``, or one without a chosen teacher.
        """
        path = Path(run_dir) / "run.json"
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{run_dir} has no run.json: it is not a distillation run folder; pass the --out "
                              "folder of `esdistill distill`/`adapt`, or a teacher spec such as 0.5*mpnet+0.5*bm25") from None
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); pass a teacher spec instead") from None
        teacher = summary.get("teacher") if isinstance(summary, dict) else None
        chosen = teacher.get("chosen") if isinstance(teacher, dict) else None
        if not isinstance(chosen, str) or not chosen.strip():
            raise ConfigError(f"{path} records no chosen teacher (teacher.chosen); the run stopped before choosing "
                              "one. Pass the teacher spec instead, e.g. --rerank 0.5*mpnet+0.5*bm25")
        kwargs.setdefault("normalization", str(teacher.get("normalization") or "zscore"))  # type: ignore[union-attr]
        logger.info("rerank with the teacher of run %s: %s", run_dir, chosen)
        return cls.from_spec(chosen, **kwargs)

    def attach(self, hook: Any) -> None:
        """Give the members that read the index (``bm25``) the query hook."""
        for _, m in self.members:
            attach = getattr(m, "attach", None)
            if callable(attach):
                attach(hook)

    def score_candidates(self, query: str, ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """One score per candidate (ids and texts in the same order), higher = more relevant."""
        return self._combine(query, list(texts), list(ids))

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """One score per document, for specs whose members need no index.

        Raises:
            ConfigError: the spec has a ``bm25`` member (it scores by id from the index).
        """
        if self.needs_ids:
            raise ConfigError(f"teacher spec {self.spec!r} has a bm25 member, which scores candidates by id from "
                              "the index: rerank through a QueryHook (or call score_candidates with the ids)")
        return self._combine(query, list(documents), None)

    def _combine(self, query: str, texts: list[str], ids: list[str] | None) -> np.ndarray:
        if self._single:
            return np.asarray(_score_part(self.members[0][1], query, texts, ids), dtype=np.float32).reshape(-1)
        total = np.zeros(len(texts), dtype=np.float32)
        for w, m in self.members:
            if w > 0:
                total += w * normalize_scores(np.asarray(_score_part(m, query, texts, ids)).reshape(-1),
                                              self.normalization)
        return total
