"""Reading documents for ingestion: JSONL records, validation, stable ids and content hashes.

A document is a JSON object. Its *text fields* (``title`` and ``text`` by default, the BEIR corpus
layout ``{"_id", "title", "text"}``) are joined and embedded; every other field is stored as-is.
Each document gets a **stable id** (the value of its id field, else its content hash) so that
ingesting the same input twice never duplicates anything, and a **content hash** over the stored
fields and the text-field configuration, so that a document whose content is unchanged is not
embedded again::

    >>> spec = DocumentSpec(text_fields=("title", "text"))
    >>> doc = prepare({"_id": "d1", "title": "Mitochondria", "text": "make ATP"}, spec)
    >>> doc.id, doc.text
    ('d1', 'Mitochondria make ATP')

**Is a stored vector still true?** A document's ``content_hash`` field proves which text its
vector was made from. Ingestion stores :func:`content_hash` (over the whole stored document);
:mod:`~esdistill.plugin.sync` and in-place adoption store :func:`text_hash` (over the embedded text
only, so that a change of a non-text field, a counter say, does not trigger a re-embedding).
:func:`vector_is_current` accepts either: both change whenever the embedded text changes.

A bad document (not an object, no text, a text field that is not a string, a bad id) makes
:func:`prepare` raise :class:`BadDocument` with the reason, so the caller can dead-letter it.
:func:`read_jsonl` never raises on a bad line: it yields a :class:`Record` that carries the error,
the line number and the byte offset where the *next* line starts (the resume point).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from esdistill.plugin._errors import ConfigError

__all__ = [
    "OP_FIELD",
    "RESERVED_FIELDS",
    "TEACHER_VECTOR_FIELD",
    "BadDocument",
    "DocumentSpec",
    "PreparedDocument",
    "Record",
    "content_hash",
    "delete_target",
    "document_text",
    "prepare",
    "read_jsonl",
    "strip_reserved",
    "text_hash",
    "vector_is_current",
]

#: a record ``{"_id": ..., "_op": "delete"}`` deletes that document (``"index"``, the default, indexes it)
OP_FIELD = "_op"
#: where an index made with ``--teacher-vectors`` keeps each document's teacher vector
#: (:mod:`esdistill.plugin.teacher_vectors`)
TEACHER_VECTOR_FIELD = "esdistill_teacher_vector"
#: fields esdistill writes into documents (plus the index's vector field): never hashed, never shown in hits
RESERVED_FIELDS = ("content_hash", "model_fingerprint", TEACHER_VECTOR_FIELD)
#: Elasticsearch refuses ids longer than this many UTF-8 bytes
_MAX_ID_BYTES = 512
#: how much of an offending line a dead-letter entry keeps
_MAX_RAW_CHARS = 100_000


class BadDocument(ValueError):
    """A document that cannot be ingested; ``reason`` says why (it goes to the dead-letter file)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DocumentSpec:
    """How documents are read.

    Attributes:
        text_fields: fields whose text is embedded, joined by ``separator`` in this order; a
            document needs at least one of them non-empty. Missing or ``null`` fields are skipped.
        id_field: the field holding the document id (``_id`` for BEIR corpora). A document
            without it is identified by its content hash. ``_id`` is not stored in the source
            (Elasticsearch forbids it there); any other id field is stored like a normal field.
        separator: what joins the text fields.
        vector_field: the index's vector field; a document may not carry it.
    """

    text_fields: tuple[str, ...] = ("title", "text")
    id_field: str = "_id"
    separator: str = " "
    vector_field: str = "embedding"

    def __post_init__(self) -> None:
        fields_ = tuple(self.text_fields)
        object.__setattr__(self, "text_fields", fields_)
        if not fields_ or any(not isinstance(f, str) or not f.strip() for f in fields_):
            raise ConfigError(f"text_fields={fields_!r}: give one or more non-empty field names, e.g. title,text")
        if len(set(fields_)) != len(fields_):
            raise ConfigError(f"text_fields={fields_!r} names a field twice")
        if not self.id_field:
            raise ConfigError("id_field is empty; use _id for BEIR corpora or the name of your id field")
        clash = {self.id_field, self.vector_field, *RESERVED_FIELDS} & set(fields_)
        if clash:
            raise ConfigError(f"text_fields {fields_!r} include {sorted(clash)}, which cannot hold text")

    @property
    def reserved(self) -> tuple[str, ...]:
        return (*RESERVED_FIELDS, self.vector_field)


@dataclass
class PreparedDocument:
    """A valid document, ready to embed.

    Attributes:
        id: the stable Elasticsearch id.
        source: the fields to store (without ``_id``, without esdistill's own fields).
        text: the text to embed (the text fields joined).
        content_hash: sha256 over ``source`` and the text-field configuration.
    """

    id: str
    source: dict[str, Any]
    text: str
    content_hash: str


@dataclass
class Record:
    """One input record, as read (valid or not).

    Attributes:
        position: 0-based index of the record in its input.
        line: 1-based line number in the input file (``None`` for in-memory inputs).
        next_offset: byte offset where the next line starts (``None`` for in-memory inputs).
        doc: the decoded JSON value, when the line parsed.
        error: why the line could not be read (``doc`` is then ``None``).
        raw: the line's text, kept for the dead-letter file when it could not be read.
    """

    position: int
    line: int | None = None
    next_offset: int | None = None
    doc: Any = None
    error: str | None = None
    raw: str | None = field(default=None, repr=False)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def content_hash(source: dict[str, Any], text_fields: tuple[str, ...], separator: str = " ") -> str:
    """sha256 (hex) over the stored fields and how their text is embedded.

    The same document gives the same hash on any machine; changing any stored field, the text
    fields, or the separator changes it.
    """
    h = hashlib.sha256()
    h.update(_canonical({"text_fields": list(text_fields), "separator": separator}))
    h.update(b"\n")
    h.update(_canonical(source))
    return h.hexdigest()


def text_hash(text: str) -> str:
    """sha256 (hex) of exactly the text a model embedded (a domain prefix keeps it apart from
    :func:`content_hash`, so the two can never be mistaken for each other).

    Example:
        >>> text_hash("Mitochondria make ATP") == text_hash("Mitochondria make ATP")
        True
    """
    return hashlib.sha256(b"esdistill-text\n" + text.encode("utf-8", "surrogatepass")).hexdigest()


def strip_reserved(source: dict[str, Any], vector_field: str) -> dict[str, Any]:
    """``source`` without esdistill's own fields (its vector and bookkeeping fields)."""
    drop = {vector_field, *RESERVED_FIELDS}
    return {k: v for k, v in source.items() if k not in drop}


def vector_is_current(stored: dict[str, Any], doc: PreparedDocument, fingerprint: str) -> bool:
    """True when the stored bookkeeping fields prove the vector was made from ``doc.text`` by the
    model ``fingerprint``.

    Args:
        stored: the stored document (its ``content_hash`` and ``model_fingerprint`` are read).
        doc: the document as it is now (:func:`prepare` of the stored fields).
        fingerprint: the model that must have made the vector.
    """
    if stored.get("model_fingerprint") != fingerprint:
        return False
    return stored.get("content_hash") in (doc.content_hash, text_hash(doc.text))


def _stable_id(value: Any, field_name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadDocument(f"id field {field_name!r} is {type(value).__name__}, expected a string or an integer")
    text = str(value)
    if not text.strip():
        raise BadDocument(f"id field {field_name!r} is empty")
    if len(text.encode("utf-8")) > _MAX_ID_BYTES:
        raise BadDocument(f"id field {field_name!r} is longer than {_MAX_ID_BYTES} bytes")
    return text


def delete_target(doc: Any, spec: DocumentSpec) -> str | None:
    """The id a delete record (``{"_id": "d1", "_op": "delete"}``) deletes; ``None`` for any other record.

    Raises:
        BadDocument: ``_op`` is neither ``index`` nor ``delete``, or a delete has no valid id.

    Example:
        >>> delete_target({"_id": "d1", "_op": "delete"}, DocumentSpec())
        'd1'
    """
    if not isinstance(doc, dict) or OP_FIELD not in doc or doc[OP_FIELD] == "index":
        return None
    if doc[OP_FIELD] != "delete":
        raise BadDocument(f'"{OP_FIELD}" is {doc[OP_FIELD]!r}: use "index" (the default) or "delete"')
    value = doc.get(spec.id_field)
    if value is None:
        raise BadDocument(f'a delete ("{OP_FIELD}": "delete") needs the id field {spec.id_field!r}')
    return _stable_id(value, spec.id_field)


def document_text(doc: Mapping[str, Any], text_fields: Sequence[str] = ("title", "text"),
                  separator: str = " ") -> str:
    """The text a model sees for a document: its text fields, each stripped, the empty or missing
    ones skipped, joined by ``separator`` in the order of ``text_fields``.

    Ingestion, adoption, sync, rerank, training and the benchmarks all embed or score this text,
    so a vector made at ingest matches what training saw. An empty result means the document has
    no text (:func:`prepare` refuses such a document).

    Raises:
        BadDocument: a text field holds something other than a string.

    Example:
        >>> document_text({"title": " Mitochondria ", "text": "make ATP", "year": 2020})
        'Mitochondria make ATP'
        >>> document_text({"text": "make ATP", "title": None})
        'make ATP'
    """
    parts = []
    for name in text_fields:
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadDocument(f"text field {name!r} is {type(value).__name__}, expected a string")
        if value.strip():
            parts.append(value.strip())
    return separator.join(parts)


def prepare(doc: Any, spec: DocumentSpec) -> PreparedDocument:
    """Validate one document and compute its id, text and content hash.

    Args:
        doc: the decoded JSON value.
        spec: which fields hold the id and the text.

    Returns:
        The prepared document.

    Raises:
        BadDocument: the document cannot be ingested (the reason names the field).
    """
    if not isinstance(doc, dict):
        raise BadDocument(f"a document must be a JSON object, got {type(doc).__name__}")
    source = dict(doc)
    if source.get(OP_FIELD) == "index":
        del source[OP_FIELD]
    given_id = source.pop(spec.id_field, None) if spec.id_field == "_id" else source.get(spec.id_field)
    reserved = [f for f in spec.reserved if f in source]
    if reserved:
        raise BadDocument(f"field(s) {reserved} are reserved for esdistill; rename them in the input")
    text = document_text(source, spec.text_fields, spec.separator)
    if not text:
        raise BadDocument(f"no text: the text field(s) {', '.join(spec.text_fields)} are missing or empty")
    try:
        digest = content_hash(source, spec.text_fields, spec.separator)
    except UnicodeEncodeError:
        raise BadDocument("the document holds a lone UTF-16 surrogate (such as \\ud800), which is not "
                          "valid Unicode; fix the text at its source") from None
    except (TypeError, ValueError) as exc:  # NaN or Infinity: Elasticsearch refuses them
        raise BadDocument(f"the document cannot be serialized as JSON ({exc})") from None
    except RecursionError:
        raise BadDocument("the document is nested too deeply to be serialized as JSON") from None
    doc_id = _stable_id(given_id, spec.id_field) if given_id is not None else digest
    return PreparedDocument(id=doc_id, source=source, text=text, content_hash=digest)


def read_jsonl(stream: IO[bytes], *, start_offset: int = 0, start_line: int = 0,
               start_position: int = 0) -> Iterator[Record]:
    """Yield one :class:`Record` per non-blank line of a binary JSONL stream.

    Lines that are not UTF-8 or not JSON yield a record with ``error`` set (and the line number),
    never an exception. Blank lines are skipped but counted in line numbers.

    Args:
        stream: a file opened in binary mode, positioned at ``start_offset``.
        start_offset: byte offset of the stream's current position (for ``next_offset``).
        start_line: number of lines before that position.
        start_position: number of records before that position.

    Example:
        >>> import io
        >>> [r.error or r.doc["_id"] for r in read_jsonl(io.BytesIO(b'{"_id": "a"}\\n{oops\\n'))]
        ['a', 'line 2: malformed JSON (Expecting property name enclosed in double quotes)']
    """
    offset, line_no, position = start_offset, start_line, start_position
    for raw in stream:
        offset += len(raw)
        line_no += 1
        if not raw.strip():
            continue
        rec = Record(position=position, line=line_no, next_offset=offset)
        position += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rec.error = f"line {line_no}: not valid UTF-8 (byte {exc.start})"
            rec.raw = raw.decode("utf-8", errors="backslashreplace")[:_MAX_RAW_CHARS]
            yield rec
            continue
        try:
            rec.doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            reason = getattr(exc, "msg", None) or type(exc).__name__
            rec.error = f"line {line_no}: malformed JSON ({reason})"
            rec.raw = text.rstrip("\r\n")[:_MAX_RAW_CHARS]
        yield rec
