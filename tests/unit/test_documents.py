"""Documents before they reach a node: ids, texts and content hashes, bad documents refused with a
reason, JSONL line numbers and offsets, and the document spec (no torch, no Elasticsearch)."""

from __future__ import annotations

import io

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.documents import BadDocument, DocumentSpec, content_hash, prepare, read_jsonl


def _nested(depth: int) -> list:
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


def test_prepare_ids_texts_and_hashes():
    spec = DocumentSpec()
    doc = prepare({"_id": 7, "title": " T ", "text": "body", "year": 2020}, spec)
    assert doc.id == "7" and doc.text == "T body" and doc.source == {"title": " T ", "text": "body", "year": 2020}
    again = prepare({"year": 2020, "text": "body", "title": " T ", "_id": "other"}, spec)
    assert again.content_hash == doc.content_hash  # key order and id do not matter
    assert prepare({"title": " T ", "text": "body", "year": 2021}, spec).content_hash != doc.content_hash
    assert content_hash(doc.source, ("text",)) != doc.content_hash  # text-field config is part of it
    no_id = prepare({"title": "x", "text": None}, spec)
    assert no_id.id == no_id.content_hash and no_id.text == "x"
    custom = prepare({"doc_id": "k1", "text": "y"}, DocumentSpec(id_field="doc_id"))
    assert custom.id == "k1" and custom.source["doc_id"] == "k1"


@pytest.mark.parametrize("doc, reason", [
    ([1, 2], "JSON object"),
    ({"_id": "a"}, "no text"),
    ({"_id": "a", "title": "  ", "text": ""}, "no text"),
    ({"_id": "a", "text": 42}, "'text' is int"),
    ({"_id": "a", "title": ["x"], "text": "y"}, "'title' is list"),
    ({"_id": True, "text": "y"}, "id field"),
    ({"_id": "", "text": "y"}, "empty"),
    ({"_id": "x" * 600, "text": "y"}, "512 bytes"),
    ({"_id": "a", "text": "y", "embedding": [1]}, "reserved"),
    ({"_id": "a", "text": "bad \ud800 surrogate"}, "surrogate"),
    ({"_id": "a", "text": "y", "score": float("nan")}, "serialized"),
    ({"_id": "a", "text": "y", "when": object()}, "serialized"),
    ({"_id": "a", "text": "y", 3: "int key"}, "serialized"),
    ({"_id": "a", "text": "y", "deep": _nested(5000)}, "nested too deeply"),
])
def test_prepare_rejects_bad_documents_with_a_reason(doc, reason):
    with pytest.raises(BadDocument, match=reason):
        prepare(doc, DocumentSpec())


def test_read_jsonl_reports_line_numbers_and_offsets():
    data = b'{"_id": "a", "text": "x"}\n\n{oops\n\xff\xfe\n[1]\n{"_id": "b", "text": "y"}'
    recs = list(read_jsonl(io.BytesIO(data)))
    assert [r.line for r in recs] == [1, 3, 4, 5, 6]
    assert [r.position for r in recs] == [0, 1, 2, 3, 4]
    assert recs[1].error.startswith("line 3: malformed JSON") and recs[1].raw == "{oops"
    assert recs[2].error.startswith("line 4: not valid UTF-8")
    assert recs[3].doc == [1] and recs[3].error is None
    assert recs[4].next_offset == len(data)
    # resuming at an offset continues the numbering
    cut = recs[1].next_offset
    tail = list(read_jsonl(io.BytesIO(data[cut:]), start_offset=cut, start_line=3, start_position=2))
    assert [(r.line, r.position) for r in tail] == [(4, 2), (5, 3), (6, 4)]


def test_document_spec_validation():
    with pytest.raises(ConfigError):
        DocumentSpec(text_fields=())
    with pytest.raises(ConfigError):
        DocumentSpec(text_fields=("title", "title"))
    with pytest.raises(ConfigError):
        DocumentSpec(text_fields=("embedding",))
