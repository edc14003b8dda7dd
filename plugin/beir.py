"""Read and write collections in the BEIR layout: a corpus, queries and qrels.

``corpus.jsonl`` lines are ``{"_id", "title", "text"}``; ``queries.jsonl`` lines are
``{"_id", "text"}`` (a TSV ``id<TAB>text`` also works); qrels are ``query-id corpus-id score``
(tab- or space-separated, a ``query-id ...`` header optional, the TREC ``qid 0 docid grade`` form
accepted). Anything else raises :class:`ConfigError` naming the file and line. This is the one
reader of these files: evaluation, training, synthetic queries and the benchmarks all use it.

Example::

    >>> corpus = load_corpus("data/scifact")          # doctest: +SKIP
    >>> corpus["4983"].full[:40]                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from esdistill.plugin._errors import ConfigError
from esdistill.plugin.documents import document_text

__all__ = ["Doc", "load_corpus", "load_qrels", "load_queries", "write_corpus", "write_qrels", "write_queries"]

#: first words of a qrels header line (BEIR writes ``query-id corpus-id score``)
_QRELS_HEADER = frozenset({"query-id", "query_id", "qid"})


@dataclass(frozen=True)
class Doc:
    """A corpus document.

    Attributes:
        doc_id: the document's id.
        title: its title (may be empty).
        text: its body.
    """

    doc_id: str
    title: str
    text: str

    @property
    def full(self) -> str:
        """Title and body as :func:`~esdistill.plugin.documents.document_text` joins them: the
        text the models see, the same text ingestion embeds."""
        return document_text({"title": self.title, "text": self.text})


def _resolve(path: str | os.PathLike[str], default_name: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / default_name
    if not p.is_file():
        raise ConfigError(f"{p} does not exist; pass a {default_name} file or a BEIR folder that has one")
    return p


def load_corpus(path: str | os.PathLike[str]) -> dict[str, Doc]:
    """Load ``corpus.jsonl`` (or a BEIR folder) into ``{doc_id: Doc}``, in file order.

    Raises:
        ConfigError: the file is missing, a line is not JSON, or a line lacks ``_id``/``text``.
    """
    p = _resolve(path, "corpus.jsonl")
    corpus: dict[str, Doc] = {}
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                doc = Doc(str(row["_id"]), str(row.get("title") or ""), str(row["text"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{p}:{n}: expected a JSON object with _id, title, text ({exc})") from None
            corpus[doc.doc_id] = doc
    if not corpus:
        raise ConfigError(f"{p} holds no documents")
    return corpus


def load_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """Load queries (``queries.jsonl`` lines ``{"_id", "text"}`` or TSV ``id<TAB>text``).

    Raises:
        ConfigError: the file is missing or a line cannot be read.
    """
    p = _resolve(path, "queries.jsonl")
    out: dict[str, str] = {}
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    row = json.loads(line)
                    out[str(row["_id"])] = str(row["text"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigError(f"{p}:{n}: expected {{\"_id\", \"text\"}} ({exc})") from None
            else:
                qid, sep, text = line.rstrip("\n").partition("\t")
                if not sep:
                    raise ConfigError(f"{p}:{n}: expected JSON or 'id<TAB>text'")
                out[qid] = text
    return out


def load_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Load TSV qrels ``query-id corpus-id score`` (header optional) into ``{qid: {doc_id: grade}}``.

    Raises:
        ConfigError: the file is missing or a line has the wrong shape.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"qrels file {p} does not exist")
    qrels: dict[str, dict[str, int]] = {}
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if n == 1 and parts[0].lower() in _QRELS_HEADER:
                continue
            if len(parts) == 4:  # TREC style: qid 0 docid grade
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise ConfigError(f"{p}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', got {line.rstrip()!r}")
            try:
                grade = int(float(parts[2]))
            except ValueError:
                raise ConfigError(f"{p}:{n}: score {parts[2]!r} is not a number") from None
            qrels.setdefault(parts[0], {})[parts[1]] = grade
    return qrels


def write_queries(path: str | os.PathLike[str], queries: dict[str, str]) -> None:
    """Write ``{qid: text}`` as ``queries.jsonl``."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": qid, "text": text}) + "\n" for qid, text in queries.items())


def write_corpus(path: str | os.PathLike[str], corpus: Mapping[str, Doc]) -> None:
    """Write ``{doc_id: Doc}`` as a BEIR ``corpus.jsonl`` (the keys are the ids written)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": did, "title": d.title, "text": d.text}) + "\n" for did, d in corpus.items())


def write_qrels(path: str | os.PathLike[str], qrels: dict[str, dict[str, int]]) -> None:
    """Write qrels as a BEIR TSV with a header."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in qrels.items():
            f.writelines(f"{qid}\t{did}\t{grade}\n" for did, grade in docs.items())
