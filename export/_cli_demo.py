"""``esdistill demo``: the README's main job (see :mod:`esdistill.export.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from esdistill.export.demo import DemoConfig, run_demo

    cfg = DemoConfig(corpus=Path(args.corpus), out=Path(args.out), port=args.port, index=args.index,
                     synthetic=args.synthetic, epochs=args.epochs, queries=args.queries)
    run_demo(cfg)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from esdistill.export.demo import DEMO_COLLECTION

    p = sub.add_parser("demo", help="the whole product on a small corpus: ES, distil, export, ingest, query")
    p.add_argument("--corpus", default=str(DEMO_COLLECTION), help="BEIR folder (default: the shipped demo corpus)")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--port", type=int, default=9200, help="local Elasticsearch port (ESDISTILL_ES_URL wins)")
    p.add_argument("--index", default="esdistill-demo", help="index alias to create")
    p.add_argument("--synthetic", type=int, default=200, help="synthetic training queries (default 200)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    p.add_argument("--queries", type=int, default=3, help="demo queries to show (default 3)")
    p.set_defaults(func=_run)
