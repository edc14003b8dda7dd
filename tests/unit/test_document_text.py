"""One text per document: ingestion, training data, rerank and the benchmarks all see the same string."""

from __future__ import annotations

import pytest
from esdistill.plugin.beir import Doc
from esdistill.plugin.documents import BadDocument, DocumentSpec, document_text, prepare
from esdistill.plugin.query import QueryHook

CASES = [
    {"_id": "a", "title": "Mitochondria", "text": "make ATP"},
    {"_id": "b", "title": "Trailing  ", "text": "  leading body"},
    {"_id": "c", "title": "", "text": "body only "},
    {"_id": "d", "title": "   ", "text": "blank title"},
    {"_id": "e", "text": "no title field"},
]


@pytest.mark.parametrize("doc", CASES, ids=[c["_id"] for c in CASES])
def test_training_rerank_and_ingest_see_the_same_text(doc: dict) -> None:
    ingested = prepare(doc, DocumentSpec()).text
    assert Doc(doc["_id"], doc.get("title", ""), doc["text"]).full == ingested
    hook = QueryHook.__new__(QueryHook)  # only the text fields are needed, no cluster
    hook.text_fields = ("title", "text")
    assert hook._text_of({k: v for k, v in doc.items() if k != "_id"}) == ingested
    assert document_text(doc) == ingested


def test_whitespace_around_fields_is_dropped_and_order_follows_the_fields() -> None:
    doc = {"title": "Trailing  ", "text": "  leading body"}
    assert document_text(doc) == "Trailing leading body"
    assert document_text(doc, ("text", "title"), separator="\n") == "leading body\nTrailing"


def test_non_string_text_field_is_refused_by_name_but_rerank_reads_it() -> None:
    with pytest.raises(BadDocument, match="'title' is list"):
        document_text({"title": ["a", "b"], "text": "x"})
    hook = QueryHook.__new__(QueryHook)
    hook.text_fields = ("title", "text")
    assert hook._text_of({"title": ["a", "b"], "text": "x"}) == "['a', 'b'] x"
