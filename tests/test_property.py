"""Property-based tests (hypothesis) of the ingest and search paths with bad input.

Documents: empty, huge, binary, mixed-script, control characters, lone surrogates, malformed JSONL
lines, wrong types, unknown fields with any JSON value, and valid documents in the same batch.
Queries: empty, huge, control characters, mixed scripts, lone surrogates; ``k``, ``budget_ms`` and
``num_candidates`` out of range or of the wrong type.

The properties: nothing raises anything but esdistill's own errors; every rejection says why (and
names the input: the line number of a JSONL line, the argument of a search); every input line is
either indexed or in the dead-letter file, exactly once, so the valid documents of a batch are
indexed whatever else it holds.

Example counts are bounded (``max_examples``) so that the module runs in well under a minute; the
totals are listed in :data:`EXAMPLES`.
"""

from __future__ import annotations

import io
import json
import math
import re

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.documents import BadDocument, DocumentSpec, Record, prepare, read_jsonl
from esdistill.plugin.index import IndexManager, IndexSpec
from esdistill.plugin.ingest import IngestHook
from esdistill.plugin.query import QueryConfig, QueryHook
from esdt_helpers import TINY_COLLECTION
from esdt_onnx import make_encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: examples per property (the fuzz cases this module tries on every run)
EXAMPLES = {"read_jsonl": 300, "prepare": 400, "ingest_jsonl": 40, "ingest_objects": 30, "search_text": 80,
            "search_args": 150}
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]

DOCS = [json.loads(line) for line in (TINY_COLLECTION / "corpus.jsonl").read_text().splitlines()]

# ------------------------------------------------------------------------------------- strategies
#: any text, surrogates and control characters included
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
#: words from several scripts, so the text has tokens the model knows and some it does not
words = st.sampled_from(["energy", "cell", "protein", "ocean", "Zelle", "énergie", "κύτταρο", "клетка", "細胞",
                         "能量", "ذاكرة", "🙂", "\u200b", "\x00", "\t", "\x1b[31m"])
mixed_text = st.lists(words, min_size=0, max_size=30).map(" ".join)
huge_text = st.integers(min_value=50_000, max_value=400_000).map(lambda n: ("energy cell " * (n // 12 + 1))[:n])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | any_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text, inner, max_size=4), max_leaves=12)
field_names = any_text | st.sampled_from(["_id", "title", "text", "embedding", "content_hash", "_source", "",
                                          ".", "a..b", "_routing", "n"])


@st.composite
def documents(draw) -> dict:
    """A JSON object: usually a plausible document, often with something wrong or odd in it."""
    doc: dict = {}
    if draw(st.booleans()):
        doc["_id"] = draw(st.text(min_size=1, max_size=20) | st.integers() | json_values)
    for name in ("title", "text"):
        if draw(st.integers(0, 9)) < 7:
            doc[name] = draw(mixed_text | any_text | huge_text | json_values
                             if draw(st.integers(0, 4)) == 0 else mixed_text)
    for _ in range(draw(st.integers(0, 3))):
        doc[draw(field_names)] = draw(json_values)
    return doc


def _line_bytes(item, ascii_only: bool = True) -> bytes:
    """One JSONL line (no newline inside). Non-ASCII JSON is written as UTF-8, lone surrogates as
    the invalid bytes a careless writer produces."""
    if isinstance(item, bytes):
        return item.replace(b"\n", b" ").replace(b"\r", b" ")
    return json.dumps(item, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


#: one JSONL line: a document, another JSON value, broken JSON or raw bytes (not UTF-8, say)
jsonl_lines = st.tuples(documents() | json_values, st.booleans()).map(lambda t: _line_bytes(*t)) | (
    st.binary(max_size=40).map(_line_bytes)
    | st.sampled_from([b"{", b'{"text": "unterminated', b"[1, 2", b"\xff\xfe\x00", b"NaN", b"{}",
                       b'{"text": "a"} trailing', b'{"_id": "x", "text": "\\ud800 lone"}']))


@pytest.fixture(scope="module")
def encoder(tiny_bi_encoder, tmp_path_factory):
    return make_encoder(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "esdt-onnx", "a")


# ---------------------------------------------------------------------------- reading and preparing
@settings(max_examples=EXAMPLES["read_jsonl"], deadline=None)
@given(st.lists(jsonl_lines, max_size=12), st.booleans())
def test_read_jsonl_never_raises_and_numbers_every_line(lines, crlf):
    data = (b"\r\n" if crlf else b"\n").join(lines)
    records = list(read_jsonl(io.BytesIO(data)))
    expected = [n for n, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    assert [r.line for r in records] == expected
    assert [r.position for r in records] == list(range(len(records)))
    for r in records:
        if r.error is None:
            assert r.raw is None
        else:
            assert r.doc is None
            assert r.error.startswith(f"line {r.line}: ") and len(r.error) > len(f"line {r.line}: ")
            assert isinstance(r.raw, str)
    offsets = [r.next_offset for r in records]
    assert offsets == sorted(offsets) and (not records or records[-1].next_offset <= len(data))


@settings(max_examples=EXAMPLES["prepare"], deadline=None, suppress_health_check=_SLOW_OK)
@given(json_values | documents())
def test_prepare_accepts_or_says_why(doc):
    try:
        prepared = prepare(doc, DocumentSpec())
    except BadDocument as exc:
        assert exc.reason and exc.reason == str(exc)
        return
    assert isinstance(doc, dict) and prepared.text.strip() and re.fullmatch(r"[0-9a-f]{64}", prepared.content_hash)
    assert isinstance(prepared.id, str) and prepared.id.strip() and len(prepared.id.encode("utf-8")) <= 512
    assert "_id" not in prepared.source
    json.dumps(prepared.source, allow_nan=False).encode("utf-8")  # what Elasticsearch will be sent


# ------------------------------------------------------------------------- ingesting into a real node
def _dead_entries(path) -> list[dict]:
    """The dead-letter file's entries (split on newlines only: U+2028 and friends may appear raw)."""
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


def _fresh(es_client, alias: str, encoder) -> None:
    """An empty index for the next example (created once, emptied afterwards: much cheaper)."""
    mgr = IndexManager(es_client, alias)
    if not mgr.exists():
        mgr.create(encoder.manifest, IndexSpec(index_options="flat"))
    else:
        # (no _delete_by_query on the integ-test distribution: delete by id)
        hits = es_client.search(index=alias, size=1000, source=False)["hits"]["hits"]
        if hits:
            es_client.bulk(operations=[{"delete": {"_index": h["_index"], "_id": h["_id"]}} for h in hits],
                           refresh=True)


def _prepared_id(rec, spec):
    """The id a record is indexed under, or None when it is not a valid document."""
    if rec.error is not None:
        return None
    try:
        return prepare(rec.doc, spec).id
    except BadDocument:
        return None


def test_every_jsonl_line_is_indexed_or_dead_lettered_with_its_line_number(es_client, index_prefix, encoder,
                                                                           tmp_path):
    spec = DocumentSpec()

    @settings(max_examples=EXAMPLES["ingest_jsonl"], deadline=None, suppress_health_check=_SLOW_OK)
    @given(st.lists(jsonl_lines, min_size=1, max_size=10), st.lists(st.sampled_from(DOCS), min_size=1, max_size=4),
           st.randoms(use_true_random=False))
    def check(lines, valid, rnd):
        alias = index_prefix
        _fresh(es_client, alias, encoder)
        batch = [*lines, *(_line_bytes(d) for d in valid)]
        rnd.shuffle(batch)
        src = tmp_path / "in.jsonl"
        src.write_bytes(b"\n".join(batch) + b"\n")
        dead = tmp_path / "dead.jsonl"
        summary = IngestHook(es_client, alias, encoder, batch_size=4, dead_letter=dead,
                             progress=False).ingest_jsonl(src)
        records = list(read_jsonl(io.BytesIO(src.read_bytes())))
        assert summary.complete and summary.read == len(records)
        # a fresh index: only a repeat of a document already written in this run can be unchanged
        # (whether the repeat's lookup sees the first copy depends on timing; both outcomes are right)
        ids = [_prepared_id(r, spec) for r in records]
        ids = [i for i in ids if i is not None]
        repeats = len(ids) - len(set(ids))
        assert summary.indexed + summary.unchanged + summary.failed == summary.read
        assert summary.unchanged <= repeats
        entries = _dead_entries(dead)
        dead_lines = [e["line"] for e in entries]
        assert len(dead_lines) == len(set(dead_lines)) == summary.failed  # each bad line exactly once
        for e in entries:
            assert e["reason"].startswith(f"line {e['line']}: ") and e["stage"] in ("input", "elasticsearch")
        es_client.indices.refresh(index=alias)
        for rec in records:
            if rec.line in dead_lines:
                continue
            # not dead-lettered: it must have been a valid document, and it must be in the index
            doc = prepare(rec.doc, spec)
            assert es_client.exists(index=alias, id=doc.id), (rec.line, doc.id)
        for d in valid:  # the known-good documents of the batch are always indexed
            assert es_client.exists(index=alias, id=d["_id"])
        assert int(es_client.count(index=alias)["count"]) == len({prepare(r.doc, spec).id for r in records
                                                                 if r.line not in dead_lines})

    check()


def test_in_memory_documents_of_any_type_are_indexed_or_refused_with_a_reason(es_client, index_prefix, encoder,
                                                                              tmp_path):
    @settings(max_examples=EXAMPLES["ingest_objects"], deadline=None, suppress_health_check=_SLOW_OK)
    @given(st.lists(json_values | documents(), min_size=1, max_size=8))
    def check(items):
        _fresh(es_client, index_prefix, encoder)
        batch = [*items, DOCS[0]]
        dead = tmp_path / "dead.jsonl"
        summary = IngestHook(es_client, index_prefix, encoder, batch_size=3, dead_letter=dead,
                             progress=False).ingest(batch)
        assert summary.complete and summary.read == len(batch)
        ids = [i for i in (_prepared_id(Record(position=n, doc=d), DocumentSpec()) for n, d in enumerate(batch))
               if i is not None]
        assert summary.indexed + summary.unchanged + summary.failed == len(batch)
        assert summary.unchanged <= len(ids) - len(set(ids))  # only repeats within the batch
        entries = _dead_entries(dead)
        assert sorted(e["position"] for e in entries) == sorted({e["position"] for e in entries})
        assert len(entries) == summary.failed
        for e in entries:
            assert e["line"] is None and e["reason"].startswith(f"record {e['position']}: ")
        assert es_client.exists(index=index_prefix, id=DOCS[0]["_id"])

    check()


# ----------------------------------------------------------------------------------------- search
@pytest.fixture
def search_hook(es_client, index_prefix, encoder):
    IndexManager(es_client, index_prefix).create(encoder.manifest, IndexSpec(index_options="flat"))
    IngestHook(es_client, index_prefix, encoder, progress=False).ingest(DOCS)
    return QueryHook(es_client, index_prefix, encoder, config=QueryConfig(cache_size=16))


def test_any_query_text_is_answered_or_refused_saying_why(search_hook):
    @settings(max_examples=EXAMPLES["search_text"], deadline=None, suppress_health_check=_SLOW_OK)
    @given(any_text | mixed_text | huge_text | st.sampled_from(["", " ", "\t\n", "\x00", "\ud800", "a\udfffb"]),
           st.sampled_from(["knn", "bm25", "hybrid"]), st.integers(1, 30))
    def check(text, mode, k):
        try:
            r = search_hook.search(text, k=k, mode=mode)
        except ConfigError as exc:
            message = str(exc)
            assert "query" in message or "Elasticsearch rejected" in message, message
            assert len(message) < 2000  # a huge query is not echoed back whole
            return
        assert len(r.hits) <= k and len(set(r.ids)) == len(r.ids)
        assert all(math.isfinite(h.score) for h in r.hits)

    check()


_WRONG = st.none() | st.booleans() | st.text(max_size=5) | st.floats() | st.lists(st.integers(), max_size=2)


def test_k_budget_and_num_candidates_out_of_range_are_config_errors_naming_them(search_hook):
    @settings(max_examples=EXAMPLES["search_args"], deadline=None)
    @given(st.sampled_from(["k", "budget_ms", "num_candidates"]),
           st.integers(max_value=0) | st.integers(min_value=10_001) | _WRONG)
    def check(name, value):
        kwargs = {name: value}
        if value is None and name != "k":
            return  # None means "the default" for these two
        if name == "budget_ms" and isinstance(value, (int, float)) and not isinstance(value, bool) and (
                0 < value <= search_hook.config.max_budget_ms):
            return  # in range after all
        with pytest.raises(ConfigError) as err:
            search_hook.search("energy in the cell", **kwargs)
        message = str(err.value)
        assert f"{name}=" in message and len(message) < 500, message

    check()


def test_cli_search_refuses_an_empty_query_with_exit_2(search_hook, es_url, monkeypatch, capsys, encoder):
    from esdistill.plugin.cli import main

    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    code = main(["search", "   ", "--index", search_hook.index, "--model", str(encoder.folder)])
    assert code == 2 and "non-empty" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["k", "budget_ms", "num_candidates"])
def test_a_gigantic_integer_is_refused_without_echoing_it(search_hook, name):
    # 5000 digits: Python refuses to turn such an int into text at all (sys.get_int_max_str_digits)
    with pytest.raises(ConfigError, match=f"{name}=") as err:
        search_hook.search("energy", **{name: 10**5000})
    assert len(str(err.value)) < 500
