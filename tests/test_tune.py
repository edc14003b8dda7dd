"""``esdistill tune`` and ``mode="auto"``: the label-free choice of knn or hybrid, stored in the index's
``_meta`` and resolved by the query hook, on a real Elasticsearch node with the tiny student."""

from __future__ import annotations

import json

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.encoder import OnnxEncoder
from esdistill.plugin.index import IndexManager
from esdistill.plugin.query import QueryHook
from esdistill.plugin.tune import choose, resolve_auto, store_choice, stored_choice, tune
from qh_helpers import build_index


@pytest.fixture
def tiny(es_client, index_prefix, student_dir):
    alias = f"{index_prefix}-docs"
    build_index(es_client, alias, student_dir)
    return alias, OnnxEncoder(student_dir)


def _meta(es_client, alias):
    physical = IndexManager(es_client, alias).current()
    return physical, next(iter(es_client.indices.get_mapping(index=physical).values()))["mappings"]["_meta"]


# ------------------------------------------------------------------------------------ the choice rule
def test_choice_rule_takes_hybrid_only_when_it_is_clearly_better():
    knn = [0.3, 0.5, 0.2, 0.6, 0.4] * 8
    clearly = {"knn": knn, "rrf k=60": [x + 0.3 for x in knn], "linear w_knn=0.5": [x + 0.1 for x in knn]}
    mode, best, p, low, _ = choose(clearly)
    assert (mode, best) == ("hybrid", "rrf k=60") and p == 1.0 and low > 0.29
    # hybrid wins as often as it loses: not significant, knn stays
    noisy = {"knn": knn, "rrf k=60": [x + (0.2 if i % 2 else -0.2) for i, x in enumerate(knn)]}
    mode, _, p, _, _ = choose(noisy)
    assert mode == "knn" and p < 0.9
    with pytest.raises(ConfigError, match="same queries"):
        choose({"knn": knn, "rrf k=60": knn[:-1]})


def test_resolve_auto_falls_back_to_knn():
    class Enc:
        fingerprint = "abc"

    assert resolve_auto(None, Enc()).mode == "knn" and resolve_auto(None, Enc()).reason == "untuned"
    other = resolve_auto({"mode": "hybrid", "fusion": {"fusion": "rrf"}, "model_fingerprint": "zzz"}, Enc())
    assert (other.mode, other.reason) == ("knn", "other_model")
    mine = resolve_auto({"mode": "hybrid", "fusion": {"fusion": "linear", "alpha": 0.3}, "model_fingerprint": "abc"},
                        Enc())
    assert (mine.mode, mine.fusion, mine.reason) == ("hybrid", {"fusion": "linear", "alpha": 0.3}, "tuned")


# ------------------------------------------------------------------------------------ on a real index
def test_untuned_index_runs_knn_under_auto(es_client, tiny):
    alias, enc = tiny
    hook = QueryHook(es_client, alias, enc)
    auto = hook.search("plants convert sunlight", k=5)
    knn = hook.search("plants convert sunlight", k=5, mode="knn")
    assert auto.mode == "knn" and auto.mode_reason == "untuned"
    assert auto.ids == knn.ids
    assert hook.search("plants convert sunlight", k=5, mode="knn").mode_reason == ""


class CountsDocuments:
    """Wraps a real encoder and counts the documents it embeds."""

    def __init__(self, inner) -> None:
        self.inner, self.documents = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts, kind="document", **kw):
        if kind == "document":
            self.documents += len(texts)
        return self.inner.encode(texts, kind=kind, **kw)


def test_tune_stores_its_choice_and_auto_runs_it(es_client, tiny):
    alias, raw = tiny
    enc = CountsDocuments(raw)
    result = tune(es_client, alias, enc, n_queries=24, seed=1)
    # the temporary copy reuses the stored vectors: only the documents whose sentence was cut are
    # embedded again (a copy without the vectors re-embedded the whole index)
    assert 0 < enc.documents <= result.n_queries
    _, meta = _meta(es_client, alias)
    stored = stored_choice(meta)
    assert stored is not None and stored["mode"] == result.mode in ("knn", "hybrid")
    assert stored["model_fingerprint"] == enc.fingerprint and stored["n_queries"] == result.n_queries >= 10
    assert stored["kinds"] == {"ict": result.n_queries} and set(stored["scores"]) >= {"knn", "rrf k=60"}
    assert 0.0 <= stored["p_better"] <= 1.0 and stored["tuned_at"].endswith("Z")
    assert meta["model_fingerprint"] == enc.fingerprint  # esdistill's other keys are kept
    # the temporary copy for the inverse-cloze queries is gone
    assert not es_client.indices.get(index=f"{alias}-tune-*", allow_no_indices=True)
    resp = QueryHook(es_client, alias, raw).search("plants convert sunlight", k=5)
    assert resp.mode == stored["mode"] and resp.mode_reason == "tuned"


def test_auto_runs_a_stored_hybrid_choice_and_ignores_one_for_another_model(es_client, tiny):
    alias, enc = tiny
    physical, _ = _meta(es_client, alias)
    es_client.indices.put_mapping(index=physical, meta={**_meta(es_client, alias)[1], "team_key": "kept"})
    store_choice(es_client, physical, {"mode": "hybrid", "fusion": {"fusion": "linear", "alpha": 0.3},
                                       "model_fingerprint": enc.fingerprint})
    _, meta = _meta(es_client, alias)
    assert meta["team_key"] == "kept" and stored_choice(meta)["mode"] == "hybrid"
    hook = QueryHook(es_client, alias, enc)
    resp = hook.search("plants convert sunlight", k=5)
    assert (resp.mode, resp.mode_reason, resp.score_kind) == ("hybrid", "tuned", "linear")
    assert resp.ids == hook.search("plants convert sunlight", k=5, mode="hybrid", fusion="linear", alpha=0.3).ids
    # a choice made for another model is not trusted
    store_choice(es_client, physical, {"mode": "hybrid", "fusion": {"fusion": "rrf"}, "model_fingerprint": "f" * 64})
    resp = QueryHook(es_client, alias, enc).search("plants convert sunlight", k=5)
    assert (resp.mode, resp.mode_reason) == ("knn", "other_model")


def test_tune_picks_hybrid_where_bm25_separates_what_the_student_cannot(es_client, tiny):
    """Keyword queries copy their document's rarest words: BM25 finds the source, the tiny random
    student barely does, so hybrid must win clearly; a choice only counts with P >= 0.9."""
    alias, enc = tiny
    result = tune(es_client, alias, enc, n_queries=24, kinds=("keyword",), store=False)
    best = result.scores[result.best_hybrid]
    assert best > result.scores["knn"] + 0.1
    assert result.mode == "hybrid" and result.p_better >= 0.9 and result.kinds == {"keyword": result.n_queries}
    assert stored_choice(_meta(es_client, alias)[1]) is None  # store=False


def test_tune_cli_json(es_client, es_url, tiny, student_dir, capsys):
    from esdistill.plugin.cli import main

    alias, _ = tiny
    code = main(["tune", "--index", alias, "--model", str(student_dir), "--queries", "20", "--es-url", es_url,
                 "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["stored"] and out["mode"] in ("knn", "hybrid")
    assert stored_choice(_meta(es_client, alias)[1])["tuned_at"] == out["tuned_at"]
    assert main(["tune", "--index", alias, "--model", str(student_dir), "--kinds", "ict,bogus",
                 "--es-url", es_url]) == ConfigError.exit_code
