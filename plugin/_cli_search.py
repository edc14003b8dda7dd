"""``esdistill search`` and ``esdistill eval``: query a live index, and measure it on a BEIR collection.

::

    esdistill search --index scifact --model runs/student-int8 "vitamin D and bones" --mode hybrid
    esdistill eval --collection data/scifact --index scifact --model runs/student-int8 \\
        --mode knn --rerank runs/teacher-onnx --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from esdistill.plugin._errors import ConfigError

__all__ = ["register"]


def _hook(args: argparse.Namespace) -> Any:
    from esdistill.plugin.fusion import FUSION_METHODS
    from esdistill.plugin.query import QueryConfig, QueryHook
    from esdistill.plugin.rerank import RerankConfig

    if args.model is None and args.mode in ("knn", "hybrid"):
        raise ConfigError(f"--mode {args.mode} needs --model DIR (an exported student folder); "
                          "only --mode bm25 runs without one")
    if args.fusion not in FUSION_METHODS:  # pragma: no cover - argparse checks choices
        raise ConfigError(f"--fusion {args.fusion!r}")
    template = None
    if args.lexical_template is not None:
        from esdistill.plugin.lexical import LexicalTemplate

        if args.mode == "knn":
            raise ConfigError("--lexical-template is the lexical leg of --mode bm25 or hybrid; --mode knn has none")
        template = LexicalTemplate.load(args.lexical_template)
    config = QueryConfig(
        fusion=args.fusion, linear_weight=args.alpha, num_candidates=args.num_candidates,
        rerank=RerankConfig(top_n=args.rerank_top_n), max_k=max(1000, args.k), lexical_template=template,
    )
    model = None
    if args.model is not None:
        from esdistill.plugin.models import exported_model

        model = exported_model(args.model)
    return QueryHook.open(args.index, model, rerank_model=args.rerank, threads=args.threads, config=config)


def _search(args: argparse.Namespace) -> int:
    filters = None
    if args.filter:
        try:
            filters = json.loads(args.filter)
        except ValueError as exc:
            raise ConfigError(f"--filter is not JSON ({exc}); give an Elasticsearch query clause, e.g. "
                              '\'{"term": {"lang": "en"}}\'') from None
    hook = _hook(args)
    resp = hook.search(args.query, k=args.k, mode=args.mode, filters=filters,
                       rerank=True if args.rerank else None, budget_ms=args.budget_ms,
                       num_candidates=args.num_candidates)
    if args.json:
        print(json.dumps(resp.to_dict(), ensure_ascii=False, default=str))
        return 0
    fields = hook.text_fields
    for h in resp.hits:
        title = next((str(h.source[f]) for f in fields if h.source.get(f)), "")
        rr = f" teacher={h.rerank_score:.4f}" if h.rerank_score is not None else ""
        print(f"{h.rank:3d}. {h.id:<20} {h.score:.4f}{rr}  {title[:80]}")
    print(f"scores: {resp.score_kind}")
    t = resp.timings
    print(f"mode={resp.mode}{f' (auto: {resp.mode_reason})' if resp.mode_reason else ''} variant={resp.variant} reranked={resp.rerank.reranked} "
          f"({resp.rerank.count}/{resp.rerank.candidates}, {resp.rerank.reason}) "
          f"ms: embed={t['embed']:.1f} es={t['es']:.1f} fuse={t['fuse']:.1f} rerank={t['rerank']:.1f} "
          f"total={t['total']:.1f}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import sys

    from esdistill.plugin.evaluate import evaluate, load_beir, qrels_coverage, require_ir_measures

    require_ir_measures()
    collection = load_beir(args.collection, split=args.split)
    hook = _hook(args)
    items = list(collection.queries)[:args.limit]
    coverage = qrels_coverage(hook.client, args.index, {q: collection.qrels[q] for q in items})
    warning = coverage.warning(args.index)
    if warning:
        print(f"esdistill: warning: {warning}", file=sys.stderr)
    report = evaluate(hook, collection, k=args.k, mode=args.mode, rerank=args.rerank is not None,
                      budget_ms=args.budget_ms, limit=args.limit,
                      progress=False if args.no_progress else None)
    if not args.json:
        if warning:
            print(f"WARNING: {warning}")
        m, lat, st = report.metrics, report.latency_ms, report.stage_ms
        label = args.mode + ("+rerank" if args.rerank else "")
        if args.mode == "auto":
            from esdistill.plugin.tune import auto_mode_of

            auto = auto_mode_of(hook)
            label = f"auto -> {auto.mode} ({auto.reason}{', ' if auto.fusion else ''}" \
                    f"{', '.join(f'{k}={v}' for k, v in auto.fusion.items())})" + ("+rerank" if args.rerank else "")
        print(f"{collection.name}/{collection.split} on {args.index}: {label}, {report.queries} queries, k={args.k}")
        print(f"  nDCG@10 {m['ndcg@10']:.4f}   Recall@100 {m['recall@100']:.4f}   MRR@10 {m['mrr@10']:.4f}")
        print(f"  latency ms: p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
              f"mean {lat['mean']:.1f}")
        print("  mean ms per stage: " + "  ".join(f"{k} {v:.1f}" for k, v in st.items()))
        if report.rerank_outcomes:
            print(f"  rerank outcomes: {report.rerank_outcomes}")
    else:
        extra = {}
        if args.mode == "auto":
            from esdistill.plugin.tune import auto_mode_of

            extra = {"auto": dataclasses.asdict(auto_mode_of(hook))}
        print(json.dumps({**report.to_dict(), "qrels_coverage": coverage.to_dict(), **extra}))
    return 0


def _common(p: argparse.ArgumentParser, *, k: int) -> None:
    p.add_argument("--index", required=True, help="index or alias to search")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="exported student folder (ONNX + manifest.json) or a packaged name (minilm, exported once "
                        "and reused); not needed for --mode bm25")
    p.add_argument("--mode", choices=("auto", "knn", "hybrid", "bm25"), default="auto",
                   help="retrieval mode (default auto: what `esdistill tune` stored for the index, knn when it "
                        "was never tuned or tuned for another model)")
    p.add_argument("--k", type=int, default=k, help=f"hits per query (default {k})")
    p.add_argument("--rerank", default=None, metavar="TEACHER",
                   help="rerank the top N with a teacher: an exported cross- or bi-encoder folder, a distillation "
                        "run folder (the teacher its run.json chose), or a teacher spec such as "
                        "'0.5*mpnet+0.5*bm25' (bm25 is scored by this index's lexical query)")
    p.add_argument("--rerank-top-n", type=int, default=20, help="candidates the teacher reranks (default 20)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="per-query deadline; the rerank stops when it is spent (default: none)")
    p.add_argument("--num-candidates", type=int, default=None, help="kNN num_candidates (default max(100, 1.5*k))")
    p.add_argument("--fusion", choices=("rrf", "linear"), default="rrf",
                   help="hybrid fusion: rrf (reciprocal rank) or linear (weighted sum of min-max normalised "
                        "scores) (default rrf)")
    p.add_argument("--alpha", "--weight", dest="alpha", type=float, default=0.5,
                   help="kNN weight for --fusion linear; the lexical leg gets 1 - alpha (default 0.5)")
    p.add_argument("--lexical-template", default=None, metavar="FILE",
                   help='JSON query clause with "{{query}}" where the query text goes: the lexical leg of '
                        "--mode bm25 and hybrid instead of multi_match over the text fields (filters apply "
                        "around it)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``search`` and ``eval`` to the ``esdistill`` parser."""
    s = sub.add_parser("search", help="search an index with the student (kNN, BM25 or hybrid), optional rerank")
    s.add_argument("query", help="the query text")
    _common(s, k=10)
    s.add_argument("--filter", default=None, metavar="JSON", help="an Elasticsearch query clause to filter by")
    s.set_defaults(func=_search)

    e = sub.add_parser("eval", help="nDCG@10, Recall@100, MRR@10 and latency of an index on a BEIR collection")
    e.add_argument("--collection", required=True, metavar="DIR",
                   help="BEIR-layout folder (queries.jsonl, qrels/<split>.tsv)")
    e.add_argument("--split", default="test", help="qrels split (default test)")
    _common(e, k=100)
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N queries")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)
