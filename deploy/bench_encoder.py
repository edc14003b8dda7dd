"""Encoder throughput, measured in one run on the same texts: torch, sentence-transformers' ONNX int8
backend, and esdistill's ONNX fp32 and int8 encoders.

A benchmark script, not a test. Run it on an otherwise idle machine::

    python -m esdistill.deploy.bench_encoder --docs 1000 --threads 2
    python -m esdistill.deploy.bench_encoder --docs 1000 --json > bench.json

Engines (each encodes the same ``--docs`` SciFact documents, title + abstract, truncated to the
model's 256 tokens, ``--batch-size`` at a time; rounds are interleaved so a noisy neighbour hits
every engine alike, and the best round of each is reported):

* ``st-torch-fp32``: ``SentenceTransformer(model).encode`` in torch (the baseline).
* ``st-onnx-int8``: sentence-transformers' own ONNX backend, quantized by its
  ``export_dynamic_quantized_onnx_model(model, "avx2", path)`` (done offline from a local copy).
* ``esdistill-onnx-fp32`` / ``esdistill-onnx-int8``: ``esdistill export`` (parity-gated) then
  :class:`~esdistill.plugin.encoder.OnnxEncoder`, tokenization and pooling included.

torch, sentence-transformers and optimum are imported only when this script runs (the export extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.plugin.documents import document_text

__all__ = ["BenchResult", "main", "run_benchmark"]

logger = logging.getLogger(__name__)

BASELINE = "st-torch-fp32"


@dataclass
class BenchResult:
    """One engine's numbers.

    Attributes:
        engine: the engine's name.
        docs_per_s: best round's throughput.
        rounds: every round's throughput.
        speedup: ``docs_per_s`` over the torch baseline's.
        cosine_min / cosine_mean: agreement of its embeddings with torch's, same texts.
    """

    engine: str
    docs_per_s: float
    rounds: list[float] = field(default_factory=list)
    speedup: float = 1.0
    cosine_min: float = 1.0
    cosine_mean: float = 1.0


def load_texts(path: Path, n: int) -> list[str]:
    """The first ``n`` documents of a BEIR ``corpus.jsonl``, as :func:`document_text` joins them."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            texts.append(document_text(d))
            if len(texts) == n:
                break
    return texts


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ort_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def _st_onnx_int8(source: Path, work: Path, threads: int) -> Any:
    """sentence-transformers' own int8 path, offline from a local copy of the model."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    local = work / "st-onnx"
    if not local.exists():
        shutil.copytree(source, local)
    kwargs = {"provider": "CPUExecutionProvider", "session_options": _ort_options(threads)}
    target = local / "onnx" / "model_quint8_avx2.onnx"
    if not target.is_file():
        fp32 = SentenceTransformer(str(local), backend="onnx", device="cpu", model_kwargs=dict(kwargs))
        fp32.save(str(local))
        export_dynamic_quantized_onnx_model(fp32, "avx2", str(local))
        # optimum keeps its export in a TemporaryDirectory on the model; remove it now rather than
        # leave it to the garbage collector (which warns)
        for module in fp32.modules():
            for inner in (module, *vars(module).values()):
                tmp = getattr(inner, "_model_save_dir_tempdirectory_instance", None)
                if tmp is not None:
                    tmp.cleanup()
    return SentenceTransformer(str(local), backend="onnx", device="cpu",
                               model_kwargs={**kwargs, "file_name": "onnx/model_quint8_avx2.onnx"})


def _esdistill_exports(model: str, work: Path, texts: Sequence[str], fp32_dir: str | None,
                       int8_dir: str | None) -> tuple[Path, Path]:
    from esdistill.export.onnx_export import export_model

    sample = list(texts[:200])
    if fp32_dir is None:
        fp32_dir = os.fspath(export_model(model, work / "esdistill-fp32", quantize="none", parity_texts=sample).out)
    if int8_dir is None:
        int8_dir = os.fspath(export_model(model, work / "esdistill-int8", quantize="int8", parity_texts=sample).out)
    return Path(fp32_dir), Path(int8_dir)


def run_benchmark(*, model: str = "minilm", corpus: Path | None = None, docs: int = 1000, batch_size: int = 32,
                  threads: int | None = None, rounds: int = 2, work_dir: Path | None = None,
                  esdistill_fp32: str | None = None, esdistill_int8: str | None = None,
                  skip_st_onnx: bool = False, es_url: str | None = None,
                  texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure every engine on the same texts; return a JSON-ready dict.

    Args:
        model: the source model (folder or packaged name).
        corpus: a BEIR ``corpus.jsonl`` (default: ``$ESDISTILL_DATA/scifact/corpus.jsonl``).
        docs: how many documents to encode per round.
        batch_size: texts per call, for every engine.
        threads: torch and onnxruntime intra-op threads (default: all cores).
        rounds: interleaved rounds; each engine's best round is reported.
        work_dir: where exports go (default: a temporary folder, removed afterwards).
        esdistill_fp32 / esdistill_int8: existing esdistill exports to reuse instead of exporting.
        skip_st_onnx: leave out sentence-transformers' ONNX backend.
        es_url: also ingest the same texts into this Elasticsearch with the int8 encoder (``None``: skip).
        texts: encode these texts instead of the first ``docs`` of ``corpus``.
    """
    import torch
    from esdistill.plugin import resolve_model
    from esdistill.plugin.encoder import OnnxEncoder
    from sentence_transformers import SentenceTransformer

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    source = Path(resolve_model(model))
    if texts is None and corpus is None:
        from esdistill.deploy._data_dir import data_dir

        corpus = data_dir(None, option="--corpus FILE") / "scifact" / "corpus.jsonl"
    texts = list(texts) if texts is not None else load_texts(Path(corpus), docs)  # type: ignore[arg-type]
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="esdistill-bench-")
        work = Path(tmp.name)
    else:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = SentenceTransformer(str(source), device="cpu")
            engines: dict[str, Callable[[list[str]], np.ndarray]] = {
                BASELINE: lambda t: st.encode(t, batch_size=batch_size, convert_to_numpy=True,
                                             show_progress_bar=False),
            }
            if not skip_st_onnx:
                st8 = _st_onnx_int8(source, work, threads)
                engines["st-onnx-int8"] = lambda t: st8.encode(t, batch_size=batch_size, convert_to_numpy=True,
                                                               show_progress_bar=False)
            fp32_dir, int8_dir = _esdistill_exports(model, work, texts, esdistill_fp32, esdistill_int8)
        enc32 = OnnxEncoder(fp32_dir, threads=threads, batch_size=batch_size)
        enc8 = OnnxEncoder(int8_dir, threads=threads, batch_size=batch_size)
        engines["esdistill-onnx-fp32"] = enc32.encode
        engines["esdistill-onnx-int8"] = enc8.encode
        encodings = enc8._tokenizer.encode_batch(texts)
        tokens = [len(e.ids) for e in encodings]
        truncated = [bool(e.overflowing) for e in encodings]

        warm = texts[: min(len(texts), 2 * batch_size)]
        for fn in engines.values():
            fn(warm)
        timings: dict[str, list[float]] = {name: [] for name in engines}
        outputs: dict[str, np.ndarray] = {}
        for r in range(rounds):
            for name, fn in engines.items():
                t0 = time.perf_counter()
                emb = fn(texts)
                timings[name].append(len(texts) / (time.perf_counter() - t0))
                outputs[name] = np.asarray(emb, dtype=np.float32)
                logger.info("round %d %s: %.1f docs/s", r + 1, name, timings[name][-1])
        ref = outputs[BASELINE]
        ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        base = max(timings[BASELINE])
        results = []
        for name in engines:
            e = outputs[name] / np.linalg.norm(outputs[name], axis=1, keepdims=True)
            cos = np.sum(e * ref_n, axis=1)
            results.append(BenchResult(engine=name, docs_per_s=round(max(timings[name]), 2),
                                       rounds=[round(x, 2) for x in timings[name]],
                                       speedup=round(max(timings[name]) / base, 3),
                                       cosine_min=round(float(cos.min()), 5), cosine_mean=round(float(cos.mean()), 5)))
        ingest = _ingest_rate(enc8, texts, es_url) if es_url else None
    finally:
        if tmp is not None:
            tmp.cleanup()
    if ingest is not None:
        ingest["share_of_int8_encoder"] = round(ingest["docs_per_s"] / max(timings["esdistill-onnx-int8"]), 3)
    import onnxruntime
    import sentence_transformers

    return {
        "model": str(source.name),
        "docs": len(texts),
        "mean_tokens": round(float(np.mean(tokens)), 1),
        "truncated_share": round(float(np.mean(truncated)), 3),
        "batch_size": batch_size,
        "threads": threads,
        "rounds": rounds,
        "cpu": _cpu_name(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "sentence-transformers": sentence_transformers.__version__},
        "results": [asdict(r) for r in results],
        "ingest": ingest,
    }


def _ingest_rate(encoder: Any, texts: Sequence[str], es_url: str | None, *, client: Any = None) -> dict[str, Any]:
    """Ingest the same texts with the int8 encoder into a fresh index; return docs/s (embedding included).

    Uses ``client`` when given (left open), else connects to ``es_url`` (closed afterwards).
    """
    import uuid

    from esdistill.plugin import IndexManager, IngestHook, connect

    own = client is None
    client = client if client is not None else connect(es_url)
    alias = f"esdistill-bench-ingest-{uuid.uuid4().hex[:8]}"
    manager = IndexManager(client, alias)
    manager.create(encoder.manifest)
    try:
        docs = [{"_id": str(i), "text": t} for i, t in enumerate(texts)]
        t0 = time.perf_counter()
        summary = IngestHook(client, alias, encoder, text_fields=("text",), progress=False).ingest(docs)
        seconds = time.perf_counter() - t0
        logger.info("ingest: %s", summary.format())
        return {"docs_per_s": round(len(texts) / seconds, 2), "indexed": summary.indexed,
                "count": manager.count()}
    finally:
        for index in manager.versions():
            client.indices.delete(index=index, ignore_unavailable=True)
        if own:
            client.close()


def _print_table(report: dict[str, Any]) -> None:
    print(f"{report['model']}: {report['docs']} SciFact docs (mean {report['mean_tokens']} tokens, "
          f"{100 * report['truncated_share']:.0f}% truncated), batch {report['batch_size']}, "
          f"{report['threads']} threads, best of {report['rounds']} interleaved rounds, {report['cpu']}")
    print(f"{'engine':<22} {'docs/s':>8} {'x torch':>8} {'cos min':>8} {'cos mean':>9}   rounds")
    for r in report["results"]:
        print(f"{r['engine']:<22} {r['docs_per_s']:>8.1f} {r['speedup']:>8.2f} {r['cosine_min']:>8.4f} "
              f"{r['cosine_mean']:>9.4f}   {r['rounds']}")
    if report.get("ingest"):
        ing = report["ingest"]
        print(f"{'ingest into ES (int8)':<22} {ing['docs_per_s']:>8.1f}   = {100 * ing['share_of_int8_encoder']:.0f}% "
              f"of the int8 encoder; indexed {ing['indexed']}, count {ing['count']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m esdistill.deploy.bench_encoder", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm", help="source model: folder or packaged name (default minilm)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="a BEIR corpus.jsonl [$ESDISTILL_DATA/scifact/corpus.jsonl]")
    p.add_argument("--docs", type=int, default=1000, help="documents per round (default 1000)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per call (default 32)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep exports here (default: a temporary folder)")
    p.add_argument("--esdistill-fp32", default=None, metavar="DIR", help="reuse this fp32 export")
    p.add_argument("--esdistill-int8", default=None, metavar="DIR", help="reuse this int8 export")
    p.add_argument("--skip-st-onnx", action="store_true", help="leave out sentence-transformers' ONNX backend")
    p.add_argument("--es-url", default=os.environ.get("ESDISTILL_ES_URL", "http://127.0.0.1:9200"),
                   help="Elasticsearch for the ingest measurement (default: ESDISTILL_ES_URL or 127.0.0.1:9200)")
    p.add_argument("--no-ingest", action="store_true", help="leave out the ingest measurement")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    report = run_benchmark(model=args.model, corpus=args.corpus, docs=args.docs, batch_size=args.batch_size,
                           threads=args.threads, rounds=args.rounds, work_dir=args.work_dir,
                           esdistill_fp32=args.esdistill_fp32, esdistill_int8=args.esdistill_int8,
                           skip_st_onnx=args.skip_st_onnx, es_url=None if args.no_ingest else args.es_url)
    report["command"] = "python -m esdistill.deploy.bench_encoder " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
