"""Teachers, the content-addressed score cache and candidate mining, on the tiny models and a real
Elasticsearch node."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from esdistill.export.mining import (
    Bm25Index,
    DenseRetriever,
    MiningConfig,
    load_lists,
    mine_candidates,
    save_lists,
)
from esdistill.export.score_cache import CachedTeacher, ScoreCache, score_key
from esdistill.export.teachers import (
    BiEncoderTeacher,
    BM25Teacher,
    CrossEncoderTeacher,
    EnsembleTeacher,
    Teacher,
    build_teacher,
    normalize_scores,
    with_cache,
)
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import load_corpus, load_qrels, load_queries


class Counting:
    """Counts the documents a real teacher is asked to score."""

    def __init__(self, inner):
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.scored = 0

    def score(self, query, docs):
        self.scored += len(docs)
        return self.inner.score(query, docs)


@pytest.fixture(scope="module")
def corpus(tiny_collection):
    return load_corpus(tiny_collection)


@pytest.fixture
def bm25(es_client, index_prefix, corpus):
    with Bm25Index(es_client, corpus, prefix=index_prefix + "-") as index:
        yield index


def test_score_cache_roundtrip_and_counters(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ScoreCache(path)
    k1, k2 = score_key("fp", "q", "a"), score_key("fp", "q", "b")
    assert k1 != score_key("fp2", "q", "a") and k1 != score_key("fp", "q2", "a")
    assert cache.get_many([k1, k2]) == [None, None]
    cache.put_many([(k1, 1.5)])
    assert cache.get_many([k1, k2]) == [1.5, None]
    assert (cache.hits, cache.misses) == (1, 3)
    cache.close()
    again = ScoreCache(path)
    assert again.get_many([k1]) == [1.5] and len(again) == 1


def test_bi_encoder_teacher_scores_cosines_and_caches_embeddings(tiny_bi_encoder, corpus, tmp_path):
    from sentence_transformers import SentenceTransformer

    docs = [d.full for d in corpus.values()][:5]
    t = BiEncoderTeacher(tiny_bi_encoder, embedding_cache=tmp_path)
    assert isinstance(t, Teacher)
    got = t.score("plants and sunlight", docs)
    st = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    q = st.encode(["plants and sunlight"], normalize_embeddings=True)[0]
    d = st.encode(docs, normalize_embeddings=True)
    np.testing.assert_allclose(got, d @ q, atol=1e-5)
    assert BiEncoderTeacher(tiny_bi_encoder).fingerprint == t.fingerprint
    assert BiEncoderTeacher(tiny_bi_encoder, query_prefix="query: ").fingerprint != t.fingerprint
    t.save_embeddings()  # large batches save themselves; small ones at the end of a run
    reloaded = BiEncoderTeacher(tiny_bi_encoder, embedding_cache=tmp_path)
    assert len(reloaded._docs) == 5  # document embeddings came from disk
    np.testing.assert_allclose(reloaded.score("plants and sunlight", docs), got, atol=1e-6)


def test_cross_encoder_teacher_matches_the_model(tiny_cross_encoder):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    t = CrossEncoderTeacher(tiny_cross_encoder, max_length=64, batch_size=2)
    docs = ["chlorophyll absorbs sunlight", "vaccines train the immune system", "supersonic flow"]
    got = t.score("plants and sunlight", docs)
    tok = AutoTokenizer.from_pretrained(tiny_cross_encoder)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder).eval()
    with torch.no_grad():
        want = model(**tok(["plants and sunlight"] * 3, docs, padding=True, return_tensors="pt")).logits[:, 0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    assert isinstance(build_teacher(str(tiny_cross_encoder)), CrossEncoderTeacher)


def test_bm25_teacher_and_cached_teacher_never_rescore(bm25, corpus, tmp_path):
    teacher = Counting(BM25Teacher(bm25))
    docs = [corpus["d01"].full, corpus["d02"].full, corpus["d07"].full]
    cached = CachedTeacher(teacher, ScoreCache(tmp_path / "s.sqlite"))
    first = cached.score("plants glucose sunlight", docs)
    assert first[0] > 0 and first[0] == first.max()
    assert teacher.scored == 3
    again = cached.score("plants glucose sunlight", docs + [corpus["d03"].full])
    assert teacher.scored == 4  # only the new document went to the teacher
    np.testing.assert_allclose(again[:3], first)
    assert cached.cache.hits == 3
    assert BM25Teacher(bm25).score("zzzz qqqq", docs).tolist() == [0.0, 0.0, 0.0]


def test_ensemble_is_the_weighted_sum_of_normalised_members(bm25, tiny_bi_encoder, corpus, tmp_path):
    docs = [d.full for d in corpus.values()][:8]
    bi, b = BiEncoderTeacher(tiny_bi_encoder), BM25Teacher(bm25)
    ens = build_teacher(f"0.7*bi:{tiny_bi_encoder}+0.3*bm25", bm25_index=bm25)
    assert isinstance(ens, EnsembleTeacher)
    q = "immune system vaccines"
    want = 0.7 * normalize_scores(bi.score(q, docs)) + 0.3 * normalize_scores(b.score(q, docs))
    np.testing.assert_allclose(ens.score(q, docs), want, atol=1e-5)
    other = EnsembleTeacher([(0.5, bi), (0.5, b)])
    assert other.fingerprint != ens.fingerprint
    cached = with_cache(ens, ScoreCache(tmp_path / "e.sqlite"))
    assert all(isinstance(t, CachedTeacher) for _, t in cached.members)
    np.testing.assert_allclose(cached.score(q, docs), want, atol=1e-5)
    with pytest.raises(ConfigError, match="bm25"):
        build_teacher("bm25")
    with pytest.raises(ConfigError, match="weights"):
        EnsembleTeacher([(-1.0, bi)])


def test_normalize_scores():
    s = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(normalize_scores(s, "minmax"), [0, 0.5, 1])
    np.testing.assert_allclose(normalize_scores(s, "zscore").mean(), 0, atol=1e-6)
    np.testing.assert_allclose(normalize_scores(s, "rank"), [0, 0.5, 1])
    with pytest.raises(ConfigError):
        normalize_scores(s, "softmax")


def test_mining_lists_positives_denoising_and_roundtrip(bm25, tiny_bi_encoder, tiny_collection, corpus, tmp_path):
    queries = load_queries(tiny_collection)
    qrels = load_qrels(tiny_collection / "qrels" / "test.tsv")
    teacher = BiEncoderTeacher(tiny_bi_encoder)
    ids = list(corpus)
    dense = DenseRetriever(ids, teacher.doc_vectors([corpus[i].full for i in ids]), teacher.embed_queries)
    cfg = MiningConfig(list_size=6, pool_depth=10, pool_size=12)
    positives = {q: [d for d, g in rels.items() if g > 0] for q, rels in qrels.items()}
    lists = mine_candidates(queries, corpus, teacher=teacher, bm25=bm25, dense=dense,
                            positives=positives, config=cfg)
    assert len(lists) == len(queries)
    for c in lists:
        assert len(c.doc_ids) == 6 == len(c.teacher_scores) == len(set(c.doc_ids))
        assert c.doc_ids[:len(c.positives)] == c.positives
        best_pos = max(s for d, s in zip(c.doc_ids, c.teacher_scores) if d in c.positives)
        flagged = {d for d, s in zip(c.doc_ids, c.teacher_scores) if d not in c.positives and s >= best_pos}
        assert flagged <= set(c.false_negatives)
        assert c.teacher_rank_of_positive >= 0
    save_lists(tmp_path / "lists.jsonl", lists)
    assert load_lists(tmp_path / "lists.jsonl") == lists
    bm25_only = mine_candidates(queries, corpus, teacher=teacher, bm25=bm25, config=cfg)
    assert all(c.positives == [] and c.teacher_rank_of_positive == -1 for c in bm25_only)


def test_cross_encoder_teacher_training_learns_to_rerank(bm25, tiny_bi_encoder, corpus, tmp_path):
    from esdistill.export.gate import select_teacher
    from esdistill.export.queries import RuleBasedGenerator, generate_queries
    from esdistill.export.teacher_train import CrossEncoderTrainConfig, train_cross_encoder

    syn = generate_queries(corpus, RuleBasedGenerator.fit(corpus), per_doc=2, seed=0)
    lists = mine_candidates({q.query_id: q.text for q in syn}, corpus, teacher=BM25Teacher(bm25), bm25=bm25,
                            positives={q.query_id: [q.doc_id] for q in syn},
                            config=MiningConfig(list_size=6, pool_depth=8, pool_size=8))
    cfg = CrossEncoderTrainConfig(epochs=4, lr=1e-3, max_length=64, lists_per_step=4, list_size=6)
    untrained = train_cross_encoder(lists, corpus, base=tiny_bi_encoder, out_dir=tmp_path / "ce0",
                                    config=CrossEncoderTrainConfig(**{**cfg.__dict__, "epochs": 1, "lr": 1e-9}))
    trained = train_cross_encoder(lists, corpus, base=tiny_bi_encoder, out_dir=tmp_path / "ce", config=cfg)
    teachers = {"untrained": CrossEncoderTeacher(untrained, max_length=64),
                "trained": CrossEncoderTeacher(trained, max_length=64)}
    best, scores = select_teacher(teachers, lists, corpus)
    # the gain varies between runs (a clean-clone CI run saw 0.779 -> 0.867, +0.088); 0.05 keeps
    # the claim "training helps" without flaking
    assert best == "trained" and scores["trained"] > scores["untrained"] + 0.05, scores
    assert isinstance(build_teacher(str(trained)), CrossEncoderTeacher)
    with pytest.raises(ConfigError, match="weights"):
        CrossEncoderTrainConfig(label_weight=0, distill_weight=0)


def test_equal_members_are_shared_across_specs(bm25, tiny_bi_encoder):
    shared: dict = {}
    a = build_teacher(f"bi:{tiny_bi_encoder}", bm25_index=bm25, shared=shared)
    b = build_teacher(f"0.5*bi:{tiny_bi_encoder}+0.5*bm25", bm25_index=bm25, shared=shared)
    assert b.members[0][1] is a  # one object: the corpus is embedded once for both
    assert build_teacher(f"bi:{tiny_bi_encoder}") is not a


def test_hidden_documents_are_scored_but_never_retrieved(es_client, index_prefix, corpus):
    from esdistill.plugin.beir import Doc

    first = next(iter(corpus))
    copy = Doc("copy#cut:q", corpus[first].title, corpus[first].text)  # a training copy of a real document
    view = {**corpus, "copy#cut:q": copy}
    with Bm25Index(es_client, view, prefix=index_prefix + "-", hidden=["copy#cut:q"]) as index:
        query = corpus[first].full
        hits = [d for d, _ in index.search(query, k=len(view))]
        assert first in hits and "copy#cut:q" not in hits
        scores = index.score_ids(query, [first, "copy#cut:q"])
        assert scores["copy#cut:q"] == pytest.approx(scores[first], rel=1e-4)
        assert BM25Teacher(index).score(query, [copy.full])[0] > 0


def test_mining_never_lists_an_excluded_document(bm25, corpus):
    ids = list(corpus)
    q = corpus[ids[0]].full
    lists = mine_candidates({"q": q}, corpus, teacher=BM25Teacher(bm25), bm25=bm25, positives={"q": [ids[1]]},
                            exclude={"q": [ids[0]]}, config=MiningConfig(list_size=4, pool_depth=8, pool_size=8))
    assert ids[0] not in lists[0].doc_ids and lists[0].doc_ids[0] == ids[1]
    # without the exclusion the document that holds the query verbatim is the teacher's first pick
    plain = mine_candidates({"q": q}, corpus, teacher=BM25Teacher(bm25), bm25=bm25, positives={"q": [ids[1]]},
                            config=MiningConfig(list_size=4, pool_depth=8, pool_size=8))
    assert ids[0] in plain[0].doc_ids
