"""End-to-end distillation on the tiny model and the tiny collection (seconds): training improves the
student over its base, checkpoints resume, query-side-only keeps the document tower, and the
promotion gate refuses a deliberately bad run."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from esdistill.export.gate import RetrievalEvaluator, evaluate_run, promotion_gate, select_teacher
from esdistill.export.mining import Bm25Index, MiningConfig, mine_candidates, retrieve_pools
from esdistill.export.queries import RuleBasedGenerator, generate_queries
from esdistill.export.teachers import BiEncoderTeacher, BM25Teacher
from esdistill.export.train import (
    StudentEncoder,
    TrainConfig,
    average_with_base,
    boost_positives,
    load_student,
    train_student,
)
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import Doc, load_corpus, load_qrels, load_queries

FAST = {
    "batch_size": 4, "lr": 2e-3, "epochs": 6, "max_seq_length": 64, "max_query_length": 32,
    "show_progress": False, "teacher_temperature": 0.5, "query_side_only": False,  # both towers learn
}


@pytest.fixture(scope="module")
def corpus(tiny_collection):
    return load_corpus(tiny_collection)


@pytest.fixture(scope="module")
def dev(tiny_collection):
    return load_queries(tiny_collection), load_qrels(tiny_collection / "qrels" / "test.tsv")


@pytest.fixture(scope="module")
def pseudo_dev(lists):
    """The training queries with their source documents as relevant: what the student must fit."""
    return {c.query_id: c.query for c in lists}, {c.query_id: {c.positives[0]: 1} for c in lists}


@pytest.fixture(scope="module")
def lists(es_client, corpus):
    """Synthetic queries (3 per document) with BM25-teacher-scored lists (index cleaned up here)."""
    gen = RuleBasedGenerator.fit(corpus)
    syn = generate_queries(corpus, gen, per_doc=3, seed=0)
    queries = {q.query_id: q.text for q in syn}
    with Bm25Index(es_client, corpus, prefix="esdt-train-module-") as bm25:
        return mine_candidates(queries, corpus, teacher=BM25Teacher(bm25), bm25=bm25,
                               positives={q.query_id: [q.doc_id] for q in syn},
                               config=MiningConfig(list_size=8, pool_depth=12, pool_size=12))


def _enc(model_dir, doc_model=None):
    q = load_student(model_dir, max_seq_length=64)
    return StudentEncoder(q, load_student(doc_model, max_seq_length=64) if doc_model else None)


def test_distillation_beats_the_base_and_the_gate_promotes_it(lists, corpus, pseudo_dev, tiny_bi_encoder,
                                                              tmp_path):
    queries, qrels = pseudo_dev
    ev = RetrievalEvaluator(corpus, queries, qrels)
    result = train_student(lists, corpus, student=tiny_bi_encoder, out_dir=tmp_path / "run",
                           config=TrainConfig(loss="kl+0.1*infonce", **FAST), evaluator=ev)
    usable = sum(len(c.doc_ids) >= 2 for c in lists)
    assert result.steps == 6 * -(-usable // 4)
    assert [h["dev"] for h in result.history if "dev" in h]  # the dev metric was tracked
    gate = promotion_gate(ev, base=_enc(tiny_bi_encoder), trained=_enc(result.model_dir), confidence=0.9)
    assert gate.trained > gate.base + 0.05, gate.reason
    assert gate.promoted and gate.p_better >= 0.9 and gate.ci_low > 0 and gate.wins > gate.losses, gate.reason
    info = json.loads((tmp_path / "run" / "train_history.json").read_text())
    assert info["steps"] == result.steps and info["config"]["loss"] == "kl+0.1*infonce"


@pytest.mark.parametrize("loss", ["margin-mse", "pairwise", "plackett-luce", "infonce"])
def test_every_loss_trains_without_error(lists, corpus, tiny_bi_encoder, tmp_path, loss):
    cfg = TrainConfig(loss=loss, **{**FAST, "epochs": 1, "max_steps": 2})
    usable = [c for c in lists if len(c.doc_ids) >= 2][:8]  # two batches of 4
    result = train_student(usable, corpus, student=tiny_bi_encoder, out_dir=tmp_path, config=cfg)
    assert result.steps == 2 and all(np.isfinite(h["loss"]) for h in result.history)


@pytest.mark.slow  # two full training runs
def test_gate_refuses_a_deliberately_bad_run(lists, corpus, pseudo_dev, tiny_bi_encoder, tmp_path):
    queries, qrels = pseudo_dev
    ev = RetrievalEvaluator(corpus, queries, qrels)
    good = train_student(lists, corpus, student=tiny_bi_encoder, out_dir=tmp_path / "good",
                         config=TrainConfig(**FAST))
    # shuffled labels (each list's teacher scores permuted at random) and a huge learning rate
    rng = np.random.default_rng(0)
    bad_lists = [type(c)(**{**c.__dict__, "teacher_scores": rng.permutation(c.teacher_scores).tolist()})
                 for c in lists]
    bad = train_student(bad_lists, corpus, student=good.model_dir, out_dir=tmp_path / "bad",
                        config=TrainConfig(**{**FAST, "lr": 0.5, "warmup_ratio": 0.0}))
    gate = promotion_gate(ev, base=_enc(good.model_dir), trained=_enc(bad.model_dir))
    assert not gate.promoted and gate.delta < 0, gate.reason
    assert "REFUSED" in gate.reason


def test_weight_averaging_interpolates_every_weight_with_the_base(lists, corpus, tiny_bi_encoder, tmp_path):
    trained = train_student(lists, corpus, student=tiny_bi_encoder, out_dir=tmp_path / "run",
                            config=TrainConfig(**{**FAST, "epochs": 1}))
    half = average_with_base(trained.model_dir, tiny_bi_encoder, tmp_path / "half", alpha=0.5, max_seq_length=64)
    whole = average_with_base(trained.model_dir, tiny_bi_encoder, tmp_path / "whole", alpha=1.0, max_seq_length=64)
    t = load_student(trained.model_dir, max_seq_length=64).state_dict()
    b = load_student(tiny_bi_encoder, max_seq_length=64).state_dict()
    h = load_student(half, max_seq_length=64).state_dict()
    moved = [k for k in t if t[k].is_floating_point() and not torch.equal(t[k], b[k])]
    assert moved  # training changed weights, so the midpoint is a third model
    for k in t:
        expected = (t[k] + b[k]) / 2 if t[k].is_floating_point() else t[k]
        torch.testing.assert_close(h[k], expected)
    text = [corpus["d01"].full]
    np.testing.assert_allclose(_enc(whole).encode_documents(text), _enc(trained.model_dir).encode_documents(text),
                               atol=1e-6)
    mid = _enc(half).encode_documents(text)
    assert not np.allclose(mid, _enc(trained.model_dir).encode_documents(text), atol=1e-4)
    assert not np.allclose(mid, _enc(tiny_bi_encoder).encode_documents(text), atol=1e-4)


def test_weight_averaging_refuses_bad_settings(tiny_bi_encoder, tmp_path):
    for alpha in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=r"\(0, 1\]"):
            average_with_base(tiny_bi_encoder, tiny_bi_encoder, tmp_path / "x", alpha=alpha)
    with pytest.raises(ConfigError, match="write elsewhere"):
        average_with_base(tiny_bi_encoder, tiny_bi_encoder, tiny_bi_encoder, alpha=0.5)
    # a student from another base (here: one more layer) cannot be averaged with this one
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    base = load_student(tiny_bi_encoder)
    dim = base.get_embedding_dimension()
    SentenceTransformer(modules=[*base, modules.Dense(dim, dim)], device="cpu").save(str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="the base it was trained from"):
        average_with_base(tmp_path / "other", tiny_bi_encoder, tmp_path / "y", alpha=0.5)


class _Fixed:
    """An encoder whose query vectors are given: per-query outcomes chosen by the test."""

    def __init__(self, doc_vecs, query_vecs):
        self.doc_vecs, self.query_vecs = doc_vecs, query_vecs

    def encode_documents(self, texts):
        return self.doc_vecs

    def encode_queries(self, texts):
        return self.query_vecs


def test_gate_confidence_refuses_a_gain_within_the_noise_and_keeps_a_clear_one():
    from esdistill.plugin.beir import Doc

    n = 40
    corpus = {f"d{i}": Doc(f"d{i}", "", f"doc {i}") for i in range(n)}
    queries = {f"q{i}": f"query {i}" for i in range(n)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(n)}
    ev = RetrievalEvaluator(corpus, queries, qrels)
    eye = np.eye(n, dtype=np.float32)
    half = eye.copy()  # base: finds its document for the first half of the queries only
    half[n // 2:] = np.roll(eye, 1, axis=1)[n // 2:]
    base = _Fixed(eye, half)
    # one more query found, one lost elsewhere, one more found: +1 query net, noise on 40 queries
    noisy = half.copy()
    noisy[n // 2] = eye[n // 2]
    noisy[n // 2 + 1] = eye[n // 2 + 1]
    noisy[0] = np.roll(eye, 1, axis=1)[0]
    gate = promotion_gate(ev, base=base, trained=_Fixed(eye, noisy), shared_documents=True, confidence=0.9)
    assert gate.delta > 0 and gate.wins == 2 and gate.losses == 1
    assert not gate.promoted and "noise" in gate.reason and gate.p_better < 0.9
    # without the significance check the same student passes ("not worse" only)
    assert promotion_gate(ev, base=base, trained=_Fixed(eye, noisy), shared_documents=True).promoted
    # every query found: a clear gain is promoted
    clear = promotion_gate(ev, base=base, trained=_Fixed(eye, eye), shared_documents=True, confidence=0.9)
    assert clear.promoted and clear.wins == n // 2 and clear.losses == 0 and clear.p_better == 1.0
    with pytest.raises(ConfigError, match="confidence"):
        promotion_gate(ev, base=base, trained=base, confidence=1.5)


def test_checkpoints_resume_where_they_stopped(lists, corpus, tiny_bi_encoder, tmp_path):
    cfg = dict(FAST, epochs=1, checkpoint_steps=1, keep_checkpoints=2)
    first = train_student(lists, corpus, student=tiny_bi_encoder, out_dir=tmp_path,
                          config=TrainConfig(**cfg, max_steps=2))
    assert first.steps == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1", "step-2"]
    second = train_student(lists, corpus, student=tiny_bi_encoder, out_dir=tmp_path,
                           config=TrainConfig(**cfg, max_steps=4))
    assert second.steps == 4
    assert [h["step"] for h in second.history] == [1, 2, 3, 4]  # history continued, not restarted
    assert second.resumed_from_step == 2 and second.restarted is None  # a larger budget continues
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-3", "step-4"]


def test_a_checkpoint_from_other_inputs_is_never_resumed(lists, corpus, tiny_bi_encoder, tmp_path):
    """Rerunning into the same folder with another loss, learning rate or teacher (other teacher
    scores) trains again from the base; only the very same inputs resume."""
    usable = [c for c in lists if len(c.doc_ids) >= 2][:8]  # two batches of 4
    cfg = dict(FAST, epochs=1)

    def weights(result):
        return load_student(result.model_dir, max_seq_length=64).state_dict()

    first = train_student(usable, corpus, student=tiny_bi_encoder, out_dir=tmp_path, config=TrainConfig(**cfg))
    assert first.steps == 2 and first.resumed_from_step is None and first.restarted is None
    old = weights(first)
    # the same inputs: the finished checkpoint is resumed, nothing is trained again
    same = train_student(usable, corpus, student=tiny_bi_encoder, out_dir=tmp_path, config=TrainConfig(**cfg))
    assert same.resumed_from_step == 2 and same.restarted is None and same.fingerprint == first.fingerprint
    assert all(torch.equal(old[k], v) for k, v in weights(same).items())
    # another learning rate: trained again from the base, and the log/result say why
    other_lr = train_student(usable, corpus, student=tiny_bi_encoder, out_dir=tmp_path,
                             config=TrainConfig(**{**cfg, "lr": 1e-2}))
    assert other_lr.resumed_from_step is None and other_lr.steps == 2
    assert "lr 0.002 -> 0.01" in other_lr.restarted and other_lr.fingerprint != first.fingerprint
    new = weights(other_lr)
    assert any(not torch.equal(old[k], new[k]) for k in new)
    assert [h["step"] for h in other_lr.history] == [1, 2]  # a fresh history, not the old one continued
    # another teacher (the same queries and candidates, other scores): trained again too
    flipped = [type(c)(**{**c.__dict__, "teacher_scores": [-x for x in c.teacher_scores]}) for c in usable]
    other_teacher = train_student(flipped, corpus, student=tiny_bi_encoder, out_dir=tmp_path,
                                  config=TrainConfig(**{**cfg, "lr": 1e-2}))
    assert other_teacher.resumed_from_step is None and "candidate lists" in other_teacher.restarted
    assert any(not torch.equal(new[k], v) for k, v in weights(other_teacher).items())
    # a checkpoint past this run's last step is not resumed either
    shorter = train_student(flipped, corpus, student=tiny_bi_encoder, out_dir=tmp_path,
                            config=TrainConfig(**{**cfg, "lr": 1e-2}, max_steps=1))
    assert shorter.steps == 1 and "past this run's last step" in shorter.restarted
    # a checkpoint without a fingerprint (an older esdistill) is not trusted
    (tmp_path / "checkpoints" / "step-1" / "fingerprint.json").unlink()
    again = train_student(flipped, corpus, student=tiny_bi_encoder, out_dir=tmp_path,
                          config=TrainConfig(**{**cfg, "lr": 1e-2}, max_steps=1))
    assert again.resumed_from_step is None and "fingerprint.json" in again.restarted
    history = json.loads((tmp_path / "train_history.json").read_text())
    assert history["restarted"] == again.restarted and history["fingerprint"] == again.fingerprint


def test_query_side_only_keeps_the_document_tower(lists, corpus, pseudo_dev, tiny_bi_encoder, tmp_path):
    queries, qrels = pseudo_dev
    result = train_student(lists, corpus, student=tiny_bi_encoder, out_dir=tmp_path,
                           config=TrainConfig(**{**FAST, "query_side_only": True, "teacher_temperature": "auto"}))
    assert result.document_model == str(tiny_bi_encoder)
    base, trained = _enc(tiny_bi_encoder), _enc(result.model_dir, doc_model=tiny_bi_encoder)
    text = [corpus["d01"].full]
    np.testing.assert_allclose(trained.encode_documents(text), base.encode_documents(text), atol=1e-6)
    assert not np.allclose(trained.encode_queries(["plants"]), base.encode_queries(["plants"]), atol=1e-4)
    ev = RetrievalEvaluator(corpus, queries, qrels)
    gate = promotion_gate(ev, base=base, trained=trained, shared_documents=True)
    assert gate.trained > gate.base, gate.reason
    # the default teacher temperature was matched to the base student's lists, and recorded
    history = json.loads((tmp_path / "train_history.json").read_text())
    assert result.teacher_temperature is not None and 0.05 <= result.teacher_temperature <= 1.0
    assert history["teacher_temperature"] == result.teacher_temperature
    assert history["config"]["teacher_temperature"] == "auto"


def test_teacher_selection_and_evaluate_run(es_client, index_prefix, corpus, dev, tiny_bi_encoder):
    queries, qrels = dev
    with Bm25Index(es_client, corpus, prefix=index_prefix + "-") as bm25:
        pools = retrieve_pools(queries, bm25=bm25, positives={q: list(r) for q, r in qrels.items()}, depth=10)
        best, scores = select_teacher({"random-bi": BiEncoderTeacher(tiny_bi_encoder), "bm25": BM25Teacher(bm25)},
                                      pools, corpus)
    assert best == "bm25" and scores["bm25"] > scores["random-bi"]
    mean, per = evaluate_run({"a": {"x": 1}, "b": {"y": 1}}, {"a": {"x": 2.0, "z": 1.0}})
    assert per == {"a": 1.0, "b": 0.0} and mean == 0.5
    with pytest.raises(ConfigError, match="metric"):
        evaluate_run({"a": {"x": 1}}, {}, "NotAMetric@3")
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0)
    for bad in (0, -1.0, "hot"):
        with pytest.raises(ConfigError, match="teacher_temperature"):
            TrainConfig(teacher_temperature=bad)


class _Oracle:
    """A fake teacher that ranks the positive first for the queries it "knows", else last."""

    def __init__(self, knows):
        self.knows = set(knows)

    def score(self, query, docs):
        return [1.0 if (query in self.knows) == (i == 0) else 0.0 for i in range(len(docs))]


def test_teacher_selection_prefers_the_earlier_teacher_unless_the_best_is_significantly_better():
    from esdistill.export.mining import CandidateList

    corpus = {d: Doc(d, "", f"text {d}") for d in ("p", "n1", "n2")}
    lists = [CandidateList(f"q{i}", f"q{i}", ["p", "n1", "n2"], [0, 0, 0], positives=["p"]) for i in range(40)]
    queries = [c.query for c in lists]
    dense, close, far = _Oracle(queries[:30]), _Oracle(queries[:31]), _Oracle(queries[:40])
    # one more query right out of 40 is noise: the earlier (dense) teacher is kept
    how: dict = {}
    chosen, scores = select_teacher({"dense": dense, "fusion": close}, lists, corpus, confidence=0.9, details=how)
    assert chosen == "dense" and how["best"] == "fusion" and scores["fusion"] > scores["dense"]
    assert how["p_best_better"]["dense"] < 0.9
    # ten more is not: the best wins
    assert select_teacher({"dense": dense, "fusion": far}, lists, corpus, confidence=0.9)[0] == "fusion"
    # confidence 0: the best score wins, as before
    assert select_teacher({"dense": dense, "fusion": close}, lists, corpus)[0] == "fusion"
    with pytest.raises(ConfigError, match="confidence"):
        select_teacher({"dense": dense}, lists, corpus, confidence=1.0)


def test_positive_boost_lifts_only_known_positives_above_the_best_other_candidate():
    t = np.array([0.5, 2.0, -1.0, 1.0])
    out = boost_positives(t, [True, False, True, False], 0.5)
    assert out.tolist() == [2.5, 2.0, 2.5, 1.0]  # both positives lifted to best other + 0.5
    assert boost_positives(np.array([3.0, 1.0]), [True, False], 0.5).tolist() == [3.0, 1.0]  # already on top
    assert boost_positives(t, [False] * 4, 0.5) is t and boost_positives(t, [True] * 4, 0.5) is t
    assert boost_positives(t, [True, False, False, False], None) is t
    # in the KL target the labelled positive now carries the most probability mass
    p = np.exp(out) / np.exp(out).sum()
    assert p[0] == p.max()
