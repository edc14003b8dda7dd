"""``esdistill demo`` and the collection it ships.

- The shipped SciFact subset is well formed, small and licensed, and ``deploy/demo/make_subset.py``
  redraws it byte for byte from the full collection (where ``../shared/data/scifact`` exists).
- The draw is deterministic, keeps every judged document of the drawn queries, and refuses
  impossible counts with a message naming the flag.
- ``paired_difference`` does the per-query arithmetic the demo prints.
- The demo end to end with the packaged models, on a small redraw of the shipped collection (so the
  default test run stays short): a real node, the shipped student's export, ingest twice, the
  *before* evaluation, distillation with the gate, and the *after* evaluation on the same index.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from esdistill.export.demo import DEMO_COLLECTION, DemoConfig, paired_difference
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import load_corpus, load_qrels, load_queries
from esdt_helpers import TINY_COLLECTION

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
DATA_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv")
#: the arguments deploy/demo/README.md gives for the shipped draw
SHIPPED_DRAW = {"train": 809, "test": 100, "docs": 1000, "seed": 0}


def _make_subset():
    spec = importlib.util.spec_from_file_location("make_subset", DEMO_COLLECTION / "make_subset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_collection_is_consistent_small_and_licensed():
    corpus = load_corpus(DEMO_COLLECTION)
    queries = load_queries(DEMO_COLLECTION / "queries.jsonl")
    train = load_qrels(DEMO_COLLECTION / "qrels" / "train.tsv")
    test = load_qrels(DEMO_COLLECTION / "qrels" / "test.tsv")
    assert (len(corpus), len(train), len(test)) == (SHIPPED_DRAW["docs"], SHIPPED_DRAW["train"], SHIPPED_DRAW["test"])
    assert not set(train) & set(test), "a query is in both splits"
    assert set(queries) == set(train) | set(test)
    for split in (train, test):
        for qid, rels in split.items():
            assert any(g > 0 for g in rels.values()), qid
            assert set(rels) <= set(corpus), f"query {qid} judges a document that is not shipped"
    size = sum((DEMO_COLLECTION / name).stat().st_size for name in DATA_FILES)
    assert size < 2_500_000, f"the demo data weighs {size} bytes; keep the repository light"
    licence = (DEMO_COLLECTION / "LICENSE.md").read_text()
    assert "CC BY 4.0" in licence and "ODC-By 1.0" in licence and "Wadden" in licence
    readme = (DEMO_COLLECTION / "README.md").read_text()
    command = " ".join(f"--{k} {v}" for k, v in SHIPPED_DRAW.items())
    assert command in readme, "deploy/demo/README.md must give the exact draw"


def test_make_subset_redraws_the_shipped_files_from_the_full_collection(tmp_path):
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"needs the full SciFact collection at {SCIFACT} (BEIR layout), which a fresh clone does "
                    "not have; CI has it")
    counts = _make_subset().draw_subset(SCIFACT, tmp_path, **SHIPPED_DRAW)
    assert counts["docs"] == SHIPPED_DRAW["docs"]
    for name in DATA_FILES:
        assert (tmp_path / name).read_bytes() == (DEMO_COLLECTION / name).read_bytes(), name


def test_make_subset_is_deterministic_keeps_judged_documents_and_refuses_bad_counts(tmp_path):
    draw = _make_subset().draw_subset
    a, b = tmp_path / "a", tmp_path / "b"
    counts = draw(DEMO_COLLECTION, a, train=20, test=10, docs=120, seed=3)
    draw(DEMO_COLLECTION, b, train=20, test=10, docs=120, seed=3)
    for name in DATA_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    corpus = load_corpus(a)
    train, test = load_qrels(a / "qrels" / "train.tsv"), load_qrels(a / "qrels" / "test.tsv")
    assert (len(corpus), len(train), len(test)) == (120, 20, 10) == (counts["docs"], counts["train_queries"],
                                                                      counts["test_queries"])
    shipped = {**load_qrels(DEMO_COLLECTION / "qrels" / "train.tsv"), **load_qrels(DEMO_COLLECTION / "qrels" / "test.tsv")}
    for qid in [*train, *test]:  # every judged document of a drawn query comes along
        assert {d for d, g in shipped[qid].items() if g > 0} <= set(corpus), qid
    other = draw(DEMO_COLLECTION, tmp_path / "c", train=20, test=10, docs=120, seed=4)
    assert other["docs"] == 120 and load_corpus(tmp_path / "c").keys() != corpus.keys()  # the seed matters
    with pytest.raises(SystemExit, match="--train 100000"):
        draw(DEMO_COLLECTION, tmp_path / "d", train=100_000, test=10, docs=120, seed=0)
    with pytest.raises(SystemExit, match="--docs 5: the picked queries alone judge"):
        draw(DEMO_COLLECTION, tmp_path / "d", train=20, test=10, docs=5, seed=0)
    with pytest.raises(SystemExit, match="qrels/train.tsv is missing"):
        draw(TINY_COLLECTION, tmp_path / "d", train=1, test=1, docs=5, seed=0)


def test_paired_difference_is_per_query_after_minus_before():
    before = {"q1": {"ndcg@10": 0.5}, "q2": {"ndcg@10": 1.0}, "q3": {"ndcg@10": 0.2}, "q4": {"ndcg@10": 0.0}}
    after = {"q1": {"ndcg@10": 1.0}, "q2": {"ndcg@10": 0.6}, "q3": {"ndcg@10": 0.2}, "q4": {"ndcg@10": 0.4}}
    p = paired_difference(before, after)
    assert (p["queries"], p["wins"], p["losses"], p["ties"]) == (4, 2, 1, 1)
    assert p["before"] == pytest.approx(0.425) and p["after"] == pytest.approx(0.55)
    assert p["delta"] == pytest.approx(0.125)
    assert p["ci90"][0] <= p["delta"] <= p["ci90"][1] and 0.5 < p["p_better"] < 1.0
    worse = paired_difference(after, before)
    assert worse["delta"] == pytest.approx(-0.125) and worse["p_better"] == pytest.approx(1 - p["p_better"], abs=0.05)
    with pytest.raises(ConfigError, match="different queries"):
        paired_difference(before, {"q1": {"ndcg@10": 1.0}})


def test_demo_config_names_what_the_collection_lacks(tmp_path):
    with pytest.raises(ConfigError, match=r"qrels/train\.tsv missing; the demo needs a BEIR folder"):
        DemoConfig(corpus=TINY_COLLECTION, out=tmp_path)  # test queries only: nothing to train on
    with pytest.raises(ConfigError, match="--epochs 0"):
        DemoConfig(out=tmp_path, epochs=0)


@pytest.mark.models
def test_demo_distils_and_compares_before_and_after_on_the_same_index(es_client, es_url, index_prefix, tmp_path,
                                                                      monkeypatch, capsys):
    """The promoted path end to end, on a small redraw of the shipped collection. A learning rate far
    below float32 resolution leaves every weight as it was, so the distilled student equals the
    shipped one and the gate (asked only for "not worse") promotes it. The after evaluation must then
    tie on every test query: it did search the index the shipped student built, with the exported
    query encoder paired with that export."""
    from esdistill.plugin.cli import main
    from esdistill.plugin.manifest import Manifest

    small = tmp_path / "collection"
    _make_subset().draw_subset(DEMO_COLLECTION, small, train=60, test=20, docs=150, seed=0)
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    out = tmp_path / "demo"
    assert main(["demo", "--corpus", str(small), "--out", str(out), "--index", index_prefix, "--dev-size", "20",
                 "--epochs", "1", "--list-size", "8", "--lr", "1e-12", "--gate-confidence", "0"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "demo.json").read_text())
    steps = [s["step"] for s in summary["steps"]]
    assert steps[0].startswith("Elasticsearch") and steps[4].startswith("Distil") and steps[5].startswith("After")
    first, second = summary["ingest"]
    assert (first["indexed"], first["failed"]) == (150, 0)
    assert (second["indexed"], second["unchanged"]) == (0, 150)  # idempotent: nothing re-embedded
    distill = summary["distill"]
    assert distill["gate"]["n_queries"] == 20 and distill["train_queries"] == 40  # held out from the train split
    assert distill["promoted"] and "PROMOTED" in printed
    assert int(es_client.count(index=index_prefix)["count"]) == 150  # the after run re-embedded nothing
    encoder = Manifest.load(distill["export"]["out"])
    shipped = Manifest.load(summary["shipped_student"])
    assert encoder.document_fingerprint == shipped.fingerprint != encoder.fingerprint
    for mode in ("knn", "hybrid"):
        paired = summary["paired"][mode]
        assert paired["queries"] == 20 and (paired["wins"], paired["losses"], paired["ties"]) == (0, 0, 20), paired
        assert paired["before"] == pytest.approx(summary["before"][mode]) == pytest.approx(summary["after"][mode])
        assert paired["delta"] == pytest.approx(0.0, abs=1e-12) and paired["p_better"] == pytest.approx(0.5)
    assert "kNN, shipped -> distilled" in printed and "+0.000" in printed
