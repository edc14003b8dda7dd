"""``esdistill eval`` warns when judged documents are missing from the index, and runtime commands take
a packaged model name (exported once into the cache and reused) or say the exact command to run."""

from __future__ import annotations

import json
import shutil

import pytest
from esdistill.plugin import IndexManager, ModelError
from esdistill.plugin.cli import main
from esdistill.plugin.evaluate import qrels_coverage
from esdistill.plugin.ingest import IngestHook
from esdistill.plugin.models import exported_model
from esdt_helpers import TINY_COLLECTION
from esdt_onnx import model_folder

DOCS = [json.loads(line) for line in (TINY_COLLECTION / "corpus.jsonl").read_text().splitlines()]


def test_eval_warns_when_judged_documents_are_missing(es_client, es_url, index_prefix, encoder_a, monkeypatch,
                                                      capsys):
    pytest.importorskip("ir_measures")
    IndexManager(es_client, index_prefix).create(encoder_a.manifest)
    # half of the judged documents (d01, d07, d04, d11 of q1..q4) are left out of the index
    missing = {"d01", "d07", "d04", "d11"}
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest([d for d in DOCS if d["_id"] not in missing])
    cov = qrels_coverage(es_client, index_prefix, {"q1": {"d01": 1}, "q2": {"d07": 1}, "q5": {"d13": 1},
                                                   "q6": {"d18": 1, "d01": 0}})
    assert (cov.judged, cov.found) == (4, 2) and cov.share == 0.5
    assert sorted(cov.missing_examples) == ["d01", "d07"]
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    argv = ["eval", "--collection", str(TINY_COLLECTION), "--index", index_prefix, "--mode", "bm25", "--no-progress"]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["qrels_coverage"]["judged"] == 8 and report["qrels_coverage"]["found"] == 4
    assert "4 of the 8 judged relevant documents are not in index" in captured.err
    assert main(argv) == 0
    assert "WARNING: 4 of the 8" in capsys.readouterr().out
    # a complete index: no warning
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(DOCS)
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert "not in index" not in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["qrels_coverage"]["share"] == 1.0


def test_packaged_model_names_are_exported_once_and_reused(encoder_a, tmp_path, monkeypatch):
    monkeypatch.setenv("ESDISTILL_MODELS", str(tmp_path))
    cached = tmp_path / "exports" / "all-MiniLM-L6-v2-int8"
    shutil.copytree(model_folder(encoder_a), cached)
    # an export in the cache is reused as it is (no export runs: it would need the hub's weights)
    assert exported_model("minilm") == cached
    assert exported_model("sentence-transformers/all-MiniLM-L6-v2") == cached
    # a folder is taken as it is
    assert exported_model(model_folder(encoder_a)) == model_folder(encoder_a)


def test_model_references_that_cannot_work_say_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ESDISTILL_MODELS", str(tmp_path))
    with pytest.raises(ModelError, match="no manifest.json.*esdistill export"):
        exported_model(tmp_path)
    with pytest.raises(ModelError, match="neither an exported model folder nor a packaged name"):
        exported_model("bert-base-uncased")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(ModelError) as err:
        exported_model("minilm")
    out = tmp_path / "exports" / "all-MiniLM-L6-v2-int8"
    assert f"pip install 'esdistill[export]' && esdistill export minilm --out {out}" in str(err.value)


def test_serve_takes_a_packaged_name(encoder_a, tmp_path, monkeypatch):
    from esdistill.plugin._cli_serve import with_exported_model
    from esdistill.plugin.service_settings import ServiceSettings

    monkeypatch.setenv("ESDISTILL_MODELS", str(tmp_path))
    cached = tmp_path / "exports" / "all-MiniLM-L6-v2-int8"
    shutil.copytree(model_folder(encoder_a), cached)
    assert with_exported_model(ServiceSettings(index="docs", model="minilm")).model == str(cached)
    with pytest.raises(ModelError, match="neither an exported model folder nor a packaged name"):
        with_exported_model(ServiceSettings(index="docs", model="bert-base-uncased"))


def test_cli_takes_a_packaged_name(es_client, es_url, index_prefix, encoder_a, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ESDISTILL_MODELS", str(tmp_path))
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    shutil.copytree(model_folder(encoder_a), tmp_path / "exports" / "all-MiniLM-L6-v2-int8")
    assert main(["index", "create", index_prefix, "--model", "minilm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_fingerprint"] == encoder_a.manifest.fingerprint
