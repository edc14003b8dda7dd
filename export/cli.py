"""``esdistill export``: a model to a servable ONNX folder, behind the parity gate.

This module imports nothing heavy at import time: the command imports torch & co. when it runs.

Example::

    esdistill export minilm --out runs/minilm-int8 --parity-collection data/scifact
    esdistill export runs/teacher --kind cross-encoder --out runs/teacher-onnx --quantize none
    esdistill export minilm --out runs/m --threshold int8_min_cosine=0.98 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

__all__ = ["register"]

_EPILOG = """parity thresholds (--threshold NAME=VALUE, repeatable; defaults in brackets):
{names}
exit codes: 0 exported, 7 parity gate failed (nothing served; see OUT/parity.rejected.json),
2 bad arguments, 3 model problem."""


def _threshold_help() -> str:
    # ParityThresholds lives in a module that needs only numpy, so this stays light.
    from esdistill.export.parity import ParityThresholds

    return "\n".join(f"  {f.name} [{f.default}]" for f in fields(ParityThresholds))


def _run(args: argparse.Namespace) -> int:
    from esdistill.export.onnx_export import export_model
    from esdistill.export.parity import parse_threshold_overrides
    from esdistill.plugin._errors import ParityError

    thresholds = parse_threshold_overrides(args.threshold or [])
    try:
        res = export_model(
            args.model, args.out, quantize=args.quantize, kind=args.kind, force=args.force,
            parity_collection=args.parity_collection, parity_docs=args.parity_docs,
            parity_max_queries=args.parity_queries, thresholds=thresholds, name=args.name,
            threads=args.threads, document_model=args.document_model,
        )
    except ParityError as exc:
        if not args.json:
            raise
        print(f"esdistill: error: {exc}", file=sys.stderr)
        print(json.dumps({"error": "ParityError", "out": str(args.out), "failures": exc.failures,
                          "report": exc.report}))
        return exc.exit_code
    if args.json:
        print(json.dumps({"out": str(res.out), "passed": res.passed, "forced": res.forced,
                          "manifest": res.manifest.to_dict(), "report": res.report}))
        return 0
    m = res.manifest
    print(f"exported {m.name} ({m.kind}, {m.quantization}) to {res.out}")
    print(f"  fingerprint {m.fingerprint}")
    if m.kind == "bi-encoder":
        print(f"  dims {m.dims}, pooling {m.pooling}, normalize {m.normalize}, max_seq_length {m.max_seq_length}, "
              f"similarity {m.similarity}")
    sample = res.report["sample"]
    print(f"  parity on {sample['docs']} texts, {sample['queries']} queries ({sample['origin']}):")
    for variant, metrics in res.report["variants"].items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"    {variant}: {'ok' if metrics['passed'] else 'FAILED'}  {shown}")
    if res.forced:
        print(f"  exported despite {len(res.report['failures'])} parity failure(s) (--force):")
        for f in res.report["failures"]:
            print(f"    - {f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``esdistill export`` to the ``esdistill`` parser."""
    p = sub.add_parser(
        "export", help="export a model to ONNX (fp32/int8) with a parity gate (needs the export extra)",
        description="Export a sentence-transformers bi-encoder or a cross-encoder to a servable ONNX folder: "
                    "manifest.json, the ONNX graph, the tokenizer and parity.json. The export is refused "
                    "when the ONNX model does not match its source on the parity sample.",
        epilog=_EPILOG.format(names=_threshold_help()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a model folder, a packaged name (minilm, mpnet) or a hub id")
    p.add_argument("--out", required=True, help="the folder to write (an earlier export there is replaced)")
    p.add_argument("--quantize", choices=("int8", "none"), default="int8", help="int8 (default) or none (fp32)")
    p.add_argument("--kind", choices=("bi-encoder", "cross-encoder"), default=None,
                   help="what the model is (default: detected)")
    p.add_argument("--force", action="store_true", help="export even when parity thresholds are broken")
    p.add_argument("--parity-collection", default=None, metavar="DIR",
                   help="a BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) to check parity on; "
                        "default: a few built-in texts")
    p.add_argument("--parity-docs", type=int, default=500, metavar="N",
                   help="documents sampled from the collection (default 500)")
    p.add_argument("--parity-queries", type=int, default=200, metavar="N",
                   help="judged queries sampled from the collection (default 200)")
    p.add_argument("--threshold", action="append", metavar="NAME=VALUE",
                   help="change a parity threshold (repeatable; names below)")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the source's)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the parity run")
    p.add_argument("--document-model", default=None, metavar="DIR",
                   help="for a query encoder trained query-side only: the export that embedded the index's "
                        "documents (recorded, so the model may query that index and never ingest into it)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)
