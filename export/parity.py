"""The parity gate: does the exported ONNX model still rank like its source?

optimum checks an fp32 export against the reference within an absolute tolerance and checks
nothing after quantization. This gate compares the source model (torch) with each exported variant
(fp32 and int8) on a sample of real texts and fails loudly, listing *every* broken threshold:

* bi-encoders: cosine between the source's and the export's embedding of each text (min, mean);
  top-10 overlap of a small retrieval over the sample (queries against the sample's documents, or
  documents against each other when there are no queries); nDCG@10 of that retrieval under qrels.
* cross-encoders: Pearson correlation and largest difference of the scores of query-document pairs,
  top-10 overlap of each query's reranked candidates, and nDCG@10 under qrels.

Example::

    >>> sample = ParitySample.from_collection("data/scifact", max_docs=500)       # doctest: +SKIP
    >>> metrics = bi_encoder_metrics(sample, ref_docs, cand_docs, ref_q, cand_q)   # doctest: +SKIP
    >>> failures = check_variant("int8", "bi-encoder", metrics, ParityThresholds())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.encoder import l2_normalize
from esdistill.plugin.evaluate import compute_metrics

__all__ = [
    "BUILTIN_TEXTS",
    "ParitySample",
    "ParityThresholds",
    "bi_encoder_metrics",
    "check_variant",
    "cross_encoder_metrics",
    "ndcg_at_10",
    "parse_threshold_overrides",
]

logger = logging.getLogger(__name__)

#: used only when no sample of the user's texts is given (a warning says so)
BUILTIN_TEXTS = (
    "The mitochondrion is the organelle that produces most of the cell's chemical energy.",
    "Vaccination with live attenuated virus induces both humoral and cellular immunity.",
    "Elasticsearch stores documents in shards that are replicated across the nodes of a cluster.",
    "The central bank raised interest rates by a quarter point to curb persistent inflation.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "A hash table gives expected constant-time lookups when its load factor stays bounded.",
    "The treaty ended the war and redrew the borders of several European states.",
    "Regular aerobic exercise lowers resting blood pressure in adults with hypertension.",
    "The recipe calls for two cups of flour, a pinch of salt and cold butter cut into cubes.",
    "Transformer models replace recurrence with self-attention over all positions of a sequence.",
    "Glaciers retreat when summer melting exceeds the accumulation of winter snow.",
    "The defendant appealed the verdict, arguing that the jury had been improperly instructed.",
    "Statins reduce LDL cholesterol by inhibiting HMG-CoA reductase in the liver.",
    "The striker scored twice in the second half to win the cup final.",
    "Quantum entanglement links the measurement outcomes of particles separated in space.",
    "Dense retrieval encodes queries and passages into vectors and ranks by inner product.",
    "The museum's new wing displays impressionist paintings on loan from private collections.",
    "Insulin resistance precedes the onset of type 2 diabetes by several years.",
    "A binary search halves the remaining interval at each step of the lookup.",
    "Coral reefs bleach when warm water makes them expel their symbiotic algae.",
    "The company reported quarterly revenue above analysts' expectations and raised its guidance.",
    "Antibiotic resistance spreads between bacteria through horizontal gene transfer.",
    "The orchestra performed the symphony without a conductor for the first time.",
    "Gradient descent updates the parameters in the direction that decreases the loss.",
    "Volcanic eruptions inject sulfur dioxide into the stratosphere and cool the climate briefly.",
    "Tenants must give the landlord written notice sixty days before the lease ends.",
    "The enzyme's active site binds the substrate and lowers the activation energy of the reaction.",
    "Remote work changed commuting patterns and the demand for office space in large cities.",
    "Bilingual children switch between languages depending on the listener.",
    "The bridge was closed after inspectors found cracks in two of its steel girders.",
    "What is the boiling point of water at high altitude?",
    "How do vaccines train the immune system?",
    "best way to reduce inflation without a recession",
    "symptoms of vitamin D deficiency in adults",
    "Does exercise lower blood pressure?",
    "how does self attention work in transformers",
    "causes of coral bleaching",
    "Which enzyme do statins inhibit?",
)


# --------------------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class ParityThresholds:
    """Limits an export must respect (change any of them on purpose: ``--threshold NAME=VALUE``).

    ``*_min_*`` values are lower bounds, ``*_max_*`` values upper bounds; cosines, overlaps and
    correlations are in [0, 1], nDCG drops are absolute (0.01 = one point of nDCG@10).

    Attributes:
        fp32_min_cosine: smallest cosine between source and fp32 embeddings of the same text.
        int8_min_cosine: the same for int8.
        int8_min_mean_cosine: mean cosine for int8.
        fp32_min_top10_overlap: mean share of the source's top-10 that fp32 also ranks top-10.
        int8_min_top10_overlap: the same for int8.
        fp32_max_ndcg10_drop: largest allowed drop of nDCG@10 (when qrels are given), fp32.
        int8_max_ndcg10_drop: the same for int8.
        fp32_min_score_pearson: cross-encoders: Pearson correlation of pair scores, fp32.
        int8_min_score_pearson: the same for int8.
    """

    fp32_min_cosine: float = 0.999
    int8_min_cosine: float = 0.97
    int8_min_mean_cosine: float = 0.99
    fp32_min_top10_overlap: float = 0.95
    int8_min_top10_overlap: float = 0.8
    fp32_max_ndcg10_drop: float = 0.002
    int8_max_ndcg10_drop: float = 0.01
    fp32_min_score_pearson: float = 0.999
    int8_min_score_pearson: float = 0.98

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{f.name}={value!r} (expected a number)")
            elif not 0.0 <= float(value) <= 1.0:
                problems.append(f"{f.name}={value!r} (expected a value in [0, 1])")
        if problems:
            raise ConfigError("invalid parity thresholds: " + "; ".join(problems))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def parse_threshold_overrides(items: Sequence[str], base: ParityThresholds | None = None) -> ParityThresholds:
    """Apply ``NAME=VALUE`` overrides (from ``--threshold``) to ``base`` (default thresholds).

    Raises:
        ConfigError: an unknown name, a missing ``=``, or a value that is not a number in [0, 1].
    """
    values = (base or ParityThresholds()).to_dict()
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in values:
            raise ConfigError(f"--threshold {item!r}: expected NAME=VALUE with NAME one of {sorted(values)}")
        try:
            values[name] = float(raw)
        except ValueError:
            raise ConfigError(f"--threshold {item!r}: {raw!r} is not a number") from None
    return ParityThresholds(**values)


# --------------------------------------------------------------------------------------- the sample
@dataclass
class ParitySample:
    """The texts the gate compares on.

    Attributes:
        docs: ``{doc_id: text}``.
        queries: ``{query_id: text}`` (may be empty).
        qrels: ``{query_id: {doc_id: grade}}`` restricted to ``docs`` (may be empty).
        origin: where the texts came from (recorded in ``parity.json``).
    """

    docs: dict[str, str]
    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    origin: str = "texts"

    def __post_init__(self) -> None:
        if len(self.docs) < 2:
            raise ConfigError(f"the parity sample has {len(self.docs)} text(s); give at least 2 (better: "
                              "a few hundred real texts from your corpus)")
        self.qrels = {q: {d: g for d, g in rels.items() if d in self.docs}
                      for q, rels in self.qrels.items() if q in self.queries}
        self.qrels = {q: r for q, r in self.qrels.items() if any(g > 0 for g in r.values())}

    @classmethod
    def from_inputs(cls, texts: Sequence[str] | Mapping[str, str] | None, *,
                    queries: Sequence[str] | Mapping[str, str] | None = None,
                    qrels: Mapping[str, Mapping[str, int]] | None = None) -> ParitySample:
        """Build from texts given in code; without texts, a small built-in sample (with a warning).

        Raises:
            ConfigError: qrels without queries, or qrels with texts given as a plain list.
        """
        if texts is None:
            logger.warning("no parity texts given: checking on %d built-in texts; pass a sample of your "
                           "own corpus (--parity-collection) for a meaningful gate", len(BUILTIN_TEXTS))
            docs = {str(i): t for i, t in enumerate(BUILTIN_TEXTS)}
            origin = "builtin"
        elif isinstance(texts, Mapping):
            docs, origin = {str(k): str(v) for k, v in texts.items()}, "texts"
        else:
            docs, origin = {str(i): str(t) for i, t in enumerate(texts)}, "texts"
        if queries is None:
            qs: dict[str, str] = {}
        elif isinstance(queries, Mapping):
            qs = {str(k): str(v) for k, v in queries.items()}
        else:
            qs = {str(i): str(t) for i, t in enumerate(queries)}
        if qrels and not qs:
            raise ConfigError("parity qrels were given without parity queries; pass both (or neither)")
        if qrels and not isinstance(texts, Mapping):
            raise ConfigError("parity qrels need the texts as a {doc_id: text} mapping so ids can match")
        rels = {str(q): {str(d): int(g) for d, g in r.items()} for q, r in (qrels or {}).items()}
        return cls(docs=docs, queries=qs, qrels=rels, origin=origin)

    @classmethod
    def from_collection(cls, folder: str | os.PathLike[str], *, max_docs: int = 1000, max_queries: int = 200,
                        split: str = "test", seed: int = 13) -> ParitySample:
        """Sample a BEIR-layout collection: queries with qrels, their relevant documents, and others.

        Every sampled query's relevant documents are kept (so nDCG@10 is meaningful), then random
        other documents fill the sample up to ``max_docs``.

        Raises:
            ConfigError: the folder lacks a corpus, or ``max_docs``/``max_queries`` is not positive.
        """
        from esdistill.plugin.beir import load_corpus, load_qrels, load_queries

        if max_docs < 2 or max_queries < 0:
            raise ConfigError(f"max_docs={max_docs}, max_queries={max_queries}: expected max_docs >= 2 "
                              "and max_queries >= 0")
        root = Path(folder)
        corpus = load_corpus(root)
        rng = random.Random(seed)
        queries: dict[str, str] = {}
        qrels: dict[str, dict[str, int]] = {}
        qrels_path = root / "qrels" / f"{split}.tsv"
        if (root / "queries.jsonl").is_file() and qrels_path.is_file() and max_queries > 0:
            all_queries = load_queries(root / "queries.jsonl")
            all_qrels = load_qrels(qrels_path)
            qids = sorted(q for q in all_qrels if q in all_queries
                          and any(d in corpus and g > 0 for d, g in all_qrels[q].items()))
            rng.shuffle(qids)
            budget = max_docs // 2  # leave room for documents that are not relevant
            chosen_docs: set[str] = set()
            for q in qids:
                if len(queries) >= max_queries:
                    break
                rel = {d for d, g in all_qrels[q].items() if d in corpus and g > 0}
                if len(chosen_docs | rel) > budget:
                    continue
                chosen_docs |= rel
                queries[q] = all_queries[q]
                qrels[q] = {d: g for d, g in all_qrels[q].items() if d in corpus}
        else:
            chosen_docs = set()
        others = [d for d in corpus if d not in chosen_docs]
        rng.shuffle(others)
        ids = sorted(chosen_docs) + others[: max(0, max_docs - len(chosen_docs))]
        docs = {d: corpus[d].full for d in ids}
        return cls(docs=docs, queries=queries, qrels=qrels, origin=f"collection:{root}")

    def summary(self) -> dict[str, Any]:
        return {"origin": self.origin, "docs": len(self.docs), "queries": len(self.queries),
                "judged_queries": len(self.qrels)}


# --------------------------------------------------------------------------------------- metrics
def ndcg_at_10(ranked: Sequence[str], rels: Mapping[str, int]) -> float:
    """nDCG@10 of one ranking (best first) against its graded judgements, measured the way
    ``esdistill eval`` measures it (:func:`~esdistill.plugin.evaluate.compute_metrics`)."""
    run = {"q": {d: float(len(ranked) - i) for i, d in enumerate(dict.fromkeys(ranked))}}
    return compute_metrics(run, {"q": dict(rels)})[0]["ndcg@10"]


def _top_ids(scores: np.ndarray, ids: Sequence[str], k: int, exclude: int | None = None) -> list[str]:
    s = np.array(scores, dtype=np.float64, copy=True)
    if exclude is not None:
        s[exclude] = -np.inf
    k = min(k, len(ids) - (1 if exclude is not None else 0))
    top = np.argsort(-s, kind="stable")[:k]
    return [ids[i] for i in top]


def _unit(x: np.ndarray) -> np.ndarray:
    return l2_normalize(np.asarray(x, dtype=np.float64))


def _scores(queries: np.ndarray, docs: np.ndarray, similarity: str) -> np.ndarray:
    q, d = np.asarray(queries, np.float64), np.asarray(docs, np.float64)
    if similarity == "cosine":
        return _unit(q) @ _unit(d).T
    if similarity == "l2_norm":
        return -(np.sum(q**2, 1)[:, None] - 2 * q @ d.T + np.sum(d**2, 1)[None, :])
    return q @ d.T


def bi_encoder_metrics(sample: ParitySample, ref_docs: np.ndarray, cand_docs: np.ndarray,
                       ref_queries: np.ndarray | None = None, cand_queries: np.ndarray | None = None,
                       *, similarity: str = "cosine", max_self_queries: int = 100) -> dict[str, float]:
    """Cosine agreement, top-10 overlap and (with qrels) nDCG@10 of source vs candidate embeddings.

    Args:
        sample: the texts (document order = ``sample.docs`` order; query order = ``sample.queries``).
        ref_docs / cand_docs: document embeddings from the source and the export.
        ref_queries / cand_queries: query embeddings (when the sample has queries).
        similarity: the Elasticsearch similarity the model is indexed with.
        max_self_queries: without queries, how many documents act as queries.

    Returns:
        ``cosine_min``, ``cosine_mean``, ``top10_overlap`` and, with qrels, ``ndcg10_source``,
        ``ndcg10`` and ``ndcg10_delta`` (export minus source).
    """
    cos = np.sum(_unit(ref_docs) * _unit(cand_docs), axis=1)
    if ref_queries is not None and cand_queries is not None and len(ref_queries):
        qcos = np.sum(_unit(ref_queries) * _unit(cand_queries), axis=1)
        cos = np.concatenate([cos, qcos])
    out: dict[str, float] = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
    doc_ids = list(sample.docs)
    if sample.queries and ref_queries is not None and cand_queries is not None:
        ref_s = _scores(ref_queries, ref_docs, similarity)
        cand_s = _scores(cand_queries, cand_docs, similarity)
        exclude: list[int | None] = [None] * len(ref_s)
    else:
        n = min(max_self_queries, len(doc_ids))
        ref_s = _scores(ref_docs[:n], ref_docs, similarity)
        cand_s = _scores(cand_docs[:n], cand_docs, similarity)
        exclude = list(range(n))
    overlaps = []
    for i in range(len(ref_s)):
        a = _top_ids(ref_s[i], doc_ids, 10, exclude[i])
        b = _top_ids(cand_s[i], doc_ids, 10, exclude[i])
        overlaps.append(len(set(a) & set(b)) / max(1, len(a)))
    out["top10_overlap"] = float(np.mean(overlaps))
    if sample.qrels and ref_queries is not None and cand_queries is not None:
        qids = list(sample.queries)
        judged = [i for i, q in enumerate(qids) if q in sample.qrels]
        src = [ndcg_at_10(_top_ids(ref_s[i], doc_ids, 10), sample.qrels[qids[i]]) for i in judged]
        got = [ndcg_at_10(_top_ids(cand_s[i], doc_ids, 10), sample.qrels[qids[i]]) for i in judged]
        out["ndcg10_source"] = float(np.mean(src))
        out["ndcg10"] = float(np.mean(got))
        out["ndcg10_delta"] = out["ndcg10"] - out["ndcg10_source"]
    return out


def cross_encoder_pairs(sample: ParitySample, *, candidates: int = 20, max_queries: int = 50,
                        seed: int = 13) -> list[tuple[str, list[str]]]:
    """Candidate lists ``[(query_id, [doc_id, ...])]`` for a cross-encoder comparison.

    With queries, each gets its relevant documents plus random others; without, the first words of a
    document act as its query.
    """
    rng = random.Random(seed)
    doc_ids = list(sample.docs)
    lists: list[tuple[str, list[str]]] = []
    if sample.queries:
        for q in list(sample.queries)[:max_queries]:
            rel = [d for d, g in sample.qrels.get(q, {}).items() if g > 0][:candidates]
            pool_ids = [d for d in doc_ids if d not in rel]
            lists.append((q, rel + rng.sample(pool_ids, min(len(pool_ids), candidates - len(rel)))))
    else:
        for i, d in enumerate(doc_ids[:max_queries]):
            pool_ids = [x for x in doc_ids if x != d]
            lists.append((f"doc:{d}", [d] + rng.sample(pool_ids, min(len(pool_ids), candidates - 1))))
    return lists


def query_text(sample: ParitySample, qid: str) -> str:
    """The query text of a candidate list (a document's first 12 words for ``doc:`` ids)."""
    if qid.startswith("doc:") and qid not in sample.queries:
        return " ".join(sample.docs[qid[4:]].split()[:12])
    return sample.queries[qid]


def cross_encoder_metrics(sample: ParitySample, lists: Sequence[tuple[str, list[str]]],
                          ref_scores: Sequence[np.ndarray], cand_scores: Sequence[np.ndarray]) -> dict[str, float]:
    """Score agreement, rerank top-10 overlap and (with qrels) nDCG@10 of source vs candidate scores."""
    ref_all = np.concatenate([np.asarray(s, np.float64) for s in ref_scores])
    cand_all = np.concatenate([np.asarray(s, np.float64) for s in cand_scores])
    if np.std(ref_all) > 0 and np.std(cand_all) > 0:
        pearson = float(np.corrcoef(ref_all, cand_all)[0, 1])
    else:
        pearson = 1.0 if np.allclose(ref_all, cand_all) else 0.0
    out = {"score_pearson": pearson, "score_max_abs_diff": float(np.max(np.abs(ref_all - cand_all)))}
    overlaps, src, got = [], [], []
    for (qid, ids), r, c in zip(lists, ref_scores, cand_scores):
        a, b = _top_ids(np.asarray(r), ids, 10), _top_ids(np.asarray(c), ids, 10)
        overlaps.append(len(set(a) & set(b)) / max(1, len(a)))
        if qid in sample.qrels:
            src.append(ndcg_at_10(a, sample.qrels[qid]))
            got.append(ndcg_at_10(b, sample.qrels[qid]))
    out["top10_overlap"] = float(np.mean(overlaps))
    if src:
        out["ndcg10_source"], out["ndcg10"] = float(np.mean(src)), float(np.mean(got))
        out["ndcg10_delta"] = out["ndcg10"] - out["ndcg10_source"]
    return out


# --------------------------------------------------------------------------------------- the gate
def check_variant(variant: str, kind: str, metrics: Mapping[str, float], thresholds: ParityThresholds) -> list[str]:
    """Every threshold ``metrics`` of ``variant`` (``fp32``/``int8``) breaks, one line each."""
    t = thresholds.to_dict()
    rules: list[tuple[str, str, Callable[[float, float], bool], str]] = []
    if kind == "bi-encoder":
        rules.append(("cosine_min", f"{variant}_min_cosine", lambda v, lim: v >= lim, ">="))
        if f"{variant}_min_mean_cosine" in t:
            rules.append(("cosine_mean", f"{variant}_min_mean_cosine", lambda v, lim: v >= lim, ">="))
    else:
        rules.append(("score_pearson", f"{variant}_min_score_pearson", lambda v, lim: v >= lim, ">="))
    rules.append(("top10_overlap", f"{variant}_min_top10_overlap", lambda v, lim: v >= lim, ">="))
    failures = []
    for metric, name, ok, op in rules:
        if metric in metrics and not ok(metrics[metric], t[name]):
            failures.append(f"{variant}: {metric} = {metrics[metric]:.5f}, required {op} {t[name]} ({name})")
    if "ndcg10_delta" in metrics:
        limit = t[f"{variant}_max_ndcg10_drop"]
        if -metrics["ndcg10_delta"] > limit:
            failures.append(f"{variant}: nDCG@10 dropped by {-metrics['ndcg10_delta']:.4f} "
                            f"({metrics['ndcg10_source']:.4f} -> {metrics['ndcg10']:.4f}), allowed "
                            f"{limit} ({variant}_max_ndcg10_drop)")
    return failures
