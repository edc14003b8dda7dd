"""The ingestion hook against a real Elasticsearch: documents, stable ids, unchanged documents,
dead-letter, truncation, crash and resume, retries on 429 / dropped connections / per-item 429,
overlap of embedding and bulk I/O, the model check, and ``esdistill ingest`` (documents alone:
tests/unit/test_documents.py)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from esdistill.plugin import ConfigError, FingerprintError, IngestError, connect
from esdistill.plugin._bulk import RetryPolicy
from esdistill.plugin.documents import DocumentSpec, prepare
from esdistill.plugin.index import IndexManager, IndexSpec
from esdistill.plugin.ingest import IngestHook
from esdt_helpers import TINY_COLLECTION
from esdt_onnx import model_folder
from esdt_proxy import FlakyProxy

CORPUS = TINY_COLLECTION / "corpus.jsonl"
DOCS = [json.loads(line) for line in CORPUS.read_text().splitlines()]
FAST_RETRY = RetryPolicy(initial_delay=0.02, max_delay=0.1, give_up_after=30)


@pytest.fixture
def index(es_client, index_prefix, encoder_a):
    IndexManager(es_client, index_prefix).create(encoder_a.manifest,
                                                 IndexSpec(extra_properties={"year": {"type": "integer"}}))
    return index_prefix


class Counting:
    """Wraps a real encoder: counts the texts it embeds, records when each call starts, and can
    raise on a given call (a crash in the middle of a run)."""

    def __init__(self, encoder, *, fail_on_call: int | None = None):
        self.inner, self.manifest = encoder, encoder.manifest
        self.texts: list[str] = []
        self.starts: list[float] = []
        self.fail_on_call = fail_on_call

    def encode_with_info(self, texts, **kw):
        self.starts.append(time.monotonic())
        if self.fail_on_call is not None and len(self.starts) == self.fail_on_call:
            raise RuntimeError("simulated crash of the embedding process")
        self.texts.extend(texts)
        return self.inner.encode_with_info(texts, **kw)


def _count(es_client, index: str) -> int:
    es_client.indices.refresh(index=index)
    return int(es_client.count(index=index)["count"])


def _write_jsonl(path: Path, lines: list) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode())
            f.write(b"\n")
    return path


# ---------------------------------------------------------------------- ingest into a real node
def test_ingest_corpus_then_running_again_embeds_nothing(es_client, index, encoder_a):
    counting = Counting(encoder_a)
    first = IngestHook(es_client, index, counting, batch_size=10, progress=False).ingest_jsonl(CORPUS)
    assert (first.read, first.indexed, first.unchanged, first.failed) == (24, 24, 0, 0)
    assert first.complete and first.docs_per_s > 0 and len(counting.texts) == 24
    assert _count(es_client, index) == 24
    # what is stored: the source fields, the content hash, the model, and the encoder's vector
    doc = DOCS[3]
    stored = es_client.get(index=index, id=doc["_id"])["_source"]
    assert stored["title"] == doc["title"] and stored["model_fingerprint"] == encoder_a.manifest.fingerprint
    assert stored["content_hash"] == prepare(doc, DocumentSpec()).content_hash
    vec = encoder_a.encode_with_info([f"{doc['title']} {doc['text']}"]).embeddings[0]
    hit = es_client.search(index=index, knn={"field": "embedding", "query_vector": vec.tolist(), "k": 1,
                                             "num_candidates": 30}, source=False)["hits"]["hits"][0]
    assert hit["_id"] == doc["_id"] and hit["_score"] > 0.99

    counting2 = Counting(encoder_a)
    second = IngestHook(es_client, index, counting2, progress=False).ingest_jsonl(CORPUS)
    assert (second.read, second.indexed, second.unchanged, second.failed) == (24, 0, 24, 0)
    assert counting2.texts == []  # nothing re-embedded
    assert _count(es_client, index) == 24


def test_only_changed_documents_are_reembedded(es_client, index, encoder_a):
    IngestHook(es_client, index, encoder_a, progress=False).ingest(DOCS)
    changed = [dict(d) for d in DOCS]
    changed[5]["text"] = "A completely rewritten abstract about tidal energy."
    counting = Counting(encoder_a)
    summary = IngestHook(es_client, index, counting, progress=False).ingest(changed)
    assert (summary.indexed, summary.unchanged) == (1, 23)
    assert counting.texts == [f"{changed[5]['title']} {changed[5]['text']}"]
    assert es_client.get(index=index, id=changed[5]["_id"])["_source"]["text"].startswith("A completely")
    assert _count(es_client, index) == 24


def test_content_hash_ids_never_duplicate(es_client, index, encoder_a):
    docs = [{"title": d["title"], "text": d["text"]} for d in DOCS[:6]]
    docs.append(dict(docs[0]))  # an exact duplicate collapses into the same document
    s1 = IngestHook(es_client, index, encoder_a, progress=False).ingest(docs)
    s2 = IngestHook(es_client, index, encoder_a, progress=False).ingest(docs)
    assert s1.read == s2.read == 7 and s2.unchanged == 7 and s2.indexed == 0
    assert _count(es_client, index) == 6
    ids = {h["_id"] for h in es_client.search(index=index, size=20, source=False)["hits"]["hits"]}
    assert ids == {prepare(d, DocumentSpec()).content_hash for d in docs}


def test_bad_documents_go_to_the_dead_letter_file_with_reasons(es_client, index, encoder_a, tmp_path):
    lines = [DOCS[0], b"{not json", DOCS[1], b'{"_id": "bin", "text": "\xff\xfe"}', {"_id": "e1", "title": "",
             "text": "   "}, {"_id": "t1", "text": 17}, DOCS[2], [1, 2, 3], {"_id": "y1", "text": "ok", "year": "soon"},
             DOCS[3]]
    src = _write_jsonl(tmp_path / "in.jsonl", lines)
    dead = tmp_path / "dead.jsonl"
    summary = IngestHook(es_client, index, encoder_a, dead_letter=dead, progress=False).ingest_jsonl(src)
    assert (summary.read, summary.indexed, summary.failed) == (10, 4, 6)
    assert _count(es_client, index) == 4
    entries = [json.loads(line) for line in dead.read_text().splitlines()]
    by_line = {e["line"]: e for e in entries}
    assert sorted(by_line) == [2, 4, 5, 6, 8, 9]
    assert "malformed JSON" in by_line[2]["reason"] and by_line[2]["raw"] == "{not json"
    assert "not valid UTF-8" in by_line[4]["reason"]
    assert "no text" in by_line[5]["reason"] and by_line[5]["id"] == "e1"
    assert "'text' is int" in by_line[6]["reason"]
    assert "JSON object" in by_line[8]["reason"]
    # refused by Elasticsearch itself (year is mapped as an integer): reason from the node
    assert by_line[9]["stage"] == "elasticsearch" and "year" in by_line[9]["reason"]
    assert by_line[9]["document"]["_id"] == "y1"
    assert all(e["reason"].startswith(f"line {e['line']}:") for e in entries)


def test_long_texts_are_truncated_and_counted(es_client, index, encoder_a):
    long_text = " ".join(["photosynthesis chlorophyll sunlight energy"] * 200)
    docs = [{"_id": "long", "title": "Long", "text": long_text}, DOCS[0]]
    summary = IngestHook(es_client, index, encoder_a, progress=False).ingest(docs)
    assert (summary.indexed, summary.truncated) == (2, 1)


def test_refuses_a_model_that_did_not_make_the_index(es_client, index, encoder_b):
    with pytest.raises(FingerprintError, match="does not match index"):
        IngestHook(es_client, index, encoder_b)
    with pytest.raises(ConfigError, match="index create"):
        IngestHook(es_client, f"{index}-nope", encoder_b)


@pytest.mark.parametrize("source", ["jsonl", "iterable"])
def test_crash_then_resume_does_every_document_and_dead_letter_once(es_client, index, encoder_a, tmp_path,
                                                                     source):
    lines: list = []
    for i, d in enumerate(DOCS):
        lines.append(d)
        if i % 5 == 2:
            lines.append({"_id": f"bad{i}", "text": ""})  # 5 bad documents spread over the input
    src = _write_jsonl(tmp_path / "in.jsonl", lines)
    dead, ckpt = tmp_path / "dead.jsonl", tmp_path / "ckpt.json"

    def run(encoder):
        hook = IngestHook(es_client, index, encoder, batch_size=4, dead_letter=dead, checkpoint=ckpt, progress=False)
        return hook.ingest_jsonl(src) if source == "jsonl" else hook.ingest(lines, source="test")

    assert _count(es_client, index) == 0  # a fresh index: no chunk can be skipped as unchanged
    crashing = Counting(encoder_a, fail_on_call=4)  # chunks 1-3 done, the 4th crashes
    with pytest.raises(IngestError, match="resume") as err:
        run(crashing)
    done = json.loads(ckpt.read_text())["position"]
    assert done == 12 and err.value.summary.read == 12
    assert _count(es_client, index) == len(crashing.texts) == 10  # 12 records, 2 of them bad

    resumed = Counting(encoder_a)
    summary = run(resumed)
    assert summary.resumed == 12 and summary.read == len(lines) - 12 and summary.complete
    assert len(resumed.texts) == 14  # only the unfinished documents were embedded
    assert _count(es_client, index) == 24
    reasons = [json.loads(line)["id"] for line in dead.read_text().splitlines()]
    assert sorted(reasons) == sorted(f"bad{i}" for i in range(24) if i % 5 == 2)  # each exactly once
    assert not ckpt.exists()  # a finished run leaves no checkpoint


def test_retries_429_dropped_connections_and_item_429_without_losing_anything(es_client, es_url, index,
                                                                               encoder_a, tmp_path):
    proxy = FlakyProxy(es_url, bulk_429=2, bulk_drop=2, bulk_item_429=2)
    client = connect(proxy.url, max_retries=0)  # every failure reaches esdistill's own retry
    try:
        dead = tmp_path / "dead.jsonl"
        summary = IngestHook(client, index, encoder_a, batch_size=6, retry=FAST_RETRY, dead_letter=dead,
                             progress=False).ingest(DOCS)
    finally:
        client.close()
        proxy.close()
    assert proxy.faults == {"429": 2, "drop": 2, "item429": 2, "503": 0, "413": 0}
    assert summary.retries == 6 and summary.indexed == 24 and summary.failed == 0
    assert not dead.exists() or dead.read_text() == ""
    assert _count(es_client, index) == 24
    ids = {h["_id"] for h in es_client.search(index=index, size=50, source=False)["hits"]["hits"]}
    assert ids == {d["_id"] for d in DOCS}


def test_gives_up_after_the_deadline_and_keeps_the_checkpoint(es_client, es_url, index, encoder_a, tmp_path):
    proxy = FlakyProxy(es_url, always_503=True)
    client = connect(proxy.url, max_retries=0)
    ckpt = tmp_path / "ckpt.json"
    try:
        hook = IngestHook(client, index, encoder_a, batch_size=8, checkpoint=ckpt, progress=False,
                          retry=RetryPolicy(initial_delay=0.05, max_delay=0.2, give_up_after=1.0))
        with pytest.raises(IngestError, match="Nothing was lost") as err:
            hook.ingest(DOCS, source="t")
    finally:
        client.close()
        proxy.close()
    assert err.value.summary.indexed == 0 and err.value.summary.retries >= 2
    assert not ckpt.exists() or json.loads(ckpt.read_text())["position"] == 0
    resumed = IngestHook(es_client, index, encoder_a, checkpoint=ckpt, progress=False).ingest(DOCS, source="t")
    assert resumed.indexed == 24 and _count(es_client, index) == 24


def test_embedding_overlaps_bulk_io(es_client, es_url, index, encoder_a):
    proxy = FlakyProxy(es_url, bulk_delay=0.4)
    client = connect(proxy.url)
    counting = Counting(encoder_a)
    try:
        IngestHook(client, index, counting, batch_size=4, progress=False).ingest(DOCS)
    finally:
        client.close()
        proxy.close()
    spans = proxy.bulk_spans
    assert len(spans) == 6 and len(counting.starts) == 6
    overlapped = [s for s in counting.starts if any(a < s < b for a, b in spans)]
    # while Elasticsearch sits on a bulk request, the encoder is already working on the next chunks
    assert len(overlapped) >= 3


def test_cli_ingest_creates_the_index_and_reports_json(es_client, es_url, index_prefix, encoder_a, tmp_path,
                                                       monkeypatch, capsys):
    from esdistill.plugin.cli import main

    model_dir = model_folder(encoder_a)
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    src = _write_jsonl(tmp_path / "in.jsonl", DOCS + [b"{broken"])
    dead = tmp_path / "dead.jsonl"
    args = ["ingest", str(src), "--index", index_prefix, "--model", str(model_dir), "--dead-letter", str(dead),
            "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["read"], first["indexed"], first["failed"]) == (25, 24, 1) and first["docs_per_s"] > 0
    assert IndexManager(es_client, index_prefix).current() == f"{index_prefix}-000001"
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["indexed"], second["unchanged"], second["failed"]) == (0, 24, 1)
    assert main(args[:-1]) == 0
    assert "read 25, indexed 0, unchanged 24, failed 1" in capsys.readouterr().out
    assert not list((tmp_path / "state").rglob("*.json"))  # checkpoints removed after complete runs
    assert _count(es_client, index_prefix) == 24


def test_vectors_as_floats_and_base64_are_the_same(es_client, index, encoder_a):
    IngestHook(es_client, index, encoder_a, vector_format="floats", progress=False).ingest(DOCS[:3])
    doc = DOCS[1]
    vec = encoder_a.encode_with_info([f"{doc['title']} {doc['text']}"]).embeddings[0]
    q = {"field": "embedding", "query_vector": vec.tolist(), "k": 1, "num_candidates": 10}
    score_floats = es_client.search(index=index, knn=q, source=False)["hits"]["hits"][0]["_score"]
    changed = dict(doc, year=1999)  # force a re-embed through the base64 path
    IngestHook(es_client, index, encoder_a, vector_format="base64", progress=False).ingest([changed])
    score_b64 = es_client.search(index=index, knn=q, source=False)["hits"]["hits"][0]["_score"]
    assert np.isclose(score_floats, score_b64, atol=1e-6) and score_b64 > 0.99


def test_large_chunks_are_split_and_a_document_too_large_is_dead_lettered(es_client, es_url, index, encoder_a,
                                                                          tmp_path):
    huge = {"_id": "huge", "title": "Huge", "text": "tidal energy " * 3000}  # ~39 kB: over the proxy's limit
    docs = DOCS[:10] + [huge] + DOCS[10:]
    proxy = FlakyProxy(es_url, max_body=20_000)
    client = connect(proxy.url, max_retries=0)
    dead = tmp_path / "dead.jsonl"
    try:
        summary = IngestHook(client, index, encoder_a, batch_size=25, max_bulk_bytes=2_000, dead_letter=dead,
                             retry=FAST_RETRY, progress=False).ingest(docs)
    finally:
        client.close()
        proxy.close()
    assert (summary.indexed, summary.failed) == (24, 1)
    # one chunk of 25, sent as several requests of at most 2 kB, plus the huge document alone (413)
    assert len(proxy.bulk_sizes) >= 6 and proxy.faults["413"] == 1
    assert sorted(proxy.bulk_sizes)[-2] <= 2_000 and max(proxy.bulk_sizes) > 20_000
    (entry,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert entry["id"] == "huge" and "413" in entry["reason"] and entry["stage"] == "elasticsearch"
    assert _count(es_client, index) == 24


def test_cli_ingest_reads_stdin(es_client, es_url, index, encoder_a, tmp_path, monkeypatch, capsys):
    import sys

    from esdistill.plugin.cli import main

    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    data = b"".join(json.dumps(d).encode() + b"\n" for d in DOCS[:5]) + b"\xff oops\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["ingest", "-", "--index", index, "--model", str(model_folder(encoder_a)), "--no-progress",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["read"], out["indexed"], out["failed"]) == (6, 5, 1)
    assert _count(es_client, index) == 5
