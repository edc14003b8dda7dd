"""Adoption benchmark: in-place backfill and copy speed as a share of the encoder's own speed, and the
cost of a sync over an unchanged index.

A benchmark script, not a test: it prints numbers and asserts nothing about time. On the same texts
it measures

* **encoder**: the model alone (``encode_with_info``, ``--batch-size`` texts a call), best of two
  rounds after a warm-up;
* **in-place backfill**: ``IndexManager.adopt(mode="in-place")`` of a team index made with plain
  elasticsearch-py (partial updates with ``if_seq_no``), documents per second, as a share of the
  encoder's documents per second, and the share of the wall time the encoder was busy (the same
  ratio measured inside one run, so a noisy neighbour between the two measurements does not
  distort it);
* **sync, unchanged**: ``sync_index`` over the adopted index right after: documents checked per
  second, and how many were embedded (must be 0);
* **copy**: ``IndexManager.adopt(mode="copy")`` of a second, identical team index: documents per
  second, and how long the source was write-blocked.

Run it next to a node (or let it start one)::

    python -m esdistill.deploy.bench_adopt --model minilm --docs 5000
    python -m esdistill.deploy.bench_adopt --model runs/student-int8 --es-url http://127.0.0.1:9200 --json

The documents are SciFact's first ``--docs`` (title + abstract) when ``--corpus`` (a BEIR
``corpus.jsonl``) is given or ``$ESDISTILL_DATA/scifact`` exists, else synthetic texts of 5 to 60
words.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "run_benchmark"]

logger = logging.getLogger("esdistill.bench_adopt")

_WORDS = ("cell", "protein", "gene", "energy", "water", "light", "tide", "moon", "sun", "climate", "river", "ocean",
          "memory", "neuron", "vaccine", "virus", "carbon", "soil", "forest", "enzyme", "glacier", "volcano")


def _documents(n: int, corpus: Path | None) -> tuple[list[dict[str, Any]], str]:
    if corpus is None:
        data = os.environ.get("ESDISTILL_DATA")
        guess = Path(data) / "scifact" / "corpus.jsonl" if data else None
        corpus = guess if guess is not None and guess.is_file() else None
    if corpus is not None:
        docs = []
        with open(corpus, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                docs.append({"_id": str(d["_id"]), "title": d.get("title") or "", "body": d.get("text") or "",
                             "category": ("bio", "geo", "phys")[len(docs) % 3]})
                if len(docs) == n:
                    break
        return docs, str(corpus)
    rng = random.Random(5)
    return [{"_id": f"doc-{i:06d}", "title": f"{rng.choice(_WORDS).title()} {i}",
             "body": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 60))),
             "category": ("bio", "geo", "phys")[i % 3]} for i in range(n)], "synthetic"


def _team_index(client: Any, name: str, docs: list[dict[str, Any]]) -> None:
    client.indices.delete(index=f"{name}*", ignore_unavailable=True, allow_no_indices=True, expand_wildcards="all")
    client.indices.create(index=name, settings={"number_of_shards": 1, "number_of_replicas": 0},
                          mappings={"_meta": {"owner": "bench"}, "properties": {
                              "title": {"type": "text"}, "body": {"type": "text"}, "category": {"type": "keyword"}}})
    for start in range(0, len(docs), 1000):
        ops: list[dict[str, Any]] = []
        for d in docs[start:start + 1000]:
            ops += [{"index": {"_index": name, "_id": d["_id"]}}, {k: v for k, v in d.items() if k != "_id"}]
        resp = client.bulk(operations=ops)
        if resp["errors"]:
            raise SystemExit(f"bulk load of {name} failed: {json.dumps(resp)[:500]}")
    client.indices.refresh(index=name)


def _encoder_rate(encoder: Any, texts: list[str], batch_size: int) -> float:
    encoder.encode_with_info(texts[:batch_size], kind="document")  # warm-up
    best = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        for start in range(0, len(texts), batch_size):
            encoder.encode_with_info(texts[start:start + batch_size], kind="document")
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best


def run_benchmark(client: Any, encoder: Any, docs: list[dict[str, Any]], *, batch_size: int = 256,
                  prefix: str = "esdistill-bench-adopt") -> dict[str, Any]:
    """Measure encoder, in-place backfill, unchanged sync and copy on ``docs``; return the numbers."""
    from esdistill.plugin.documents import document_text
    from esdistill.plugin.index import IndexManager
    from esdistill.plugin.sync import sync_index

    texts = [document_text(d, ("title", "body")) for d in docs]
    enc = _encoder_rate(encoder, texts, batch_size)

    in_place = f"{prefix}-inplace"
    _team_index(client, in_place, docs)
    result = IndexManager(client, in_place).adopt(encoder, text_fields=("title", "body"), mode="in-place",
                                                  batch_size=batch_size, progress=False)
    backfill = result.backfill
    assert backfill is not None
    backfill_rate = backfill.embedded / backfill.seconds
    unchanged = sync_index(client, in_place, encoder, batch_size=batch_size, progress=False)

    copied = f"{prefix}-copy"
    _team_index(client, copied, docs)
    c = IndexManager(client, copied).adopt(encoder, text_fields=("title", "body"), mode="copy",
                                           batch_size=batch_size, progress=False).copy
    assert c is not None
    copy_rate = c.summary.indexed / c.seconds
    for name in (in_place, copied):
        client.indices.delete(index=f"{name}*", ignore_unavailable=True, allow_no_indices=True)
    return {
        "docs": len(docs),
        "model": encoder.manifest.name,
        "quantization": encoder.manifest.quantization,
        "batch_size": batch_size,
        "encoder_docs_per_s": round(enc, 1),
        "backfill": {"docs_per_s": round(backfill_rate, 1), "share_of_encoder": round(backfill_rate / enc, 3),
                     "encoder_busy": round(backfill.embed_seconds / backfill.seconds, 3),
                     "embedded": backfill.embedded, "seconds": round(backfill.seconds, 2),
                     "embed_seconds": round(backfill.embed_seconds, 2)},
        "sync_unchanged": {"checked": unchanged.checked, "embedded": unchanged.embedded,
                           "seconds": round(unchanged.seconds, 2), "checked_per_s": round(unchanged.checked_per_s, 1)},
        "copy": {"docs_per_s": round(copy_rate, 1), "share_of_encoder": round(copy_rate / enc, 3),
                 "encoder_busy": round(c.summary.embed_seconds / c.seconds, 3),
                 "embedded": c.summary.indexed, "verified": c.summary.verified, "seconds": round(c.seconds, 2),
                 "write_block_s": round(c.summary.write_block_s, 2)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esdistill.deploy.bench_adopt", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", help="exported model folder or packaged name (default minilm)")
    parser.add_argument("--docs", type=int, default=5000, help="documents (default 5000)")
    parser.add_argument("--corpus", type=Path, default=None, help="a BEIR corpus.jsonl (default: SciFact if found)")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per encoder call and bulk (default 256)")
    parser.add_argument("--threads", type=int, default=None, help="encoder threads (default: all cores)")
    parser.add_argument("--es-url", default=os.environ.get("ESDISTILL_ES_URL"),
                        help="a running node (default: ESDISTILL_ES_URL, else a node started for the run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.es_client import connect
    from esdistill.plugin.models import exported_model

    encoder = OnnxEncoder(exported_model(args.model), threads=args.threads)
    docs, source = _documents(args.docs, args.corpus)
    node = None
    url = args.es_url
    if url is None:
        from esdistill.deploy import LocalElasticsearch

        node = LocalElasticsearch(port=19321, heap="1g")
        node.start(timeout=300)
        url = node.url
    client = connect(url, request_timeout=120)
    try:
        numbers = run_benchmark(client, encoder, docs, batch_size=args.batch_size)
    finally:
        client.close()
        if node is not None:
            node.stop()
    numbers.update(corpus=source, cpus=os.cpu_count(), machine=platform.machine(), python=platform.python_version())
    if args.json:
        print(json.dumps(numbers))
        return 0
    b, s, c = numbers["backfill"], numbers["sync_unchanged"], numbers["copy"]
    print(f"{numbers['docs']} documents ({source}), model {numbers['model']} ({numbers['quantization']}), "
          f"batch {numbers['batch_size']}, {numbers['cpus']} CPUs")
    print(f"  encoder alone        {numbers['encoder_docs_per_s']:8.1f} docs/s")
    print(f"  in-place backfill    {b['docs_per_s']:8.1f} docs/s  = {b['share_of_encoder']:.0%} of the encoder "
          f"({b['embedded']} embedded in {b['seconds']} s, encoder busy {b['encoder_busy']:.0%} of it)")
    print(f"  sync, unchanged      {s['checked_per_s']:8.1f} docs checked/s, {s['embedded']} embedded "
          f"({s['checked']} checked in {s['seconds']} s)")
    print(f"  copy (blue/green)    {c['docs_per_s']:8.1f} docs/s  = {c['share_of_encoder']:.0%} of the encoder "
          f"(encoder busy {c['encoder_busy']:.0%}), write block {c['write_block_s']} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
