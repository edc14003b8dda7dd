"""Client-side fusion of ranked lists: reciprocal rank fusion and a normalized linear combination.

Elasticsearch's own RRF retriever is a licensed x-pack feature that is not present on every cluster,
so hybrid search fuses the BM25 and kNN result lists here, in the client. Two methods:

* **RRF** (Cormack, Clarke and Büttcher, SIGIR 2009): ``score(d) = sum_i w_i / (k + rank_i(d))``
  with ranks starting at 1 and ``k = 60``. Only ranks matter, so it needs no score calibration.
* **Linear combination** of min-max normalized scores: ``score(d) = sum_i w_i * norm_i(d)``, a
  document missing from a list contributing 0 for it. Scores do matter, which helps when one
  retriever is confidently right; the weights say how much each list counts.

**Score kinds.** Every hit esdistill returns names the scale of its score, one of
:data:`SCORE_KINDS`: ``knn_cosine01`` (Elasticsearch's kNN score for cosine similarity,
``(1 + cos) / 2`` in [0, 1]; ``knn_dot01``, ``knn_l2`` and ``knn_max_inner_product`` for the other
similarities), ``bm25`` (the lexical query's ``_score``, unbounded), ``rrf`` (at most
``n_lists / (k + 1)``, about 0.03 with two lists and ``k = 60``) and ``linear`` (in [0, 1] when the
weights sum to 1). A teacher's score is reported apart from the retrieval score (``rerank``).

**Per-query normalisation.** :func:`normalize_scores` puts one query's candidate scores on a common
scale (``zscore``, ``minmax``, ``rank``) before a weighted sum; an ensemble teacher does this for each
member, at training time (:mod:`esdistill.export.teachers`) and at query time
(:mod:`esdistill.plugin.teacher_rerank`) alike.

Each input list is a sequence of ``(doc_id, score)`` pairs, best first. The output is a list of
``(doc_id, fused_score)`` pairs, best first; ties are broken by the best rank the document had in
any input, then by id, so the result is deterministic::

    >>> reciprocal_rank_fusion([[("a", 9.0), ("b", 5.0)], [("b", 0.9), ("c", 0.8)]])[0][0]
    'b'
    >>> linear_combination([[("a", 2.0), ("b", 1.0)], [("b", 0.9)]], weights=[0.4, 0.6])[0]
    ('b', 0.6)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from esdistill.plugin._errors import ConfigError

__all__ = [
    "FUSION_METHODS",
    "RRF_K",
    "SCORE_KINDS",
    "SCORE_NORMALIZATIONS",
    "ScoredId",
    "fuse",
    "linear_combination",
    "min_max",
    "normalize_scores",
    "reciprocal_rank_fusion",
    "score_kind",
]

#: one entry of a ranked list: (document id, retrieval score)
ScoredId = tuple[str, float]

#: the ``k`` of reciprocal rank fusion recommended by its authors
RRF_K = 60
FUSION_METHODS = ("rrf", "linear")
#: Elasticsearch ``dense_vector`` similarity -> the kind of its kNN score
_KNN_KINDS = {"cosine": "knn_cosine01", "dot_product": "knn_dot01", "l2_norm": "knn_l2",
              "max_inner_product": "knn_max_inner_product"}
#: every score kind a hit may carry (``rerank`` is the teacher's, reported as ``rerank_score``)
SCORE_KINDS = (*_KNN_KINDS.values(), "bm25", *FUSION_METHODS, "rerank")
#: per-query normalisations of one list of scores (:func:`normalize_scores`)
SCORE_NORMALIZATIONS = ("zscore", "minmax", "rank", "none")


def score_kind(mode: str, *, fusion: str = "rrf", similarity: str = "cosine") -> str:
    """The kind of retrieval score a search in ``mode`` returns (see the module's score kinds).

    Example:
        >>> score_kind("knn"), score_kind("bm25"), score_kind("hybrid", fusion="linear")
        ('knn_cosine01', 'bm25', 'linear')
    """
    if mode == "hybrid":
        return fusion
    if mode == "bm25":
        return "bm25"
    return _KNN_KINDS.get(similarity, f"knn_{similarity}")


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * n
    out = [float(w) for w in weights]
    if len(out) != n:
        raise ConfigError(f"fusion got {n} ranked lists but {len(out)} weights; pass one weight per list")
    if any(not math.isfinite(w) or w < 0 for w in out):
        raise ConfigError(f"fusion weights must be finite and >= 0, got {out}")
    if not any(out):
        raise ConfigError("fusion weights are all 0: at least one list must count")
    return out


def _finish(scores: dict[str, float], best_rank: dict[str, int]) -> list[ScoredId]:
    return sorted(scores.items(), key=lambda item: (-item[1], best_rank[item[0]], item[0]))


def _best_ranks(lists: Sequence[Sequence[ScoredId]]) -> dict[str, int]:
    best: dict[str, int] = {}
    for ranked in lists:
        for rank, (doc_id, _) in enumerate(ranked, start=1):
            if rank < best.get(doc_id, rank + 1):
                best[doc_id] = rank
    return best


def reciprocal_rank_fusion(
    lists: Sequence[Sequence[ScoredId]], *, k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[ScoredId]:
    """Fuse ranked lists by reciprocal rank: ``sum_i w_i / (k + rank_i)``.

    Args:
        lists: ranked lists of ``(doc_id, score)``, best first (the scores are ignored). A document
            repeated within one list counts at its first (best) position only.
        k: the RRF constant (> 0); larger values flatten the head of each list.
        weights: one non-negative weight per list (default 1 each).

    Returns:
        ``(doc_id, fused_score)`` pairs, best first.

    Raises:
        ConfigError: ``k`` is not positive, or the weights do not fit the lists.

    Example:
        >>> reciprocal_rank_fusion([[("x", 1.0)], [("x", 2.0), ("y", 1.0)]], k=1)
        [('x', 1.0), ('y', 0.3333333333333333)]
    """
    if not k > 0:
        raise ConfigError(f"rrf k={k!r} must be > 0 (the usual value is {RRF_K})")
    ws = _weights(len(lists), weights)
    scores: dict[str, float] = {}
    for w, ranked in zip(ws, lists):
        seen: set[str] = set()
        for rank, (doc_id, _) in enumerate(ranked, start=1):
            if doc_id in seen:
                continue
            seen.add(doc_id)
            scores[doc_id] = scores.get(doc_id, 0.0) + w / (k + rank)
    return _finish(scores, _best_ranks(lists))


def min_max(ranked: Sequence[ScoredId]) -> dict[str, float]:
    """Min-max normalize one list's scores into ``[0, 1]`` (all 1.0 when the scores are equal).

    Example:
        >>> min_max([("a", 3.0), ("b", 1.0), ("c", 2.0)])
        {'a': 1.0, 'b': 0.0, 'c': 0.5}
    """
    out: dict[str, float] = {}
    if not ranked:
        return out
    values = [float(s) for _, s in ranked]
    lo, hi = min(values), max(values)
    span = hi - lo
    for (doc_id, _), v in zip(ranked, values):
        if doc_id not in out:
            out[doc_id] = (v - lo) / span if span > 0 else 1.0
    return out


def normalize_scores(scores: Sequence[float] | np.ndarray, method: str = "zscore") -> np.ndarray:
    """Per-query normalisation of one list of scores.

    Args:
        scores: the scores of one query's candidates.
        method: ``zscore`` (mean 0, std 1), ``minmax`` (to [0, 1]), ``rank`` (1 for the best down
            to 0 for the worst) or ``none``; equal scores all become 0 (``zscore``, ``minmax``).

    Returns:
        A float32 array of the same length.

    Raises:
        ConfigError: unknown method.

    Example:
        >>> normalize_scores([1.0, 2.0, 3.0], "minmax").tolist()
        [0.0, 0.5, 1.0]
    """
    if method not in SCORE_NORMALIZATIONS:
        raise ConfigError(f"unknown score normalisation {method!r}; choose from {SCORE_NORMALIZATIONS}")
    s = np.asarray(scores, dtype=np.float64)
    if method == "none" or s.size == 0:
        return s.astype(np.float32)
    if method == "zscore":
        std = s.std()
        out = (s - s.mean()) / std if std > 1e-12 else np.zeros_like(s)
    elif method == "minmax":
        span = s.max() - s.min()
        out = (s - s.min()) / span if span > 1e-12 else np.zeros_like(s)
    else:  # rank
        out = s.argsort().argsort() / max(len(s) - 1, 1)
    return out.astype(np.float32)


def linear_combination(
    lists: Sequence[Sequence[ScoredId]], *, weights: Sequence[float] | None = None
) -> list[ScoredId]:
    """Fuse ranked lists by a weighted sum of min-max normalized scores.

    Args:
        lists: ranked lists of ``(doc_id, score)``, best first; scores must be finite.
        weights: one non-negative weight per list (default 1 each). Hybrid search passes
            ``[1 - alpha, alpha]`` for (BM25, kNN).

    Returns:
        ``(doc_id, fused_score)`` pairs, best first.

    Raises:
        ConfigError: a score is not finite, or the weights do not fit the lists.

    Example:
        >>> linear_combination([[("a", 10.0), ("b", 0.0)], [("b", 0.7), ("a", 0.5)]], weights=[0.2, 0.8])
        [('b', 0.8), ('a', 0.2)]
    """
    ws = _weights(len(lists), weights)
    scores: dict[str, float] = {}
    for w, ranked in zip(ws, lists):
        if any(not math.isfinite(float(s)) for _, s in ranked):
            raise ConfigError("linear fusion needs finite scores; one of the lists holds NaN or inf")
        for doc_id, norm in min_max(ranked).items():
            scores[doc_id] = scores.get(doc_id, 0.0) + w * norm
    return _finish(scores, _best_ranks(lists))


def fuse(
    lists: Sequence[Sequence[ScoredId]],
    *,
    method: str = "rrf",
    rrf_k: int = RRF_K,
    weights: Sequence[float] | None = None,
) -> list[ScoredId]:
    """Fuse ranked lists with ``method`` (``"rrf"`` or ``"linear"``).

    Raises:
        ConfigError: unknown method, or bad parameters for it.

    Example:
        >>> [d for d, _ in fuse([[("a", 1.0)], [("b", 1.0)]], method="rrf", weights=[1, 2])]
        ['b', 'a']
    """
    if method == "rrf":
        return reciprocal_rank_fusion(lists, k=rrf_k, weights=weights)
    if method == "linear":
        return linear_combination(lists, weights=weights)
    raise ConfigError(f"fusion method {method!r} is unknown; use one of {FUSION_METHODS}")
