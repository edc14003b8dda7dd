"""Choose an index's default retrieval mode without labels, and resolve ``mode="auto"`` to it.

:func:`tune` builds a pseudo-dev set from the index's own documents (a random sample; each
synthetic query's source document is the relevant one), runs it through the real
:class:`~esdistill.plugin.query.QueryHook` in kNN mode and in hybrid mode under each fusion setting
of a small grid, and keeps hybrid only when its best setting beats kNN with a paired-bootstrap
``P(better) >= confidence`` (0.9); otherwise kNN. The choice is stored in the physical index's
mapping ``_meta`` (esdistill's part, key ``tune``), with the scores, ``P``, the number of queries,
the query kinds, the model fingerprint and the time.

Synthetic queries copied from a document's words reward BM25, so the default query kind is
``ict`` (inverse cloze): a sentence of the document is the query, and the document is searched
*without* that sentence. The index cannot be changed for that, so the search runs on a temporary
copy (``<alias>-tune-<hex>``, the same mappings and analysis, filled page by page, deleted
afterwards) in which the sampled documents have the sentence cut and their vectors
re-embedded. The copied kinds (``keyword``, ``claim``, ``question``, ``title``) search the index
itself.

:func:`resolve_auto` turns the stored choice into the mode a search runs: the tuned mode and fusion
when the index was tuned for the query model, else kNN (never tuned, or tuned for another model),
with one log line per reason::

    >>> resolve_auto(None, None).mode
    'bm25'
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from esdistill.plugin._errors import ConfigError
from esdistill.plugin.index import META_KEY, own_meta
from esdistill.plugin.stats import paired_bootstrap
from esdistill.plugin.synthetic import (
    ALL_STYLES,
    Passage,
    RuleBasedGenerator,
    SyntheticQuery,
    cut_spans,
    generate_queries,
)

__all__ = [
    "AUTO",
    "DEFAULT_GRID",
    "DEFAULT_KINDS",
    "KINDS",
    "AutoMode",
    "FusionSetting",
    "TuneResult",
    "auto_mode_of",
    "choose",
    "resolve_auto",
    "store_choice",
    "stored_choice",
    "tune",
]

logger = logging.getLogger(__name__)

AUTO = "auto"
#: the key of esdistill's ``_meta`` that holds the choice
TUNE_KEY = "tune"
#: query kinds: ``ict`` (a sentence cut from its document) and the generator's copied styles
KINDS = ("ict", *ALL_STYLES)
DEFAULT_KINDS = ("ict",)


@dataclass(frozen=True)
class FusionSetting:
    """One hybrid fusion setting: ``rrf`` with its ``rrf_k``, or ``linear`` with the kNN weight."""

    fusion: str = "rrf"
    rrf_k: int = 60
    linear_weight: float = 0.5

    @property
    def name(self) -> str:
        return f"rrf k={self.rrf_k}" if self.fusion == "rrf" else f"linear w_knn={self.linear_weight:g}"

    def params(self) -> dict[str, Any]:
        """What is stored, and what a search takes: ``fusion``, and ``rrf_k`` or ``alpha`` (kNN weight)."""
        if self.fusion == "rrf":
            return {"fusion": "rrf", "rrf_k": int(self.rrf_k)}
        return {"fusion": "linear", "alpha": float(self.linear_weight)}

    def config_fields(self) -> dict[str, Any]:
        """The :class:`~esdistill.plugin.query.QueryConfig` fields of this setting."""
        return {"fusion": self.fusion, "rrf_k": int(self.rrf_k), "linear_weight": float(self.linear_weight)}


#: RRF at the hook's constant, and linear fusion at three kNN weights (a search can ask for any weight)
DEFAULT_GRID = (FusionSetting("rrf", 60), FusionSetting("linear", linear_weight=0.3),
                FusionSetting("linear", linear_weight=0.5), FusionSetting("linear", linear_weight=0.7))


@dataclass
class TuneResult:
    """What :func:`tune` chose, and on what evidence (stored as is in the index's ``_meta``).

    Attributes:
        mode: ``knn`` or ``hybrid``.
        fusion: the fusion parameters of hybrid (``{}`` for knn): ``fusion`` and ``rrf_k`` or ``linear_weight``.
        scores: pseudo-dev nDCG@10 of ``knn`` and of each hybrid setting (by its name).
        best_hybrid: the name of the best hybrid setting.
        p_better: paired-bootstrap probability that the best hybrid setting beats knn.
        ci_low / ci_high: 90% interval of its mean gain over knn.
        confidence: the ``P`` hybrid needed.
        n_queries: pseudo-dev queries scored.
        kinds: queries per kind.
        model_fingerprint: the model the choice was made with.
        index: the physical index that was tuned.
        tuned_at: UTC time of the choice (ISO 8601).
        seconds: wall time.
        reason: one line.
    """

    mode: str
    fusion: dict[str, Any]
    scores: dict[str, float]
    best_hybrid: str
    p_better: float
    ci_low: float
    ci_high: float
    confidence: float
    n_queries: int
    kinds: dict[str, int]
    model_fingerprint: str
    index: str
    tuned_at: str
    seconds: float = 0.0
    metric: str = "nDCG@10"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ stored choice
def stored_choice(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The tuned choice stored in a mapping ``_meta``, or ``None`` when the index was never tuned."""
    own = own_meta(meta)
    choice = own.get(TUNE_KEY) if own else None
    return dict(choice) if isinstance(choice, Mapping) else None


def store_choice(client: Any, physical: str, choice: Mapping[str, Any]) -> None:
    """Write ``choice`` into esdistill's part of ``physical``'s mapping ``_meta``; every other key
    (the team's, and esdistill's others) is kept.

    Raises:
        ConfigError: the index holds no esdistill meta.
    """
    mapping = next(iter(client.indices.get_mapping(index=physical).values()))["mappings"]
    meta = dict(mapping.get("_meta") or {})
    own = own_meta(meta)
    if own is None:
        raise ConfigError(f"index {physical!r} has no esdistill metadata; create or adopt it with esdistill first")
    if own is meta:
        meta[TUNE_KEY] = dict(choice)
    else:
        meta[META_KEY] = {**own, TUNE_KEY: dict(choice)}
    client.indices.put_mapping(index=physical, meta=meta)


# ------------------------------------------------------------------------------------ resolving auto
@dataclass(frozen=True)
class AutoMode:
    """What ``mode="auto"`` runs: ``mode``, hybrid ``fusion`` parameters (``{}``: the hook's
    configured ones), and ``reason``: ``tuned``, ``untuned``, ``other_model`` or ``no_model``."""

    mode: str
    fusion: dict[str, Any] = field(default_factory=dict)
    reason: str = "untuned"


_told: set[tuple[str, str]] = set()
_told_lock = threading.Lock()


def _tell_once(key: tuple[str, str], msg: str, *args: Any) -> None:
    with _told_lock:
        if key in _told:
            return
        _told.add(key)
    logger.info(msg, *args)


def resolve_auto(choice: Mapping[str, Any] | None, encoder: Any) -> AutoMode:
    """The mode ``auto`` stands for, given the index's stored ``choice`` and the query ``encoder``.

    The stored mode and fusion when the choice was made for the encoder's model (its fingerprint,
    or the document model it is paired with); kNN when the index was never tuned or was tuned for
    another model; BM25 when there is no encoder.
    """
    if encoder is None:
        return AutoMode("bm25", {}, "no_model")
    mine = str(getattr(encoder, "fingerprint", "") or "")
    paired = str(getattr(getattr(encoder, "manifest", None), "document_fingerprint", "") or "")
    if not choice:
        _tell_once(("untuned", mine), "mode auto: the index was never tuned (`esdistill tune`); running knn")
        return AutoMode("knn", {}, "untuned")
    stored_fp = str(choice.get("model_fingerprint") or "")
    if stored_fp not in {mine, paired} - {""}:
        _tell_once(("other_model", stored_fp + mine), "mode auto: the index was tuned for model %s…, not the query "
                   "model %s…; running knn (run `esdistill tune` again)", stored_fp[:12], mine[:12])
        return AutoMode("knn", {}, "other_model")
    mode = str(choice.get("mode") or "knn")
    if mode not in ("knn", "hybrid"):
        return AutoMode("knn", {}, "untuned")
    fusion = dict(choice.get("fusion") or {}) if mode == "hybrid" else {}
    return AutoMode(mode, fusion, "tuned")


# ------------------------------------------------------------------------------------ the choice rule
def choose(per_query: Mapping[str, Sequence[float]], *, confidence: float = 0.9,
           seed: int = 0) -> tuple[str, str, float, float, float]:
    """The choice rule: ``(mode, best hybrid setting, p_better, ci_low, ci_high)``.

    ``per_query`` holds the per-query scores of ``knn`` and of each hybrid setting (same query
    order). The best hybrid setting by mean is compared with knn by a paired bootstrap; hybrid wins
    only with ``P(better) >= confidence``.

    Raises:
        ConfigError: no knn or no hybrid scores, lists of different lengths, or a bad confidence.
    """
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence={confidence} (need 0 < c < 1, e.g. 0.9)")
    knn = list(per_query.get("knn") or [])
    hybrids = {k: list(v) for k, v in per_query.items() if k != "knn"}
    if not knn or not hybrids or any(len(v) != len(knn) for v in hybrids.values()):
        raise ConfigError("the choice needs per-query knn scores and hybrid scores for the same queries")
    names = list(hybrids)
    best = max(names, key=lambda n: (sum(hybrids[n]), -names.index(n)))
    p, low, high = paired_bootstrap([h - b for h, b in zip(hybrids[best], knn)], seed=seed)
    return ("hybrid" if p >= confidence else "knn"), best, p, low, high


def _ndcg_single(ranked: Sequence[str], relevant: str, k: int) -> float:
    """nDCG@k with one relevant document (grade 1)."""
    for i, d in enumerate(ranked[:k]):
        if d == relevant:
            return 1.0 / math.log2(i + 2)
    return 0.0


# ------------------------------------------------------------------------------------ tuning
def _passage(doc_id: str, source: Mapping[str, Any], fields: Sequence[str]) -> Passage:
    vals = [str(source.get(f) or "").strip() for f in fields]
    if len(vals) == 1:
        return Passage(doc_id, "", vals[0])
    return Passage(doc_id, vals[0], " ".join(v for v in vals[1:] if v))


def _sample(client: Any, index: str, fields: Sequence[str], size: int, seed: int) -> dict[str, Passage]:
    body = {"function_score": {"query": {"match_all": {}}, "random_score": {"seed": seed, "field": "_seq_no"},
                               "boost_mode": "replace"}}
    resp = client.search(index=index, query=body, size=size, _source=list(fields), track_total_hits=False)
    out: dict[str, Passage] = {}
    for h in resp["hits"]["hits"]:
        p = _passage(h["_id"], h.get("_source") or {}, fields)
        if p.full:
            out[h["_id"]] = p
    return out


def _kind_queries(sample: Mapping[str, Passage], kinds: Sequence[str], n: int, seed: int) -> list[SyntheticQuery]:
    gen = RuleBasedGenerator.fit(sample)
    styles = tuple("claim" if k == "ict" else k for k in kinds)
    queries = generate_queries(sample, gen, styles=styles, max_queries=n, seed=seed, min_words=3)
    if "ict" in kinds:  # an ict query is a claim whose sentence is cut from its document
        queries = [dataclasses.replace(q, style="ict") if q.style == "claim" else q for q in queries]
    return queries


def _temporary_copy(client: Any, physical: str, name: str, encoder: Any, fields: Sequence[str],
                    vector_field: str) -> int:
    """Copy ``physical`` into ``name`` (same mappings, analysis and shard count; no replicas), page by
    page; a document whose ``_source`` lacks its vector is embedded again. Returns the documents copied."""
    from esdistill.plugin._bulk import RetryPolicy
    from esdistill.plugin._scan import scan
    from esdistill.plugin.es_client import source_with_vectors

    settings = next(iter(client.indices.get_settings(index=physical).values()))["settings"]["index"]
    mapping = next(iter(client.indices.get_mapping(index=physical).values()))["mappings"]
    keep = {k: settings[k] for k in ("analysis", "similarity", "number_of_shards") if k in settings}
    client.indices.create(index=name, settings={**keep, "number_of_replicas": 0, "refresh_interval": "-1"},
                          mappings=mapping, wait_for_active_shards="1")
    copied = 0
    page: list[dict[str, Any]] = []

    def flush() -> None:
        missing = [h for h in page if h["_source"].get(vector_field) is None]
        if missing:
            texts = [" ".join(str(h["_source"].get(f) or "").strip() for f in fields).strip() or "." for h in missing]
            for h, vec in zip(missing, encoder.encode(texts, kind="document")):
                h["_source"][vector_field] = [float(x) for x in vec]
        ops: list[dict[str, Any]] = []
        for h in page:
            ops += [{"index": {"_index": name, "_id": h["_id"]}}, h["_source"]]
        if client.bulk(operations=ops).get("errors"):
            raise ConfigError(f"could not copy documents of {physical!r} into the temporary index {name!r}")
        page.clear()

    source = source_with_vectors(client)  # the stored vectors are copied, not computed again
    for hit in scan(client, physical, policy=RetryPolicy(), page_size=500, source=source, what="tune copy"):
        page.append({"_id": hit["_id"], "_source": dict(hit.get("_source") or {})})
        copied += 1
        if len(page) >= 500:
            flush()
    if page:
        flush()
    client.indices.refresh(index=name)
    return copied


def _cut_documents(client: Any, name: str, encoder: Any, queries: Sequence[SyntheticQuery],
                   sources: Mapping[str, Mapping[str, Any]], fields: Sequence[str], vector_field: str) -> int:
    """In the copy, cut each ict query's sentence from its document and re-embed it."""
    cut: dict[str, dict[str, Any]] = {}
    for q in queries:
        if q.style != "ict" or not q.span:
            continue
        src = cut.setdefault(q.doc_id, {f: sources[q.doc_id].get(f) for f in fields})
        for f in fields:
            if isinstance(src.get(f), str):
                src[f] = cut_spans(src[f], [q.span])
    if not cut:
        return 0
    ids = list(cut)
    texts = [" ".join(str(cut[d][f]).strip() for f in fields if isinstance(cut[d].get(f), str)
                      and str(cut[d][f]).strip()) or "." for d in ids]
    vectors = encoder.encode(texts, kind="document")
    ops: list[dict[str, Any]] = []
    for d, vec in zip(ids, vectors):
        ops += [{"update": {"_index": name, "_id": d}},
                {"doc": {**cut[d], vector_field: [float(x) for x in vec]}}]
    resp = client.bulk(operations=ops, refresh=True)
    if resp.get("errors"):
        raise ConfigError(f"could not write the cut documents into the temporary copy {name!r}")
    return len(ids)


def tune(client: Any, index: str, encoder: Any, *, n_queries: int = 200, kinds: Sequence[str] = DEFAULT_KINDS,
         grid: Sequence[FusionSetting] = DEFAULT_GRID, confidence: float = 0.9, k: int = 10, seed: int = 0,
         max_copy_docs: int = 500_000, store: bool = True) -> TuneResult:
    """Choose knn or hybrid (and its fusion) for ``index`` on a pseudo-dev set; store the choice.

    Args:
        client: an Elasticsearch client.
        index: the alias (or index) to tune; the choice goes to its current physical index.
        encoder: the query model (an ``OnnxEncoder`` that made, or is paired with, the index's vectors).
        n_queries: pseudo-dev queries (at most one per sampled document).
        kinds: query kinds from :data:`KINDS`; ``ict`` searches a temporary copy of the index.
        grid: hybrid fusion settings to try.
        confidence: the paired-bootstrap ``P(better)`` hybrid needs.
        k: nDCG cut-off.
        seed: sampling, generation and bootstrap seed.
        max_copy_docs: refuse ``ict`` on an index with more documents than this (the copy's cost).
        store: write the choice into the index's ``_meta``.

    Raises:
        ConfigError: bad arguments, an index esdistill does not know, a model that did not make its
            vectors, too few queries, or an index too large to copy for ``ict``.
    """
    from esdistill.plugin.index import IndexManager
    from esdistill.plugin.query import QueryConfig, QueryHook

    bad = [kd for kd in kinds if kd not in KINDS]
    if bad or not kinds or ("ict" in kinds and "claim" in kinds):
        raise ConfigError(f"kinds={list(kinds)}: choose from {KINDS} (ict is a claim cut from its document, so "
                          "not both)")
    if not 10 <= int(n_queries) <= 10_000:
        raise ConfigError(f"n_queries={n_queries} (10..10000)")
    if not grid:
        raise ConfigError("the fusion grid is empty; give at least one hybrid setting")
    started = time.perf_counter()
    mgr = IndexManager(client, index)
    physical = mgr.current()
    meta = mgr.check_model(encoder.manifest, queries_only=True)
    fields, vector_field = tuple(meta.text_fields), meta.vector_field
    count = mgr.count(physical)
    if "ict" in kinds and count > max_copy_docs:
        raise ConfigError(f"index {index!r} holds {count} documents, more than max_copy_docs={max_copy_docs} that "
                          "the ict kind copies; raise --max-copy-docs or use copied kinds (--kinds question,keyword)")
    sample_size = min(count, 10_000, max(5 * int(n_queries), 2000))
    sample = _sample(client, physical, fields, sample_size, seed)
    queries = _kind_queries(sample, kinds, int(n_queries), seed)
    if len(queries) < 10:
        raise ConfigError(f"only {len(queries)} pseudo-dev queries could be written from index {index!r} "
                          "(need 10); are its text fields empty?")
    target, copy = physical, None
    try:
        if "ict" in kinds:
            copy = f"{mgr.alias}-tune-{uuid.uuid4().hex[:10]}"
            _temporary_copy(client, physical, copy, encoder, fields, vector_field)
            raw = _sources(client, physical, {q.doc_id for q in queries if q.style == "ict"}, fields)
            n_cut = _cut_documents(client, copy, encoder, queries, raw, fields, vector_field)
            logger.info("tune: copied %s into %s and cut the sentence of %d ict queries", physical, copy, n_cut)
            target = copy
        hook = QueryHook(client, target, encoder, config=QueryConfig(cache_size=len(queries) + 1))
        per_query = _score(hook, queries, grid, k)
    finally:
        if copy is not None:
            client.options(ignore_status=404).indices.delete(index=copy)
    mode, best, p, low, high = choose(per_query, confidence=confidence, seed=seed)
    by_name = {g.name: g for g in grid}
    scores = {name: float(sum(v) / len(v)) for name, v in per_query.items()}
    reason = (f"nDCG@{k} on {len(queries)} pseudo-dev queries ({', '.join(sorted(Counter(q.style for q in queries)))}): "
              f"knn {scores['knn']:.4f}, best hybrid ({best}) {scores[best]:.4f}, P(hybrid better) {p:.2f} "
              f"{'>=' if p >= confidence else '<'} {confidence}: {mode}")
    result = TuneResult(
        mode=mode, fusion=by_name[best].params() if mode == "hybrid" else {}, scores=scores, best_hybrid=best,
        p_better=p, ci_low=low, ci_high=high, confidence=confidence, n_queries=len(queries),
        kinds=dict(Counter(q.style for q in queries)), model_fingerprint=str(encoder.fingerprint), index=physical,
        tuned_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seconds=round(time.perf_counter() - started, 1),
        metric=f"nDCG@{k}", reason=reason)
    logger.info("tune %s: %s", index, reason)
    if store:
        store_choice(client, physical, result.to_dict())
    return result


def _sources(client: Any, index: str, ids: set[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The stored text fields of ``ids`` (as the index holds them)."""
    if not ids:
        return {}
    resp = client.mget(index=index, ids=sorted(ids), _source=list(fields))
    return {d["_id"]: dict(d.get("_source") or {}) for d in resp["docs"] if d.get("found")}


def _score(hook: Any, queries: Sequence[SyntheticQuery], grid: Sequence[FusionSetting],
           k: int) -> dict[str, list[float]]:
    """Per-query nDCG@k of knn and of hybrid under each fusion setting, through ``hook.search``."""
    base = hook.config
    out: dict[str, list[float]] = {"knn": []}
    for q in queries:
        out["knn"].append(_ndcg_single(hook.search(q.text, k=k, mode="knn").ids, q.doc_id, k))
    try:
        for setting in grid:
            hook.config = dataclasses.replace(base, **setting.config_fields())
            out[setting.name] = [_ndcg_single(hook.search(q.text, k=k, mode="hybrid").ids, q.doc_id, k)
                                 for q in queries]
    finally:
        hook.config = base
    return out



def auto_mode_of(hook: Any) -> AutoMode:
    """What ``mode="auto"`` runs on ``hook``'s index now (its stored choice, read with the index's meta)."""
    hook._load_meta()
    return resolve_auto(getattr(hook, "_tuned", None), hook.encoder)
