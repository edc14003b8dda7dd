"""``esdistill distill`` and ``esdistill adapt``: teach the student to rank like the teacher.

Nothing heavy is imported until a command runs (the training extra is needed then).

Examples::

    esdistill distill --corpus data/scifact --queries data/scifact/queries.jsonl \\
        --qrels data/scifact/qrels/train.tsv --teacher mpnet --loss kl --out runs/scifact
    esdistill adapt --corpus data/cranfield --out runs/cranfield      # no labels at all
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esdistill.export.train import TrainConfig

__all__ = ["register", "train_config"]


def _number_or_auto(valid, wanted: str):
    """An argparse type: ``auto``, or a number for which ``valid`` holds (else ``wanted`` says what to pass)."""

    def parse(text: str) -> float | str:
        if text == "auto":
            return text
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{text!r}: pass {wanted}, or 'auto'")
        return value

    return parse


_temperature = _number_or_auto(lambda v: v > 0, "a temperature > 0")
_alpha = _number_or_auto(lambda v: 0.0 < v <= 1.0, "the trained weights' share, 0 < alpha <= 1 (1: no averaging)")


def _add_common(p: argparse.ArgumentParser) -> None:
    # the training options take their defaults from TrainConfig, so the CLI and the Python API agree
    from esdistill.export.train import TrainConfig as T

    p.add_argument("--corpus", required=True, help="corpus.jsonl or a BEIR folder")
    p.add_argument("--out", required=True, help="run folder (model, lists, gate report, ONNX export)")
    p.add_argument("--student", default="minilm", help="base student: folder, packaged name or hub id [minilm]")
    p.add_argument("--loss", default=T.loss, help="kl, margin-mse, pairwise, infonce, plackett-luce, or "
                   "a weighted sum such as kl+0.1*infonce (listwise KL plus a small contrastive term) [%(default)s]")
    p.add_argument("--synthetic", type=int, default=None,
                   help="synthetic queries to generate (default: 2000 without --queries, else 0; with --queries "
                        "but no --qrels and no dev set, 3 x --dev-size for the gate only)")
    p.add_argument("--generator", default="rules", help="'rules' or package.module:function(doc, style) [rules]")
    p.add_argument("--styles", default="keyword,claim,question,title", help="synthetic query styles")
    p.add_argument("--dev-size", type=int, default=200, help="held-out queries for the gate when no dev set")
    p.add_argument("--gate-confidence", type=float, default=0.9,
                   help="promote only when the paired-bootstrap probability that the student beats its base "
                        "on the dev queries is at least this (0: promote any student that is not worse) [0.9]")
    p.add_argument("--list-size", type=int, default=16, help="candidates per query [16]")
    p.add_argument("--pool-depth", type=int, default=30, help="BM25 and dense depth of the pool [30]")
    p.add_argument("--epochs", type=int, default=T.epochs, help="[%(default)s]")
    p.add_argument("--batch-size", type=int, default=T.batch_size, help="queries per batch [%(default)s]")
    p.add_argument("--grad-accum", type=int, default=T.grad_accum, help="[%(default)s]")
    p.add_argument("--lr", type=float, default=T.lr, help="[%(default)s]")
    p.add_argument("--max-seq-length", type=int, default=T.max_seq_length, help="document tokens [%(default)s]")
    p.add_argument("--teacher-max-seq-length", type=int, default=256, help="teacher tokens per document [256]")
    p.add_argument("--teacher-temperature", type=_temperature, default=T.teacher_temperature,
                   help="temperature of the normalised teacher scores, or 'auto' (as sharp as the base "
                        "student's own scores over the same lists) [%(default)s]")
    p.add_argument("--student-temperature", type=float, default=T.student_temperature, help="[%(default)s]")
    p.add_argument("--positive-boost", type=float, default=T.positive_boost,
                   help="lift known positives this far (z-score units) above the best other candidate in the "
                        "teacher's target; a negative value turns it off [%(default)s]")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--query-side-only", dest="query_side_only", action="store_true", default=T.query_side_only,
                      help="train the query tower only" + (" (the default)" if T.query_side_only else "") + ": documents keep the base student's vectors, "
                           "so an index built with the base needs no re-embedding; the run exports the query "
                           "encoder (onnx/) and, unless --document-model names your index's export, the base as "
                           "its document model (onnx-documents/)")
    side.add_argument("--full-fine-tune", dest="query_side_only", action="store_false",
                      help="train both towers" + ("" if T.query_side_only else " (the default)") + " (re-embed every "
                           "document afterwards); much slower than --query-side-only, with gradient checkpointing "
                           "to bound memory")
    p.add_argument("--document-model", default=None, metavar="DIR",
                   help="the export that embedded your index's documents; the trained query encoder is paired "
                        "with it and queries that index without re-embedding (not with --full-fine-tune)")
    p.add_argument("--merge-alpha", type=_alpha, default="auto",
                   help="average the trained weights with the base's: alpha * trained + (1 - alpha) * base "
                        "(WiSE-FT). auto (default): 0.5 when every training query is synthetic (adapt), else 1 "
                        "(no averaging); the trained weights stay in OUT/student.trained")
    p.add_argument("--checkpoint-steps", type=int, default=T.checkpoint_steps,
                   help="checkpoint every N steps (0: per epoch) [%(default)s]")
    p.add_argument("--max-steps", type=int, default=T.max_steps, help="stop after N optimiser steps")
    p.add_argument("--eval-max-docs", type=int, default=2000, help="dev corpus size for the gate (0: all)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    p.add_argument("--quantize", choices=("int8", "none"), default="int8")
    p.add_argument("--index-prefix", default="esdistill-train-", help="prefix of the temporary BM25 index")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~esdistill.export.train.TrainConfig` of parsed ``distill``/``adapt`` arguments
    (with no training option given, it equals ``TrainConfig()``)."""
    from esdistill.export.train import TrainConfig

    return TrainConfig(
        loss=args.loss, epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        max_seq_length=args.max_seq_length, teacher_temperature=args.teacher_temperature,
        student_temperature=args.student_temperature, query_side_only=args.query_side_only,
        positive_boost=args.positive_boost if args.positive_boost is not None and args.positive_boost >= 0 else None,
        checkpoint_steps=args.checkpoint_steps, max_steps=args.max_steps, seed=args.seed,
        show_progress=not args.no_progress,
    )


def _run(args: argparse.Namespace, *, adapt: bool) -> int:
    from esdistill.export.mining import MiningConfig
    from esdistill.export.pipeline import DistillConfig, run_distill

    train = train_config(args)
    mining = MiningConfig(list_size=args.list_size, pool_depth=args.pool_depth,
                          pool_size=max(args.list_size, int(args.pool_depth * 4 / 3)), seed=args.seed)
    cfg = DistillConfig(
        corpus=args.corpus, out=args.out, queries=None if adapt else args.queries,
        qrels=None if adapt else args.qrels, dev_queries=None if adapt else args.dev_queries,
        dev_qrels=None if adapt else args.dev_qrels, student=args.student, teacher=args.teacher,
        synthetic=args.synthetic, generator=args.generator, styles=tuple(s for s in args.styles.split(",") if s),
        dev_size=args.dev_size, mining=mining, teacher_max_seq_length=args.teacher_max_seq_length, train=train, eval_max_docs=args.eval_max_docs or None,
        export=not args.no_export, quantize=args.quantize, index_prefix=args.index_prefix,
        show_progress=not args.no_progress, seed=args.seed, document_model=args.document_model,
        gate_confidence=args.gate_confidence, merge_alpha=args.merge_alpha,
    )
    summary = run_distill(cfg)
    if args.json:
        print(json.dumps(summary, default=str))
        return 0 if summary["gate"]["promoted"] else 8
    gate = summary["gate"]
    dev = "pseudo-dev" if summary["dev_source"] == "pseudo-dev" else "dev"
    print(f"teacher: {summary['teacher']['chosen']}  ({dev} nDCG@10: "
          + ", ".join(f"{k} {v:.4f}" for k, v in summary["teacher"]["scores"].items()) + ")")
    cloze = f", {summary['masked_train_queries']} as inverse cloze" if summary.get("masked_train_queries") else ""
    print(f"queries: {summary['train_queries']} train ({summary['synthetic_queries']} synthetic{cloze}, "
          f"{summary['ungrounded_dropped']} ungrounded dropped), {summary['dev_queries']} dev ({summary['dev_origin']})")
    run = summary["train"]
    how = (f" (resumed from the checkpoint of step {run['resumed_from_step']})"
           if run.get("resumed_from_step") is not None else "")
    print(f"trained {run['steps']} steps in {run['seconds']} s{how} -> {args.out}/student")
    if run.get("restarted"):
        print(f"checkpoints: not resumed ({run['restarted']}); trained from the base student")
    alpha = summary["weight_averaging"]["alpha"]
    if alpha < 1.0:
        print(f"weights: {alpha:g} x trained + {1 - alpha:g} x base (WiSE-FT; trained weights in "
              f"{summary['weight_averaging']['trained_weights']})")
    print(f"gate: {gate['reason']}")
    if summary.get("caveat"):
        print(f"caveat: {summary['caveat']}")
    if "export" in summary:
        print(f"export: {summary['export']}")
    return 0 if gate["promoted"] else 8


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``esdistill distill`` and ``esdistill adapt`` to the ``esdistill`` parser."""
    epilog = "exit codes: 0 promoted (and exported), 8 the gate refused the student, 2 bad arguments, 4 no ES."
    d = sub.add_parser("distill", help="distil a teacher into the student on your corpus (needs the export extra)",
                       description="Queries (given and/or synthetic) -> BM25+dense candidates -> teacher scores "
                       "(cached) -> training -> promotion gate -> int8 ONNX export.", epilog=epilog)
    _add_common(d)
    d.add_argument("--queries", help="training queries (queries.jsonl or TSV id<TAB>text)")
    d.add_argument("--qrels", help="qrels of the training queries (optional)")
    d.add_argument("--dev-queries", help="dev queries for the gate (with --dev-qrels)")
    d.add_argument("--dev-qrels", help="dev qrels for the gate")
    d.add_argument("--teacher", default="mpnet", help="teacher spec: mpnet, ce:FOLDER, bm25, "
                   "0.7*mpnet+0.3*bm25, or auto [mpnet]")
    d.set_defaults(func=lambda a: _run(a, adapt=False))
    a = sub.add_parser("adapt", help="adapt the student to a corpus without any labels (needs the export extra)",
                       description="The one-command path for an unlabelled corpus: synthetic queries, teacher "
                       "chosen on a pseudo-dev set, mining, distillation, gate, int8 ONNX export.", epilog=epilog)
    _add_common(a)
    a.add_argument("--teacher", default="auto", help="teacher spec, or auto (chosen on pseudo-dev) [auto]")
    a.set_defaults(func=lambda a: _run(a, adapt=True))
