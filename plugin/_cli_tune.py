"""``esdistill tune``: choose an index's default retrieval mode (knn or hybrid, and its fusion) without
labels, and store it for ``--mode auto``.

::

    esdistill tune --index scifact --model minilm
    esdistill tune --index scifact --model runs/student-int8 --queries 300 --kinds ict,question --json
"""

from __future__ import annotations

import argparse
import json

from esdistill.plugin._errors import ConfigError

__all__ = ["register"]


def _kinds(text: str) -> tuple[str, ...]:
    from esdistill.plugin.tune import KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ConfigError(f"--kinds {text!r}: give comma-separated kinds from {', '.join(KINDS)}")
    return kinds


def _tune(args: argparse.Namespace) -> int:
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.es_client import connect
    from esdistill.plugin.models import exported_model
    from esdistill.plugin.tune import tune

    encoder = OnnxEncoder(exported_model(args.model), threads=args.threads)
    result = tune(connect(args.es_url), args.index, encoder, n_queries=args.queries, kinds=_kinds(args.kinds),
                  confidence=args.confidence, seed=args.seed, max_copy_docs=args.max_copy_docs,
                  store=not args.dry_run)
    if args.json:
        print(json.dumps({**result.to_dict(), "stored": not args.dry_run}))
        return 0
    fusion = ", ".join(f"{k}={v}" for k, v in result.fusion.items()) or "-"
    print(f"{args.index} ({result.index}): mode {result.mode}  fusion {fusion}"
          f"{'  (not stored: --dry-run)' if args.dry_run else ''}")
    print(f"  {result.n_queries} pseudo-dev queries, kinds {result.kinds}, {result.seconds:.0f} s")
    for name, score in result.scores.items():
        print(f"  {result.metric} {name:<18} {score:.4f}")
    print(f"  best hybrid {result.best_hybrid}: P(better than knn) {result.p_better:.2f} "
          f"(needs {result.confidence}), 90% CI {result.ci_low:+.4f}..{result.ci_high:+.4f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tune`` to the ``esdistill`` parser."""
    t = sub.add_parser("tune", help="choose an index's default mode (knn or hybrid + fusion) without labels, "
                                    "for --mode auto")
    t.add_argument("--index", required=True, help="index or alias to tune")
    t.add_argument("--model", required=True, metavar="DIR",
                   help="exported student folder (the one that made the index's vectors) or a packaged name")
    t.add_argument("--queries", type=int, default=200, help="pseudo-dev queries from the index's documents "
                                                            "(default 200)")
    t.add_argument("--kinds", default="ict",
                   help="query kinds, comma-separated: ict (a sentence cut from its document, searched on a "
                        "temporary copy of the index; the default), keyword, claim, question, title (copied from "
                        "the document's words, which favours BM25)")
    t.add_argument("--confidence", type=float, default=0.9,
                   help="paired-bootstrap P(hybrid better than knn) needed to choose hybrid (default 0.9)")
    t.add_argument("--max-copy-docs", type=int, default=500_000,
                   help="refuse the ict kind's temporary copy above this many documents (default 500000)")
    t.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    t.add_argument("--dry-run", action="store_true", help="choose and print, do not store")
    t.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    t.add_argument("--es-url", default=None, help="cluster URL (default: ESDISTILL_ES_URL or http://127.0.0.1:9200)")
    t.add_argument("--json", action="store_true", help="print one JSON object (the last line)")
    t.set_defaults(func=_tune)
