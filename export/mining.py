"""Hard candidates per query: BM25 (Elasticsearch) and dense retrieval, fused, scored by the teacher.

For each training query the miner retrieves a pool from BM25 and from the student's dense
embeddings, fuses the two rankings (reciprocal rank fusion), lets the teacher score the pool, and
keeps a list of ``list_size`` candidates: the known positives, the teacher's top of the pool (the
hard candidates whose order carries the knowledge) and a few sampled from deeper in the pool.
Candidates the teacher scores at least as high as a known positive are flagged as likely false
negatives (RocketQA's denoising): contrastive losses must not push them away, listwise losses keep
them with the teacher's score.

Example::

    >>> with Bm25Index(es, corpus, prefix="esdistill-train-") as bm25:        # doctest: +SKIP
    ...     lists = mine_candidates(queries, corpus, teacher=t, bm25=bm25, dense=dense)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.plugin._errors import ConfigError, ElasticsearchUnavailable
from esdistill.plugin.beir import Doc
from esdistill.plugin.fusion import reciprocal_rank_fusion

__all__ = [
    "Bm25Index",
    "CandidateList",
    "DenseRetriever",
    "MiningConfig",
    "load_lists",
    "mine_candidates",
    "retrieve_pools",
    "save_lists",
]

logger = logging.getLogger(__name__)


class Bm25Index:
    """A temporary Elasticsearch BM25 index of a corpus (``standard`` analyzer), for mining and the
    BM25 teacher. Use it as a context manager: the index is deleted on exit unless ``keep``.

    Args:
        client: an ``elasticsearch.Elasticsearch`` client.
        corpus: ``{doc_id: Doc}``.
        prefix: index-name prefix (a random suffix is added).
        k1: BM25 ``k1``.
        b: BM25 ``b``.
        keep: keep the index after ``close()``.
        hidden: ids that are indexed (so the BM25 teacher can score them) but never returned by a
            search (e.g. training copies of documents with a passage cut out).

    Raises:
        ElasticsearchUnavailable: the index cannot be created or filled.
    """

    def __init__(self, client: Any, corpus: Mapping[str, Doc], *, prefix: str = "esdistill-train-",
                 k1: float = 0.9, b: float = 0.4, keep: bool = False, hidden: Iterable[str] = ()) -> None:
        self.client = client
        self.corpus = corpus
        self.k1, self.b, self.keep = k1, b, keep
        self.hidden = frozenset(hidden)
        self.name = f"{prefix}bm25-{uuid.uuid4().hex[:8]}"
        h = hashlib.sha256(json.dumps(["standard", k1, b]).encode())
        self._by_text: dict[str, str] = {}
        for doc_id, doc in corpus.items():
            h.update(f"{doc_id}\0{doc.full}\0".encode())
            self._by_text.setdefault(doc.full, doc_id)
        self.fingerprint = h.hexdigest()
        self._created = False

    def __enter__(self) -> Bm25Index:  # noqa: PYI034
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def id_of_text(self, text: str) -> str | None:
        """The id of the document whose text is ``text`` (``None`` when unknown)."""
        return self._by_text.get(text)

    def create(self) -> None:
        """Create the index and bulk-load the corpus."""
        from elasticsearch import ApiError, TransportError, helpers

        body = {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1",
                         "similarity": {"default": {"type": "BM25", "k1": self.k1, "b": self.b}}},
            "mappings": {"dynamic": False, "properties": {"body": {"type": "text", "analyzer": "standard"},
                                                          "hidden": {"type": "boolean"}}},
        }
        try:
            self.client.indices.create(index=self.name, settings=body["settings"], mappings=body["mappings"])
            self._created = True
            actions = ({"_index": self.name, "_id": did,
                        "_source": {"body": d.full, **({"hidden": True} if did in self.hidden else {})}}
                       for did, d in self.corpus.items())
            for ok, item in helpers.streaming_bulk(self.client, actions, chunk_size=500, max_retries=3,
                                                   raise_on_error=False):
                if not ok:
                    raise ElasticsearchUnavailable(f"bulk indexing into {self.name} failed: {item}")
            self.client.indices.refresh(index=self.name)
        except (ApiError, TransportError) as exc:
            self.close()
            raise ElasticsearchUnavailable(f"cannot build the BM25 index {self.name}: {exc}") from None
        logger.info("BM25 index %s: %d documents", self.name, len(self.corpus))

    def close(self) -> None:
        """Delete the index (unless ``keep``)."""
        if self._created and not self.keep:
            self.client.indices.delete(index=self.name, ignore_unavailable=True)
            self._created = False

    def search_many(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(doc_id, score)`` per query, through ``_msearch`` in chunks."""
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(queries), 64):
            searches: list[dict[str, Any]] = []
            for q in queries[start:start + 64]:
                searches.append({"index": self.name})
                query: dict[str, Any] = {"match": {"body": q[:8000]}}
                if self.hidden:
                    query = {"bool": {"must": query, "must_not": {"term": {"hidden": True}}}}
                searches.append({"query": query, "size": k, "_source": False})
            resp = self.client.msearch(searches=searches)
            for r in resp["responses"]:
                if "error" in r:
                    raise ElasticsearchUnavailable(f"BM25 search on {self.name} failed: {r['error']}")
                out.append([(h["_id"], float(h["_score"])) for h in r["hits"]["hits"]])
        return out

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Top-``k`` ``(doc_id, score)`` for one query."""
        return self.search_many([query], k)[0]

    def score_ids(self, query: str, doc_ids: Sequence[str]) -> dict[str, float]:
        """BM25 scores of ``query`` for the given documents (documents without a match are absent)."""
        resp = self.client.search(index=self.name, size=len(doc_ids), source=False, query={
            "bool": {"must": {"match": {"body": query[:8000]}}, "filter": {"ids": {"values": list(doc_ids)}}}})
        return {h["_id"]: float(h["_score"]) for h in resp["hits"]["hits"]}


class DenseRetriever:
    """Exact dense retrieval over in-memory document embeddings (the student's, by default).

    Args:
        doc_ids: ids in the order of ``doc_vectors``.
        doc_vectors: ``(n, d)`` L2-normalised document embeddings.
        encode_queries: function mapping a list of query texts to ``(m, d)`` normalised embeddings.
    """

    def __init__(self, doc_ids: Sequence[str], doc_vectors: np.ndarray, encode_queries: Any) -> None:
        if len(doc_ids) != len(doc_vectors):
            raise ConfigError(f"{len(doc_ids)} ids but {len(doc_vectors)} vectors")
        self.doc_ids = list(doc_ids)
        self.doc_vectors = np.asarray(doc_vectors, dtype=np.float32)
        self.encode_queries = encode_queries

    def search_many(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(doc_id, cosine)`` per query."""
        out: list[list[tuple[str, float]]] = []
        k = min(k, len(self.doc_ids))
        for start in range(0, len(queries), 256):
            q = np.asarray(self.encode_queries(list(queries[start:start + 256])), dtype=np.float32)
            sims = q @ self.doc_vectors.T
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            for row, idx in zip(sims, top):
                idx = idx[np.argsort(-row[idx])]
                out.append([(self.doc_ids[i], float(row[i])) for i in idx])
        return out


@dataclass
class MiningConfig:
    """How candidate lists are mined.

    Attributes:
        list_size: candidates per training query (positives included).
        pool_depth: how deep each retriever goes; the teacher scores the fused pool.
        pool_size: how many fused candidates the teacher scores (<= 2 * pool_depth).
        top_fraction: share of the list taken from the teacher's top of the pool; the rest is
            sampled from the remainder of the pool (deep candidates).
        seed: sampling seed.
    """

    list_size: int = 16
    pool_depth: int = 30
    pool_size: int = 40
    top_fraction: float = 0.75
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.list_size < 2:
            problems.append(f"list_size={self.list_size} (need >= 2)")
        if self.pool_depth < 1:
            problems.append(f"pool_depth={self.pool_depth} (need >= 1)")
        if self.pool_size < self.list_size:
            problems.append(f"pool_size={self.pool_size} < list_size={self.list_size}")
        if not 0.0 <= self.top_fraction <= 1.0:
            problems.append(f"top_fraction={self.top_fraction} (need 0..1)")
        if problems:
            raise ConfigError("bad mining settings: " + "; ".join(problems))


@dataclass
class CandidateList:
    """One training example: a query, its candidates and their teacher scores.

    Attributes:
        query_id / query: the query.
        doc_ids: candidate ids (known positives first).
        teacher_scores: the teacher's raw score of each candidate.
        positives: ids known to be relevant (qrels, or the source document of a synthetic query).
        false_negatives: ids the teacher scores at least as high as a known positive.
        teacher_rank_of_positive: the rank (0 = best) the teacher gives the best positive in the pool,
            or -1 without positives (used to filter ungrounded synthetic queries).
    """

    query_id: str
    query: str
    doc_ids: list[str]
    teacher_scores: list[float]
    positives: list[str] = field(default_factory=list)
    false_negatives: list[str] = field(default_factory=list)
    teacher_rank_of_positive: int = -1


def mine_candidates(queries: Mapping[str, str], corpus: Mapping[str, Doc], *, teacher: Any,
                    bm25: Bm25Index | None = None, dense: DenseRetriever | None = None,
                    positives: Mapping[str, Iterable[str]] | None = None,
                    config: MiningConfig | None = None, show_progress: bool = False,
                    before_scoring: Any = None,
                    exclude: Mapping[str, Iterable[str]] | None = None) -> list[CandidateList]:
    """Mine a teacher-scored candidate list for every query.

    Args:
        queries: ``{qid: text}``.
        corpus: ``{doc_id: Doc}``.
        teacher: scores the pool (wrap it with a cache to avoid rescoring).
        bm25: BM25 retriever (optional if ``dense`` is given).
        dense: dense retriever (optional if ``bm25`` is given).
        positives: known relevant ids per query (qrels with grade > 0, or the source document);
            they are always in the list.
        config: list and pool sizes.
        show_progress: a progress bar over queries.
        before_scoring: called once with every pooled document id before the teacher scores
            (e.g. to embed them all in large batches).
        exclude: ids never to put in a query's list (e.g. the unmasked source document of a
            query whose positive is that document with the copied passage cut out).

    Returns:
        One :class:`CandidateList` per query, in the order of ``queries``.

    Raises:
        ConfigError: neither retriever is given.
    """
    from tqdm.auto import tqdm

    if bm25 is None and dense is None:
        raise ConfigError("mining needs at least one retriever (BM25 or dense)")
    cfg = config or MiningConfig()
    rng = random.Random(cfg.seed)
    qids = list(queries)
    texts = [queries[q] for q in qids]
    bm25_hits = bm25.search_many(texts, cfg.pool_depth) if bm25 else [[] for _ in qids]
    dense_hits = dense.search_many(texts, cfg.pool_depth) if dense else [[] for _ in qids]
    pools: list[list[str]] = []
    pos_of: list[list[str]] = []
    for i, qid in enumerate(qids):
        pos = [p for p in (positives or {}).get(qid, ()) if p in corpus]
        skip = set(pos) | set((exclude or {}).get(qid, ()))
        fused = [d for d, _ in reciprocal_rank_fusion([bm25_hits[i], dense_hits[i]])]
        pools.append(list(dict.fromkeys(pos + [d for d in fused if d not in skip]))[:max(cfg.pool_size, len(pos) + 1)])
        pos_of.append(pos)
    if before_scoring is not None:
        before_scoring([d for pool in pools for d in pool])
    out: list[CandidateList] = []
    for i, qid in enumerate(tqdm(qids, desc="mining", disable=not show_progress, unit="q")):
        pos, pool = pos_of[i], pools[i]
        scores = np.asarray(teacher.score(texts[i], [corpus[d].full for d in pool]), dtype=np.float64)
        by_score = sorted(range(len(pool)), key=lambda j: -scores[j])
        rank_of_pos = next((r for r, j in enumerate(by_score) if pool[j] in pos), -1)
        best_pos = max((scores[j] for j, d in enumerate(pool) if d in pos), default=None)
        false_neg = [pool[j] for j in range(len(pool))
                     if best_pos is not None and pool[j] not in pos and scores[j] >= best_pos]
        others = [j for j in by_score if pool[j] not in pos]
        room = max(cfg.list_size - len(pos), 0)
        n_top = min(room, round(room * cfg.top_fraction))
        chosen = others[:n_top]
        rest = others[n_top:]
        chosen += rng.sample(rest, min(room - n_top, len(rest)))
        keep = [j for j, d in enumerate(pool) if d in pos][:cfg.list_size] + sorted(chosen, key=lambda j: -scores[j])
        out.append(CandidateList(
            query_id=qid, query=texts[i], doc_ids=[pool[j] for j in keep],
            teacher_scores=[float(scores[j]) for j in keep], positives=pos, false_negatives=false_neg,
            teacher_rank_of_positive=rank_of_pos,
        ))
    return out


def retrieve_pools(queries: Mapping[str, str], *, bm25: Bm25Index | None = None,
                   dense: DenseRetriever | None = None, positives: Mapping[str, Iterable[str]] | None = None,
                   depth: int = 30) -> list[CandidateList]:
    """Teacher-free pools: the fused BM25 + dense top-``depth`` of each query (known positives added),
    scored by reciprocal rank fusion. Used to compare teachers on equal terms (no teacher chose the
    candidates).

    Raises:
        ConfigError: neither retriever is given.
    """
    if bm25 is None and dense is None:
        raise ConfigError("pools need at least one retriever (BM25 or dense)")
    qids = list(queries)
    texts = [queries[q] for q in qids]
    bm = bm25.search_many(texts, depth) if bm25 else [[] for _ in qids]
    de = dense.search_many(texts, depth) if dense else [[] for _ in qids]
    out = []
    for i, qid in enumerate(qids):
        fused = [d for d, _ in reciprocal_rank_fusion([bm[i], de[i]])[:depth]]
        pos = list((positives or {}).get(qid, ()))
        ids = list(dict.fromkeys(fused + [p for p in pos if p not in fused]))
        fused_rank = {d: r for r, d in enumerate(ids)}
        out.append(CandidateList(query_id=qid, query=texts[i], doc_ids=ids,
                                 teacher_scores=[1.0 / (60 + fused_rank[d] + 1) for d in ids], positives=pos,
                                 teacher_rank_of_positive=min((fused_rank[p] for p in pos), default=-1)))
    return out


def save_lists(path: str | os.PathLike[str], lists: Sequence[CandidateList]) -> None:
    """Write candidate lists as JSONL."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(asdict(c)) + "\n" for c in lists)


def load_lists(path: str | os.PathLike[str]) -> list[CandidateList]:
    """Read candidate lists written by :func:`save_lists`.

    Raises:
        ConfigError: the file is missing or malformed.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"candidate lists {p} do not exist; run mining first")
    try:
        return [CandidateList(**json.loads(line)) for line in p.read_text().splitlines() if line.strip()]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{p} is not a candidate-list file ({exc})") from None
