"""``esdistill distill`` / ``adapt`` end to end on the tiny model and collection: synthetic queries,
teacher selection on the pseudo-dev set, mining, training, the gate and the int8 export."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from esdistill.export.mining import MiningConfig
from esdistill.export.pipeline import DevSource, DistillConfig, run_distill
from esdistill.export.train import TrainConfig
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.cli import main
from esdistill.plugin.manifest import Manifest

TRAIN = {
    "batch_size": 4, "lr": 2e-3, "epochs": 3, "max_seq_length": 64, "max_query_length": 32,
    "show_progress": False, "teacher_temperature": 0.5, "query_side_only": False,  # the tiny student learns fastest
}


def test_adapt_without_labels_chooses_a_teacher_trains_gates_and_exports(
        es_client, es_url, index_prefix, tiny_collection, tiny_bi_encoder, tmp_path, monkeypatch):
    cfg = DistillConfig(
        corpus=tiny_collection, out=tmp_path / "run", student=str(tiny_bi_encoder), teacher="auto",
        auto_teachers=(f"bi:{tiny_bi_encoder}", "bm25", f"0.5*bi:{tiny_bi_encoder}+0.5*bm25"),
        synthetic=80, dev_size=10, mining=MiningConfig(list_size=6, pool_depth=10, pool_size=12),
        train=TrainConfig(**TRAIN), index_prefix=index_prefix + "-", show_progress=False,
    )
    summary = run_distill(cfg, es=es_client)
    run = tmp_path / "run"
    sel = json.loads((run / "teacher_selection.json").read_text())
    assert set(sel["scores"]) == set(cfg.auto_teachers)
    # the earliest teacher (the preference order) not significantly below the best score
    order = list(cfg.auto_teachers)
    best = max(sel["scores"], key=sel["scores"].get)
    assert sel["chosen"] == next(t for t in order if t == best or sel["p_best_better"][t] < 0.9), sel
    # inverse cloze in training too: a query that copies a passage lists its source without it
    from esdistill.export.mining import load_lists
    from esdistill.plugin.beir import load_corpus

    cut = load_corpus(run / "documents.cut.jsonl")
    assert summary["masked_train_queries"] == len(cut) > 0
    # the lists can be trained on again (the bench's loss ablation does): every listed id resolves
    from esdistill.export.pipeline import training_corpus

    again_corpus = training_corpus(run, load_corpus(tiny_collection))
    assert all(d in again_corpus for c in load_lists(run / "lists.train.jsonl") for d in c.doc_ids)
    cut_lists = [c for c in load_lists(run / "lists.train.jsonl") if c.positives and "#cut:" in c.positives[0]]
    assert cut_lists  # some survive the grounding filter
    for c in cut_lists:
        source = c.positives[0].split("#cut:")[0]
        assert source not in c.doc_ids  # the verbatim copy is never a candidate of its own query
        assert c.query.lower() not in cut[c.positives[0]].full.lower()  # nor is the copied passage
    assert summary["dev_queries"] == 10 and summary["synthetic_queries"] >= 70
    assert summary["dev_origin"].startswith("held-out") and "inverse cloze" in summary["dev_origin"]
    assert sel["dev_origin"] == summary["dev_origin"]
    assert summary["dev_source"] == sel["dev_source"] == DevSource.PSEUDO.value  # synthetic dev queries
    # both temporary BM25 indices (training corpus, and the dev copy with copied passages cut) are gone
    assert not es_client.indices.get(index=f"{index_prefix}-*", allow_no_indices=True)
    gate = json.loads((run / "gate.json").read_text())
    assert gate["confidence"] == 0.9  # the default: a gain must also be unlikely to be noise
    assert gate["promoted"] == (gate["trained"] >= gate["base"] and gate["p_better"] >= gate["confidence"])
    assert gate["promoted"], gate["reason"]  # the tiny random student learns from BM25-grade teachers
    assert "real queries" in summary["caveat"]  # promoted on pseudo-dev only: the user is told to check
    # every training query is synthetic: the promoted student is the midpoint of the trained
    # weights (kept in student.trained/) and the base's (WiSE-FT)
    from esdistill.export.train import load_student

    averaging = summary["weight_averaging"]
    assert averaging["alpha"] == 0.5 and "synthetic" in averaging["why"]
    assert 0.0 <= averaging["trained_weights_dev"] <= 1.0  # what the unaveraged student scored on the same dev set
    trained, base, served = (load_student(p, max_seq_length=64).state_dict()
                             for p in (run / "student.trained", tiny_bi_encoder, run / "student"))
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
    for k in served:
        torch.testing.assert_close(served[k], (trained[k] + base[k]) / 2 if base[k].is_floating_point() else base[k])
    manifest = Manifest.load(run / "onnx")
    assert manifest.quantization.startswith("int8") and summary["export"]["passed"]
    assert (run / "lists.train.jsonl").is_file() and (run / "queries.synthetic.jsonl").is_file()
    # a rerun rescored nothing: every teacher score came from the content-addressed cache, and with
    # the very same inputs the finished training checkpoint is resumed, not trained again
    again = run_distill(cfg, es=es_client)
    assert again["score_cache"]["misses"] == 0 and again["score_cache"]["hits"] > 0
    assert again["train"]["fingerprint"] == summary["train"]["fingerprint"]
    assert again["train"]["resumed_from_step"] == summary["train"]["steps"] and again["train"]["restarted"] is None


def test_on_judged_real_dev_queries_the_best_teacher_wins(es_client, index_prefix, tiny_collection, tiny_bi_encoder,
                                                          tmp_path):
    """The dense-first preference answers the lexical bias of synthetic dev queries only."""
    teachers = (f"bi:{tiny_bi_encoder}", "bm25", f"0.5*bi:{tiny_bi_encoder}+0.5*bm25")
    cfg = DistillConfig(
        corpus=tiny_collection, out=tmp_path / "run", queries=tiny_collection / "queries.jsonl",
        qrels=tiny_collection / "qrels" / "test.tsv", student=str(tiny_bi_encoder), teacher="auto",
        auto_teachers=teachers, dev_size=4, mining=MiningConfig(list_size=4, pool_depth=8, pool_size=8),
        train=TrainConfig(**{**TRAIN, "epochs": 1}, max_steps=1), export=False, index_prefix=index_prefix + "-",
        show_progress=False,
    )
    summary = run_distill(cfg, es=es_client)
    sel = summary["teacher"]
    assert summary["dev_source"] == DevSource.HELD_OUT.value and "p_best_better" not in sel
    scores = sel["scores"]
    assert sel["chosen"] == max(teachers, key=lambda t: (scores[t], -teachers.index(t)))


def test_distill_cli_with_queries_and_qrels(es_client, es_url, index_prefix, tiny_collection, tiny_bi_encoder,
                                            tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    out = tmp_path / "cli"
    argv = ["distill", "--corpus", str(tiny_collection), "--out", str(out), "--queries",
            str(tiny_collection / "queries.jsonl"), "--qrels", str(tiny_collection / "qrels" / "test.tsv"),
            "--synthetic", "40", "--dev-size", "8", "--student", str(tiny_bi_encoder), "--teacher", "bm25",
            "--loss", "margin-mse", "--list-size", "4", "--pool-depth", "8", "--epochs", "1", "--batch-size", "4",
            "--max-seq-length", "64", "--no-export", "--no-progress", "--index-prefix", index_prefix + "-", "--json"]
    code = main(argv)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == (0 if summary["gate"]["promoted"] else 8)
    assert ("caveat" in summary) == (summary["gate"]["promoted"] and summary["dev_source"] == "pseudo-dev")
    assert summary["given_queries"] == 8 and summary["train"]["config"]["query_side_only"]  # the default
    assert summary["train"]["document_model"] == str(tiny_bi_encoder)
    assert not (out / "onnx").exists()
    # real queries were trained on: the trained weights are served as they are
    assert summary["weight_averaging"]["alpha"] == 1.0 and not (out / "student.trained").exists()
    # the same command into the same folder with another loss trains again (it used to resume the
    # finished checkpoint of the first run and serve its weights), and says so
    from esdistill.export.train import load_student

    first = {k: v.clone() for k, v in load_student(out / "student", max_seq_length=64).state_dict().items()}
    argv[argv.index("--loss") + 1] = "kl"
    code = main(argv[:-1])  # the text report this time
    text = capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["config"]["loss"] == "kl" and run["train"]["resumed_from_step"] is None
    assert "loss 'margin-mse' -> 'kl'" in run["train"]["restarted"]
    assert f"checkpoints: not resumed ({run['train']['restarted']}); trained from the base student" in text
    second = load_student(out / "student", max_seq_length=64).state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in second)


def test_adapt_cli_reports_its_choices_in_words(es_client, es_url, index_prefix, tiny_collection, tiny_bi_encoder,
                                               tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    out = tmp_path / "adapt"
    code = main(["adapt", "--corpus", str(tiny_collection), "--out", str(out), "--synthetic", "60", "--dev-size", "8",
                 "--student", str(tiny_bi_encoder), "--teacher", "bm25", "--list-size", "4", "--pool-depth", "8",
                 "--epochs", "1", "--batch-size", "4", "--max-seq-length", "64", "--no-export", "--no-progress",
                 "--index-prefix", index_prefix + "-"])
    text = capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert code == (0 if run["gate"]["promoted"] else 8)
    assert f"{run['masked_train_queries']} as inverse cloze" in text and run["masked_train_queries"] > 0
    assert "teacher: bm25" in text and f"gate: {run['gate']['reason']}" in text
    assert f"weights: 0.5 x trained + 0.5 x base (WiSE-FT; trained weights in {out / 'student.trained'})" in text


def test_a_query_side_only_run_exports_its_query_encoder_paired_with_the_base(
        es_client, index_prefix, tiny_collection, tiny_bi_encoder, tmp_path):
    """Without --document-model, the run exports the frozen base as the document model and pairs
    the query encoder with it: the pair serves an index, and the query encoder cannot ingest."""
    from esdistill.plugin import FingerprintError, IndexManager, IngestHook, OnnxEncoder, QueryHook

    cfg = DistillConfig(
        corpus=tiny_collection, out=tmp_path / "run", student=str(tiny_bi_encoder), teacher="bm25",
        synthetic=200, dev_size=30, mining=MiningConfig(list_size=8, pool_depth=20, pool_size=24),
        train=TrainConfig(**{**TRAIN, "query_side_only": True}), index_prefix=index_prefix + "-tmp-", show_progress=False,
        # this test is about the export pair, so it needs a promoted student: copy-matching lists are
        # what the random tiny student learns fastest on 36 documents
        mask_train_source=False,
    )
    summary = run_distill(cfg, es=es_client)
    assert summary["gate"]["promoted"], summary["gate"]["reason"]
    run = tmp_path / "run"
    queries, documents = OnnxEncoder(run / "onnx"), OnnxEncoder(run / "onnx-documents")
    assert queries.manifest.document_fingerprint == documents.fingerprint != queries.fingerprint
    assert summary["export"]["paired_with"] == str(run / "onnx-documents")
    IndexManager(es_client, index_prefix).create(documents.manifest)
    docs = [json.loads(line) for line in (tiny_collection / "corpus.jsonl").read_text().splitlines()]
    IngestHook(es_client, index_prefix, documents, progress=False).ingest(docs)
    assert QueryHook(es_client, index_prefix, queries).search("coral reefs", k=3, mode="knn").hits
    with pytest.raises(FingerprintError, match="query encoder"):
        IngestHook(es_client, index_prefix, queries, progress=False)


def test_a_promoted_student_refused_at_export_still_leaves_its_run_summary(
        es_client, index_prefix, tiny_collection, tiny_bi_encoder, tmp_path):
    """The gate promotes, the int8 export breaks a parity threshold: run.json says so, then the error is raised."""
    from esdistill.export.parity import ParityThresholds
    from esdistill.plugin._errors import ParityError

    cfg = DistillConfig(
        corpus=tiny_collection, out=tmp_path / "run", student=str(tiny_bi_encoder), teacher="bm25",
        synthetic=60, dev_size=10, mining=MiningConfig(list_size=6, pool_depth=10, pool_size=12),
        train=TrainConfig(**{**TRAIN, "epochs": 2}), index_prefix=index_prefix + "-", show_progress=False,
        mask_train_source=False, gate_confidence=0.0,  # promote any student that is not worse
        # an exported model never gives every text exactly its source's vector: the export is refused
        parity_thresholds=ParityThresholds(int8_min_cosine=1.0),
    )
    with pytest.raises(ParityError, match="int8_min_cosine") as exc:
        run_distill(cfg, es=es_client)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["gate"]["promoted"], run["gate"]["reason"]
    assert run["export"]["failures"] == exc.value.failures and exc.value.failures
    assert "parity check" in run["export"]["refused"] and "base student stays in service" in run["export"]["refused"]
    assert (tmp_path / "run" / "onnx" / "parity.rejected.json").is_file()
    assert not (tmp_path / "run" / "onnx" / "manifest.json").exists()
    assert run["train"]["steps"] > 0 and "export" in run["timings_s"]


def test_unlabelled_queries_train_alone_and_synthetic_queries_only_gate(
        es_client, index_prefix, tiny_collection, tiny_bi_encoder, tmp_path):
    """A query log without judgements: training uses exactly those queries; the gate gets
    synthetic queries (with their source documents) made for it alone."""
    cfg = DistillConfig(
        corpus=tiny_collection, out=tmp_path / "run", queries=tiny_collection / "queries.jsonl",
        student=str(tiny_bi_encoder), teacher="bm25", dev_size=6,
        mining=MiningConfig(list_size=4, pool_depth=8, pool_size=8), train=TrainConfig(**{**TRAIN, "epochs": 1}),
        export=False, index_prefix=index_prefix + "-", show_progress=False,
    )
    summary = run_distill(cfg, es=es_client)
    given = len((tiny_collection / "queries.jsonl").read_text().splitlines())
    assert summary["given_queries"] == given and summary["train_queries"] == given
    assert summary["synthetic_queries"] >= 6 and summary["dev_queries"] == 6
    assert "for the gate only" in summary["dev_origin"]
    lines = (tmp_path / "run" / "lists.train.jsonl").read_text().splitlines()
    trained_on = {json.loads(line)["query_id"] for line in lines}
    assert trained_on and not any(q.startswith("syn-") for q in trained_on)


def test_full_fine_tune_is_the_opt_in_and_excludes_query_side_only():
    from esdistill.export._cli_train import train_config
    from esdistill.plugin.cli import build_parser

    parser = build_parser()
    base = ["distill", "--corpus", "c", "--out", "o"]
    assert parser.parse_args(base).query_side_only
    assert not parser.parse_args([*base, "--full-fine-tune"]).query_side_only
    # the Python API and the CLI share every training default (query side only among them)
    for command in ("distill", "adapt"):
        assert train_config(parser.parse_args([command, *base[1:]])) == TrainConfig()
    assert TrainConfig().query_side_only and DistillConfig(corpus="c", out="o").train.query_side_only
    assert not train_config(parser.parse_args([*base, "--full-fine-tune"])).query_side_only
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--full-fine-tune", "--query-side-only"])


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--qrels needs --queries"):
        DistillConfig(corpus=tmp_path, out=tmp_path, qrels="x.tsv")
    with pytest.raises(ConfigError, match="no training queries"):
        DistillConfig(corpus=tmp_path, out=tmp_path, synthetic=0)
    with pytest.raises(ConfigError, match="gate_confidence"):
        DistillConfig(corpus=tmp_path, out=tmp_path, gate_confidence=1.0)
    for alpha in (0.0, 1.5, "half"):
        with pytest.raises(ConfigError, match="merge_alpha"):
            DistillConfig(corpus=tmp_path, out=tmp_path, merge_alpha=alpha)
    from esdistill.plugin.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["adapt", "--corpus", "c", "--out", "o", "--merge-alpha", "0"])
    assert build_parser().parse_args(["adapt", "--corpus", "c", "--out", "o", "--merge-alpha", "1"]).merge_alpha == 1.0
