"""``esdistill bench`` in its reduced form: the tiny collection, the tiny model as student and
teacher, a real Elasticsearch node. Checks the report's keys, its tables and its plots, and that
a second run reuses the cached distillation instead of training again."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from esdistill.deploy.bench import BenchConfig, run_bench, sample_collection, shown_path
from esdistill.plugin._errors import ConfigError

SYSTEMS = ("bm25", "student_shipped", "student_distilled_int8", "student_distilled_int8_flat",
           "student_distilled_onnx_fp32", "student_distilled_torch_fp32", "hybrid", "teacher_rerank")
TRAIN = {"batch_size": 4, "lr": 2e-3, "epochs": 3, "max_seq_length": 64, "max_query_length": 32,
         "teacher_temperature": 0.5}


@pytest.mark.slow  # minutes: a whole (quick) bench run
def test_bench_quick_writes_the_report_json_markdown_and_plots(es_client, tiny_collection, tiny_bi_encoder,
                                                               tmp_path):
    cfg = BenchConfig(out=tmp_path / "report", collections=(tiny_collection,), quick=True,
                      student=str(tiny_bi_encoder), teacher=str(tiny_bi_encoder), work=tmp_path / "work",
                      distill_teacher="bm25", train_overrides={**TRAIN, "query_side_only": False}, encoder_docs=16,
                      ingest_docs=24, ablation=())
    lines: list[str] = []
    report = run_bench(cfg, client=es_client, progress=lines.append)
    name = tiny_collection.name
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["collections"].keys() == {name}
    systems = on_disk["collections"][name]["systems"]
    for key in SYSTEMS:
        for metric in ("ndcg@10", "recall@100", "mrr@10"):
            assert 0.0 <= systems[key][metric] <= 1.0, (key, metric)
    queries = systems["bm25"]["queries"]
    assert queries == 8 and all(systems[k]["queries"] == queries for k in SYSTEMS)
    for key in SYSTEMS:
        if key not in ("student_shipped",):
            wl = systems[key]["vs_student_shipped"]
            assert wl["wins"] + wl["losses"] + wl["ties"] == queries
    # int8 against fp32 of the same student, and ES flat against int8_hnsw: both measured
    assert "int8_vs_fp32_ndcg_change" in "".join(on_disk["targets"])
    speed = on_disk["speed"]
    assert set(speed["encoder_docs_per_s"]) >= {"st_torch_fp32", "onnx_fp32", "onnx_int8"}
    assert all(v > 0 for v in speed["encoder_docs_per_s"].values())
    assert speed["ingest_docs_per_s"] > 0 and speed["ingest"]["indexed"] == 24
    for mode in ("knn", "hybrid", "knn_rerank"):
        lat = speed["query_latency_ms"][mode]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert systems["teacher_rerank"]["rerank_outcomes"].get("full") == queries
    memory = on_disk["collections"][name]["vector_memory"]
    assert memory["int8_hnsw"]["knn_vectors_bytes"] > 0 and memory["flat"]["knn_vectors_bytes"] > 0, memory
    dist = on_disk["distillation"][name]
    assert dist["gate"]["promoted"] and dist["teacher_scores"]["computed"] > 0
    ablation = dist["ablation"]["losses"]
    assert list(ablation) == ["infonce", "kl", "margin-mse", "pairwise", "kl+0.1*infonce"]
    assert all(0.0 <= row["ndcg@10"] <= 1.0 and row["queries"] == queries for row in ablation.values())
    env = on_disk["environment"]
    assert env["elasticsearch"] and env["cores"] and env["seed"] == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Targets" in md and "shipped student" in md and "frontier.png" in md and "Loss ablation" in md
    # the report names paths relative to the working directory, never the machine's absolute ones
    text = md + (tmp_path / "report" / "report.json").read_text()
    absolute = re.findall(r"(?<![\w.~])/(?:tmp|work|root|home)/\S*", text)  # "../tmp/x" is relative
    assert not absolute and shown_path(tmp_path / "work") in text, absolute[:5]
    assert on_disk["config"]["collections"] == [shown_path(tiny_collection)]
    assert dist["run_dir"].startswith(shown_path(tmp_path / "work"))
    for png in report["plots"]:
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["plots"]) == {"frontier.png", "quality.png", "encoder.png"}
    assert any("distilling" in line for line in lines)

    # a second run reuses the distillation run and the indices: nothing is trained or ingested again
    lines.clear()
    again = run_bench(cfg, client=es_client, progress=lines.append)
    assert again["distillation"][name]["run_dir"] == dist["run_dir"]
    # the ablation's students of the same lists and settings resume their finished checkpoints
    rows = again["distillation"][name]["ablation"]["losses"]
    assert all(row["reused"] and row["train_seconds"] > 0 for row in rows.values())  # their own training time
    assert all(rows[loss]["ndcg@10"] == ablation[loss]["ndcg@10"] for loss in rows)
    assert all(i["reused"] for i in again["collections"][name]["indices"].values())
    assert again["collections"][name]["systems"]["student_distilled_int8"]["ndcg@10"] == \
        systems["student_distilled_int8"]["ndcg@10"]
    for alias in {i["index"] for i in again["collections"][name]["indices"].values()}:
        for physical in es_client.indices.get(index=f"{alias}*"):
            es_client.indices.delete(index=physical)


@pytest.mark.slow  # minutes: a whole (quick) bench run
def test_bench_serves_a_query_side_only_student_against_the_shipped_vectors(es_client, tiny_collection,
                                                                           tiny_bi_encoder, tmp_path):
    """A query-side-only run's export is a query encoder: the bench must search the shipped
    student's document vectors with it (no index of its own) and embed the torch row's documents
    with the base student, in the main rows and in the ablation."""
    cfg = BenchConfig(out=tmp_path / "report", collections=(tiny_collection,), quick=True,
                      student=str(tiny_bi_encoder), teacher=str(tiny_bi_encoder), work=tmp_path / "work",
                      distill_teacher="bm25", train_overrides=TRAIN, encoder_docs=16,  # query side only: the default
                      ingest_docs=24, ablation=(), rerank_depths=(10,),
                      # this test is about serving a promoted query encoder: copy-matching lists are what
                      # the random tiny student learns fastest (inverse cloze lists are too hard for it)
                      distill_overrides={"mask_train_source": False})
    name = tiny_collection.name
    try:
        report = run_bench(cfg, client=es_client, progress=lambda line: None)
        coll = report["collections"][name]
        systems, indices = coll["systems"], coll["indices"]
        for key in SYSTEMS:
            assert 0.0 <= systems[key]["ndcg@10"] <= 1.0 and systems[key]["queries"] == 8, key
        # no index embedded by the query encoder: the distilled rows use the shipped student's vectors
        assert "student_distilled_int8" not in indices
        shipped = indices["student_shipped"]["index"]
        assert indices["student_distilled_int8_flat"]["index"] == f"{shipped}-flat"
        assert systems["student_distilled_torch_fp32"]["documents_embedded_by"] == shown_path(tiny_bi_encoder)
        assert any("query encoder" in note for note in coll["notes"])
        dist = report["distillation"][name]
        assert dist["gate"]["promoted"]
        ablation = dist["ablation"]["losses"]
        assert len(ablation) == 5 and all(row["documents_embedded_by"] == shown_path(tiny_bi_encoder)
                                          for row in ablation.values())
        # the same query encoder, int8 on flat vs the torch row: the export kept its ranking quality
        assert abs(systems["student_distilled_int8_flat"]["ndcg@10"]
                   - systems["student_distilled_torch_fp32"]["ndcg@10"]) <= 0.1
    finally:
        for physical in es_client.indices.get(index=f"esdistill-bench-{name.lower()}-*", allow_no_indices=True,
                                              expand_wildcards="all"):
            es_client.indices.delete(index=physical)


def test_sample_keeps_every_judged_document_of_the_kept_queries(tiny_collection, tmp_path):
    folder, info = sample_collection(tiny_collection, tmp_path, max_docs=12, max_queries=3, train_queries=None,
                                     seed=1)
    assert info["sampled"] and info["test_queries"] == 3 and info["docs"] == 12
    qrels = [line.split("\t") for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    kept = {json.loads(line)["_id"] for line in (folder / "corpus.jsonl").read_text().splitlines()}
    assert len(kept) == 12 and {d for _, d, _ in qrels} <= kept
    assert len({q for q, _, _ in qrels}) == 3
    same, info2 = sample_collection(tiny_collection, tmp_path, max_docs=None, max_queries=None,
                                    train_queries=None, seed=1)
    assert same == tiny_collection and not info2["sampled"]


def test_bench_refuses_a_folder_that_is_not_a_collection(tmp_path):
    with pytest.raises(ConfigError, match="BEIR layout"):
        BenchConfig(out=tmp_path / "r", collections=(tmp_path,))
    with pytest.raises(ConfigError, match="not among the collections"):
        BenchConfig(out=tmp_path / "r", collections=(mini := _beir(tmp_path),), distilled={"nope": "dir"})
    for bad in ({"no_such_field": 1}, {"corpus": "elsewhere"}):
        with pytest.raises(ConfigError, match="distill_overrides"):
            BenchConfig(out=tmp_path / "r", collections=(mini,), distill_overrides=bad)


def test_bench_data_is_an_explicit_folder_or_esdistill_data(tmp_path, monkeypatch, capsys):
    """Nothing outside the package is looked up: without --collections, --data or ESDISTILL_DATA the
    bench says what to pass."""
    monkeypatch.delenv("ESDISTILL_DATA", raising=False)
    with pytest.raises(ConfigError, match=r"pass --collections DIR \.\.\. or --data DIR or set ESDISTILL_DATA"):
        BenchConfig(out=tmp_path / "r")
    mini = _beir(tmp_path / "data")
    assert BenchConfig(out=tmp_path / "r", data=tmp_path / "data").collections == (mini,)
    monkeypatch.setenv("ESDISTILL_DATA", str(tmp_path / "data"))
    assert BenchConfig(out=tmp_path / "r").collections == (mini,)
    monkeypatch.setenv("ESDISTILL_DATA", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"\$ESDISTILL_DATA .*missing does not exist"):
        BenchConfig(out=tmp_path / "r")
    # the query-latency script: its SciFact folder is --data or $ESDISTILL_DATA/scifact
    from esdistill.deploy import bench_query

    monkeypatch.delenv("ESDISTILL_DATA")
    with pytest.raises(SystemExit) as exc:
        bench_query.main([])
    assert exc.value.code == 2 and "pass --data DIR (the SciFact folder) or set ESDISTILL_DATA" in capsys.readouterr().err
    monkeypatch.setenv("ESDISTILL_DATA", str(tmp_path / "data"))  # holds mini/, no scifact/
    with pytest.raises(SystemExit):
        bench_query.main([])
    assert "scifact: not a BEIR folder" in capsys.readouterr().err


def test_report_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert shown_path(tmp_path / "work" / "runs" / "r1") == "runs/r1" and shown_path("data/x") == "data/x"
    assert shown_path(tmp_path / "home" / ".cache" / "b") == "~/.cache/b"
    assert shown_path(tmp_path / "shared" / "data") == "../shared/data"


def _beir(root):
    folder = root / "mini"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder
