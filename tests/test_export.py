"""Export to ONNX and the parity gate: the folder is servable, the gate lists every failure (the gate's
arithmetic alone: tests/unit/test_parity.py)."""

from __future__ import annotations

import json

import pytest
from esdistill.plugin import ConfigError, ParityError
from esdistill.plugin.manifest import Manifest, compute_fingerprint
from esdistill.plugin.models import sha256_file

pytest.importorskip("torch", reason="export needs the export extra")

from esdistill.export.onnx_export import export_model
from esdistill.export.parity import ParityThresholds
from esdt_helpers import tiny_texts


@pytest.fixture(scope="module")
def tiny_int8(tiny_bi_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-int8"
    return export_model(tiny_bi_encoder, out, quantize="int8", parity_texts=tiny_texts())


# ----------------------------------------------------------------------------------- the folder
def test_int8_export_is_a_complete_servable_folder(tiny_int8, tiny_bi_encoder):
    out = tiny_int8.out
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "model_int8.onnx", "tokenizer.json", "parity.json"} <= names
    assert "model.onnx" not in names  # only the served graph ships
    m = Manifest.load(out, verify=True)
    assert m.kind == "bi-encoder" and m.onnx_file == "model_int8.onnx"
    assert m.quantization == "int8-dynamic"
    assert (m.dims, m.pooling, m.normalize, m.max_seq_length) == (32, "mean", True, 64)
    assert m.similarity == "cosine" and m.output_name == "last_hidden_state"
    assert m.fingerprint == compute_fingerprint(out, m.files, recipe=m.recipe())
    assert "tokenizer.json" in m.files and "model_int8.onnx" in m.files
    assert m.source_sha256 == sha256_file(tiny_bi_encoder / "model.safetensors")
    assert {"onnxruntime", "optimum", "torch", "transformers", "sentence-transformers"} <= set(m.libraries)
    assert m.extra["graph_fusions"].get("Attention") == 1  # the offline fusions ran
    assert m.extra["parity"]["passed"] is True


def test_parity_report_compares_both_variants(tiny_int8):
    report = json.loads((tiny_int8.out / "parity.json").read_text())
    assert report["passed"] and not report["failures"] and not report["forced"]
    assert set(report["variants"]) == {"fp32", "int8"}
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8"]
    assert fp32["cosine_min"] >= 0.9999
    assert int8["cosine_min"] < fp32["cosine_min"]  # quantization changed something ...
    assert int8["cosine_min"] >= ParityThresholds().int8_min_cosine  # ... within the gate
    assert report["sample"]["docs"] == len(tiny_texts())
    assert report["fingerprint"] == tiny_int8.manifest.fingerprint


def test_none_quantization_serves_fp32_and_differs_in_fingerprint(tiny_bi_encoder, tiny_int8, tmp_path):
    res = export_model(tiny_bi_encoder, tmp_path / "fp32", quantize="none", parity_texts=tiny_texts()[:10])
    assert res.manifest.onnx_file == "model.onnx" and res.manifest.quantization == "none"
    assert set(res.report["variants"]) == {"fp32"}
    assert res.manifest.fingerprint != tiny_int8.manifest.fingerprint
    # re-exporting into the same folder replaces the earlier export
    again = export_model(tiny_bi_encoder, tmp_path / "fp32", quantize="none", parity_texts=tiny_texts()[:10])
    assert again.manifest.fingerprint == res.manifest.fingerprint  # deterministic


# ----------------------------------------------------------------------------------- the gate
def test_gate_refuses_and_lists_every_failure_then_force_exports(tiny_bi_encoder, tmp_path):
    strict = ParityThresholds(int8_min_cosine=1.0, int8_min_mean_cosine=1.0)
    out = tmp_path / "strict"
    with pytest.raises(ParityError) as info:
        export_model(tiny_bi_encoder, out, quantize="int8", parity_texts=tiny_texts(), thresholds=strict)
    failures = info.value.failures
    assert len(failures) == 2
    assert any("int8_min_cosine" in f for f in failures) and any("int8_min_mean_cosine" in f for f in failures)
    assert not (out / "manifest.json").exists()  # nothing servable
    rejected = json.loads((out / "parity.rejected.json").read_text())
    assert rejected["failures"] == failures and rejected["passed"] is False

    res = export_model(tiny_bi_encoder, out, quantize="int8", parity_texts=tiny_texts(), thresholds=strict,
                       force=True)
    assert res.forced and not res.passed
    assert json.loads((out / "parity.json").read_text())["forced"] is True
    Manifest.load(out, verify=True)


def test_refuses_to_write_into_a_foreign_folder(tiny_bi_encoder, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an esdistill export"):
        export_model(tiny_bi_encoder, foreign, quantize="none", parity_texts=tiny_texts())
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_bad_arguments_are_config_errors(tiny_bi_encoder, tmp_path):
    with pytest.raises(ConfigError, match="quantize"):
        export_model(tiny_bi_encoder, tmp_path / "x", quantize="int4")
    with pytest.raises(ConfigError, match="kind"):
        export_model(tiny_bi_encoder, tmp_path / "x", kind="reranker")
    with pytest.raises(ConfigError, match="either parity_collection"):
        export_model(tiny_bi_encoder, tmp_path / "x", parity_texts=["a", "b"], parity_collection="somewhere")


def test_cross_encoder_exports_with_its_head_and_activation(tiny_cross_encoder, tmp_path):
    res = export_model(tiny_cross_encoder, tmp_path / "ce", quantize="none", parity_texts=tiny_texts())
    m = res.manifest
    assert m.kind == "cross-encoder" and m.output_name == "logits" and m.dims == 1
    assert m.activation == "sigmoid"  # what sentence-transformers' CrossEncoder applies to one logit
    assert res.report["variants"]["fp32"]["score_max_abs_diff"] < 1e-5
    assert res.passed


# ----------------------------------------------------------------------------------- CLI
def test_cli_exports_and_prints_json(tiny_bi_encoder, tiny_collection, tmp_path, capsys):
    from esdistill.plugin.cli import main

    out = tmp_path / "cli"
    rc = main(["-q", "export", str(tiny_bi_encoder), "--out", str(out), "--quantize", "none",
               "--parity-collection", str(tiny_collection), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] and doc["manifest"]["quantization"] == "none"
    assert doc["report"]["sample"]["judged_queries"] > 0  # qrels came from the collection
    assert "ndcg10_delta" in doc["report"]["variants"]["fp32"]


def test_cli_exits_non_zero_with_the_failure_list(tiny_bi_encoder, tmp_path, capsys):
    from esdistill.plugin.cli import main

    rc = main(["-q", "export", str(tiny_bi_encoder), "--out", str(tmp_path / "bad"),
               "--threshold", "int8_min_cosine=1.0", "--threshold", "int8_min_mean_cosine=1.0"])
    err = capsys.readouterr().err
    assert rc == ParityError.exit_code != 0
    assert "failed 2 parity check(s)" in err and "int8_min_cosine" in err and "int8_min_mean_cosine" in err
    rc = main(["-q", "export", str(tiny_bi_encoder), "--out", str(tmp_path / "bad"), "--threshold", "x=1"])
    assert rc == ConfigError.exit_code


# ----------------------------------------------------------------------------------- int8 guard
def test_quantize_guard_keeps_the_worst_outlier_nodes_in_fp32(tiny_bi_encoder, tmp_path):
    import onnx
    from esdistill.export.quantize import quantize_guarded, rank_activation_outliers
    from esdistill.plugin.encoder import load_tokenizer, pad_batch

    fp32 = export_model(tiny_bi_encoder, tmp_path / "fp32", quantize="none", parity_texts=tiny_texts()[:8]).out
    tok, pad_id = load_tokenizer(fp32, 64)
    feeds = [pad_batch([e], pad_id, with_type_ids=True) for e in tok.encode_batch(tiny_texts()[:4])]
    ranked = rank_activation_outliers(fp32 / "model.onnx", feeds)
    assert len(ranked) >= 3 and all(score > 0 for _, score in ranked)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)

    seen = []

    def accept(path):  # refuse until two nodes stay in fp32
        graph = onnx.load(str(path))
        float_nodes = {n.name for n in graph.graph.node if n.op_type in ("MatMul", "Attention")}
        seen.append(float_nodes)
        return len(float_nodes) >= 2, {"fp32_nodes": float(len(float_nodes))}

    settings, attempts = quantize_guarded(fp32 / "model.onnx", tmp_path / "q.onnx", accept=accept, feeds=feeds)
    assert [a["passed"] for a in attempts] == [False, False, True]  # steps 0, 1, 2
    assert list(settings.exclude_nodes) == [name for name, _ in ranked[:2]]
    assert set(settings.exclude_nodes) <= seen[-1]  # the worst two really stayed fp32


def test_int8_manifest_records_the_quantization_attempts(tiny_int8):
    q = tiny_int8.manifest.extra["quantization_settings"]
    assert q["weight_type"] == "int8" and q["per_channel"] is True
    assert q["attempts"] and q["attempts"][-1]["passed"] is True
    assert q["fp32_nodes"] == []  # the tiny model needs no fp32 fallback


def test_the_quantizer_keeps_nodes_in_fp32_until_the_ndcg_limit_holds_too(tiny_bi_encoder, tiny_collection, tmp_path):
    """With judged queries in the sample, an int8 attempt passes only when its nDCG@10 drop
    against the fp32 graph is within the limit, not on the cosines alone."""
    from esdistill.export.parity import ParityThresholds

    strict = ParityThresholds(int8_max_ndcg10_drop=0.0, int8_min_cosine=0.9, int8_min_mean_cosine=0.9)
    res = export_model(tiny_bi_encoder, tmp_path / "q", quantize="int8", parity_collection=tiny_collection,
                       thresholds=strict, force=True)
    attempts = res.manifest.extra["quantization_settings"]["attempts"]
    assert attempts
    for a in attempts:
        cosines_ok = a["cosine_min"] >= 0.9 and a["cosine_mean"] >= 0.9
        assert cosines_ok  # the tiny model's int8 cosines are far above 0.9
        assert "ndcg10_delta_vs_fp32" in a, a
        assert a["passed"] == (a["ndcg10_delta_vs_fp32"] >= 0.0), a
