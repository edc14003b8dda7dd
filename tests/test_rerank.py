"""Teacher rerank: the ONNX rerankers on tiny exported models (the stage, its deadlines and breaker:
tests/unit/test_rerank_stage.py)."""

from __future__ import annotations

import numpy as np
import pytest
from esdistill.plugin import ConfigError


# ------------------------------------------------------------------- the ONNX rerankers (tiny models)
@pytest.fixture(scope="module")
def exported(tiny_bi_encoder, tiny_cross_encoder, tmp_path_factory):
    from qh_helpers import export_once

    root = tmp_path_factory.getbasetemp() / "qh-exports"
    return {"bi": export_once(tiny_bi_encoder, root, "student"), "ce": export_once(tiny_cross_encoder, root, "teacher-ce")}


DOCS = ["Bacteria evolve resistance to antibiotics.", "Black holes bend light.", "Plants make glucose."]


def test_cross_encoder_reranker_scores_like_the_onnx_cross_encoder(exported):
    from esdistill.plugin.cross_encoder import OnnxCrossEncoder
    from esdistill.plugin.rerank import CrossEncoderReranker, Reranker, load_reranker

    rr = load_reranker(exported["ce"])
    assert isinstance(rr, CrossEncoderReranker) and isinstance(rr, Reranker)
    ref = OnnxCrossEncoder(exported["ce"]).score("antibiotic resistance", DOCS[:3])
    got = rr.score("antibiotic resistance", DOCS[:3])
    assert got.shape == (3,) and np.allclose(got, ref, atol=1e-6)
    assert rr.fingerprint == OnnxCrossEncoder(exported["ce"]).fingerprint


def test_bi_encoder_reranker_is_cosine_and_caches_documents(exported):
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.rerank import BiEncoderReranker, load_reranker

    enc = OnnxEncoder(exported["bi"])
    q = enc.encode(["antibiotic resistance"], kind="query")[0]
    d = enc.encode(DOCS[:3], kind="document")
    expected = (d / np.linalg.norm(d, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))

    class Counting:
        def __init__(self, inner):
            self.inner, self.manifest, self.fingerprint, self.texts = inner, inner.manifest, inner.fingerprint, 0

        def encode(self, texts, *, kind):
            self.texts += len(texts)
            return self.inner.encode(texts, kind=kind)

    counting = Counting(enc)
    rr = BiEncoderReranker(counting, cache_size=2)
    assert np.allclose(rr.score("antibiotic resistance", DOCS[:3]), expected, atol=1e-5)
    assert counting.texts == 1 + 3 and len(rr._docs) == 2             # bounded cache
    assert np.allclose(rr.score("antibiotic resistance", DOCS[1:3]), expected[1:], atol=1e-5)
    assert counting.texts == 4                                         # both candidates and query cached
    assert rr.score("q", []).shape == (0,)
    assert isinstance(load_reranker(exported["bi"]), BiEncoderReranker)
    with pytest.raises(ConfigError):
        BiEncoderReranker(counting, cache_size=-1)


