"""Evaluate a live index: run a BEIR collection's queries through the query hook and score the runs.

Effectiveness is computed by `ir-measures <https://ir-measur.es>`_ (which runs pytrec_eval, the
reference ``trec_eval`` implementation), not by hand: nDCG@10, Recall@100 and MRR@10 (``RR@10``).
A query the index answers with nothing scores 0 (it is not dropped, as a bare pytrec_eval run
would). Efficiency is the latency of each sequential query, end to end (embedding, Elasticsearch,
fusion, rerank), summarised as percentiles.

ir-measures is an optional dependency (the ``eval`` extra); it is imported only when metrics are
computed, and its absence gives the install command::

    >>> coll = load_beir("data/scifact", split="test")          # doctest: +SKIP
    >>> report = evaluate(hook, coll, mode="hybrid", k=100)               # doctest: +SKIP
    >>> report.metrics["ndcg@10"], report.latency_ms["p50"]               # doctest: +SKIP
    (0.689, 12.4)
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import load_qrels, load_queries

__all__ = [
    "Collection",
    "EvalReport",
    "QrelsCoverage",
    "compute_metrics",
    "evaluate",
    "latency_summary",
    "load_beir",
    "qrels_coverage",
    "require_ir_measures",
]

logger = logging.getLogger(__name__)

#: the measures reported, by their names in reports (and in ``esdistill eval --json``)
MEASURES = {"ndcg@10": "nDCG@10", "recall@100": "R@100", "mrr@10": "RR@10"}


@dataclass
class Collection:
    """Queries and relevance judgements of one split of a BEIR-layout collection.

    Attributes:
        name: the collection folder's name.
        split: the qrels split (``test``, ``dev``, ``train``).
        queries: query id -> text, only queries with at least one relevant document.
        qrels: query id -> {document id -> relevance grade}.
    """

    name: str
    split: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(folder: str | os.PathLike[str], *, split: str = "test") -> Collection:
    """Read ``queries.jsonl`` and ``qrels/<split>.tsv`` of a BEIR-layout collection.

    Args:
        folder: the collection folder.
        split: which qrels file.

    Returns:
        A :class:`Collection` with the split's judged queries, in qrels order.

    Raises:
        ConfigError: a file is missing or malformed (the message names the file and line).
    """
    root = Path(folder)
    qrels_path = root / "qrels" / f"{split}.tsv"
    queries_path = root / "queries.jsonl"
    for p in (qrels_path, queries_path):
        if not p.is_file():
            have = sorted(x.stem for x in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
            raise ConfigError(f"{p} does not exist; a BEIR collection folder holds queries.jsonl and "
                              f"qrels/<split>.tsv (splits here: {have or 'none'})")
    qrels = {q: docs for q, docs in load_qrels(qrels_path).items() if any(g > 0 for g in docs.values())}
    texts = load_queries(queries_path)
    missing = [q for q in qrels if q not in texts]
    if missing:
        raise ConfigError(f"{len(missing)} judged queries of {qrels_path} are not in {queries_path} "
                          f"(e.g. {missing[:3]})")
    if not qrels:
        raise ConfigError(f"{qrels_path} has no query with a relevant document")
    queries = {q: texts[q] for q in qrels}
    return Collection(name=root.name, split=split, queries=queries, qrels=qrels)


@dataclass
class QrelsCoverage:
    """How many of the judged documents are in the index.

    A document the qrels call relevant but the index does not hold can never be retrieved, so a
    partial index silently lowers every metric; :func:`qrels_coverage` measures it.

    Attributes:
        judged: distinct documents the qrels grade as relevant.
        found: how many of them the index holds.
        missing_examples: a few of the missing ids.
    """

    judged: int
    found: int
    missing_examples: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.found / self.judged if self.judged else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"judged": self.judged, "found": self.found, "share": round(self.share, 4),
                "missing_examples": list(self.missing_examples)}

    def warning(self, index: str) -> str | None:
        """A sentence to show when some judged documents are missing (``None`` when all are there)."""
        if self.found == self.judged:
            return None
        return (f"{self.judged - self.found} of the {self.judged} judged relevant documents are not in index "
                f"{index!r} (found {self.share:.1%}, e.g. {', '.join(self.missing_examples)}): every metric is "
                "lower than the model's real quality; ingest the whole collection first")


def qrels_coverage(client: Any, index: str, qrels: Mapping[str, Mapping[str, int]], *,
                   batch: int = 1000) -> QrelsCoverage:
    """Look up every document the qrels grade as relevant (grade > 0) in ``index``.

    Example:
        >>> qrels_coverage(client, "scifact", collection.qrels).share     # doctest: +SKIP
        1.0
    """
    ids = sorted({d for docs in qrels.values() for d, grade in docs.items() if grade > 0})
    found = 0
    missing: list[str] = []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        resp = client.mget(index=index, ids=chunk, source=False)
        for doc in resp["docs"]:
            if doc.get("found"):
                found += 1
            elif len(missing) < 5:
                missing.append(doc["_id"])
    return QrelsCoverage(judged=len(ids), found=found, missing_examples=missing)


def require_ir_measures() -> Any:
    """Import ir-measures, or explain how to install it.

    Raises:
        ConfigError: ir-measures is not installed.
    """
    try:
        import ir_measures
    except ImportError:
        raise ConfigError(
            "evaluation needs ir-measures (with pytrec_eval); install the eval extra: "
            "pip install 'esdistill[eval]'"
        ) from None
    return ir_measures


def compute_metrics(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """nDCG@10, Recall@100 and MRR@10 of ``run`` against ``qrels`` (with ir-measures).

    Args:
        run: query id -> {document id -> score} (higher = better).
        qrels: query id -> {document id -> grade}; every query here counts, a query absent from
            ``run`` (or with an empty result) scores 0.

    Returns:
        ``(aggregate, per_query)``: the means, and query id -> {measure -> value}.

    Raises:
        ConfigError: ir-measures is missing.

    Example:
        >>> agg, _ = compute_metrics({"q": {"d1": 2.0, "d2": 1.0}}, {"q": {"d2": 1}})
        >>> round(agg["mrr@10"], 2)
        0.5
    """
    irm = require_ir_measures()
    measures = {name: irm.parse_measure(spec) for name, spec in MEASURES.items()}
    by_measure = {str(m): name for name, m in measures.items()}
    per_query: dict[str, dict[str, float]] = {q: {name: 0.0 for name in MEASURES} for q in qrels}
    nonempty = {q: dict(docs) for q, docs in run.items() if docs and q in qrels}
    if nonempty:
        for metric in irm.iter_calc(list(measures.values()), dict(qrels), nonempty):
            per_query[metric.query_id][by_measure[str(metric.measure)]] = float(metric.value)
    n = max(len(per_query), 1)
    aggregate = {name: sum(v[name] for v in per_query.values()) / n for name in MEASURES}
    return aggregate, per_query


def latency_summary(ms: Any) -> dict[str, float]:
    """p50/p95/p99, mean and max of latencies in milliseconds (linear interpolation).

    Example:
        >>> latency_summary([1, 2, 3, 4])["p50"]
        2.5
    """
    arr = np.asarray(list(ms), dtype=np.float64)
    if arr.size == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(arr.mean()),
            "max": float(arr.max())}


@dataclass
class EvalReport:
    """What :func:`evaluate` measured.

    Attributes:
        metrics: ``ndcg@10``, ``recall@100``, ``mrr@10``.
        queries: queries evaluated.
        mode: retrieval mode.
        rerank: whether the teacher rerank was asked for.
        k: hits retrieved per query.
        latency_ms: end-to-end latency percentiles per query.
        stage_ms: mean milliseconds per stage (embed, es, fuse, rerank, total).
        rerank_outcomes: how many queries were reranked ``full``/``partial``/``none``.
        collection / split / index: what was evaluated.
        per_query: query id -> measures (only when asked for).
    """

    metrics: dict[str, float]
    queries: int
    mode: str
    rerank: bool
    k: int
    latency_ms: dict[str, float]
    stage_ms: dict[str, float]
    rerank_outcomes: dict[str, int] = field(default_factory=dict)
    collection: str = ""
    split: str = ""
    index: str = ""
    per_query: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON form: the metric names are top-level keys (``"ndcg@10"``, ...)."""
        out = dict(self.metrics)
        body = asdict(self)
        body.pop("metrics")
        if body["per_query"] is None:
            body.pop("per_query")
        out.update(body)
        return out


def evaluate(
    hook: Any,
    collection: Collection,
    *,
    k: int = 100,
    mode: str = "knn",
    rerank: bool = False,
    budget_ms: float | None = None,
    limit: int | None = None,
    warmup: int = 3,
    progress: bool | None = None,
    per_query: bool = False,
) -> EvalReport:
    """Run every judged query through ``hook.search`` sequentially and score the results.

    Args:
        hook: a :class:`~esdistill.plugin.query.QueryHook`.
        collection: from :func:`load_beir`.
        k: hits per query (Recall@100 needs ``k >= 100``).
        mode: ``knn``, ``hybrid`` or ``bm25``.
        rerank: rerank with the hook's teacher.
        budget_ms: per-query budget for the rerank.
        limit: evaluate only the first ``limit`` queries.
        warmup: untimed queries run first (warm caches and connections; their texts are not the
            collection's, so the embedding cache gives the measured queries no advantage).
        progress: show a progress bar (default: when stderr is a terminal).
        per_query: keep per-query measures in the report.

    Returns:
        An :class:`EvalReport`.

    Raises:
        ConfigError: bad arguments, or ir-measures is missing (checked before any query runs).
    """
    require_ir_measures()
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit} must be >= 1")
    items = list(collection.queries.items())[:limit]
    if k < 100:
        logger.warning("k=%d < 100: Recall@100 only sees the top %d hits", k, k)
    for i in range(max(0, warmup)):
        hook.search(f"warm-up query number {i}", k=k, mode=mode, rerank=rerank, budget_ms=budget_ms)
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    run: dict[str, dict[str, float]] = {}
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    outcomes: Counter[str] = Counter()
    for qid, text in tqdm(items, desc=f"eval {mode}{'+rerank' if rerank else ''}", unit="q", disable=not show):
        resp = hook.search(text, k=k, mode=mode, rerank=rerank, budget_ms=budget_ms)
        n = len(resp.hits)
        run[qid] = {h.id: float(n - i) for i, h in enumerate(resp.hits)}  # final order, not raw scores
        totals.append(resp.timings["total"])
        for name, value in resp.timings.items():
            stages.setdefault(name, []).append(value)
        if rerank:
            outcomes[resp.rerank.reranked] += 1
    qrels = {q: collection.qrels[q] for q, _ in items}
    aggregate, pq = compute_metrics(run, qrels)
    return EvalReport(
        metrics=aggregate, queries=len(items), mode=mode, rerank=rerank, k=k,
        latency_ms=latency_summary(totals),
        stage_ms={name: float(np.mean(v)) for name, v in stages.items()},
        rerank_outcomes=dict(outcomes), collection=collection.name, split=collection.split,
        index=getattr(hook, "index", ""), per_query=pq if per_query else None,
    )
