"""Blue/green copies lose no write, against the real node: updates, new documents and deletes made
through the index's name while ``index reindex`` or ``index adopt --copy`` runs are all there
afterwards (the old reindex compared counts only: 20 partial updates made during it were lost),
and a document that cannot be carried over stops the swap with the reason."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from adopt_helpers import MixedWriter, Writer, bodies, make_team_index, own_vector, stored_vectors
from esdistill.plugin import IndexManager, IngestError
from esdistill.plugin.ingest import IngestHook
from esdistill.plugin.sync import sync_index, vector_health
from esdt_helpers import TINY_COLLECTION

CORPUS = TINY_COLLECTION / "corpus.jsonl"
N_UPDATES = 20


class HoldsFirstBatch:
    """Wraps a real encoder: at its first call it lets the writer go and waits until the writer is
    done, so every write lands while the copy is under way (after its point-in-time was opened)."""

    def __init__(self, encoder, writer: Writer, go: threading.Event) -> None:
        self.inner, self.manifest, self.writer, self.go = encoder, encoder.manifest, writer, go

    def encode_with_info(self, texts, **kw):
        if not self.go.is_set():
            self.go.set()
            assert self.writer.done.wait(120), "the writer did not finish"
        return self.inner.encode_with_info(texts, **kw)


class Slow:
    """Wraps a real encoder and sleeps on every call, so that a copy lasts a few seconds."""

    def __init__(self, encoder, delay: float) -> None:
        self.inner, self.manifest, self.delay, self.calls = encoder, encoder.manifest, delay, 0

    def encode_with_info(self, texts, **kw):
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.encode_with_info(texts, **kw)


def _corpus():
    return [json.loads(line) for line in CORPUS.read_text().splitlines()]


def test_updates_during_reindex_are_all_visible_afterwards(es_client, index_prefix, encoder_a, encoder_b):
    mgr = IndexManager(es_client, index_prefix)
    mgr.create(encoder_a.manifest)
    docs = _corpus()
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(docs)
    ids = [d["_id"] for d in docs[:N_UPDATES]]
    go = threading.Event()
    writer = Writer(es_client, index_prefix, ids, start=go, field="text")
    writer.start()
    result = mgr.reindex(HoldsFirstBatch(encoder_b, writer, go), batch_size=4, progress=False)
    writer.join(30)
    assert writer.error is None and len(writer.written) == N_UPDATES
    # every update went into the old index while the copy ran, and every one is visible now
    for doc_id, text in writer.written.items():
        assert es_client.get(index=index_prefix, id=doc_id)["_source"]["text"] == text, doc_id
    assert result.summary.caught_up >= N_UPDATES and result.docs == len(docs)
    # and their vectors were made from the new text, by the new model
    health = vector_health(es_client, index_prefix)
    assert (health.missing_vectors, health.stale_vectors) == (0, 0)
    vectors = stored_vectors(es_client, index_prefix)
    updated = {"title": docs[0]["title"], "body": writer.written[ids[0]]}
    assert float(np.dot(vectors[ids[0]], own_vector(encoder_b, updated))) > 0.99


def test_updates_during_adopt_copy_are_all_visible_afterwards(es_client, index_prefix, encoder_a):
    docs = make_team_index(es_client, index_prefix)
    ids = [d["_id"] for d in docs[:N_UPDATES]]
    go = threading.Event()
    writer = Writer(es_client, index_prefix, ids, start=go)
    writer.start()
    result = IndexManager(es_client, index_prefix).adopt(HoldsFirstBatch(encoder_a, writer, go),
                                                         text_fields=("title", "body"), mode="copy", batch_size=4,
                                                         progress=False)
    writer.join(30)
    assert writer.error is None and len(writer.written) == N_UPDATES
    assert result.copy.new_index == f"{index_prefix}-000001"
    got = bodies(es_client, index_prefix)
    for doc_id, text in writer.written.items():
        assert got[doc_id] == text, doc_id
    health = vector_health(es_client, index_prefix)
    assert (health.missing_vectors, health.stale_vectors) == (0, 0)


@pytest.mark.parametrize("how", ["adopt-copy", "reindex"])
def test_new_documents_updates_and_deletes_during_a_copy_are_all_carried_over(es_client, index_prefix, encoder_a,
                                                                              encoder_b, how):
    """A writer that never stops (creates, partial updates, deletes; it retries the 403 of the write
    block like any writer would): afterwards the index holds exactly what the writer left."""
    docs = make_team_index(es_client, index_prefix)
    mgr = IndexManager(es_client, index_prefix)
    if how == "reindex":
        mgr.adopt(encoder_a, text_fields=("title", "body"), mode="copy", progress=False)
    writer = MixedWriter(es_client, index_prefix, docs)
    writer.start()
    try:
        time.sleep(0.3)
        if how == "reindex":
            result = mgr.reindex(Slow(encoder_b, 0.2), batch_size=3, progress=False)
        else:
            result = mgr.adopt(Slow(encoder_a, 0.2), text_fields=("title", "body"), mode="copy", batch_size=3,
                               progress=False).copy
        time.sleep(0.3)
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None
    assert writer.ops["create"] > 3 and writer.ops["update"] > 3 and writer.ops["delete"] > 1, writer.ops
    assert sorted(es_client.indices.get_alias(name=index_prefix)) == [result.new_index]
    # nothing lost, nothing left over, nothing duplicated
    assert bodies(es_client, index_prefix) == writer.expected
    assert mgr.count() == len(writer.expected)
    assert result.summary.failed == 0 and result.summary.verified > 0
    # writes after the swap went into the new index without vectors (plain writers): sync fixes them
    sync_index(es_client, index_prefix, encoder_b if how == "reindex" else encoder_a, progress=False)
    health = vector_health(es_client, index_prefix)
    assert (health.missing_vectors, health.stale_vectors) == (0, 0)


def test_a_catch_up_round_reads_only_up_to_its_own_watermark(es_client, index_prefix, encoder_a):
    """A writer faster than the copy must not keep one catch-up round reading its newest writes
    forever (a round once chased such a writer until CI timed out): a round stops at the marks it
    took when it started; later writes belong to the next round."""
    from esdistill.plugin._bulk import RetryPolicy
    from esdistill.plugin._copy import Copier

    make_team_index(es_client, index_prefix)
    mgr = IndexManager(es_client, index_prefix)
    physical = mgr.adopt(encoder_a, text_fields=("title", "body"), mode="copy", progress=False).copy.new_index
    copier = Copier(es_client, source=physical, target=f"{index_prefix}-unused", encoder=encoder_a,
                    meta=mgr.meta(physical), source_vector_field=None, policy=RetryPolicy(), batch_size=3,
                    page_size=2, progress=False)
    start = copier.watermarks()
    for i in range(3):
        es_client.index(index=index_prefix, id=f"before-{i}", document={"title": "t", "body": f"round one {i}"})
    upto = copier.watermarks()
    for i in range(4):
        es_client.index(index=index_prefix, id=f"after-{i}", document={"title": "t", "body": f"round two {i}"})
    copier.refresh(physical)
    this_round = [h["_id"] for h in copier.changed_since(start, upto=upto)]
    assert sorted(this_round) == [f"before-{i}" for i in range(3)]
    assert sorted(h["_id"] for h in copier.changed_since(upto)) == [f"after-{i}" for i in range(4)]
    assert len(list(copier.changed_since(start))) == 7


class PlantsANewerVersion:
    """Wraps a real encoder: at its first call, writes a document straight into the new index with
    a version the source never had (someone writing into a half-built index)."""

    def __init__(self, encoder, client, target: str, doc_id: str) -> None:
        self.inner, self.manifest, self.client, self.target, self.doc_id = encoder, encoder.manifest, client, target, doc_id
        self.done = False

    def encode_with_info(self, texts, **kw):
        if not self.done:
            self.done = True
            self.client.index(index=self.target, id=self.doc_id, document={"title": "rogue", "body": "rogue"},
                              version=99, version_type="external")
        return self.inner.encode_with_info(texts, **kw)


def test_a_document_that_cannot_be_carried_over_stops_the_swap(es_client, index_prefix, encoder_a):
    docs = make_team_index(es_client, index_prefix)
    mgr = IndexManager(es_client, index_prefix)
    target = f"{index_prefix}-000001"
    victim = docs[-1]["_id"]
    with pytest.raises(IngestError, match="could not be carried over") as err:
        mgr.adopt(PlantsANewerVersion(encoder_a, es_client, target, victim), text_fields=("title", "body"),
                  mode="copy", batch_size=4, progress=False)
    message = str(err.value)
    assert victim in message and "newer version" in message and "did not move" in message
    # the name is still the team's concrete index, writable, untouched
    assert es_client.indices.exists(index=index_prefix) and not es_client.indices.exists_alias(name=index_prefix)
    es_client.index(index=index_prefix, id="after", document={"title": "t", "body": "b"}, refresh=True)
    assert err.value.summary.failed == 1
    # as the message says: delete the half-built index and run again
    es_client.indices.delete(index=target)
    result = mgr.adopt(encoder_a, text_fields=("title", "body"), mode="copy", progress=False)
    assert result.copy.docs == len(docs) + 1 and result.copy.new_index == target


def _blocked(es_client, index) -> bool:
    settings = es_client.indices.get_settings(index=index)[index]["settings"]["index"]
    return settings.get("blocks", {}).get("write") == "true"


def test_a_run_killed_while_the_source_was_write_blocked_is_repaired_by_the_next(es_client, index_prefix, encoder_a,
                                                                                 monkeypatch):
    """A kill -9 runs no cleanup: simulate one right after the write block (nothing lifts it), then
    run again: the block is lifted first, the copy resumes and swaps."""
    import esdistill.plugin._bluegreen as bg

    docs = make_team_index(es_client, index_prefix)
    mgr = IndexManager(es_client, index_prefix)

    class Killed(BaseException):
        pass

    def die(*args, **kwargs):
        raise Killed()

    with monkeypatch.context() as m:
        m.setattr(bg, "unblock_writes", lambda *a, **k: None)  # the killed process lifts nothing
        m.setattr(bg, "swap_in", die)
        with pytest.raises(Killed):
            mgr.adopt(encoder_a, text_fields=("title", "body"), mode="copy", progress=False)
    target = f"{index_prefix}-000001"
    assert _blocked(es_client, index_prefix)  # the team cannot write: what the next run must undo
    assert mgr.meta(target).write_blocked == index_prefix and mgr.meta(target).building
    result = mgr.adopt(encoder_a, text_fields=("title", "body"), mode="copy", progress=False)
    assert result.copy.new_index == target and result.copy.summary.unchanged == len(docs)
    assert result.copy.summary.indexed == 0  # nothing embedded twice
    assert not _blocked(es_client, result.copy.rollback_index)
    meta = mgr.meta(target)
    assert not meta.building and meta.write_blocked is None
    es_client.index(index=index_prefix, id="after", document={"title": "t", "body": "b"}, refresh=True)


def test_a_run_killed_after_the_swap_is_repaired_by_the_next_command(es_client, index_prefix, encoder_a, encoder_b):
    """Killed between the alias move and the last bookkeeping: the old version is still blocked and
    the new one still marked building; rollback (or any copy) repairs both first."""
    mgr = IndexManager(es_client, index_prefix)
    first = mgr.create(encoder_a.manifest)
    IngestHook(es_client, index_prefix, encoder_a, progress=False).ingest(_corpus())
    second = mgr.reindex(encoder_b, progress=False).new_index
    es_client.indices.add_block(index=first, block="write")
    mgr.update_meta(second, building=True, write_blocked=first)
    assert mgr.rollback() == (second, first)
    assert not _blocked(es_client, first) and not mgr.meta(second).building
    es_client.index(index=index_prefix, id="after", document={"title": "t", "text": "b"}, refresh=True)
