"""Draw the demo collection shipped in ``deploy/demo`` from the full BEIR SciFact.

The draw is deterministic (one seeded ``random.Random``) and needs only the standard library:

1. ``--train`` queries picked at random from those with judgements in ``qrels/train.tsv``, and
   ``--test`` queries from those in ``qrels/test.tsv`` (query ids as strings, sorted before drawing);
2. every document judged for a picked query (so each query keeps all its relevant documents);
3. distractors: documents drawn at random from the rest of the corpus until it holds ``--docs``;
4. the files are written in the source's order: ``corpus.jsonl``, ``queries.jsonl`` (the picked
   queries only), ``qrels/train.tsv`` and ``qrels/test.tsv`` (the picked queries' lines, with the
   BEIR header).

Usage (the command that made the shipped files)::

    python deploy/demo/make_subset.py --source data/scifact --out deploy/demo
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import sys
from pathlib import Path

__all__ = ["draw_subset", "main"]


def _read_qrels(path: Path) -> list[tuple[str, str, int]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0][:2] != ["query-id", "corpus-id"]:
        raise SystemExit(f"{path}: not a BEIR qrels file (the header 'query-id corpus-id score' is missing)")
    return [(q, d, int(s)) for q, d, s in rows[1:]]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def draw_subset(source: Path, out: Path, *, train: int, test: int, docs: int, seed: int) -> dict[str, int]:
    """Write the subset of the BEIR collection at ``source`` into ``out``; return its counts.

    Raises:
        SystemExit: a missing source file, or counts larger than the source holds.
    """
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        if not (source / name).is_file():
            raise SystemExit(f"--source {source}: {name} is missing (a BEIR folder such as SciFact's is needed)")
    rng = random.Random(seed)
    qrels = {split: _read_qrels(source / "qrels" / f"{split}.tsv") for split in ("train", "test")}
    picked: dict[str, set[str]] = {}
    for split, n in (("train", train), ("test", test)):
        judged = sorted({q for q, _, s in qrels[split] if s > 0})
        if n > len(judged):
            raise SystemExit(f"--{split} {n}: the source has only {len(judged)} judged {split} queries")
        picked[split] = set(rng.sample(judged, n))
    needed = {d for split in qrels for q, d, _ in qrels[split] if q in picked[split]}
    lines = (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    ids = [json.loads(line)["_id"] for line in lines]
    rest = sorted(set(ids) - needed)
    if docs < len(needed):
        raise SystemExit(f"--docs {docs}: the picked queries alone judge {len(needed)} documents")
    if docs - len(needed) > len(rest):
        raise SystemExit(f"--docs {docs}: the source has only {len(ids)} documents")
    keep = needed | set(rng.sample(rest, docs - len(needed)))

    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(line + "\n" for line, i in zip(lines, ids) if i in keep),
                                      encoding="utf-8")
    queries = [line for line in (source / "queries.jsonl").read_text(encoding="utf-8").splitlines()
               if json.loads(line)["_id"] in picked["train"] | picked["test"]]
    (out / "queries.jsonl").write_text("".join(line + "\n" for line in queries), encoding="utf-8")
    for split, lines_of_split in qrels.items():
        rows = [r for r in lines_of_split if r[0] in picked[split] and r[1] in keep]
        (out / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows), encoding="utf-8")
    return {"docs": len(keep), "judged_docs": len(needed), "train_queries": len(picked["train"]),
            "test_queries": len(picked["test"]), "train_qrels": sum(1 for r in qrels["train"] if r[0] in picked["train"]),
            "test_qrels": sum(1 for r in qrels["test"] if r[0] in picked["test"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--source", type=Path, required=True, help="the full BEIR SciFact folder")
    p.add_argument("--out", type=Path, required=True, help="where the subset goes")
    p.add_argument("--train", type=int, default=300, help="train queries to draw (default 300)")
    p.add_argument("--test", type=int, default=100, help="test queries to draw (default 100)")
    p.add_argument("--docs", type=int, default=1200, help="documents in the subset (default 1200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    args = p.parse_args(argv)
    counts = draw_subset(args.source, args.out, train=args.train, test=args.test, docs=args.docs, seed=args.seed)
    print(json.dumps(counts))
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        print(f"source {name} sha256 {_sha256(args.source / name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
