"""The ingestion hook: embed documents and write them into an esdistill index, losing nothing.

Three stages overlap, joined by small bounded queues, so Elasticsearch latency never idles the CPU
that embeds::

    reader thread            main thread                 sender thread
    read + validate   --->   embed (OnnxEncoder)   --->  bulk write (retry, backoff)
    mget: unchanged?                                     dead-letter, checkpoint, progress

- **Stable ids**: the document's id field, else its content hash, so re-running the same input
  overwrites instead of duplicating; writes are ``index`` actions, so retries are idempotent.
- **Unchanged documents are not re-embedded**: before embedding, one ``mget`` per chunk fetches the
  stored ``content_hash`` and ``model_fingerprint``; a document whose both match is skipped.
- **Bad documents** (not JSON, not UTF-8, no text, wrong types, refused by Elasticsearch) go to a
  dead-letter JSONL file with the reason and line number; the rest is indexed.
- **Resumable**: after every confirmed chunk a checkpoint records how far the input is done (record
  count and byte offset), the sha256 of the input consumed so far (the bytes of a file or stream,
  the canonical JSON of in-memory documents) and the dead-letter file's size. A re-run with the
  same checkpoint re-reads and re-hashes the finished part, checks that it is unchanged and that
  the offset starts a line, then skips it and truncates the dead-letter file to the recorded size,
  so every document and every dead-letter line appears exactly once. When the finished part changed
  (lines inserted, edited or removed), a file or a list starts again from the beginning (unchanged
  documents are skipped by the content-hash lookup, so only what changed is embedded); a stream,
  which cannot be read twice, is refused before anything is written. The checkpoint is deleted when
  a run completes.
- **Duplicate ids** in one input (``12345`` and ``"12345"`` are the same id) are counted and
  reported (``IngestSummary.duplicates``, a warning per id for the first few): the later record
  replaces the earlier one, as an ``index`` action does. They are counted within the records a run
  reads (a resumed run does not see the ids of the part it skipped).
- **Teacher vectors**: an index created with ``--teacher-vectors`` gets each embedded document's
  teacher vector too (:mod:`~esdistill.plugin.teacher_vectors`); a skipped unchanged document keeps
  the one it has.
- **Deletes**: a record ``{"_id": "d1", "_op": "delete"}`` deletes that document, in input order
  (a later record with the same id indexes it again); :meth:`IngestHook.delete` deletes by id.

Example::

    >>> hook = IngestHook(client, "scifact", OnnxEncoder("runs/minilm-int8"),   # doctest: +SKIP
    ...                   dead_letter="bad.jsonl", checkpoint="scifact.ckpt")
    >>> print(hook.ingest_jsonl("corpus.jsonl").format())                       # doctest: +SKIP
    read 5183, indexed 5183, unchanged 0, failed 0, truncated 1201 in 61.2 s (84.7 docs/s)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from esdistill.plugin._bulk import RetryPolicy, Stopped, call_with_retry, send_bulk
from esdistill.plugin._checkpoint import Checkpoint, ConsumedInput, rehash_prefix
from esdistill.plugin._errors import ConfigError, EsdistillError, IngestError
from esdistill.plugin._pipeline import vector_format as _vector_format
from esdistill.plugin._pipeline import vector_value
from esdistill.plugin.documents import (
    BadDocument,
    DocumentSpec,
    PreparedDocument,
    Record,
    delete_target,
    prepare,
    read_jsonl,
)
from esdistill.plugin.index import IndexManager
from esdistill.plugin.teacher_vectors import teacher_embedder

__all__ = ["IngestHook", "IngestSummary", "RetryPolicy", "default_checkpoint_path"]

logger = logging.getLogger(__name__)

_END = object()
_LOGGED_BAD = 20
_DUPLICATE_EXAMPLES = 5


@dataclass
class IngestSummary:
    """What an ingestion run did (this run only; ``resumed`` counts what a checkpoint skipped).

    Attributes:
        index: the physical index written.
        model: the model's name; ``model_fingerprint`` its fingerprint.
        read: input records read (valid or not); at the end
            ``read == indexed + unchanged + failed + deleted``.
        indexed: documents embedded and confirmed written.
        unchanged: documents already indexed with the same content and model (not re-embedded).
        failed: documents sent to the dead-letter file (bad input or refused by Elasticsearch).
        truncated: indexed documents whose text was longer than the model's max sequence length.
        duplicates: valid records whose id an earlier record of this run already had (the later one
            replaced the earlier one in the index); ``duplicate_examples`` names the first few.
        resumed: records skipped because the checkpoint said an earlier run finished them.
        deleted: delete records (``"_op": "delete"``) done (a document that was not there counts too).
        retries: bulk/lookup retries after 429, 5xx or connection errors.
        seconds: wall time; ``embed_seconds``: time spent in the encoder.
        dead_letter: the dead-letter file, when one was given.
        complete: the whole input was processed.
    """

    index: str
    model: str
    model_fingerprint: str
    read: int = 0
    indexed: int = 0
    unchanged: int = 0
    failed: int = 0
    truncated: int = 0
    duplicates: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    resumed: int = 0
    deleted: int = 0
    retries: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    dead_letter: str | None = None
    complete: bool = False

    @property
    def docs_per_s(self) -> float:
        """Input records processed per second of wall time."""
        return self.read / self.seconds if self.seconds > 0 else 0.0

    @property
    def embed_docs_per_s(self) -> float:
        """Documents embedded per second of encoder time."""
        return self.indexed / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["docs_per_s"] = round(self.docs_per_s, 2)
        out["embed_docs_per_s"] = round(self.embed_docs_per_s, 2)
        out["seconds"] = round(self.seconds, 3)
        out["embed_seconds"] = round(self.embed_seconds, 3)
        return out

    def format(self) -> str:
        """One human line (plus where the bad documents went)."""
        text = (f"read {self.read}, indexed {self.indexed}, unchanged {self.unchanged}, failed {self.failed}, "
                f"truncated {self.truncated} in {self.seconds:.1f} s ({self.docs_per_s:.1f} docs/s) "
                f"into {self.index}")
        if self.deleted:
            text += f"; deleted {self.deleted}"
        if self.resumed:
            text += f"; resumed after {self.resumed} records done earlier"
        if self.retries:
            text += f"; {self.retries} retries"
        if self.duplicates:
            text += (f"\n{self.duplicates} record(s) reused the id of an earlier record (later records replaced "
                     f"earlier ones): {'; '.join(self.duplicate_examples)}")
        if self.failed and self.dead_letter:
            text += f"\n{self.failed} bad document(s) with reasons in {self.dead_letter}"
        return text


def default_checkpoint_path(source: str | os.PathLike[str], index: str) -> Path:
    """Where the CLI keeps the checkpoint of ``source`` -> ``index`` (under ``XDG_STATE_HOME``)."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    key = hashlib.sha256(f"{Path(source).resolve()}\0{index}".encode()).hexdigest()[:16]
    return base / "esdistill" / "checkpoints" / f"{index}-{key}.json"


class _DeadLetter:
    """Append-only JSONL of refused documents; truncated to a checkpoint's size on resume."""

    def __init__(self, path: Path | None, *, resume_size: int | None) -> None:
        self.path = path
        self.count = 0
        self._file = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_size is not None and path.exists():
            with open(path, "r+b") as f:
                f.truncate(resume_size)
            self._file = open(path, "ab")  # noqa: SIM115 - kept open for the run, closed by close()
        else:
            self._file = open(path, "wb")  # noqa: SIM115 - kept open for the run, closed by close()

    def write(self, entry: dict[str, Any]) -> None:
        self.count += 1
        if self._file is None:
            log = logger.warning if self.count <= _LOGGED_BAD else logger.debug
            log("bad document (record %s, line %s, id %s): %s", entry.get("position"), entry.get("line"),
                entry.get("id"), entry["reason"])
            return
        line = json.dumps(entry, ensure_ascii=False, default=repr)
        self._file.write(line.encode("utf-8", "backslashreplace") + b"\n")

    def sync(self) -> int:
        if self._file is None:
            return 0
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class _Chunk:
    records: list[Record] = field(default_factory=list)
    bad: list[tuple[Record, str | None, str]] = field(default_factory=list)  # record, id, reason
    to_embed: list[tuple[Record, PreparedDocument]] = field(default_factory=list)
    unchanged: int = 0
    vectors: np.ndarray | None = None
    teacher_vectors: np.ndarray | None = None
    truncated: np.ndarray | None = None
    duplicates: list[tuple[Record, str]] = field(default_factory=list)  # record, id already seen
    deletes: list[tuple[Record, str]] = field(default_factory=list)  # record, id to delete
    consumed: tuple[int, str] | None = None  # bytes and sha256 of the input up to the chunk's end


class IngestHook:
    """Embed documents with a bi-encoder and write them into an esdistill index.

    Args:
        client: an ``elasticsearch.Elasticsearch`` client.
        index: the index (alias) to write; it must exist and match the encoder's model.
        encoder: an ``OnnxEncoder`` (anything with ``manifest`` and ``encode_with_info``).
        text_fields: fields to embed (default: the index's text fields).
        id_field: field holding the document id (``_id`` for BEIR corpora).
        separator: joins the text fields before embedding.
        batch_size: documents per chunk (one lookup, one encoder call, one bulk request).
        encode_batch_size: the encoder's own batch size (default: the encoder's).
        dead_letter: JSONL file for bad documents (default: they are only logged and counted).
        checkpoint: JSON file recording progress, for resuming after a crash (default: none).
        skip_unchanged: look up stored content hashes and skip unchanged documents.
        retry: backoff for transient Elasticsearch failures.
        queue_size: chunks buffered between stages.
        progress: show a progress bar (default: when stderr is a terminal).
        refresh: refresh the index at the end, so the documents are searchable at once.
        vector_format: ``base64`` (Elasticsearch >= 9.3), ``floats`` or ``auto``.
        request_timeout: seconds per bulk request.
        max_bulk_bytes: a chunk is split into bulk requests of at most this many bytes.
        description: label of the progress bar.

    Raises:
        FingerprintError: the encoder's model is not the one the index was built with.
        ConfigError: the index does not exist or an argument is invalid.

    One hook runs one ingestion at a time; build one hook per concurrent caller (they are cheap:
    the model check is one mapping lookup).
    """

    def __init__(
        self,
        client: Any,
        index: str,
        encoder: Any,
        *,
        text_fields: Iterable[str] | None = None,
        id_field: str = "_id",
        separator: str = " ",
        batch_size: int = 256,
        encode_batch_size: int | None = None,
        dead_letter: str | os.PathLike[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        skip_unchanged: bool = True,
        retry: RetryPolicy | None = None,
        queue_size: int = 2,
        progress: bool | None = None,
        refresh: bool = True,
        vector_format: str = "auto",
        request_timeout: float = 120.0,
        max_bulk_bytes: int = 16 << 20,
        description: str | None = None,
    ) -> None:
        if batch_size < 1 or queue_size < 1 or request_timeout <= 0 or max_bulk_bytes < 1:
            raise ConfigError(f"batch_size={batch_size}, queue_size={queue_size}, request_timeout={request_timeout}, "
                              f"max_bulk_bytes={max_bulk_bytes}: all must be positive")
        if vector_format not in ("auto", "base64", "floats"):
            raise ConfigError(f"vector_format={vector_format!r} (choose auto, base64 or floats)")
        self.client = client
        self.encoder = encoder
        self.manifest = encoder.manifest
        manager = IndexManager(client, index)
        self.meta = manager.check_model(self.manifest)
        self.index = manager.current()
        self.teacher = teacher_embedder(self.meta)
        fields_ = tuple(text_fields) if text_fields is not None else self.meta.text_fields
        if set(fields_) - set(self.meta.text_fields):
            logger.warning("text fields %s are not mapped as text in %s (mapped: %s): they are embedded and "
                           "stored but BM25 will not see them", sorted(set(fields_) - set(self.meta.text_fields)),
                           self.index, ", ".join(self.meta.text_fields))
        self.spec = DocumentSpec(text_fields=fields_, id_field=id_field, separator=separator,
                                 vector_field=self.meta.vector_field)
        self.batch_size = batch_size
        self.encode_batch_size = encode_batch_size
        self.dead_letter = Path(dead_letter) if dead_letter is not None else None
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.skip_unchanged = skip_unchanged
        self.retry = retry or RetryPolicy()
        self.queue_size = queue_size
        self.progress = progress
        self.refresh = refresh
        self.request_timeout = request_timeout
        self.max_bulk_bytes = max_bulk_bytes
        self._count_lock = threading.Lock()
        self.description = description or f"ingest {index}"
        self.vector_format = _vector_format(client) if vector_format == "auto" else vector_format

    # ------------------------------------------------------------------ public entry points
    def ingest(self, docs: Iterable[Any], *, total: int | None = None, source: str = "iterable") -> IngestSummary:
        """Ingest an iterable of documents (dicts); return the summary.

        Args:
            docs: the documents, e.g. ``{"_id": "d1", "title": ..., "text": ...}``.
            total: how many there are (for the progress bar; ``len(docs)`` when available).
            source: a name for this input, stored in the checkpoint so that a checkpoint is only
                reused for the same input.

        With a checkpoint, the documents it says are done are hashed again and compared with it:
        when they changed, a list or tuple is ingested again from the beginning, any other iterable
        is refused (it cannot be read twice).

        Raises:
            ConfigError: the documents a checkpoint says are done changed, and ``docs`` is not a list
                or tuple.
            IngestError: ingestion stopped early (``exc.summary`` says how far it got; re-run with
                the same checkpoint to resume).
        """
        if total is None and hasattr(docs, "__len__"):
            total = len(docs)  # type: ignore[arg-type]
        ckpt = Checkpoint(self.checkpoint, self._identity({"source": source}))
        consumed = ConsumedInput() if self.checkpoint is not None else None
        iterator = consumed.documents(docs) if consumed is not None else iter(docs)
        if ckpt.position and not self._skip_done(iterator, ckpt, consumed, rereadable=isinstance(docs, (list, tuple))):
            ckpt.restart()
            consumed = ConsumedInput()
            iterator = consumed.documents(docs)
        records = (Record(position=ckpt.position + i, doc=d) for i, d in enumerate(iterator))
        return self._run(records, total=total, ckpt=ckpt, consumed=consumed)

    def ingest_jsonl(self, path: str | os.PathLike[str]) -> IngestSummary:
        """Ingest a JSONL file (one document per line; BEIR ``corpus.jsonl`` works as is).

        Malformed lines are dead-lettered with their line number. With a checkpoint, a re-run after
        a crash re-reads the finished part of the file, checks it against the checkpoint's hash and
        continues after it; when that part changed, the file is ingested again from the beginning.

        Raises:
            ConfigError: the file cannot be read.
            IngestError: ingestion stopped early (re-run with the same checkpoint to resume).
        """
        path = Path(path)
        ckpt = Checkpoint(self.checkpoint, self._identity({"path": str(path.resolve())}))
        consumed = ConsumedInput() if self.checkpoint is not None else None
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ConfigError(f"cannot read input {path}: {exc}") from None
        with stream:
            if ckpt.position and (consumed is None or not rehash_prefix(stream, ckpt, consumed)):
                logger.warning("input %s changed in the part checkpoint %s says is done; ingesting it again from the "
                               "beginning (documents already indexed unchanged are not embedded again)",
                               path, self.checkpoint)
                ckpt.restart()
                consumed = ConsumedInput()
                stream.seek(0)
            total = _count_lines(path) if self._show_progress() else None
            lines = consumed.lines(stream) if consumed is not None else stream
            records = read_jsonl(lines, start_offset=ckpt.offset, start_line=ckpt.line,  # type: ignore[arg-type]
                                 start_position=ckpt.position)
            return self._run(records, total=total, ckpt=ckpt, consumed=consumed)

    def ingest_stream(self, stream: IO[bytes], *, source: str = "stream") -> IngestSummary:
        """Ingest JSONL from a binary stream (e.g. ``sys.stdin.buffer``).

        Resuming reads as many records as the checkpoint says are done, checks them against the
        checkpoint's hash and skips them (read, not embedded).

        Raises:
            ConfigError: the records the checkpoint says are done differ from this stream's (nothing
                was written; delete the checkpoint to ingest the stream from the beginning).
            IngestError: ingestion stopped early (re-run with the same checkpoint to resume).
        """
        ckpt = Checkpoint(self.checkpoint, self._identity({"source": source}))
        consumed = ConsumedInput() if self.checkpoint is not None else None
        records = read_jsonl(consumed.lines(stream) if consumed is not None else stream)  # type: ignore[arg-type]
        if ckpt.position:
            self._skip_done(records, ckpt, consumed, rereadable=False)
        return self._run(records, total=None, ckpt=ckpt, consumed=consumed)

    def _skip_done(self, items: Iterator[Any], ckpt: Checkpoint, consumed: ConsumedInput | None, *,
                   rereadable: bool) -> bool:
        """Read the ``ckpt.position`` items an earlier run finished and check their hash.

        Returns:
            True when they are what the checkpoint vouches for; False when they changed and the input
            can be read again from the beginning.

        Raises:
            ConfigError: they changed and the input cannot be read again.
        """
        read = sum(1 for _ in itertools.islice(items, ckpt.position))
        if consumed is not None and read == ckpt.position and consumed.marked_hexdigest() == ckpt.consumed_sha256:
            return True
        if rereadable:
            logger.warning("the first %d documents differ from the ones checkpoint %s was written for; ingesting "
                           "again from the beginning (documents already indexed unchanged are not embedded again)",
                           ckpt.position, self.checkpoint)
            return False
        raise ConfigError(f"the input is not the one checkpoint {self.checkpoint} was written for: its first "
                          f"{ckpt.position} records differ (or it has fewer). Nothing was written. Delete the "
                          "checkpoint (or pass another one) to ingest this input from the beginning.")

    # ------------------------------------------------------------------ pipeline
    def _identity(self, source: dict[str, Any]) -> dict[str, Any]:
        return {"index": self.index, "physical": self._physical_uuids(),
                "model_fingerprint": self.manifest.fingerprint, "text_fields": list(self.spec.text_fields),
                "id_field": self.spec.id_field, "separator": self.spec.separator, **source}

    def _physical_uuids(self) -> list[str]:
        """The uuids of the indices behind ``self.index`` now. A checkpoint is only resumed into the
        same physical index: when the name was deleted and created again, or an alias moved to a new
        version, the documents the checkpoint says are done are not there, so it starts over."""
        try:
            found = call_with_retry(
                lambda: self.client.indices.get(index=self.index, filter_path="*.settings.index.uuid"),
                what=f"the uuid of {self.index}", policy=self.retry)
        except Exception:  # noqa: BLE001 - no such index yet: nothing can be resumed into it
            return []
        return sorted(str(v["settings"]["index"]["uuid"]) for v in dict(found or {}).values())

    def _show_progress(self) -> bool:
        return self.progress if self.progress is not None else sys.stderr.isatty()

    def _run(self, records: Iterator[Record], *, total: int | None, ckpt: Checkpoint,
             consumed: ConsumedInput | None = None) -> IngestSummary:
        from tqdm import tqdm

        started = time.perf_counter()
        summary = IngestSummary(index=self.index, model=self.manifest.name,
                                model_fingerprint=self.manifest.fingerprint, resumed=ckpt.position,
                                dead_letter=str(self.dead_letter) if self.dead_letter else None)
        dead = _DeadLetter(self.dead_letter, resume_size=ckpt.dead_letter_size if ckpt.resumed else None)
        self._stop = threading.Event()
        self._halt_reading = threading.Event()
        self._errors: list[BaseException] = []
        self._consumed = consumed
        self._seen_ids: set[int] = set()
        self._deleted_ids: set[str] = set()
        to_embed: queue.Queue = queue.Queue(self.queue_size)
        to_send: queue.Queue = queue.Queue(self.queue_size)
        bar = tqdm(total=total, initial=ckpt.position, unit="doc", desc=self.description,
                   disable=not self._show_progress(), dynamic_ncols=True)
        reader = threading.Thread(target=self._guard, args=(self._read, records, to_embed, summary),
                                  name="esdistill-ingest-read", daemon=True)
        sender = threading.Thread(target=self._guard, args=(self._send, to_send, summary, dead, ckpt, bar),
                                  name="esdistill-ingest-send", daemon=True)
        reader.start()
        sender.start()
        try:
            self._embed(to_embed, to_send, summary)
        except Stopped:
            pass
        except Exception as exc:  # noqa: BLE001 - the encoder failed: stop reading, but let the sender
            self._errors.append(exc)  # confirm what was already embedded, so the checkpoint is as far as it can be
            self._halt_reading.set()
            try:
                self._put(to_send, _END)
            except Stopped:
                pass
        except BaseException:  # KeyboardInterrupt: stop at once, keep the checkpoint
            self._stop.set()
            raise
        finally:
            reader.join()
            sender.join()
            bar.close()
            dead.close()
            summary.seconds = time.perf_counter() - started
        if self._errors:
            exc = self._errors[0]
            if isinstance(exc, KeyboardInterrupt):
                raise exc
            if isinstance(exc, IngestError):
                exc.summary = summary
                raise exc
            if isinstance(exc, EsdistillError):
                raise exc
            raise IngestError(
                f"ingestion into {self.index} stopped after {summary.read} records: {type(exc).__name__}: {exc}. "
                "Documents confirmed so far are kept; run again with the same checkpoint to resume.",
                summary=summary,
            ) from exc
        if self.refresh:
            call_with_retry(lambda: self.client.indices.refresh(index=self.index), what=f"refresh {self.index}",
                            policy=self.retry)
        ckpt.remove()
        summary.complete = True
        summary.seconds = time.perf_counter() - started
        logger.info("%s", summary.format())
        return summary

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._errors.append(exc)
            self._stop.set()

    def _put(self, q: queue.Queue, item: Any, halt: threading.Event | None = None) -> None:
        while not self._stop.is_set() and not (halt is not None and halt.is_set()):
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise Stopped()

    def _get(self, q: queue.Queue) -> Any:
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.2)
            except queue.Empty:
                continue
        raise Stopped()

    # stage 1 (reader thread): read, validate, look up unchanged documents
    def _read(self, records: Iterator[Record], out: queue.Queue, summary: IngestSummary) -> None:
        chunk = _Chunk()
        for rec in records:
            if self._stop.is_set() or self._halt_reading.is_set():
                raise Stopped()
            if rec.error is None and self._is_delete(rec) != bool(chunk.deletes) and (chunk.deletes or chunk.to_embed):
                # a chunk either indexes or deletes, so that the writes keep the input's order
                self._close_chunk(chunk, summary)
                self._put(out, chunk, self._halt_reading)
                chunk = _Chunk()
            chunk.records.append(rec)
            if rec.error is not None:
                chunk.bad.append((rec, None, rec.error))
            else:
                try:
                    target = delete_target(rec.doc, self.spec)
                    prepared = prepare(rec.doc, self.spec) if target is None else None
                except BadDocument as exc:
                    where = f"line {rec.line}: " if rec.line is not None else f"record {rec.position}: "
                    doc_id = rec.doc.get(self.spec.id_field) if isinstance(rec.doc, dict) else None
                    chunk.bad.append((rec, doc_id if isinstance(doc_id, (str, int)) else None, where + exc.reason))
                else:
                    if prepared is None:
                        chunk.deletes.append((rec, str(target)))
                        self._deleted_ids.add(str(target))
                        self._seen_ids.discard(hash(str(target)))  # indexing it again replaces nothing
                    else:
                        chunk.to_embed.append((rec, prepared))
                        self._note_id(chunk, rec, prepared.id)
            if len(chunk.records) >= self.batch_size:
                self._close_chunk(chunk, summary)
                self._put(out, chunk, self._halt_reading)
                chunk = _Chunk()
        if chunk.records:
            self._close_chunk(chunk, summary)
            self._put(out, chunk, self._halt_reading)
        self._put(out, _END, self._halt_reading)

    def _note_id(self, chunk: _Chunk, rec: Record, doc_id: str) -> None:
        """Remember ``doc_id`` (its hash: ids are compared as the strings Elasticsearch stores)."""
        key = hash(doc_id)
        if key in self._seen_ids:
            chunk.duplicates.append((rec, doc_id))
        else:
            self._seen_ids.add(key)

    def _close_chunk(self, chunk: _Chunk, summary: IngestSummary) -> None:
        """Note how far the input is read at the chunk's last record, then look up unchanged documents."""
        if self._consumed is not None:
            chunk.consumed = (self._consumed.marked_size, self._consumed.marked_hexdigest())
        self._lookup(chunk, summary)

    def _lookup(self, chunk: _Chunk, summary: IngestSummary) -> None:
        if not self.skip_unchanged or not chunk.to_embed:
            return
        ids = list(dict.fromkeys(doc.id for _, doc in chunk.to_embed))

        def mget() -> Any:
            return self.client.mget(index=self.index, ids=ids, source_includes=["content_hash", "model_fingerprint"])

        resp = call_with_retry(mget, what=f"lookup in {self.index}", policy=self.retry, stop=self._stop,
                               on_retry=lambda: self._bump(summary))
        stored = {d["_id"]: d.get("_source", {}) for d in resp["docs"] if d.get("found")}
        fingerprint = self.manifest.fingerprint
        keep = []
        for rec, doc in chunk.to_embed:
            old = stored.get(doc.id)
            if doc.id in self._deleted_ids:  # an earlier delete of this run may not be written yet
                old = None
            if old and old.get("content_hash") == doc.content_hash and old.get("model_fingerprint") == fingerprint:
                chunk.unchanged += 1
            else:
                keep.append((rec, doc))
        chunk.to_embed = keep

    # stage 2 (main thread): embed
    def _embed(self, inp: queue.Queue, out: queue.Queue, summary: IngestSummary) -> None:
        while (chunk := self._get(inp)) is not _END:
            if chunk.to_embed:
                texts = [doc.text for _, doc in chunk.to_embed]
                t0 = time.perf_counter()
                if hasattr(self.encoder, "encode_with_info"):
                    res = self.encoder.encode_with_info(texts, kind="document", batch_size=self.encode_batch_size)
                    vectors, truncated = res.embeddings, res.truncated
                else:
                    vectors = self.encoder.encode(texts, kind="document", batch_size=self.encode_batch_size)
                    truncated = np.zeros(len(texts), dtype=bool)
                if self.teacher is not None:
                    chunk.teacher_vectors = self.teacher.embed(texts)
                summary.embed_seconds += time.perf_counter() - t0
                chunk.vectors = np.asarray(vectors, dtype=np.float32)
                chunk.truncated = np.asarray(truncated, dtype=bool)
                if chunk.vectors.shape != (len(texts), int(self.meta.dims)):
                    raise IngestError(f"the encoder returned vectors of shape {chunk.vectors.shape} for "
                                      f"{len(texts)} texts; the index expects {self.meta.dims} dims")
            self._put(out, chunk)
        self._put(out, _END)

    # stage 3 (sender thread): bulk write, dead-letter, checkpoint
    def _send(self, inp: queue.Queue, summary: IngestSummary, dead: _DeadLetter, ckpt: Checkpoint,
              bar: Any) -> None:
        while (chunk := self._get(inp)) is not _END:
            rejected: list[tuple[int, str]] = []
            if chunk.to_embed:
                teacher = chunk.teacher_vectors if chunk.teacher_vectors is not None else [None] * len(chunk.to_embed)
                lines = [self._line(doc, vec, tvec)
                         for (_, doc), vec, tvec in zip(chunk.to_embed, chunk.vectors, teacher)]
                outcome = send_bulk(self.client, self.index, lines, policy=self.retry, stop=self._stop,
                                    request_timeout=self.request_timeout, on_retry=lambda: self._bump(summary),
                                    max_bytes=self.max_bulk_bytes)
                rejected = outcome.rejected
                summary.indexed += outcome.ok
                refused = {pos for pos, _ in rejected}
                summary.truncated += int(sum(bool(t) for i, t in enumerate(chunk.truncated) if i not in refused))
            if chunk.deletes:
                self._send_deletes(chunk, summary, dead)
            for rec, doc_id, reason in chunk.bad:
                dead.write(_dead_entry(rec, doc_id, reason, "input"))
            for pos, reason in rejected:
                rec, doc = chunk.to_embed[pos]
                where = f"line {rec.line}: " if rec.line is not None else f"record {rec.position}: "
                dead.write(_dead_entry(rec, doc.id, where + reason, "elasticsearch"))
            summary.failed += len(chunk.bad) + len(rejected)
            summary.unchanged += chunk.unchanged
            summary.read += len(chunk.records)
            self._report_duplicates(chunk, summary)
            last = chunk.records[-1]
            ckpt.save(position=last.position + 1, offset=last.next_offset, line=last.line,
                      dead_letter_size=dead.sync(), consumed_sha256=_consumed_digest(chunk, last))
            bar.update(len(chunk.records))

    def _is_delete(self, rec: Record) -> bool:
        try:
            return delete_target(rec.doc, self.spec) is not None
        except BadDocument:
            return False

    def _send_deletes(self, chunk: _Chunk, summary: IngestSummary, dead: _DeadLetter) -> None:
        from esdistill.plugin._writes import delete_documents

        result = delete_documents(self.client, self.index, [doc_id for _, doc_id in chunk.deletes],
                                  policy=self.retry, refresh=False)
        refused = dict(result.failed)
        for rec, doc_id in chunk.deletes:
            if doc_id in refused:
                where = f"line {rec.line}: " if rec.line is not None else f"record {rec.position}: "
                dead.write(_dead_entry(rec, doc_id, where + refused[doc_id], "elasticsearch"))
                summary.failed += 1
            else:
                summary.deleted += 1

    def delete(self, ids: Iterable[Any], *, refresh: bool | None = None) -> Any:
        """Delete documents by id from the index (an id that is not there is listed, not an error).

        Args:
            ids: the document ids.
            refresh: make the deletes visible at once (default: as the hook's ``refresh``).

        Returns:
            A :class:`~esdistill.plugin._writes.DeleteResult` (``deleted``, ``not_found``, ``failed``).

        Example:
            >>> hook.delete(["d1", "d2"]).deleted                 # doctest: +SKIP
            2
        """
        from esdistill.plugin._writes import delete_documents

        return delete_documents(self.client, self.index, ids, policy=self.retry,
                                refresh=self.refresh if refresh is None else refresh)

    @staticmethod
    def _report_duplicates(chunk: _Chunk, summary: IngestSummary) -> None:
        for rec, doc_id in chunk.duplicates:
            summary.duplicates += 1
            where = f"line {rec.line}" if rec.line is not None else f"record {rec.position}"
            if len(summary.duplicate_examples) < _DUPLICATE_EXAMPLES:
                summary.duplicate_examples.append(f"{where}: id {doc_id!r}")
            log = logger.warning if summary.duplicates <= _LOGGED_BAD else logger.debug
            log("%s: id %r was already used by an earlier record of this input (ids are compared as strings, so "
                "12345 and \"12345\" are the same id); this record replaces the earlier one", where, doc_id)

    def _bump(self, summary: IngestSummary) -> None:
        with self._count_lock:
            summary.retries += 1

    def _line(self, doc: PreparedDocument, vector: np.ndarray, teacher_vector: np.ndarray | None = None) -> bytes:
        source = dict(doc.source)
        source["content_hash"] = doc.content_hash
        source["model_fingerprint"] = self.manifest.fingerprint
        source[self.meta.vector_field] = self._vector(vector)
        if teacher_vector is not None and self.teacher is not None:
            source[self.teacher.field] = self._vector(teacher_vector)
        action = json.dumps({"index": {"_id": doc.id}}, ensure_ascii=False)
        body = json.dumps(source, ensure_ascii=False, separators=(",", ":"))
        return f"{action}\n{body}\n".encode()

    def _vector(self, vector: np.ndarray) -> Any:
        return vector_value(vector, self.vector_format)


def _dead_entry(rec: Record, doc_id: Any, reason: str, stage: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"position": rec.position, "line": rec.line, "id": doc_id, "stage": stage,
                             "reason": reason}
    if rec.error is not None:
        entry["raw"] = rec.raw
    else:
        entry["document"] = rec.doc
    return entry


def _consumed_digest(chunk: _Chunk, last: Record) -> str:
    """The hash a checkpoint after ``chunk`` vouches for ("" when none was taken: a resume restarts)."""
    if chunk.consumed is None:
        return ""
    size, digest = chunk.consumed
    return digest if last.next_offset is None or last.next_offset == size else ""


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count
