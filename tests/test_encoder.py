"""The runtime ONNX encoder and cross-encoder against their torch sources."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from esdistill.plugin import ConfigError, FingerprintError, ModelError
from esdistill.plugin.cross_encoder import OnnxCrossEncoder
from esdistill.plugin.encoder import EncodeResult, OnnxEncoder
from esdt_helpers import tiny_texts

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def _export(source, out, **kw):
    pytest.importorskip("torch", reason="export needs the export extra")
    from esdistill.export.onnx_export import export_model

    return export_model(source, out, **kw)


@pytest.fixture(scope="module")
def tiny_fp32(tiny_bi_encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "tiny-fp32"
    return _export(tiny_bi_encoder, out, quantize="none", parity_texts=tiny_texts()).out


@pytest.fixture(scope="module")
def tiny_st(tiny_bi_encoder):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(tiny_bi_encoder), device="cpu")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ----------------------------------------------------------------------------------- bi-encoder
def test_fp32_matches_sentence_transformers(tiny_fp32, tiny_st):
    texts = tiny_texts()
    enc = OnnxEncoder(tiny_fp32, threads=1)
    got = enc.encode(texts)
    want = tiny_st.encode(texts, convert_to_numpy=True)
    assert got.dtype == np.float32 and got.shape == (len(texts), 32)
    assert _cos(got, want).min() >= 0.99999
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert enc.dims == 32 and enc.max_seq_length == 64 and len(enc.fingerprint) == 64


def test_order_and_batching_do_not_change_results(tiny_fp32):
    texts = tiny_texts()
    enc = OnnxEncoder(tiny_fp32)
    full = enc.encode(texts, batch_size=32)
    ones = enc.encode(texts, batch_size=1)
    np.testing.assert_allclose(full, ones, atol=1e-5)
    # input order is kept although batches are formed by length
    rev = enc.encode(texts[::-1], batch_size=5)
    np.testing.assert_allclose(rev[::-1], full, atol=1e-5)
    assert enc.encode([]).shape == (0, 32)


def test_truncation_is_flagged_and_matches_the_source(tiny_fp32, tiny_st):
    enc = OnnxEncoder(tiny_fp32)
    long = " ".join(tiny_texts()[:6])  # far more than 64 tokens
    short = "cells divide"
    res = enc.encode_with_info([short, long, short + " " + short])
    assert isinstance(res, EncodeResult)
    assert res.truncated.tolist() == [False, True, False]
    want = tiny_st.encode([long], convert_to_numpy=True)
    np.testing.assert_allclose(res.embeddings[1:2], want, atol=1e-5)


def test_prefixes_follow_the_source_prompts(tiny_bi_encoder, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    model.prompts = {"query": "query: ", "document": "passage: "}
    src = tmp_path / "prompted"
    model.save(str(src))
    res = _export(src, tmp_path / "out", quantize="none", parity_texts=tiny_texts())
    assert (res.manifest.query_prefix, res.manifest.document_prefix) == ("query: ", "passage: ")
    enc = OnnxEncoder(res.out)
    texts = ["what do cells need", "mitochondria make energy"]
    q, d = enc.encode_queries(texts), enc.encode_documents(texts)
    np.testing.assert_allclose(q, model.encode(texts, prompt_name="query"), atol=1e-5)
    np.testing.assert_allclose(d, model.encode(texts, prompt_name="document"), atol=1e-5)
    np.testing.assert_allclose(enc.encode(texts, kind="query"), q, atol=1e-6)
    assert not np.allclose(q, d, atol=1e-4)


def test_edited_files_are_refused(tiny_fp32, tmp_path):
    for victim in ("tokenizer.json", "model.onnx"):
        copy = tmp_path / victim
        shutil.copytree(tiny_fp32, copy)
        with open(copy / victim, "ab") as f:
            f.write(b" ")
        with pytest.raises(FingerprintError) as info:
            OnnxEncoder(copy)
        assert info.value.expected != info.value.actual
        if victim == "tokenizer.json":  # still valid JSON: loads when the check is skipped on purpose
            assert OnnxEncoder(copy, verify=False).encode(["x"]).shape == (1, 32)


def test_bad_arguments(tiny_fp32, tmp_path):
    enc = OnnxEncoder(tiny_fp32)
    with pytest.raises(ConfigError, match="kind"):
        enc.encode(["x"], kind="passage")
    with pytest.raises(ConfigError, match="single str"):
        enc.encode("not a list")
    with pytest.raises(ConfigError, match=r"texts\[1\]"):
        enc.encode(["ok", 3])
    with pytest.raises(ConfigError, match="threads"):
        OnnxEncoder(tiny_fp32, threads=0)
    with pytest.raises(ConfigError, match="batch_size"):
        enc.encode(["x"], batch_size=0)
    with pytest.raises(ModelError, match="manifest.json"):
        OnnxEncoder(tmp_path)


def test_runtime_encodes_without_torch(tiny_fp32):
    code = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "transformers", "sentence_transformers", "optimum"}}:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from esdistill.plugin.encoder import OnnxEncoder
        e = OnnxEncoder({str(tiny_fp32)!r}, threads=1)
        print(e.encode(["hello world"]).shape)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(1, 32)"


def test_an_int8_text_gets_the_same_vector_alone_or_in_any_batch(tiny_bi_encoder, tmp_path):
    from esdistill.plugin.encoder import independent_batch_size

    out = _export(tiny_bi_encoder, tmp_path / "int8", quantize="int8", parity_texts=tiny_texts()).out
    texts = tiny_texts()
    enc = OnnxEncoder(out, batch_size=64)
    assert enc.manifest.quantization == "int8-dynamic" and enc.batch_independent
    alone = np.concatenate([enc.encode([t]) for t in texts])
    np.testing.assert_array_equal(enc.encode(texts), alone)  # one call with every text
    np.testing.assert_array_equal(enc.encode(texts[::-1], batch_size=7)[::-1], alone)
    np.testing.assert_array_equal(enc.encode_queries(texts[:3]), alone[:3])  # a query is a document's twin
    # what it prevents: the activation scales shared across a batch move every vector a little
    shared = OnnxEncoder(out, batch_size=64, batch_independent=False)
    assert not shared.batch_independent
    assert not np.array_equal(shared.encode(texts), alone)
    # fp32 and static graphs keep their batches
    assert (independent_batch_size("none", 32), independent_batch_size("int8-static", 32)) == (32, 32)
    assert independent_batch_size("int8-dynamic", 32) == 1


# ----------------------------------------------------------------------------------- cross-encoder
def test_cross_encoder_scores_match_torch(tiny_cross_encoder, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    res = _export(tiny_cross_encoder, tmp_path / "ce", quantize="none", parity_texts=tiny_texts())
    ce = OnnxCrossEncoder(res.out, threads=1)
    texts = tiny_texts()
    query, docs = texts[-1], texts[:12] + [" ".join(texts)]  # the last pair needs truncation
    got = ce.score(query, docs)
    ref = st.CrossEncoder(str(tiny_cross_encoder), device="cpu")
    want = ref.predict([(query, d) for d in docs])
    assert got.dtype == np.float32 and got.shape == (len(docs),)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the raw logits, through the HF model and tokenizer directly (sigmoid undone)
    import torch

    feats = ref.tokenizer([query] * len(docs), docs, padding=True, truncation=True, max_length=128,
                          return_tensors="pt")
    with torch.no_grad():
        logits = ref.model(**feats).logits[:, 0].numpy()
    np.testing.assert_allclose(np.log(got / (1 - got)), logits, atol=1e-4)
    assert ce.score(query, []).shape == (0,)
    with pytest.raises(ModelError, match="cross-encoder"):
        OnnxEncoder(res.out)
    with pytest.raises(ConfigError):
        ce.score(["not", "a string"], docs)


# ----------------------------------------------------------------------------------- real model
def _scifact_texts(n: int, skip: int = 0) -> list[str]:
    out = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < skip:
                continue
            d = json.loads(line)
            out.append(f"{d['title']} {d['text']}".strip())
            if len(out) == n:
                break
    return out


@pytest.mark.models
def test_packaged_student_fp32_matches_and_int8_passes_its_gate(packaged_student, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    if not SCIFACT.is_dir():
        pytest.skip(f"needs the shared SciFact collection at {SCIFACT} (BEIR layout), which a fresh clone "
                    "does not have; CI checks out the shared data beside the repository and runs this test")
    res = _export(packaged_student, tmp_path / "minilm", quantize="int8", parity_collection=SCIFACT,
                  parity_docs=100, parity_max_queries=30)
    assert res.passed, res.report["failures"]
    fp32, int8 = res.report["variants"]["fp32"], res.report["variants"]["int8"]
    assert fp32["cosine_min"] >= 0.999  # fp32 graph through the runtime encoder vs sentence-transformers
    assert int8["passed"] and "ndcg10_delta" in int8
    assert res.manifest.dims == 384 and res.manifest.max_seq_length == 256
    # the served int8 folder, on other SciFact texts, against sentence-transformers in torch
    texts = _scifact_texts(32, skip=2000)
    enc = OnnxEncoder(res.out, threads=2)
    got = enc.encode_with_info(texts)
    want = st.SentenceTransformer(str(packaged_student), device="cpu").encode(texts, convert_to_numpy=True)
    cos = _cos(got.embeddings, want)
    assert cos.min() >= 0.97 and cos.mean() >= 0.99
    assert got.truncated.any()  # SciFact abstracts exceed 256 tokens now and then


#: the smallest cosine, between a SciFact abstract embedded alone and inside a length-sorted batch of
#: 64, that the packaged int8 student gave when it shared activation scales across the batch (0.984
#: over 512 abstracts; docs/results-int8-batch.md), less a margin
SHARED_SCALE_MIN_COSINE = 0.975


@pytest.mark.models
def test_packaged_int8_document_vectors_do_not_depend_on_their_batch(packaged_student, tmp_path):
    if not SCIFACT.is_dir():
        pytest.skip(f"needs the shared SciFact collection at {SCIFACT} (BEIR layout), which a fresh clone "
                    "does not have; CI checks out the shared data beside the repository and runs this test")
    out = _export(packaged_student, tmp_path / "minilm", quantize="int8").out
    texts = _scifact_texts(64, skip=3000)
    enc = OnnxEncoder(out, threads=2, batch_size=64)
    alone = np.concatenate([enc.encode([t]) for t in texts])
    np.testing.assert_array_equal(enc.encode(texts), alone)
    shared = OnnxEncoder(out, threads=2, batch_size=64, batch_independent=False).encode(texts)
    cos = _cos(shared, alone)
    assert SHARED_SCALE_MIN_COSINE <= cos.min() < 0.9999  # the drift the default removes, and its bound
