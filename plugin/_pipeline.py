"""Read, embed and write in three overlapping stages (used by sync, in-place adoption and copies).

::

    reader thread                 calling thread              writer thread
    batches (scan, checks)  --->  encoder (embed)      --->   write (bulk, conflicts)

The stages are joined by small bounded queues, so Elasticsearch latency never idles the CPU that
embeds. When the encoder fails, reading stops but the writer still writes every batch that was
embedded before, so a resumed run has as little as possible left to do. The first error of any
stage is raised in the calling thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from esdistill.plugin._errors import IngestError

__all__ = ["EmbedBatch", "run_pipeline", "vector_format", "vector_value"]

_END = object()


@dataclass
class EmbedBatch:
    """Documents to embed and write together.

    Attributes:
        items: whatever the writer needs per document (same order as ``texts``).
        texts: the texts to embed.
        vectors: filled by the pipeline, one row per text.
        teacher_vectors: filled by the pipeline when it has a teacher (the index stores teacher
            vectors, :mod:`~esdistill.plugin.teacher_vectors`), one row per text.
        extra: anything else the reader wants the writer to see (documents to copy without a
            vector, counters).
    """

    items: list[Any] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None
    teacher_vectors: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def vector_format(client: Any) -> str:
    """``base64`` when the cluster reads base64 vectors (Elasticsearch >= 9.3), else ``floats``."""
    from esdistill.plugin.es_client import server_version_tuple

    version = server_version_tuple(client)  # an unknown version gets the format every version reads
    return "base64" if version is not None and version >= (9, 3) else "floats"


def vector_value(vector: np.ndarray, fmt: str) -> Any:
    """A vector as Elasticsearch reads it in a document: base64 of big-endian float32
    (``elasticsearch.helpers.pack_dense_vector``), or floats."""
    if fmt == "base64":
        from elasticsearch.helpers import pack_dense_vector

        return pack_dense_vector(np.asarray(vector, dtype=np.float32))
    return np.asarray(vector, dtype=np.float32).tolist()


class _Stop(Exception):
    pass


def run_pipeline(batches: Iterator[EmbedBatch], encoder: Any, write: Callable[[EmbedBatch], None], *,
                 dims: int, queue_size: int = 2, on_embed: Callable[[int, float], None] | None = None,
                 teacher: Any = None) -> None:
    """Embed every batch from ``batches`` and hand it to ``write``, the three stages overlapping.

    Args:
        batches: produced in a reader thread (the iterator may do Elasticsearch reads).
        encoder: an ``OnnxEncoder`` (anything with ``encode_with_info`` or ``encode``).
        write: called in a writer thread, in batch order.
        dims: the vector size the index expects.
        queue_size: batches buffered between stages.
        on_embed: called with ``(texts, seconds)`` after each encoder call (the teacher's included).
        teacher: a :class:`~esdistill.plugin.teacher_vectors.TeacherEmbedder` that also embeds each
            batch for the index's teacher vector field (``None``: the index stores none).

    Raises:
        Exception: the first error of any stage (the writer first finishes what was embedded).
    """
    stop = threading.Event()
    halt_reading = threading.Event()
    errors: list[BaseException] = []
    to_embed: queue.Queue = queue.Queue(queue_size)
    to_write: queue.Queue = queue.Queue(queue_size)

    def put(q: queue.Queue, item: Any, halt: threading.Event | None = None) -> None:
        while not stop.is_set() and not (halt is not None and halt.is_set()):
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stop()

    def get(q: queue.Queue) -> Any:
        while not stop.is_set():
            try:
                return q.get(timeout=0.2)
            except queue.Empty:
                continue
        raise _Stop()

    def guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            errors.append(exc)
            stop.set()

    def read() -> None:
        for batch in batches:
            put(to_embed, batch, halt_reading)
        put(to_embed, _END, halt_reading)

    def send() -> None:
        while (batch := get(to_write)) is not _END:
            write(batch)

    reader = threading.Thread(target=guard, args=(read,), name="esdistill-pipeline-read", daemon=True)
    writer = threading.Thread(target=guard, args=(send,), name="esdistill-pipeline-write", daemon=True)
    reader.start()
    writer.start()
    try:
        while (batch := get(to_embed)) is not _END:
            if batch.texts:
                t0 = time.perf_counter()
                batch.vectors = _encode(encoder, batch.texts, dims)
                if teacher is not None:
                    batch.teacher_vectors = teacher.embed(batch.texts)
                if on_embed is not None:
                    on_embed(len(batch.texts), time.perf_counter() - t0)
            put(to_write, batch)
        put(to_write, _END)
    except _Stop:
        pass
    except Exception as exc:  # noqa: BLE001 - the encoder failed: stop reading, let the writer finish
        errors.append(exc)
        halt_reading.set()
        try:
            put(to_write, _END)
        except _Stop:
            pass
    except BaseException:  # KeyboardInterrupt: stop at once
        stop.set()
        raise
    finally:
        reader.join()
        writer.join()
    if errors:
        raise errors[0]


def _encode(encoder: Any, texts: list[str], dims: int) -> np.ndarray:
    if hasattr(encoder, "encode_with_info"):
        vectors = encoder.encode_with_info(texts, kind="document").embeddings
    else:
        vectors = encoder.encode(texts, kind="document")
    out = np.asarray(vectors, dtype=np.float32)
    if out.shape != (len(texts), int(dims)):
        raise IngestError(f"the encoder returned vectors of shape {out.shape} for {len(texts)} texts; the index "
                          f"expects {dims} dims")
    return out
