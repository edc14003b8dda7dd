"""``esdistill demo``: the README's main job (see :mod:`esdistill.export.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from esdistill.export.demo import DemoConfig, run_demo

    cfg = DemoConfig(corpus=Path(args.corpus), out=Path(args.out), port=args.port, index=args.index,
                     dev_size=args.dev_size, epochs=args.epochs, list_size=args.list_size, lr=args.lr,
                     teacher=args.teacher, teacher_max_seq_length=args.teacher_max_seq_length,
                     gate_confidence=args.gate_confidence, queries=args.queries)
    run_demo(cfg)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from esdistill.export.demo import DEMO_COLLECTION, DemoConfig

    d = DemoConfig.__dataclass_fields__
    p = sub.add_parser("demo", help="distil the shipped student on a small real collection and show the gain: "
                                    "ES, export, ingest, evaluate before, distil + gate, evaluate after")
    p.add_argument("--corpus", default=str(DEMO_COLLECTION),
                   help="BEIR folder with qrels/train.tsv and qrels/test.tsv (default: the shipped SciFact subset)")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--port", type=int, default=d["port"].default, help="local Elasticsearch port (ESDISTILL_ES_URL wins)")
    p.add_argument("--index", default=d["index"].default, help="index alias to create")
    p.add_argument("--dev-size", type=int, default=d["dev_size"].default,
                   help=f"train queries held out for the gate (default {d['dev_size'].default})")
    p.add_argument("--epochs", type=int, default=d["epochs"].default,
                   help=f"training epochs (default {d['epochs'].default})")
    p.add_argument("--list-size", type=int, default=d["list_size"].default,
                   help=f"candidates per training query (default {d['list_size'].default})")
    p.add_argument("--lr", type=float, default=d["lr"].default, help=f"learning rate (default {d['lr'].default})")
    p.add_argument("--teacher", default=d["teacher"].default,
                   help="teacher spec (default bm25: no model pass); auto chooses mpnet or its fusion with BM25 on "
                        "the held-out queries (slower: mpnet reads every pooled document)")
    p.add_argument("--teacher-max-seq-length", type=int, default=d["teacher_max_seq_length"].default,
                   help=f"teacher's token limit per document (default {d['teacher_max_seq_length'].default})")
    p.add_argument("--gate-confidence", type=float, default=d["gate_confidence"].default,
                   help="probability that the distilled student is better on the held-out queries that the gate "
                        f"requires (default {d['gate_confidence'].default}; 0: only not worse)")
    p.add_argument("--queries", type=int, default=d["queries"].default,
                   help=f"test queries shown side by side (default {d['queries'].default})")
    p.set_defaults(func=_run)
