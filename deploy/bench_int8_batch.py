"""Does an int8 vector depend on the texts it was embedded with, and what does removing that cost?

A dynamically quantised graph scales its activations over the whole input tensor of a call, so the
same text gets another vector inside a batch than alone. This script embeds a BEIR collection's
documents three ways and scores each by exact search (cosine over every document, numpy, no
Elasticsearch) on the split's judged queries, each embedded alone as the service does:

- ``fp32``: the fp32 export, in length-sorted batches (the reference);
- ``int8-batched``: the int8 export in length-sorted batches (``batch_independent=False``, what
  ingestion did before texts were embedded one per call);
- ``int8-alone``: the int8 export, one text per ONNX call (what :class:`OnnxEncoder` does now).

It reports the cosine between each document's batched and alone int8 vectors, each one's cosine to
fp32, nDCG@10 / Recall@100 / MRR@10, and the encoder's CPU seconds and wall seconds per pass::

    python -m esdistill.deploy.bench_int8_batch --int8 runs/minilm-int8 --fp32 runs/minilm-fp32 \\
        --collection data/scifact --docs 0 --out int8-batch.json

``--docs N`` keeps every document judged for the split plus random others up to ``N`` (0: all).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "measure"]


def _corpus(folder: Path, keep: set[str], limit: int, seed: int) -> tuple[list[str], list[str]]:
    from esdistill.plugin.documents import DocumentSpec, prepare

    spec = DocumentSpec()
    ids, texts = [], []
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                doc = prepare(json.loads(line), spec)
                ids.append(doc.id)
                texts.append(doc.text)
    if limit and limit < len(ids):
        rng = random.Random(seed)
        judged = [i for i, d in enumerate(ids) if d in keep]
        others = [i for i, d in enumerate(ids) if d not in keep]
        chosen = sorted(judged + rng.sample(others, max(0, limit - len(judged))))
        ids, texts = [ids[i] for i in chosen], [texts[i] for i in chosen]
    return ids, texts


def _timed(fn: Any) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def _run(doc_ids: list[str], docs: np.ndarray, qids: list[str], queries: np.ndarray, k: int = 100) -> dict:
    scores = queries @ docs.T
    top = np.argsort(-scores, axis=1)[:, :k]
    return {q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(qids)}


def _stats(x: np.ndarray) -> dict[str, float]:
    return {"min": round(float(x.min()), 5), "p1": round(float(np.percentile(x, 1)), 5),
            "p5": round(float(np.percentile(x, 5)), 5), "median": round(float(np.median(x)), 5),
            "mean": round(float(x.mean()), 5)}


def measure(int8_dir: str, fp32_dir: str, collection: str, *, docs: int = 0, split: str = "test",
            threads: int = 1, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Embed, score and time the three variants; return everything as one JSON-able dict."""
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.evaluate import compute_metrics, load_beir

    coll = load_beir(collection, split=split)
    judged = {d for qrels in coll.qrels.values() for d in qrels}
    doc_ids, texts = _corpus(Path(collection), judged, docs, seed)
    qids = list(coll.queries)
    qtexts = [coll.queries[q] for q in qids]
    int8 = OnnxEncoder(int8_dir, threads=threads, batch_size=batch_size, batch_independent=False)
    alone = OnnxEncoder(int8_dir, threads=threads, batch_size=batch_size)
    fp32 = OnnxEncoder(fp32_dir, threads=threads, batch_size=batch_size)
    report: dict[str, Any] = {"collection": collection, "split": split, "documents": len(texts), "queries": len(qids),
                              "threads": threads, "batch_size": batch_size, "int8": int8_dir, "fp32": fp32_dir,
                              "passes": {}, "metrics": {}}
    vectors: dict[str, np.ndarray] = {}
    for name, enc in (("int8-alone", alone), ("int8-batched", int8), ("fp32", fp32)):
        vecs, cpu, wall = _timed(lambda enc=enc: enc.encode(texts, kind="document"))
        vectors[name] = vecs
        report["passes"][name] = {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                                  "cpu_ms_per_doc": round(1000 * cpu / len(texts), 2),
                                  "docs_per_wall_s": round(len(texts) / wall, 2)}
        print(f"{name}: {report['passes'][name]}", file=sys.stderr, flush=True)
    q_alone = alone.encode(qtexts, kind="query")
    q_batched = int8.encode(qtexts, kind="query")
    q_fp32 = fp32.encode(qtexts, kind="query")
    for name, d, q in (("fp32", vectors["fp32"], q_fp32), ("int8-batched", vectors["int8-batched"], q_alone),
                       ("int8-alone", vectors["int8-alone"], q_alone)):
        agg, _ = compute_metrics(_run(doc_ids, d, qids, q), coll.qrels)
        report["metrics"][name] = {m: round(v, 4) for m, v in agg.items()}
    report["drift"] = {
        "documents_batched_vs_alone": _stats(np.sum(vectors["int8-batched"] * vectors["int8-alone"], axis=1)),
        "queries_batched_vs_alone": _stats(np.sum(q_batched * q_alone, axis=1)),
        "int8_batched_vs_fp32": _stats(np.sum(vectors["int8-batched"] * vectors["fp32"], axis=1)),
        "int8_alone_vs_fp32": _stats(np.sum(vectors["int8-alone"] * vectors["fp32"], axis=1)),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--int8", required=True, help="the int8 export (esdistill export MODEL --out DIR)")
    p.add_argument("--fp32", required=True, help="the fp32 export of the same model (--quantize none)")
    p.add_argument("--collection", required=True, help="a BEIR-layout folder")
    p.add_argument("--split", default="test")
    p.add_argument("--docs", type=int, default=0, help="documents: the judged ones plus random others (0: all)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON report here")
    args = p.parse_args(argv)
    report = measure(args.int8, args.fp32, args.collection, docs=args.docs, split=args.split, threads=args.threads,
                     batch_size=args.batch_size, seed=args.seed)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
