"""Helpers for the query-hook tests: tiny models exported to ONNX once, a tiny index built the real way.

The student is the tiny bi-encoder from ``esdt_helpers`` exported by ``export_model`` (so the
queries run through the real ``OnnxEncoder``), the index is created by ``IndexManager`` and filled
by ``IngestHook``, exactly as a user's would be.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

from esdt_helpers import TINY_COLLECTION

_EXPORTS: dict[tuple[str, str], Path] = {}
_LOCK = threading.Lock()


def export_once(src: Path, out_root: Path, name: str) -> Path:
    """Export ``src`` (fp32 ONNX) into ``out_root/name`` once per session."""
    key = (str(src), name)
    with _LOCK:
        if key not in _EXPORTS:
            from esdistill.export.onnx_export import export_model
            from esdt_helpers import tiny_texts

            out = Path(out_root) / name
            export_model(str(src), out, quantize="none", parity_texts=tiny_texts())
            _EXPORTS[key] = out
        return _EXPORTS[key]


def tiny_docs() -> list[dict[str, Any]]:
    """The tiny corpus, with a ``lang`` keyword alternating ``en``/``de`` for filter tests."""
    docs = [json.loads(line) for line in (TINY_COLLECTION / "corpus.jsonl").read_text().splitlines()]
    for i, d in enumerate(docs):
        d["lang"] = "en" if i % 2 == 0 else "de"
    return docs


def build_index(client: Any, alias: str, student_dir: Path, *, index_options: str = "flat") -> list[dict[str, Any]]:
    """Create ``alias`` for the student's vectors and ingest the tiny corpus; return the docs."""
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.index import IndexManager, IndexSpec
    from esdistill.plugin.ingest import IngestHook

    encoder = OnnxEncoder(student_dir)
    spec = IndexSpec(index_options=index_options, extra_properties={"lang": {"type": "keyword"}})
    IndexManager(client, alias).create(encoder.manifest, spec)
    docs = tiny_docs()
    summary = IngestHook(client, alias, encoder, progress=False).ingest(docs)
    assert summary.indexed == len(docs), summary.format()
    return docs


class BlackHole:
    """A TCP server that accepts connections and never answers (a hung Elasticsearch)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self._conns.append(conn)
            except OSError:
                continue

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for c in self._conns:
            c.close()
        self.sock.close()
