"""The promotion gate: a trained student is promoted only if it beats its base on held-out queries.

Evaluation is exact dense retrieval over the (dev) corpus with the student, scored by
``ir-measures`` (nDCG@10 by default). The dev queries are the user's dev qrels when given, else
held-out synthetic queries whose source document is the known relevant one (a pseudo-dev set, as
in GPL-style domain adaptation). The same pseudo-dev set picks the teacher: each candidate teacher
reranks the mined pools of the dev queries and the best one wins (:func:`select_teacher`).

Example::

    >>> ev = RetrievalEvaluator(corpus, dev_queries, dev_qrels)                 # doctest: +SKIP
    >>> result = promotion_gate(ev, base=base_encoder, trained=new_encoder)      # doctest: +SKIP
    >>> result.promoted, result.base, result.trained                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from esdistill.export._deps import require
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import Doc
from esdistill.plugin.stats import paired_bootstrap  # re-exported

__all__ = [
    "GateResult",
    "RetrievalEvaluator",
    "dev_corpus",
    "evaluate_run",
    "paired_bootstrap",
    "promotion_gate",
    "select_teacher",
]

logger = logging.getLogger(__name__)


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                 metric: str = "nDCG@10") -> tuple[float, dict[str, float]]:
    """Score a run with ir-measures: ``(mean over qrels queries, per-query values)``.

    Queries in ``qrels`` that are missing from ``run`` count as 0.

    Raises:
        ConfigError: an unknown metric name.
    """
    irm = require("ir_measures")
    try:
        measure = irm.parse_measure(metric)
    except (ValueError, NameError, SyntaxError, TypeError) as exc:
        raise ConfigError(f"unknown metric {metric!r} ({exc}); use an ir-measures name like nDCG@10") from None
    qrels = {q: {d: int(g) for d, g in rel.items()} for q, rel in qrels.items() if rel}
    per_query = {q: 0.0 for q in qrels}
    for m in irm.iter_calc([measure], qrels, {q: dict(r) for q, r in run.items() if q in qrels}):
        per_query[m.query_id] = float(m.value)
    mean = float(np.mean(list(per_query.values()))) if per_query else 0.0
    return mean, per_query


def dev_corpus(corpus: Mapping[str, Doc], qrels: Mapping[str, Mapping[str, int]], *, max_docs: int | None,
               extra_ids: Sequence[str] = (), seed: int = 0) -> dict[str, Doc]:
    """A sub-corpus for cheap dev evaluation: every judged document, ``extra_ids`` (e.g. the mined
    hard candidates of the dev queries) and random others up to ``max_docs`` (``None``: all)."""
    if max_docs is None or max_docs >= len(corpus):
        return dict(corpus)
    keep = list(dict.fromkeys([d for rel in qrels.values() for d in rel if d in corpus]
                              + [d for d in extra_ids if d in corpus]))
    rest = [d for d in corpus if d not in set(keep)]
    random.Random(seed).shuffle(rest)
    keep += rest[:max(max_docs - len(keep), 0)]
    return {d: corpus[d] for d in keep}


class RetrievalEvaluator:
    """Exact dense retrieval over a corpus, scored against qrels.

    Args:
        corpus: ``{doc_id: Doc}`` to search.
        queries: ``{qid: text}``.
        qrels: ``{qid: {doc_id: grade}}``; only queries with judgements are used.
        metric: an ir-measures name.
        depth: documents retrieved per query.

    Raises:
        ConfigError: no query has both text and judgements.
    """

    def __init__(self, corpus: Mapping[str, Doc], queries: Mapping[str, str],
                 qrels: Mapping[str, Mapping[str, int]], *, metric: str = "nDCG@10", depth: int = 100) -> None:
        self.qids = [q for q in queries if qrels.get(q)]
        if not self.qids:
            raise ConfigError("the dev set has no query with both text and relevance judgements")
        self.queries = {q: queries[q] for q in self.qids}
        self.qrels = {q: dict(qrels[q]) for q in self.qids}
        self.doc_ids = list(corpus)
        self.doc_texts = [corpus[d].full for d in self.doc_ids]
        self.metric = metric
        self.depth = depth
        self._doc_cache: dict[int, np.ndarray] = {}
        #: document vectors of a frozen document tower (query-side-only training), when known
        self.frozen_doc_vectors: np.ndarray | None = None

    def doc_vectors(self, encoder: Any, *, cache_key: int | None = None) -> np.ndarray:
        """Document embeddings from ``encoder.encode_documents`` (memoised under ``cache_key``)."""
        if cache_key is not None and cache_key in self._doc_cache:
            return self._doc_cache[cache_key]
        vecs = np.asarray(encoder.encode_documents(self.doc_texts), dtype=np.float32)
        if cache_key is not None:
            self._doc_cache[cache_key] = vecs
        return vecs

    def run(self, encoder: Any, doc_vectors: np.ndarray | None = None) -> dict[str, dict[str, float]]:
        """The top-``depth`` run of ``encoder`` (document vectors computed unless given)."""
        docs = self.doc_vectors(encoder) if doc_vectors is None else doc_vectors
        q = np.asarray(encoder.encode_queries([self.queries[x] for x in self.qids]), dtype=np.float32)
        sims = q @ docs.T
        k = min(self.depth, len(self.doc_ids))
        run: dict[str, dict[str, float]] = {}
        for qid, row in zip(self.qids, sims):
            top = np.argpartition(-row, k - 1)[:k]
            run[qid] = {self.doc_ids[i]: float(row[i]) for i in top}
        return run

    def scores(self, encoder: Any, doc_vectors: np.ndarray | None = None) -> tuple[float, dict[str, float]]:
        """``(mean, per-query values)`` of the metric of ``encoder`` on the dev queries."""
        return evaluate_run(self.qrels, self.run(encoder, doc_vectors), self.metric)

    def evaluate(self, encoder: Any, doc_vectors: np.ndarray | None = None) -> float:
        """The mean metric of ``encoder`` on the dev queries."""
        return self.scores(encoder, doc_vectors)[0]

    def __call__(self, encoder: Any) -> float:
        frozen = encoder.doc_model is not encoder.query_model and not any(
            p.requires_grad for p in encoder.doc_model.parameters())
        if frozen and self.frozen_doc_vectors is not None:
            return self.evaluate(encoder, self.frozen_doc_vectors)
        docs = self.doc_vectors(encoder, cache_key=id(encoder.doc_model)) if frozen else None
        return self.evaluate(encoder, docs)


@dataclass
class GateResult:
    """The gate's decision.

    Attributes:
        metric: the metric compared.
        base / trained: the base and trained students' scores.
        delta: ``trained - base``.
        min_delta: the improvement required.
        promoted: the trained student is not worse (``trained >= base + min_delta``) and, with a
            ``confidence``, its gain is unlikely to be noise (``p_better >= confidence``).
        n_queries / n_docs: size of the dev set.
        reason: one line for logs and reports.
        confidence: the required probability that the trained student is better (0: none).
        p_better: share of paired bootstrap resamples of the dev queries in which the trained
            student's mean beats the base's (ties count half).
        ci_low / ci_high: the 90% paired-bootstrap interval of ``delta``.
        wins / losses: dev queries on which the trained student scores higher / lower.
    """

    metric: str
    base: float
    trained: float
    delta: float
    min_delta: float
    promoted: bool
    n_queries: int
    n_docs: int
    reason: str
    confidence: float = 0.0
    p_better: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    wins: int = 0
    losses: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promotion_gate(evaluator: RetrievalEvaluator, *, base: Any, trained: Any, min_delta: float = 0.0,
                   shared_documents: bool = False, confidence: float = 0.0, seed: int = 0) -> GateResult:
    """Compare base and trained students on the dev set; promote only a student that is not worse.

    Args:
        evaluator: the dev set.
        base: encoder of the base student (``encode_queries`` / ``encode_documents``).
        trained: encoder of the trained student.
        min_delta: the improvement required for promotion (0: not worse than the base).
        shared_documents: both embed documents the same way (query-side-only adaptation), so the
            base's document vectors are reused.
        confidence: also require this paired-bootstrap probability that the trained student is
            better (e.g. 0.9), so that a gain within the noise of the dev set is refused (0: off).
        seed: bootstrap seed.

    Returns:
        A :class:`GateResult`.

    Raises:
        ConfigError: ``confidence`` outside [0, 1).
    """
    if not 0.0 <= confidence < 1.0:
        raise ConfigError(f"gate confidence={confidence} (need 0 <= c < 1; 0 turns the significance check off)")
    base_docs = evaluator.doc_vectors(base)
    base_score, base_per = evaluator.scores(base, base_docs)
    trained_score, trained_per = evaluator.scores(trained, base_docs if shared_documents else None)
    deltas = [trained_per[q] - base_per[q] for q in base_per]
    p_better, ci_low, ci_high = paired_bootstrap(deltas, seed=seed)
    wins, losses = sum(d > 1e-12 for d in deltas), sum(d < -1e-12 for d in deltas)
    delta = trained_score - base_score
    not_worse = bool(trained_score >= base_score + min_delta and np.isfinite(trained_score))
    promoted = not_worse and (confidence == 0.0 or p_better >= confidence)
    verdict = ("promoted" if promoted else "REFUSED (the trained student is worse than its base)" if not not_worse
               else f"REFUSED (the gain is within the noise of the dev set: P(better) {p_better:.2f} < {confidence})")
    reason = (f"{evaluator.metric} on {len(evaluator.qids)} dev queries / {len(evaluator.doc_ids)} docs: "
              f"base {base_score:.4f}, trained {trained_score:.4f} ({delta:+.4f}, 90% CI {ci_low:+.4f}..{ci_high:+.4f}, "
              f"{wins} wins / {losses} losses, P(better) {p_better:.2f}): {verdict}")
    logger.info("gate: %s", reason)
    return GateResult(evaluator.metric, float(base_score), float(trained_score), float(delta), min_delta, promoted,
                      len(evaluator.qids), len(evaluator.doc_ids), reason, confidence, p_better, ci_low, ci_high,
                      wins, losses)


def select_teacher(candidates: Mapping[str, Any], lists: Sequence[Any], corpus: Mapping[str, Doc], *,
                   metric: str = "nDCG@10", confidence: float = 0.0, seed: int = 0,
                   details: dict[str, Any] | None = None) -> tuple[str, dict[str, float]]:
    """Pick the teacher that best reranks the pools of pseudo-dev queries.

    With ``confidence`` > 0 the candidates are read as a preference order: the earliest one whose
    score is not *significantly* below the best (paired bootstrap over the dev queries: the best
    beats it with probability < ``confidence``) is chosen. Synthetic dev queries are written from
    their source document's own words, so they favour lexical teachers (BM25-heavy fusions) by
    construction; listing the dense teacher first makes BM25 weight earn its place with a
    significant gain rather than a gain within the noise of the dev set.

    Args:
        candidates: ``{name: teacher}`` in order of preference (cached teachers make this cheap).
        lists: mined :class:`~esdistill.export.mining.CandidateList` objects of the dev queries, each
            with its known positives.
        corpus: the corpus.
        metric: ir-measures name.
        confidence: 0 picks the best score (ties to the earlier candidate); else see above.
        seed: bootstrap seed.
        details: filled with ``best`` (the top score's name) and ``p_best_better`` (per candidate)
            when given.

    Returns:
        ``(chosen name, {name: score})``.

    Raises:
        ConfigError: no candidates, or no list has a positive.
    """
    judged = [c for c in lists if c.positives]
    if not candidates or not judged:
        raise ConfigError("teacher selection needs candidate teachers and dev lists with known positives")
    qrels = {c.query_id: {p: 1 for p in c.positives} for c in judged}
    if not 0.0 <= confidence < 1.0:
        raise ConfigError(f"teacher selection confidence={confidence} (need 0 <= c < 1; 0 picks the best score)")
    scores: dict[str, float] = {}
    per_query: dict[str, dict[str, float]] = {}
    for name, teacher in candidates.items():
        run = {}
        for c in judged:
            s = teacher.score(c.query, [corpus[d].full for d in c.doc_ids])
            run[c.query_id] = {d: float(v) for d, v in zip(c.doc_ids, s)}
        scores[name], per_query[name] = evaluate_run(qrels, run, metric)
    names = list(candidates)
    best = max(scores, key=lambda n: (scores[n], -names.index(n)))
    chosen = best
    p_best_better: dict[str, float] = {}
    if confidence > 0:
        for name in names:
            deltas = [per_query[best][q] - per_query[name][q] for q in qrels]
            p_best_better[name] = 0.0 if name == best else paired_bootstrap(deltas, seed=seed)[0]
        chosen = next(n for n in names if p_best_better[n] < confidence)
    if details is not None:
        details.update(best=best, p_best_better=p_best_better)
    logger.info("teacher selection (%s on %d dev queries): %s -> %s%s", metric, len(judged),
                {k: round(v, 4) for k, v in scores.items()}, chosen,
                f" (best score: {best}; P(best better) {', '.join(f'{k} {v:.2f}' for k, v in p_best_better.items())})"
                if chosen != best else "")
    return chosen, scores
