"""Adopting a team's own index (made with plain elasticsearch-py) in place and by copy, against the
real node: the team's BM25 query by the old name returns the same hits, their ``_meta``, analyzers
and fields are intact, kNN with a filter on their keyword field works, and the refusals say why."""

from __future__ import annotations

import json

import numpy as np
import pytest
from adopt_helpers import (
    TEAM_META,
    knn_ids,
    make_team_index,
    own_vector,
    physical_mapping,
    physical_settings,
    stored_vectors,
    team_bm25,
)
from esdistill.plugin import ConfigError, FingerprintError, IndexManager
from esdistill.plugin.query import QueryHook
from esdistill.plugin.sync import sync_index
from esdt_onnx import model_folder

QUERIES = ("black hole gravity", "vaccines immune system", "plants sunlight glucose", "ocean tides moon")


def _bm25_before(es, name):
    return {q: team_bm25(es, name, q) for q in QUERIES}


def _assert_team_view_intact(es, name, before, docs):
    # the team's own query, by the name they always used, returns the same hits
    for q, hits in before.items():
        assert team_bm25(es, name, q) == hits, q
    mapping = physical_mapping(es, name)
    # their _meta keys are as they were; esdistill's metadata is under one key of its own
    assert {k: v for k, v in mapping["_meta"].items() if k != "esdistill"} == TEAM_META
    assert mapping["_meta"]["esdistill"]["text_fields"] == ["title", "body"]
    # their fields and analyzers are as they were
    props = mapping["properties"]
    assert props["title"] == props["body"] == {"type": "text", "analyzer": "team_text"}
    assert props["category"] == {"type": "keyword"} and props["views"] == {"type": "integer"}
    settings = physical_settings(es, name)
    assert settings["analysis"]["analyzer"]["team_text"] == {"type": "custom", "tokenizer": "standard",
                                                             "filter": ["lowercase"]}
    assert settings["number_of_shards"] == "2"
    # every document kept every field of its own
    got = {h["_id"]: h["_source"] for h in es.search(index=name, size=100)["hits"]["hits"]}
    assert len(got) == len(docs)
    for d in docs:
        assert {k: got[d["_id"]][k] for k in ("title", "body", "category", "views")} == \
            {k: d[k] for k in ("title", "body", "category", "views")}


def _assert_vectors_work(es, name, encoder, docs):
    vectors = stored_vectors(es, name)
    assert set(vectors) == {d["_id"] for d in docs}
    # each document's vector is its own text's: cosine ~1 to an embedding made on the spot
    for d in docs[:6]:
        assert float(np.dot(vectors[d["_id"]], own_vector(encoder, d))) > 0.97
    # kNN filtered on the team's keyword field returns only that category
    hook = QueryHook(es, name, encoder)
    resp = hook.search("energy of the cell", k=5, mode="knn", filters={"term": {"category": "bio"}})
    assert resp.hits and all(h.source["category"] == "bio" for h in resp.hits)
    assert len(resp.hits) == 5
    # a document's own text finds it
    target = docs[4]
    top = knn_ids(es, name, own_vector(encoder, target), k=1)
    assert top[0][0] == target["_id"]


def test_adopt_in_place_keeps_everything_of_the_team(es_client, index_prefix, encoder_a):
    name = index_prefix
    docs = make_team_index(es_client, name)
    before = _bm25_before(es_client, name)
    result = IndexManager(es_client, name).adopt(encoder_a, text_fields=("title", "body"), mode="in-place",
                                                 progress=False)
    assert result.mode == "in-place" and result.index == name
    assert result.backfill.embedded == result.backfill.missing == len(docs) and result.backfill.stale == 0
    assert es_client.indices.exists(index=name) and not es_client.indices.exists_alias(name=name)
    es_client.indices.forcemerge(index=name, max_num_segments=1)  # BM25 statistics without the updated copies
    es_client.indices.refresh(index=name)
    _assert_team_view_intact(es_client, name, before, docs)
    _assert_vectors_work(es_client, name, encoder_a, docs)
    mapping = physical_mapping(es_client, name)
    assert mapping["properties"]["embedding"]["dims"] == encoder_a.manifest.dims
    assert mapping["properties"]["content_hash"] == {"type": "keyword"}
    # the index says which model made its vectors, and refuses another
    mgr = IndexManager(es_client, name)
    assert mgr.check_model(encoder_a.manifest).vector_field == "embedding"
    info = mgr.info(vectors=True)
    assert (info.vectors["missing_vectors"], info.vectors["stale_vectors"]) == (0, 0)
    # running it again is harmless: nothing is embedded twice
    again = mgr.adopt(encoder_a, text_fields=("title", "body"), mode="in-place", progress=False)
    assert again.backfill.embedded == 0 and again.backfill.current == len(docs)


def test_adopt_in_place_refuses_another_model_and_other_fields(es_client, index_prefix, encoder_a, encoder_b):
    name = index_prefix
    make_team_index(es_client, name)
    mgr = IndexManager(es_client, name)
    with pytest.raises(ConfigError, match="not in the mapping") as err:
        mgr.adopt(encoder_a, text_fields=("title", "text"), progress=False)
    assert "body" in str(err.value)  # names the text fields it does have
    with pytest.raises(ConfigError, match="not as text"):
        mgr.adopt(encoder_a, text_fields=("title", "views"), progress=False)
    with pytest.raises(ConfigError, match="field.*category"):
        mgr.adopt(encoder_a, text_fields=("title", "body"), vector_field="category", progress=False)
    with pytest.raises(ConfigError, match="mode"):
        mgr.adopt(encoder_a, text_fields=("title", "body"), mode="sideways", progress=False)
    assert "embedding" not in physical_mapping(es_client, name)["properties"]  # nothing was changed
    mgr.adopt(encoder_a, text_fields=("title", "body"), progress=False)
    with pytest.raises(FingerprintError, match="index reindex"):
        mgr.adopt(encoder_b, text_fields=("title", "body"), progress=False)
    with pytest.raises(ConfigError, match="adopted with"):
        mgr.adopt(encoder_a, text_fields=("body",), progress=False)
    with pytest.raises(ConfigError, match="no index or alias"):
        IndexManager(es_client, f"{name}-missing").adopt(encoder_a, text_fields=("title",), progress=False)


def test_adopt_by_copy_replaces_the_index_with_an_alias_of_the_same_name(es_client, index_prefix, encoder_a):
    name = index_prefix
    docs = make_team_index(es_client, name)
    before = _bm25_before(es_client, name)
    mgr = IndexManager(es_client, name)
    result = mgr.adopt(encoder_a, text_fields=("title", "body"), mode="copy", progress=False)
    copy = result.copy
    assert copy.new_index == f"{name}-000001" and copy.rollback_index == f"{name}-000000"
    assert copy.summary.indexed == copy.summary.verified == copy.docs == len(docs) and copy.summary.failed == 0
    # the name is an alias now, to the new version; the old data is kept as it was
    assert sorted(es_client.indices.get_alias(name=name)) == [copy.new_index]
    assert mgr.count(copy.rollback_index) == len(docs)
    assert "embedding" not in physical_mapping(es_client, copy.rollback_index)["properties"]
    assert physical_mapping(es_client, copy.rollback_index)["_meta"] == TEAM_META
    # the old index is not write-blocked any more (the clone carries no block)
    assert physical_settings(es_client, copy.rollback_index).get("blocks", {}).get("write") in (None, "false")
    _assert_team_view_intact(es_client, name, before, docs)
    _assert_vectors_work(es_client, name, encoder_a, docs)
    # the team's writers keep writing through the name
    es_client.index(index=name, id="team-new", document={"title": "Tea", "body": "green tea", "category": "bio"},
                    refresh=True)
    assert es_client.get(index=copy.new_index, id="team-new")["found"]
    # rollback goes back to the team's original, prune deletes it
    info = mgr.info()
    assert [v.esdistill for v in info.versions] == [False, True]
    assert mgr.rollback() == (copy.new_index, copy.rollback_index)
    assert team_bm25(es_client, name, QUERIES[0]) == before[QUERIES[0]]
    with pytest.raises(ConfigError, match="not created by esdistill"):
        mgr.check_model(encoder_a.manifest)
    rolled = mgr.info(vectors=True)  # the versions are still listed; no vectors to count on the original
    assert rolled.current == copy.rollback_index and rolled.vectors is None and len(rolled.versions) == 2
    mgr.rollback(to=copy.new_index)
    assert mgr.prune(keep=0) == [copy.rollback_index]


def test_adopt_by_copy_of_an_alias_keeps_the_teams_index(es_client, index_prefix, encoder_a):
    """A team that already reads through an alias: the alias moves, their index stays untouched."""
    physical = f"{index_prefix}-v7"
    docs = make_team_index(es_client, physical)
    es_client.indices.update_aliases(actions=[{"add": {"index": physical, "alias": index_prefix}}])
    mgr = IndexManager(es_client, index_prefix)
    result = mgr.adopt(encoder_a, text_fields=("title", "body"), mode="copy", progress=False)
    assert result.copy.rollback_index == physical and result.copy.old_index == physical
    assert sorted(es_client.indices.get_alias(name=index_prefix)) == [f"{index_prefix}-000001"]
    assert mgr.count(physical) == len(docs)
    assert physical_settings(es_client, physical).get("blocks", {}).get("write") in (None, "false")
    assert mgr.rollback() == (f"{index_prefix}-000001", physical)


def test_adopt_copy_refuses_an_index_that_filters_its_source(es_client, index_prefix, encoder_a):
    es_client.indices.create(index=index_prefix, mappings={"_source": {"excludes": ["secret"]},
                                                           "properties": {"title": {"type": "text"}}})
    es_client.index(index=index_prefix, id="1", document={"title": "a", "secret": "b"}, refresh=True)
    mgr = IndexManager(es_client, index_prefix)
    for mode in ("copy", "in-place"):
        with pytest.raises(ConfigError, match="_source"):
            mgr.adopt(encoder_a, text_fields=("title",), mode=mode, progress=False)
    assert not es_client.indices.exists(index=f"{index_prefix}-000001")


def test_cli_adopt_info_sync(es_client, es_url, index_prefix, encoder_a, monkeypatch, capsys):
    from esdistill.plugin.cli import main

    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    docs = make_team_index(es_client, index_prefix)
    model = str(model_folder(encoder_a))
    assert main(["index", "info", index_prefix]) == 2
    assert "index adopt" in capsys.readouterr().err  # the refusal says what to run
    with pytest.raises(SystemExit):  # --in-place or --copy is required
        main(["index", "adopt", index_prefix, "--model", model, "--text-fields", "title,body"])
    assert "--in-place --copy is required" in capsys.readouterr().err
    assert main(["index", "adopt", index_prefix, "--model", model, "--text-fields", "title,body", "--in-place",
                 "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "in-place" and out["backfill"]["embedded"] == len(docs)
    es_client.index(index=index_prefix, id="x1", document={"title": "Ice", "body": "glaciers melt", "category": "geo"},
                    refresh=True)
    assert main(["index", "info", index_prefix, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["missing_vectors"] == 1 and info["stale_vectors"] == 0 and info["vectors"]["counts"] == "exact"
    assert main(["index", "info", index_prefix]) == 0
    assert "1 missing" in capsys.readouterr().out
    assert main(["sync", "--index", index_prefix, "--model", model, "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedded"] == 1 and summary["missing"] == 1 and summary["checked"] == len(docs) + 1
    assert main(["sync", "--index", index_prefix, "--model", model, "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == 0


def test_sync_of_an_esdistill_index_made_by_ingest_embeds_nothing(es_client, index_prefix, encoder_a):
    """Documents ingested by esdistill carry the whole-document content hash: sync accepts it."""
    from esdistill.plugin.ingest import IngestHook
    from esdt_helpers import TINY_COLLECTION

    IndexManager(es_client, index_prefix).create(encoder_a.manifest)
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest_jsonl(TINY_COLLECTION / "corpus.jsonl")
    summary = sync_index(es_client, index_prefix, encoder_a, progress=False)
    assert (summary.checked, summary.current, summary.embedded) == (24, 24, 0)
