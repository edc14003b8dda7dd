"""``esdistill bench``: the quality and speed report (needs the export and bench extras when run)."""

from __future__ import annotations

import argparse
import os

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from esdistill.deploy.bench import main_args

    if not os.environ.get("ESDISTILL_ES_URL"):
        from esdistill.deploy import LocalElasticsearch

        os.environ["ESDISTILL_ES_URL"] = LocalElasticsearch(port=args.port).start()
    return main_args(args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``esdistill bench`` to the ``esdistill`` parser."""
    p = sub.add_parser(
        "bench", help="quality and speed report: BM25, shipped/distilled student, hybrid, teacher rerank, encoders",
        description="Measures every collection (BEIR layout) on a real Elasticsearch and writes report.md, "
        "report.json and PNG plots. Starts a local node unless ESDISTILL_ES_URL is set. Exports, vectors and "
        "distillation runs are cached under --work, so a second run reuses them.",
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--quick", action="store_true",
                   help="a sample of each collection (500 docs, 30 test queries, 120 train queries) and a small "
                        "training budget: about 15 minutes on 2 cores the first time")
    p.add_argument("--collections", nargs="*", help="BEIR folders (default: every collection in --data)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="a folder of BEIR collections, used when --collections is not given (default: "
                        "$ESDISTILL_DATA; one of them is needed)")
    p.add_argument("--distilled", action="append", metavar="NAME=DIR",
                   help="an exported distilled student for collection NAME (repeatable; skips training)")
    p.add_argument("--no-train", action="store_true", help="do not train a distilled student when none is given")
    p.add_argument("--ablation", nargs="*", metavar="NAME", default=None,
                   help="also train the distillation lists again with each loss (of the named collections; "
                        "no name: all)")
    p.add_argument("--rerank-depths", default=None, metavar="N,N",
                   help="teacher rerank depths to evaluate (default 20,100; quick 20)")
    p.add_argument("--student", default="minilm", help="base student (packaged name or folder) [minilm]")
    p.add_argument("--teacher", default="mpnet", help="teacher bi-encoder (packaged name or folder) [mpnet]")
    p.add_argument("--max-docs", type=int, default=None, help="documents per collection (default: all; quick 500)")
    p.add_argument("--max-queries", type=int, default=None, help="test queries per collection (default: all; quick 30)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime/torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="cache folder (default ~/.cache/esdistill/bench)")
    p.add_argument("--port", type=int, default=9200, help="local Elasticsearch port (ESDISTILL_ES_URL wins)")
    p.add_argument("--json", action="store_true", help="print the headline numbers as one JSON line")
    p.set_defaults(func=_run)
