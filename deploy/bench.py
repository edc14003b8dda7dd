"""``esdistill bench``: the numbers and pictures a team decides from, made by one command in one run.

On a real Elasticsearch node and the packaged models it measures, for every collection given
(BEIR layout; ``--collections``, or every collection in the ``--data`` folder, by default
``$ESDISTILL_DATA``):

* **Quality** (test split; nDCG@10, Recall@100, MRR@10, per-query wins/losses against the shipped
  student): BM25, the shipped student (int8 ONNX), the distilled student (torch fp32 exact search,
  ONNX fp32 on a ``flat`` index, ONNX int8 on ``flat`` and on ``int8_hnsw``), hybrid (BM25 + the
  distilled student), the teacher's rerank of the student's top 20 (and top 100 in a full run), and
  the distillation run's own teacher spec (``0.5*mpnet+0.5*bm25``, say) reranking the same top 20.
* **Speed** on the same texts, one run: encoder docs/s by text length (sentence-transformers torch
  fp32, sentence-transformers' own ONNX int8 backend, esdistill ONNX fp32 and int8), ingest docs/s,
  query latency p50/p95/p99 (knn, hybrid, knn+rerank), the teacher's cost per query, and the memory
  of the vectors in Elasticsearch.
* **Distillation**: time, examples, teacher calls saved by the score cache, the teacher chosen, the
  gate, and (``--ablation``) the same lists trained with each loss.

The distilled student is the one given with ``--distilled NAME=DIR`` (an exported student folder),
else a run made by this command (``esdistill distill`` with the collection's train queries and
qrels when it has them, else the label-free ``adapt`` path), cached under the work folder so a
second bench reuses it. ``--quick`` works on a sample of each collection (every judged document of
the sampled queries plus random others) with a smaller training budget; the report says so.

Writes ``report.json``, ``report.md`` and PNG plots into ``--out``; the paths they show are relative
to the working directory (``~`` for the home directory), never a machine's absolute paths.

Example::

    esdistill bench --quick --out bench-quick
    esdistill bench --out bench-full --ablation
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.plugin.beir import (
    load_corpus,
    load_qrels,
    load_queries,
    write_corpus,
    write_qrels,
    write_queries,
)

__all__ = ["BenchConfig", "run_bench"]

logger = logging.getLogger(__name__)

# the parity sample of the bench's exports: the export gate's nDCG@10 check needs enough queries
# that one flipped query does not decide it (at 50 queries one flip moves nDCG@10 by about 0.02)
PARITY_DOCS, PARITY_QUERIES = 300, 100
ABLATION_LOSSES = ("infonce", "kl", "margin-mse", "pairwise", "kl+0.1*infonce")
#: token-length buckets of the encoder benchmark (upper bounds, inclusive)
LENGTH_BUCKETS = (("short", 64), ("medium", 192), ("long", 10**9))


@dataclass
class BenchConfig:
    """What ``esdistill bench`` runs (the ``--quick`` defaults fill whatever is left ``None``).

    Attributes:
        out: report folder.
        collections: BEIR folders (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``).
        data: when ``collections`` is empty, every collection in this folder (default:
            ``$ESDISTILL_DATA``; one of the three must name the data).
        quick: sample each collection and use a small training budget.
        student / teacher: packaged names or folders (the teacher is served as a bi-encoder).
        distilled: collection name -> an exported distilled student folder (skips training).
        train: train a distilled student when none is given.
        ablation: collection names whose distillation lists are trained again with every loss of
            :data:`ABLATION_LOSSES` (``None``: none; empty: all).
        threads: onnxruntime/torch threads (default: all cores).
        seed: sampling and training seed.
        max_docs / max_queries: collection sample (``None``: everything).
        train_queries: training queries used from the train split (``None``: all).
        rerank_depths: teacher rerank depths evaluated.
        encoder_docs: texts per length bucket in the encoder benchmark.
        ingest_docs: documents ingested to measure the ingest rate.
        work: cache folder for exports, vectors and runs.
        distill_teacher: the teacher of the distillation run (``auto``: chosen on the dev set).
        train_overrides: :class:`~esdistill.export.train.TrainConfig` fields to change.
        distill_overrides: :class:`~esdistill.export.pipeline.DistillConfig` fields to change (e.g.
            ``mask_train_source``, ``gate_confidence``).
    """

    out: Path
    collections: tuple[Path, ...] = ()
    data: Path | None = None
    quick: bool = False
    student: str = "minilm"
    teacher: str = "mpnet"
    distilled: dict[str, str] = field(default_factory=dict)
    train: bool = True
    ablation: tuple[str, ...] | None = None
    threads: int | None = None
    seed: int = 0
    max_docs: int | None = None
    max_queries: int | None = None
    train_queries: int | None = None
    rerank_depths: tuple[int, ...] | None = None
    encoder_docs: int | None = None
    ingest_docs: int | None = None
    work: Path | None = None
    distill_teacher: str = "auto"
    train_overrides: dict[str, Any] = field(default_factory=dict)
    distill_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from esdistill.plugin._errors import ConfigError

        if self.distill_overrides:  # (imports torch: only when asked for)
            from esdistill.export.pipeline import DistillConfig

            fixed = {"corpus", "out", "queries", "qrels", "train", "mining"}
            bad = sorted(k for k in self.distill_overrides
                         if k in fixed or k not in DistillConfig.__dataclass_fields__)
            if bad:
                raise ConfigError(f"distill_overrides: {bad} cannot be set here (use the DistillConfig fields other "
                                  f"than {sorted(fixed)}; training settings go in train_overrides)")

        self.out = Path(self.out)
        where: Any = None
        if not self.collections:
            from esdistill.deploy._data_dir import data_dir

            where = self.data = data_dir(self.data, option="--collections DIR ... or --data DIR")
            self.collections = tuple(sorted(p for p in where.glob("*") if (p / "corpus.jsonl").is_file()))
        self.collections = tuple(Path(c) for c in self.collections)
        missing = [str(c) for c in self.collections if not (c / "corpus.jsonl").is_file()
                   or not (c / "qrels" / "test.tsv").is_file()]
        if missing or not self.collections:
            raise ConfigError(f"no usable collection in {missing or where}: each needs corpus.jsonl, "
                              "queries.jsonl and qrels/test.tsv (BEIR layout); pass --collections DIR ...")
        # quick: the teacher reranks the top 10 (the rerank row is the slowest of a quick run on CPU)
        quick = {"max_docs": 500, "max_queries": 30, "train_queries": 120, "rerank_depths": (10,),
                 "encoder_docs": 48, "ingest_docs": 400}
        full = {"max_docs": None, "max_queries": None, "train_queries": None, "rerank_depths": (20, 100),
                "encoder_docs": 300, "ingest_docs": 2000}
        for key, value in (quick if self.quick else full).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.work is None:
            from esdistill.plugin.models import user_cache_dir

            self.work = user_cache_dir("bench")
        self.work = Path(self.work)
        if self.ablation:
            self.ablation = tuple(self.ablation)
            bad = set(self.ablation) - {c.name for c in self.collections}
            if bad:
                raise ConfigError(f"--ablation names {sorted(bad)} are not among the collections "
                                  f"{[c.name for c in self.collections]}")
        unknown = set(self.distilled) - {c.name for c in self.collections}
        if unknown:
            raise ConfigError(f"--distilled names {sorted(unknown)} are not among the collections "
                              f"{[c.name for c in self.collections]}")


# ------------------------------------------------------------------------------------------- data
def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:10]


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    return load_qrels(path) if path.is_file() else {}


def sample_collection(folder: Path, out: Path, *, max_docs: int | None, max_queries: int | None,
                      train_queries: int | None, seed: int) -> tuple[Path, dict[str, Any]]:
    """A BEIR folder limited to ``max_queries`` test queries, ``train_queries`` train queries and
    ``max_docs`` documents: every document judged for the kept queries, then random others.

    Returns ``(folder, info)``; the folder is ``folder`` itself when nothing needs cutting.
    """
    test = _read_qrels(folder / "qrels" / "test.tsv")
    train = _read_qrels(folder / "qrels" / "train.tsv")
    corpus = list(load_corpus(folder).values())
    info = {"docs": len(corpus), "test_queries": len(test), "train_queries": len(train), "sampled": False}
    cut = ((max_docs is not None and len(corpus) > max_docs) or (max_queries is not None and len(test) > max_queries)
           or (train_queries is not None and len(train) > train_queries))
    if not cut:
        return folder, info
    rng = random.Random(seed)
    test_ids = sorted(test)
    train_ids = sorted(train)
    if max_queries is not None and len(test_ids) > max_queries:
        test_ids = sorted(rng.sample(test_ids, max_queries))
    if train_queries is not None and len(train_ids) > train_queries:
        train_ids = sorted(rng.sample(train_ids, train_queries))
    judged = list(dict.fromkeys([d for q in test_ids for d in test[q]] + [d for q in train_ids for d in train[q]]))
    known = {d.doc_id for d in corpus}
    judged = [d for d in judged if d in known]
    others = [d.doc_id for d in corpus if d.doc_id not in set(judged)]
    rng.shuffle(others)
    room = max((max_docs or len(corpus)) - len(judged), 0)
    keep = set(judged) | set(others[:room])
    key = _sha(folder.resolve(), max_docs, max_queries, train_queries, seed, len(corpus))
    target = out / f"{folder.name}-sample-{key}"
    if not (target / "corpus.jsonl").is_file():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_corpus(tmp / "corpus.jsonl", {d.doc_id: d for d in corpus if d.doc_id in keep})
        wanted = set(test_ids) | set(train_ids)
        write_queries(tmp / "queries.jsonl",
                      {q: text for q, text in load_queries(folder).items() if q in wanted})
        (tmp / "qrels").mkdir()
        write_qrels(tmp / "qrels" / "test.tsv", {q: test[q] for q in test_ids})
        if train_ids:
            write_qrels(tmp / "qrels" / "train.tsv", {q: train[q] for q in train_ids})
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    info.update(sampled=True, docs=len(keep), test_queries=len(test_ids), train_queries=len(train_ids),
                sample_folder=str(target), full_docs=len(corpus), full_test_queries=len(test))
    return target, info


# ---------------------------------------------------------------------------------------- models
def _export(source: str, out: Path, *, quantize: str, parity: Path | None, name: str | None = None,
            document_model: Path | None = None, force: bool = False,
            sample: tuple[int, int] = (PARITY_DOCS, PARITY_QUERIES)) -> Path:
    """Export ``source`` to ``out`` once (reused when ``out`` holds a manifest). ``document_model``:
    ``source`` is a query encoder trained against that export's document vectors. ``force``: keep
    an export that misses a parity threshold (its parity report says so); for a student that
    already passed the gate of its own export and is only paired again here."""
    if (out / "manifest.json").is_file():
        return out
    from esdistill.export.onnx_export import export_model
    from esdistill.plugin import resolve_model

    logger.info("exporting %s to %s (%s) ...", source, out, quantize)
    kwargs: dict[str, Any] = {}
    if parity is not None:
        kwargs.update(parity_collection=parity, parity_docs=sample[0], parity_max_queries=sample[1])
    export_model(str(resolve_model(source)), out, quantize=quantize, name=name, document_model=document_model,
                 force=force, **kwargs)
    return out


def _parity_notes(models: dict[str, Path]) -> list[str]:
    """One line per export that missed a parity threshold and was kept for measuring."""
    notes = []
    for role, folder in models.items():
        parity_file = folder / "parity.json"
        if not parity_file.is_file():
            continue
        parity = json.loads(parity_file.read_text())
        if parity.get("forced"):
            notes.append(f"the {role} export missed parity on the bench's sample and was kept to be measured: "
                         + "; ".join(str(f) for f in parity.get("failures", [])))
    return notes


def _query_side_only(summary: dict[str, Any] | None) -> bool:
    """Whether a distillation run trained the query tower only (documents keep the base's vectors)."""
    return bool((summary or {}).get("train", {}).get("config", {}).get("query_side_only"))


class _Recording:
    """Wraps an encoder for ingestion and keeps every document vector it makes (text -> vector), so
    the same vectors can be written into a second index without embedding again."""

    def __init__(self, inner: Any, table: dict[str, np.ndarray]) -> None:
        self.inner, self.manifest, self.table = inner, inner.manifest, table

    def encode_with_info(self, texts: Sequence[str], **kw: Any) -> Any:
        from esdistill.plugin.encoder import EncodeResult

        missing = [t for t in dict.fromkeys(texts) if t not in self.table]
        if missing:
            res = self.inner.encode_with_info(missing, **kw)
            self.table.update(zip(missing, np.asarray(res.embeddings, dtype=np.float32)))
        return EncodeResult(embeddings=np.stack([self.table[t] for t in texts]),
                            truncated=np.zeros(len(texts), dtype=bool))


def _fill_index(client: Any, alias: str, encoder: Any, corpus: Path, table: dict[str, np.ndarray],
                index_options: str) -> dict[str, Any]:
    """Create ``alias`` and ingest ``corpus`` unless it already holds every document."""
    from esdistill.plugin import IndexManager, IndexSpec, IngestHook

    with open(corpus, encoding="utf-8") as f:
        expected = sum(1 for line in f if line.strip())
    manager = IndexManager(client, alias)
    if manager.exists():
        manager.check_model(encoder.manifest)
        if manager.count() == expected:
            return {"index": alias, "docs": expected, "reused": True}
    else:
        manager.create(encoder.manifest, IndexSpec(index_options=index_options))
    t0 = time.perf_counter()
    summary = IngestHook(client, alias, _Recording(encoder, table), progress=_tty(),
                         description=f"ingest {alias}").ingest_jsonl(corpus)
    return {"index": alias, "docs": summary.indexed + summary.unchanged, "reused": False,
            "seconds": round(time.perf_counter() - t0, 1)}


def _tty() -> bool:
    return sys.stderr.isatty()


# -------------------------------------------------------------------------------------- distilled
def _distill(name: str, folder: Path, cfg: BenchConfig, client: Any) -> tuple[Path | None, dict[str, Any]]:
    """Train (or reuse) the distilled student of one collection; return its export and run summary."""
    from esdistill.export.mining import MiningConfig
    from esdistill.export.pipeline import DistillConfig, run_distill
    from esdistill.export.train import TrainConfig

    labelled = (folder / "qrels" / "train.tsv").is_file()
    mode = "quick" if cfg.quick else "full"
    # query-side-only by default (TrainConfig's default): much cheaper than a full fine-tune, so
    # more epochs are affordable
    qso = cfg.train_overrides.get("query_side_only", TrainConfig.query_side_only)
    settings = {"epochs": 4 if qso else 1, "lr": 5e-5, "seed": cfg.seed, "query_side_only": qso,
                **cfg.train_overrides}
    key = _sha(folder.resolve(), cfg.student, cfg.seed, cfg.distill_teacher, sorted(settings.items()))
    run_dir = Path(cfg.work) / "runs" / f"{name}-{mode}-{key}"
    summary_path = run_dir / "run.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        logger.info("reusing the distillation run %s", run_dir)
    else:
        n_train = len(_read_qrels(folder / "qrels" / "train.tsv")) if labelled else 0
        train = TrainConfig(**settings, show_progress=_tty())
        mining = MiningConfig(list_size=8 if cfg.quick else 16, pool_depth=20 if cfg.quick else 30,
                              pool_size=24 if cfg.quick else 40, seed=cfg.seed)
        dev_size = max(10, min(100, n_train // 8)) if labelled else (30 if cfg.quick else 200)
        dc = DistillConfig(
            corpus=folder, out=run_dir, student=cfg.student, teacher=cfg.distill_teacher,
            queries=folder / "queries.jsonl" if labelled else None,
            qrels=folder / "qrels" / "train.tsv" if labelled else None,
            synthetic=None if labelled else (200 if cfg.quick else 2000), dev_size=dev_size,
            mining=mining, train=train, show_progress=_tty(), seed=cfg.seed,
            index_prefix="esdistill-bench-train-", **cfg.distill_overrides,
        )
        summary = run_distill(dc, es=client)
    export = summary.get("export", {}).get("out")
    summary["path"] = "distill (train queries + qrels)" if labelled else "adapt (synthetic queries, no labels)"
    summary["run_dir"] = str(run_dir)
    return (Path(export) if export else None), summary


# -------------------------------------------------------------------------------------- evaluate
def _per_query_delta(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, int]:
    wins = sum(1 for q in a if a[q]["ndcg@10"] > b.get(q, {}).get("ndcg@10", 0.0) + 1e-9)
    losses = sum(1 for q in a if a[q]["ndcg@10"] + 1e-9 < b.get(q, {}).get("ndcg@10", 0.0))
    return {"wins": wins, "losses": losses, "ties": len(a) - wins - losses}


def _system(report: Any) -> dict[str, Any]:
    out = {k: round(float(report.metrics[k]), 4) for k in ("ndcg@10", "recall@100", "mrr@10")}
    out.update(queries=report.queries, latency_ms={k: round(v, 2) for k, v in report.latency_ms.items()},
               stage_ms={k: round(v, 2) for k, v in report.stage_ms.items()})
    if report.rerank:
        out["rerank_outcomes"] = report.rerank_outcomes
    out["_per_query"] = report.per_query
    return out


def _exact_search(query_vecs: np.ndarray, doc_vecs: np.ndarray, qids: list[str], doc_ids: list[str],
                  k: int = 100) -> dict[str, dict[str, float]]:
    sims = query_vecs @ doc_vecs.T
    run = {}
    for q, row in zip(qids, sims):
        top = np.argsort(-row)[:k]
        run[q] = {doc_ids[i]: float(row[i]) for i in top}
    return run


def _doc_vectors(folder: Path, model: Any, cache: dict[str, np.ndarray] | None, key: str) -> tuple[list[str], np.ndarray]:
    """Document ids and normalized vectors of ``folder``'s corpus by ``model`` (a sentence-transformers
    model or a model reference), memoized in ``cache`` under ``key``."""
    from esdistill.plugin import resolve_model
    from sentence_transformers import SentenceTransformer

    docs = list(load_corpus(folder).values())
    ids = [d.doc_id for d in docs]
    if cache is not None and key in cache:
        return ids, cache[key]
    if not isinstance(model, SentenceTransformer):
        model = SentenceTransformer(str(resolve_model(model)), device="cpu")
    dv = model.encode([d.full for d in docs], batch_size=32, normalize_embeddings=True,
                      show_progress_bar=_tty())
    if cache is not None:
        cache[key] = dv
    return ids, dv


def _torch_system(model_dir: Path, folder: Path, threads: int | None, *, document_model: str | None = None,
                  doc_vectors: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The distilled student in torch fp32, exact search over the whole (sampled) corpus.

    ``document_model``: the student is a query encoder (query-side-only training); documents are
    embedded by this model instead. ``doc_vectors`` caches those document vectors across calls
    (keyed by the document model).
    """
    from esdistill.plugin.evaluate import compute_metrics, load_beir
    from sentence_transformers import SentenceTransformer

    coll = load_beir(folder, split="test")
    model = SentenceTransformer(str(model_dir), device="cpu")
    t0 = time.perf_counter()
    ids, dv = _doc_vectors(folder, model if document_model is None else document_model, doc_vectors,
                           f"{document_model or model_dir}|{folder}")
    qids = list(coll.queries)
    qv = model.encode([coll.queries[q] for q in qids], batch_size=64, normalize_embeddings=True)
    agg, per_query = compute_metrics(_exact_search(qv, dv, qids, ids), coll.qrels)
    out = {k: round(float(v), 4) for k, v in agg.items()}
    out.update(queries=len(qids), search="exact (numpy), no Elasticsearch", seconds=round(time.perf_counter() - t0, 1))
    if document_model is not None:
        out["documents_embedded_by"] = str(document_model)
    out["_per_query"] = per_query
    return out


def _vector_memory(client: Any, index: str, dims: int, docs: int) -> dict[str, Any]:
    """Bytes of the vector field on disk (Elasticsearch's disk-usage analysis), with the raw size."""
    out: dict[str, Any] = {"raw_float32_bytes": dims * 4 * docs}
    try:
        with warnings.catch_warnings():  # the API is a technical preview; the client warns on every call
            warnings.simplefilter("ignore")
            resp = client.indices.disk_usage(index=index, run_expensive_tasks=True)
        body = resp.body if hasattr(resp, "body") else resp
        physical = next(k for k in body if not k.startswith("_"))
        fields = body[physical]["fields"]
        vec = fields.get("embedding", {})
        out["knn_vectors_bytes"] = int(vec.get("knn_vectors_in_bytes", 0))
        out["field_total_bytes"] = int(vec.get("total_in_bytes", 0))
        out["index_store_bytes"] = int(body[physical]["store_size_in_bytes"])
    except Exception as exc:  # noqa: BLE001 - an optional figure: say why it is missing
        out["error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


def _evaluate_collection(folder: Path, name: str, cfg: BenchConfig, client: Any, models: dict[str, Path],
                         distilled: Path | None, distill_summary: dict[str, Any] | None,
                         doc_vectors: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    from esdistill.plugin import OnnxEncoder, QueryConfig, QueryHook, load_reranker
    from esdistill.plugin.evaluate import evaluate, load_beir
    from esdistill.plugin.rerank import RerankConfig

    coll = load_beir(folder, split="test")
    corpus = folder / "corpus.jsonl"
    tag = _sha(folder.resolve())
    systems: dict[str, Any] = {}
    notes: list[str] = []
    indices: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    threads = cfg.threads

    def run(label: str, hook: Any, **kw: Any) -> None:
        t0 = time.perf_counter()
        rep = evaluate(hook, coll, k=100, per_query=True, progress=_tty(), **kw)
        systems[label] = _system(rep)
        logger.info("%s %s: nDCG@10 %.4f (%d queries, %.0f s)", name, label, rep.metrics["ndcg@10"], rep.queries,
                    time.perf_counter() - t0)

    shipped = OnnxEncoder(models["student_int8"], threads=threads)
    alias = f"esdistill-bench-{name.lower()}-{tag}-shipped-{shipped.fingerprint[:8]}"
    shipped_vectors: dict[str, np.ndarray] = {}
    indices["student_shipped"] = _fill_index(client, alias, shipped, corpus, shipped_vectors, "int8_hnsw")
    shipped_hook = QueryHook(client, alias, shipped)
    run("bm25", shipped_hook, mode="bm25")
    run("student_shipped", shipped_hook, mode="knn")
    memory["int8_hnsw"] = _vector_memory(client, alias, shipped.manifest.dims, indices["student_shipped"]["docs"])

    student_hook = shipped_hook
    if distilled is not None and _query_side_only(distill_summary):
        student_hook = _query_encoder_rows(run, client, folder, name, tag, cfg, models, distilled,
                                           distill_summary or {}, shipped, alias, shipped_vectors, systems,
                                           indices, memory, notes, doc_vectors)
    elif distilled is not None:
        enc8 = OnnxEncoder(distilled, threads=threads)
        table: dict[str, np.ndarray] = {}
        a_hnsw = f"esdistill-bench-{name.lower()}-{tag}-distilled-{enc8.fingerprint[:8]}"
        a_flat = a_hnsw + "-flat"
        indices["student_distilled_int8"] = _fill_index(client, a_hnsw, enc8, corpus, table, "int8_hnsw")
        indices["student_distilled_int8_flat"] = _fill_index(client, a_flat, enc8, corpus, table, "flat")
        student_hook = QueryHook(client, a_hnsw, enc8)
        run("student_distilled_int8", student_hook, mode="knn")
        run("student_distilled_int8_flat", QueryHook(client, a_flat, enc8), mode="knn")
        memory["flat"] = _vector_memory(client, a_flat, enc8.manifest.dims, indices["student_distilled_int8_flat"]["docs"])
        run("hybrid", student_hook, mode="hybrid")
        trained = Path((distill_summary or {}).get("run_dir", "")) / "student"
        fp32_dir = Path(cfg.work) / "exports" / f"{name}-distilled-fp32-{enc8.fingerprint[:8]}"
        if trained.is_dir():
            _export(str(trained), fp32_dir, quantize="none", parity=folder, name=f"{name}-distilled-fp32")
        if (fp32_dir / "manifest.json").is_file():
            enc32 = OnnxEncoder(fp32_dir, threads=threads)
            a32 = f"esdistill-bench-{name.lower()}-{tag}-distilled32-{enc32.fingerprint[:8]}-flat"
            indices["student_distilled_onnx_fp32"] = _fill_index(client, a32, enc32, corpus, {}, "flat")
            run("student_distilled_onnx_fp32", QueryHook(client, a32, enc32), mode="knn")
            systems["student_distilled_torch_fp32"] = _torch_system(trained, folder, threads)
        else:
            notes.append("the distilled student's torch model is not at hand (given as an export): its torch and "
                         "ONNX fp32 rows are left out")
    else:
        run("hybrid", shipped_hook, mode="hybrid")
        notes.append("no distilled student (none given, training off, or the gate refused it): the distilled rows "
                     "are missing and hybrid/rerank use the shipped student")

    reranker = load_reranker(models["teacher"], threads=threads, cache_size=200_000)
    base = "student_distilled_int8" if distilled is not None else "student_shipped"
    for i, depth in enumerate(cfg.rerank_depths or (20,)):
        hook = QueryHook(student_hook.client, student_hook.index, student_hook.encoder, reranker=reranker,
                         config=QueryConfig(rerank=RerankConfig(top_n=depth)))
        label = "teacher_rerank" if i == 0 else f"teacher_rerank_top{depth}"
        run(label, hook, mode="knn", rerank=True)
        systems[label]["first_stage"] = base
        systems[label]["top_n"] = depth
    _spec_rerank_row(run, student_hook, distill_summary, cfg, reranker, systems, base, notes)

    ref = systems["student_shipped"]["_per_query"]
    for label, s in systems.items():
        if label != "student_shipped" and s.get("_per_query"):
            s["vs_student_shipped"] = _per_query_delta(s["_per_query"], ref)
    for s in systems.values():
        s.pop("_per_query", None)
    return {"systems": systems, "indices": indices, "vector_memory": memory, "notes": notes,
            "first_stage_for_rerank": base}


def _spec_rerank_row(run: Callable[..., None], student_hook: Any, summary: dict[str, Any] | None, cfg: BenchConfig,
                     teacher: Any, systems: dict[str, Any], base: str, notes: list[str]) -> None:
    """``spec_rerank``: the distillation run's own teacher spec (``run.json`` ``teacher.chosen``, e.g.
    ``0.5*mpnet+0.5*bm25``) reranking the student's top N, as ``--rerank RUN`` serves it; the bench's
    teacher (``cfg.teacher``) is the same loaded model as the ``teacher_rerank`` rows."""
    from esdistill.plugin import ConfigError, ModelError, QueryConfig, QueryHook
    from esdistill.plugin.rerank import RerankConfig
    from esdistill.plugin.teacher_rerank import SpecReranker

    spec = ((summary or {}).get("teacher") or {}).get("chosen")
    if not spec:
        return
    depth = (cfg.rerank_depths or (20,))[0]
    try:
        reranker = SpecReranker.from_spec(spec, threads=cfg.threads, cache_size=200_000, loaded={cfg.teacher: teacher})
    except (ConfigError, ModelError) as exc:
        notes.append(f"the run's teacher spec {spec!r} cannot be served at query time, so its rerank row is left "
                     f"out: {exc}")
        return
    hook = QueryHook(student_hook.client, student_hook.index, student_hook.encoder, reranker=reranker,
                     config=QueryConfig(rerank=RerankConfig(top_n=depth)))
    run("spec_rerank", hook, mode="knn", rerank=True)
    systems["spec_rerank"].update(first_stage=base, top_n=depth, spec=spec)


def _query_encoder_rows(run: Callable[..., None], client: Any, folder: Path, name: str, tag: str,
                        cfg: BenchConfig, models: dict[str, Path], distilled: Path, summary: dict[str, Any],
                        shipped: Any, shipped_alias: str, shipped_vectors: dict[str, np.ndarray],
                        systems: dict[str, Any], indices: dict[str, Any], memory: dict[str, Any],
                        notes: list[str], doc_vectors: dict[str, np.ndarray] | None) -> Any:
    """The distilled rows for a query-side-only run: its query encoder searches the shipped
    student's document vectors (no re-embedding), int8 against int8 and fp32 against fp32."""
    from esdistill.plugin import OnnxEncoder, QueryHook
    from esdistill.plugin._errors import ConfigError

    corpus = folder / "corpus.jsonl"
    trained = Path(summary.get("run_dir", "")) / "student"
    given = OnnxEncoder(distilled, threads=cfg.threads)
    notes.append(f"{name}: the distilled student is a query encoder (query-side-only training); it searches the "
                 "shipped student's document vectors, so its index is the shipped one")
    if given.manifest.document_fingerprint == shipped.fingerprint:
        enc8 = given
    elif trained.is_dir():  # pair the run's query encoder with the bench's own export of the base
        enc8 = OnnxEncoder(_export(str(trained), Path(cfg.work) / "exports"
                                   / f"{name}-query-int8-{given.fingerprint[:8]}-{shipped.fingerprint[:8]}",
                                   quantize="int8", parity=folder, name=f"{name}-distilled-query",
                                   document_model=models["student_int8"], force=True), threads=cfg.threads)
    else:
        raise ConfigError(f"--distilled for {name}: a query encoder that is not paired with the shipped student's "
                          "export, and its run's student/ folder is missing to pair it again")
    hook = QueryHook(client, shipped_alias, enc8)
    run("student_distilled_int8", hook, mode="knn")
    flat = f"{shipped_alias}-flat"
    indices["student_distilled_int8_flat"] = _fill_index(client, flat, shipped, corpus, shipped_vectors, "flat")
    run("student_distilled_int8_flat", QueryHook(client, flat, enc8), mode="knn")
    memory["flat"] = _vector_memory(client, flat, shipped.manifest.dims, indices["student_distilled_int8_flat"]["docs"])
    run("hybrid", hook, mode="hybrid")
    if trained.is_dir():
        base32 = OnnxEncoder(models["student_fp32"], threads=cfg.threads)
        enc32 = OnnxEncoder(_export(str(trained), Path(cfg.work) / "exports"
                                    / f"{name}-query-fp32-{given.fingerprint[:8]}-{base32.fingerprint[:8]}",
                                    quantize="none", parity=folder, name=f"{name}-distilled-query-fp32",
                                    document_model=models["student_fp32"], force=True), threads=cfg.threads)
        a32 = f"esdistill-bench-{name.lower()}-{tag}-shipped32-{base32.fingerprint[:8]}-flat"
        indices["student_distilled_onnx_fp32"] = _fill_index(client, a32, base32, corpus, {}, "flat")
        run("student_distilled_onnx_fp32", QueryHook(client, a32, enc32), mode="knn")
        systems["student_distilled_torch_fp32"] = _torch_system(trained, folder, cfg.threads,
                                                                document_model=cfg.student, doc_vectors=doc_vectors)
    else:
        notes.append("the distilled student's torch model is not at hand (given as an export): its torch and "
                     "ONNX fp32 rows are left out")
    return hook


# ------------------------------------------------------------------------------------------ speed
def _length_buckets(encoder: Any, corpus: Path, per_bucket: int, seed: int) -> dict[str, list[str]]:
    texts = [d.full for d in load_corpus(corpus).values()]
    texts = [t for t in texts if t]
    random.Random(seed).shuffle(texts)
    texts = texts[: per_bucket * 40]
    lengths = [len(e.ids) for e in encoder._tokenizer.encode_batch(texts)]
    buckets: dict[str, list[str]] = {name: [] for name, _ in LENGTH_BUCKETS}
    for text, n in zip(texts, lengths):
        for name, upper in LENGTH_BUCKETS:
            if n <= upper:
                if len(buckets[name]) < per_bucket:
                    buckets[name].append(text)
                break
    return {k: v for k, v in buckets.items() if len(v) >= 8}


def _speed(cfg: BenchConfig, client: Any, models: dict[str, Path], corpora: list[Path]) -> dict[str, Any]:
    from esdistill.deploy.bench_encoder import _ingest_rate, run_benchmark
    from esdistill.plugin import OnnxEncoder

    enc8 = OnnxEncoder(models["student_int8"], threads=cfg.threads)
    texts_by_len: dict[str, list[str]] = {}
    for corpus in corpora:  # short texts from one collection, long from another: mix them all
        for k, v in _length_buckets(enc8, corpus, cfg.encoder_docs or 64, cfg.seed).items():
            texts_by_len.setdefault(k, []).extend(v)
    per_bucket: dict[str, Any] = {}
    rates: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    for bucket, texts in texts_by_len.items():
        texts = texts[: cfg.encoder_docs or 64]
        rep = run_benchmark(model=cfg.student, texts=texts, threads=cfg.threads, rounds=2,
                            work_dir=Path(cfg.work) / "encoder" / _sha(cfg.student), esdistill_fp32=str(models["student_fp32"]),
                            esdistill_int8=str(models["student_int8"]))
        per_bucket[bucket] = {"docs": rep["docs"], "mean_tokens": rep["mean_tokens"],
                              "docs_per_s": {r["engine"]: r["docs_per_s"] for r in rep["results"]},
                              "speedup": {r["engine"]: r["speedup"] for r in rep["results"]},
                              "cosine_min": {r["engine"]: r["cosine_min"] for r in rep["results"]}}
        sizes[bucket] = rep["docs"]
        for r in rep["results"]:
            rates.setdefault(r["engine"], {})[bucket] = r["docs_per_s"]
    names = {"st-torch-fp32": "st_torch_fp32", "st-onnx-int8": "st_onnx_int8",
             "esdistill-onnx-fp32": "onnx_fp32", "esdistill-onnx-int8": "onnx_int8"}
    overall = {}
    for engine, by_bucket in rates.items():  # the same texts: total docs over total seconds
        seconds = sum(sizes[b] / by_bucket[b] for b in by_bucket)
        overall[names.get(engine, engine)] = round(sum(sizes[b] for b in by_bucket) / seconds, 2)
    mixed: list[str] = []
    for corpus in corpora:
        mixed += [d.full for d in load_corpus(corpus).values()]
    mixed = [t for t in mixed if t][: cfg.ingest_docs or 400]
    ingest = _ingest_rate(enc8, mixed, None, client=client)
    return {"encoder_docs_per_s": overall, "encoder_by_length": per_bucket,
            "int8_speedup_over_st_torch": round(overall["onnx_int8"] / overall["st_torch_fp32"], 3),
            "int8_speedup_over_st_int8": (round(overall["onnx_int8"] / overall["st_onnx_int8"], 3)
                                          if "st_onnx_int8" in overall else None),
            "ingest_docs_per_s": ingest["docs_per_s"], "ingest": ingest}


# ------------------------------------------------------------------------------------- ablation
def _ablation(name: str, folder: Path, summary: dict[str, Any], cfg: BenchConfig,
              doc_vectors: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Train the distillation run's lists again with each loss (same lists, same budget) and score
    each student (torch fp32, exact search) on the test split."""
    from esdistill.export.mining import load_lists
    from esdistill.export.pipeline import training_corpus
    from esdistill.export.train import TrainConfig, train_student

    run_dir = Path(summary["run_dir"])
    lists = load_lists(run_dir / "lists.train.jsonl")
    # the corpus the lists were mined from, with the run's inverse-cloze positives
    corpus = training_corpus(run_dir, load_corpus(summary.get("corpus") or folder))
    base_cfg = summary.get("train", {}).get("config", {})
    document_model = cfg.student if _query_side_only(summary) else None
    doc_vectors = {} if doc_vectors is None else doc_vectors  # a frozen document tower embeds the corpus once
    frozen = None
    if document_model is not None:
        ids, dv = _doc_vectors(folder, document_model, doc_vectors, f"{document_model}|{folder}")
        frozen = dict(zip(ids, dv))
    rows: dict[str, Any] = {}
    for loss in ABLATION_LOSSES:
        out = run_dir / "ablation" / loss.replace("*", "x").replace("+", "_")
        kw = {k: v for k, v in base_cfg.items() if k in TrainConfig.__dataclass_fields__}
        kw.update(loss=loss, show_progress=_tty(), seed=cfg.seed)
        # an earlier bench's student of these very lists and settings is resumed from its last
        # checkpoint (nothing is trained again); anything else is trained from the base
        result = train_student(lists, corpus, student=cfg.student, out_dir=out, config=TrainConfig(**kw),
                               resume=True, frozen_doc_vectors=frozen)
        row = _torch_system(out / "student", folder, cfg.threads, document_model=document_model,
                            doc_vectors=doc_vectors)
        row["train_seconds"] = round(result.seconds, 1)  # the student's training time, also when reused
        row["reused"] = result.resumed_from_step is not None and result.resumed_from_step == result.steps
        row.pop("_per_query", None)
        rows[loss] = row
        logger.info("ablation %s %s: nDCG@10 %.4f", name, loss, row["ndcg@10"])
    return {"lists": len(lists), "config": {k: v for k, v in base_cfg.items() if k != "loss"}, "losses": rows}


# ------------------------------------------------------------------------------------ environment
def _environment(client: Any, cfg: BenchConfig) -> dict[str, Any]:
    from importlib import metadata

    from esdistill.deploy.bench_encoder import _cpu_name
    from esdistill.plugin.es_client import server_version

    versions = {}
    for pkg in ("esdistill", "onnxruntime", "torch", "sentence-transformers", "transformers", "optimum-onnx",
                "elasticsearch", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        es_version = server_version(client)
    except Exception:  # noqa: BLE001
        es_version = None
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": cfg.threads or os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(), "elasticsearch": es_version,
            "versions": versions, "seed": cfg.seed, "quick": cfg.quick,
            "command": "esdistill " + " ".join(sys.argv[1:]) if sys.argv and "bench" in sys.argv else "run_bench()"}


# ------------------------------------------------------------------------------------------- main
def run_bench(cfg: BenchConfig, *, client: Any = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; write ``report.json``, ``report.md`` and plots into ``cfg.out``; return the report.

    Args:
        cfg: what to run.
        client: an Elasticsearch client (default :func:`esdistill.plugin.connect`).
        progress: called with one line per step (default: print to stderr).

    Raises:
        ConfigError: bad collections. ElasticsearchUnavailable: no cluster.
    """
    from esdistill.deploy.bench_plots import write_markdown, write_plots
    from esdistill.plugin import connect

    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.perf_counter()
    client = client or connect()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(cfg.work)  # type: ignore[arg-type]
    report: dict[str, Any] = {"environment": _environment(client, cfg),
                              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                              "collections": {}, "distillation": {}, "collection_info": {}, "notes": []}
    report["config"]["collections"] = [str(c) for c in cfg.collections]
    timings: dict[str, float] = {}

    t = time.perf_counter()
    say(f"[bench] models: {cfg.student} (int8 + fp32 ONNX), teacher {cfg.teacher} (fp32 ONNX)")
    parity = cfg.collections[0]
    # the bench measures these exports (int8 against fp32 included), so a missed parity threshold
    # is reported rather than ending the run
    models = {"student_int8": _export(cfg.student, work / f"{Path(cfg.student).name}-int8", quantize="int8",
                                      parity=parity, force=True),
              "student_fp32": _export(cfg.student, work / f"{Path(cfg.student).name}-fp32", quantize="none",
                                      parity=parity, force=True),
              # fp32 only: a smaller sample checks the export (the 110M teacher is slow to run twice)
              "teacher": _export(cfg.teacher, work / f"{Path(cfg.teacher).name}-fp32", quantize="none",
                                 parity=parity, force=True, sample=(100, 50))}
    report["notes"] += _parity_notes(models)
    timings["models"] = time.perf_counter() - t

    folders: list[Path] = []
    doc_vectors: dict[str, np.ndarray] = {}  # frozen base document vectors, shared by the torch and ablation rows
    for coll in cfg.collections:
        name = coll.name
        t = time.perf_counter()
        folder, info = sample_collection(coll, work / "samples", max_docs=cfg.max_docs, max_queries=cfg.max_queries,
                                         train_queries=cfg.train_queries, seed=cfg.seed)
        folders.append(folder)
        report["collection_info"][name] = info
        say(f"[bench] {name}: {info['docs']} docs, {info['test_queries']} test queries"
            + (" (a sample: --quick)" if info["sampled"] else ""))
        distilled: Path | None = None
        dsum: dict[str, Any] | None = None
        if name in cfg.distilled:
            distilled, dsum = _given_distilled(Path(cfg.distilled[name]))
            report["distillation"][name] = {"given": cfg.distilled[name], **(_distill_facts(dsum) if dsum else {})}
        elif cfg.train:
            say(f"[bench] {name}: distilling a student (cached after the first run) ...")
            distilled, dsum = _distill(name, folder, cfg, client)
            report["distillation"][name] = _distill_facts(dsum)
        timings[f"{name}.distill"] = time.perf_counter() - t
        t = time.perf_counter()
        say(f"[bench] {name}: quality (BM25, students, hybrid, teacher rerank) ...")
        report["collections"][name] = _evaluate_collection(folder, name, cfg, client, models, distilled, dsum,
                                                           doc_vectors)
        timings[f"{name}.quality"] = time.perf_counter() - t
        if cfg.ablation is not None and (not cfg.ablation or name in cfg.ablation) and dsum is not None:
            t = time.perf_counter()
            say(f"[bench] {name}: loss ablation ({', '.join(ABLATION_LOSSES)}) ...")
            report["distillation"][name]["ablation"] = _ablation(name, folder, dsum, cfg, doc_vectors)
            timings[f"{name}.ablation"] = time.perf_counter() - t

    t = time.perf_counter()
    say("[bench] speed: encoders by text length, ingest ...")
    speed = _speed(cfg, client, models, [f / "corpus.jsonl" for f in folders])
    first = next(iter(report["collections"].values()))["systems"]
    latency_src = {"knn": "student_distilled_int8" if "student_distilled_int8" in first else "student_shipped",
                   "hybrid": "hybrid", "knn_rerank": "teacher_rerank"}
    speed["query_latency_ms"] = {mode: first[src]["latency_ms"] for mode, src in latency_src.items()}
    speed["query_latency_source"] = {mode: f"{next(iter(report['collections']))}/{src}"
                                     for mode, src in latency_src.items()}
    speed["teacher_ms_per_query"] = round(first["teacher_rerank"]["stage_ms"].get("rerank", 0.0), 1)
    report["speed"] = speed
    timings["speed"] = time.perf_counter() - t
    report["targets"] = _targets(report)
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    report["seconds"] = round(time.perf_counter() - started, 1)
    known = [out, work, *cfg.collections, *(Path(d) for d in cfg.distilled.values()),
             *(Path(m) for m in (cfg.student, cfg.teacher) if Path(m).exists())]
    report = _portable(report, known)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["plots"] = _portable(write_plots(report, out), known)
    write_markdown(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    say(f"[bench] done in {report['seconds'] / 60:.1f} min: {out / 'report.md'}")
    return report


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a report shows it: relative to the working directory, ``~/...`` under the home
    directory, else relative to the working directory with ``..`` (never absolute on POSIX)."""
    p = Path(path)
    if not p.is_absolute():
        return os.fspath(p)
    cwd, home = Path.cwd(), Path.home()
    if p == cwd or cwd in p.parents:
        return os.fspath(p.relative_to(cwd))
    if p == home or home in p.parents:
        return os.fspath(Path("~") / p.relative_to(home))
    try:
        return os.path.relpath(p, cwd)
    except ValueError:  # another drive
        return os.fspath(p)


def _portable(value: Any, paths: Sequence[Path]) -> Any:
    """``value`` (the report, or part of it) with every occurrence of ``paths`` (as given and
    resolved) written as :func:`shown_path` writes them, in every string it holds; any other path
    under the working directory or the home directory (e.g. a packaged model's cache) too."""
    subs: dict[str, str] = {}
    for p in paths:
        for form in (Path(p).absolute(), Path(p).resolve()):
            subs[os.fspath(form)] = shown_path(form)
    for root in (Path.cwd(), Path.home()):
        subs.setdefault(os.fspath(root) + os.sep, shown_path(root) + os.sep)
    order = sorted((k for k in subs if k not in (os.sep, "")), key=len, reverse=True)

    def fix(v: Any) -> Any:
        if isinstance(v, str):
            for k in order:
                v = v.replace(k, subs[k])
            return v
        if isinstance(v, Path):
            return fix(os.fspath(v))
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v

    return fix(value)


def _given_distilled(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """``--distilled`` takes a run folder of ``esdistill distill``/``adapt`` (its ``onnx/`` is served,
    its ``student/`` gives the torch and fp32 rows) or an exported student folder."""
    from esdistill.plugin._errors import ConfigError

    if (path / "run.json").is_file():
        summary = json.loads((path / "run.json").read_text())
        if not (path / "onnx" / "manifest.json").is_file():
            raise ConfigError(f"{path} is a distillation run without an export (the gate refused it?): "
                              "nothing to benchmark as the distilled student")
        summary["run_dir"] = str(path)
        summary.setdefault("path", f"given run {path} ({summary.get('dev_origin', 'dev set unknown')})")
        return path / "onnx", summary
    if (path / "manifest.json").is_file():
        return path, None
    raise ConfigError(f"--distilled {path}: neither a distillation run folder (run.json + onnx/) nor an "
                      "exported model folder (manifest.json)")


def _distill_facts(summary: dict[str, Any]) -> dict[str, Any]:
    cache = summary.get("score_cache", {})
    return {"path": summary.get("path"), "run_dir": summary.get("run_dir"), "seconds": summary.get("seconds"),
            "timings_s": summary.get("timings_s"), "train_queries": summary.get("train_queries"),
            "synthetic_queries": summary.get("synthetic_queries"), "lists": summary.get("lists"),
            "teacher": summary.get("teacher"), "gate": summary.get("gate"),
            "train_steps": summary.get("train", {}).get("steps"),
            "loss": summary.get("train", {}).get("config", {}).get("loss"),
            "teacher_scores": {"computed": cache.get("misses"), "saved_by_cache": cache.get("hits"),
                               "cached_entries": cache.get("entries")},
            "export": summary.get("export")}


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured value and whether it was met."""
    speed = report["speed"]
    out: dict[str, Any] = {
        "int8_speedup_over_st_torch_fp32": {"value": speed["int8_speedup_over_st_torch"], "target": ">= 1.6",
                                            "met": speed["int8_speedup_over_st_torch"] >= 1.6},
    }
    if speed.get("int8_speedup_over_st_int8") is not None:
        out["int8_ahead_of_st_int8"] = {"value": speed["int8_speedup_over_st_int8"], "target": "> 1.0",
                                        "met": speed["int8_speedup_over_st_int8"] > 1.0}
    for name, coll in report["collections"].items():
        s = coll["systems"]
        if "student_distilled_int8_flat" in s and "student_distilled_onnx_fp32" in s:
            delta = round(s["student_distilled_int8_flat"]["ndcg@10"] - s["student_distilled_onnx_fp32"]["ndcg@10"], 4)
            out[f"{name}.int8_vs_fp32_ndcg_change"] = {"value": delta, "target": "|change| <= 0.005",
                                                       "met": abs(delta) <= 0.005}
        if "student_distilled_int8" in s:
            d, b = s["student_distilled_int8"]["ndcg@10"], s["student_shipped"]["ndcg@10"]
            t = s["teacher_rerank"]["ndcg@10"]
            out[f"{name}.distilled_vs_shipped"] = {"value": round(d - b, 4), "target": "> 0", "met": d > b}
            out[f"{name}.distilled_share_of_teacher"] = {"value": round(d / t, 3) if t else None,
                                                        "target": ">= 0.95", "met": bool(t) and d / t >= 0.95}
    return out


def _depths(text: str | None) -> tuple[int, ...] | None:
    from esdistill.plugin._errors import ConfigError

    if not text:
        return None
    try:
        depths = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--rerank-depths {text!r}: write numbers separated by commas, e.g. 20,100") from None
    if not depths or min(depths) < 1:
        raise ConfigError(f"--rerank-depths {text!r}: need one or more positive depths")
    return depths


def main_args(args: Any) -> int:
    """Entry point of ``esdistill bench`` (parsed arguments)."""
    from esdistill.plugin._errors import ConfigError

    distilled = {}
    for item in args.distilled or []:
        if "=" not in item:
            raise ConfigError(f"--distilled {item!r}: write NAME=DIR (NAME a collection folder's name)")
        k, v = item.split("=", 1)
        distilled[k] = v
    cfg = BenchConfig(out=Path(args.out), collections=tuple(Path(c) for c in args.collections or ()),
                      data=Path(args.data) if args.data else None, quick=args.quick, student=args.student, teacher=args.teacher, distilled=distilled,
                      train=not args.no_train, ablation=tuple(args.ablation) if args.ablation is not None else None,
                      threads=args.threads, seed=args.seed, max_docs=args.max_docs, max_queries=args.max_queries,
                      rerank_depths=_depths(args.rerank_depths),
                      work=Path(args.work) if args.work else None)
    report = run_bench(cfg)
    if args.json:
        print(json.dumps({"collections": {n: {s: {k: v[k] for k in ("ndcg@10", "recall@100", "mrr@10")}
                                              for s, v in c["systems"].items()}
                                          for n, c in report["collections"].items()},
                          "speed": {k: report["speed"][k] for k in ("encoder_docs_per_s", "ingest_docs_per_s",
                                                                   "query_latency_ms")},
                          "report": str(Path(args.out) / "report.md")}))
    return 0
