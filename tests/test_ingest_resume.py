"""Resuming never drops a document when the input changed, and duplicate ids are reported, against a
real Elasticsearch node.

The scenario of the report: an ingest is killed, 50 lines are inserted in the part it had finished
(after the first 64 kB, which an earlier check hashed), and the re-run must index every document
(the new ones too) with no false "malformed JSON" at the old seek point. Also: an edit in the
finished part, lines appended after it, a changed list, a changed generator or stream (refused
before anything is written, since they cannot be read twice), and ids that collide (``12345`` and
``"12345"``).
"""

from __future__ import annotations

import io
import json
import logging
import random
from pathlib import Path

import pytest
from esdistill.plugin import ConfigError, IngestError
from esdistill.plugin.index import IndexManager
from esdistill.plugin.ingest import IngestHook
from esdt_onnx import make_encoder

_WORDS = ("tide", "moon", "cell", "energy", "protein", "ocean", "neuron", "carbon", "forest", "glucose", "light")


@pytest.fixture(scope="module")
def encoder(tiny_bi_encoder, tmp_path_factory):
    return make_encoder(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "esdt-onnx", "a")


@pytest.fixture
def index(es_client, index_prefix, encoder):
    IndexManager(es_client, index_prefix).create(encoder.manifest)
    return index_prefix


class Crashing:
    """A real encoder that records what it embeds and raises on call ``fail_on_call`` (a killed run)."""

    def __init__(self, encoder, *, fail_on_call: int | None = None) -> None:
        self.inner, self.manifest = encoder, encoder.manifest
        self.calls = 0
        self.texts: list[str] = []
        self.fail_on_call = fail_on_call

    def encode_with_info(self, texts, **kw):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated kill of the ingesting process")
        self.texts.extend(texts)
        return self.inner.encode_with_info(texts, **kw)


def _docs(n: int, *, prefix: str = "d", seed: int = 3) -> list[dict]:
    """Documents whose lines differ in length, so that a stale offset lands inside a line."""
    rng = random.Random(seed)
    return [{"_id": f"{prefix}{i:05d}", "title": f"{prefix} {i}",
             "text": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 30)))} for i in range(n)]


def _write(path: Path, docs: list[dict]) -> Path:
    path.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in docs))
    return path


def _stored_ids(es_client, index: str) -> set[str]:
    es_client.indices.refresh(index=index)
    hits = es_client.search(index=index, size=5000, source=False, query={"match_all": {}})["hits"]["hits"]
    return {h["_id"] for h in hits}


def _text(doc: dict) -> str:
    return f"{doc['title']} {doc['text']}"


def _crash(es_client, index, encoder, src, *, ckpt, dead, batch_size, fail_on_call) -> int:
    crashing = Crashing(encoder, fail_on_call=fail_on_call)
    hook = IngestHook(es_client, index, crashing, batch_size=batch_size, checkpoint=ckpt, dead_letter=dead,
                      progress=False)
    with pytest.raises(IngestError, match="resume"):
        hook.ingest_jsonl(src)
    return json.loads(ckpt.read_text())["offset"]


def test_lines_inserted_in_the_finished_part_are_all_indexed_after_a_kill(es_client, index, encoder, tmp_path):
    docs = _docs(1200)
    src = _write(tmp_path / "corpus.jsonl", docs)
    ckpt, dead = tmp_path / "ckpt.json", tmp_path / "dead.jsonl"
    offset = _crash(es_client, index, encoder, src, ckpt=ckpt, dead=dead, batch_size=100, fail_on_call=9)
    assert json.loads(ckpt.read_text())["position"] == 800

    at = 600  # insert 50 documents at line 601: after the first 64 kB, before the checkpoint's offset
    inserted = _docs(50, prefix="new", seed=9)
    changed = docs[:at] + inserted + docs[at:]
    head = sum(len(json.dumps(d)) + 1 for d in docs[:at])
    assert 65_536 < head < offset
    _write(src, changed)

    again = Crashing(encoder)
    summary = IngestHook(es_client, index, again, batch_size=100, checkpoint=ckpt, dead_letter=dead,
                         progress=False).ingest_jsonl(src)
    assert summary.complete and summary.failed == 0 and summary.resumed == 0  # started over
    assert dead.read_text() == ""  # no false "malformed JSON" at the old seek point
    assert _stored_ids(es_client, index) == {d["_id"] for d in changed}  # 1,250 of 1,250
    # only what was not indexed yet was embedded: the 50 new documents and the last 400
    assert sorted(again.texts) == sorted(_text(d) for d in inserted + docs[800:])
    assert (summary.read, summary.indexed, summary.unchanged) == (1250, 450, 800)
    assert not ckpt.exists()


def test_a_checkpoint_is_not_resumed_into_an_index_that_was_created_again(es_client, index, encoder, tmp_path):
    """The index was deleted and created again after the kill: the documents the checkpoint says
    are done are not in it, so the re-run starts over instead of skipping them."""
    docs = _docs(600)
    src = _write(tmp_path / "corpus.jsonl", docs)
    ckpt = tmp_path / "ckpt.json"
    _crash(es_client, index, encoder, src, ckpt=ckpt, dead=None, batch_size=100, fail_on_call=4)
    assert json.loads(ckpt.read_text())["position"] == 300
    es_client.indices.delete(index=f"{index}-*")  # the alias goes with its index
    IndexManager(es_client, index).create(encoder.manifest)
    summary = IngestHook(es_client, index, encoder, batch_size=100, checkpoint=ckpt, progress=False).ingest_jsonl(src)
    assert summary.complete and summary.resumed == 0 and summary.indexed == 600
    assert _stored_ids(es_client, index) == {d["_id"] for d in docs}


def test_an_edit_in_the_finished_part_is_embedded_after_a_kill(es_client, index, encoder, tmp_path):
    docs = _docs(900)
    src = _write(tmp_path / "corpus.jsonl", docs)
    ckpt = tmp_path / "ckpt.json"
    offset = _crash(es_client, index, encoder, src, ckpt=ckpt, dead=None, batch_size=100, fail_on_call=7)
    assert 65_536 < sum(len(json.dumps(d)) + 1 for d in docs[:500]) < offset
    edited = [dict(d) for d in docs]
    edited[500]["text"] = edited[500]["text"][::-1]  # the same length, past the first 64 kB: only a hash tells
    _write(src, edited)
    again = Crashing(encoder)
    summary = IngestHook(es_client, index, again, batch_size=100, checkpoint=ckpt, progress=False).ingest_jsonl(src)
    assert summary.complete and summary.resumed == 0
    assert sorted(again.texts) == sorted([_text(edited[500])] + [_text(d) for d in docs[600:]])
    assert es_client.get(index=index, id=docs[500]["_id"])["_source"]["text"] == edited[500]["text"]


def test_lines_appended_after_the_finished_part_resume_where_it_stopped(es_client, index, encoder, tmp_path):
    docs = _docs(300)
    src = _write(tmp_path / "corpus.jsonl", docs)
    ckpt = tmp_path / "ckpt.json"
    _crash(es_client, index, encoder, src, ckpt=ckpt, dead=None, batch_size=50, fail_on_call=4)
    more = _docs(20, prefix="more", seed=5)
    _write(src, docs + more)
    again = Crashing(encoder)
    summary = IngestHook(es_client, index, again, batch_size=50, checkpoint=ckpt, progress=False).ingest_jsonl(src)
    assert summary.complete and summary.resumed == 150 and summary.read == 170
    assert sorted(again.texts) == sorted(_text(d) for d in docs[150:] + more)
    assert _stored_ids(es_client, index) == {d["_id"] for d in docs + more}


def test_a_changed_list_starts_again_and_a_changed_stream_or_generator_is_refused(es_client, index, encoder,
                                                                                    tmp_path):
    docs = _docs(120)
    ckpt = tmp_path / "ckpt.json"
    hook = IngestHook(es_client, index, Crashing(encoder, fail_on_call=3), batch_size=20, checkpoint=ckpt,
                      progress=False)
    with pytest.raises(IngestError):
        hook.ingest(docs, source="list")
    assert json.loads(ckpt.read_text())["position"] == 40
    changed = docs[:5] + _docs(3, prefix="x") + docs[5:]

    # a generator or a stream cannot be read twice: refused, nothing written
    before = _stored_ids(es_client, index)
    with pytest.raises(ConfigError, match="not the one checkpoint"):
        IngestHook(es_client, index, encoder, checkpoint=ckpt, progress=False).ingest(iter(changed), source="list")
    assert _stored_ids(es_client, index) == before
    # a list is read again from the beginning
    summary = IngestHook(es_client, index, encoder, batch_size=20, checkpoint=ckpt,
                         progress=False).ingest(changed, source="list")
    assert summary.complete and summary.resumed == 0 and summary.indexed == 83 and summary.unchanged == 40
    assert _stored_ids(es_client, index) == {d["_id"] for d in changed}

    # stdin: the same stream resumes, another one is refused before anything is written
    data = b"".join(json.dumps(d).encode() + b"\n" for d in _docs(100, prefix="s", seed=11))  # not indexed yet
    stream_ckpt = tmp_path / "stream.json"
    hook = IngestHook(es_client, index, Crashing(encoder, fail_on_call=2), batch_size=20, checkpoint=stream_ckpt,
                      progress=False)
    with pytest.raises(IngestError):
        hook.ingest_stream(io.BytesIO(data), source="stdin")
    assert json.loads(stream_ckpt.read_text())["position"] == 20
    other = data.replace(b'"s00003"', b'"z00003"')
    with pytest.raises(ConfigError, match="first 20 records differ"):
        IngestHook(es_client, index, encoder, checkpoint=stream_ckpt,
                   progress=False).ingest_stream(io.BytesIO(other), source="stdin")
    assert "z00003" not in _stored_ids(es_client, index)
    resumed = IngestHook(es_client, index, encoder, checkpoint=stream_ckpt,
                         progress=False).ingest_stream(io.BytesIO(data), source="stdin")
    assert resumed.complete and resumed.resumed == 20 and resumed.read == 80


def test_duplicate_ids_are_counted_and_reported(es_client, index, encoder, tmp_path, caplog):
    lines = [
        {"_id": 12345, "title": "first", "text": "the integer id"},
        {"_id": "a", "title": "a", "text": "tides and the moon"},
        {"_id": "12345", "title": "second", "text": "the string id"},  # the same Elasticsearch id
        {"_id": "b", "title": "b", "text": "cells make energy"},
        {"_id": "a", "title": "a", "text": "tides and the moon"},  # the same line again
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in lines))
    with caplog.at_level(logging.WARNING, logger="esdistill.plugin.ingest"):
        summary = IngestHook(es_client, index, encoder, batch_size=2, progress=False).ingest_jsonl(src)
    assert summary.complete and summary.duplicates == 2
    assert summary.duplicate_examples == ["line 3: id '12345'", "line 5: id 'a'"]
    assert "2 record(s) reused the id of an earlier record" in summary.format()
    assert summary.to_dict()["duplicates"] == 2
    warned = [r.getMessage() for r in caplog.records if "already used" in r.getMessage()]
    assert len(warned) == 2 and warned[0].startswith("line 3: id '12345'")
    assert _stored_ids(es_client, index) == {"12345", "a", "b"}
    assert es_client.get(index=index, id="12345")["_source"]["title"] == "second"  # the later record wins
    clean = IngestHook(es_client, index, encoder, progress=False).ingest(lines[1:2] + lines[3:4])
    assert clean.duplicates == 0 and "reused" not in clean.format()


def test_an_id_indexed_again_after_its_delete_is_not_a_duplicate(es_client, index, encoder, tmp_path):
    src = tmp_path / "ops.jsonl"
    ops = [{"_id": "c", "title": "c", "text": "carbon in the soil"}, {"_id": "c", "_op": "delete"},
           {"_id": "c", "title": "c", "text": "carbon in the forest"}, {"_id": "c", "title": "c", "text": "again"}]
    src.write_text("".join(json.dumps(d) + "\n" for d in ops))
    summary = IngestHook(es_client, index, encoder, progress=False).ingest_jsonl(src)
    assert summary.complete and summary.deleted == 1
    assert summary.duplicates == 1 and summary.duplicate_examples == ["line 4: id 'c'"]  # only the last one
    assert es_client.get(index=index, id="c")["_source"]["text"] == "again"
