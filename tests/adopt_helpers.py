"""A team's own index, made with plain elasticsearch-py the way a team without esdistill makes one:
text fields with a custom analyzer, a keyword field, its own mapping ``_meta``; plus helpers to
read back what esdistill did to it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
from esdt_helpers import TINY_COLLECTION

CATEGORIES = ("bio", "geo", "phys")
TEAM_META = {"owner": "search-team", "schema_version": 7, "notes": {"pii": False}}
TEAM_SETTINGS = {
    "number_of_shards": 2,
    "number_of_replicas": 0,
    # the test node has no analysis-common module: a custom analyzer from the server's own parts
    "analysis": {"analyzer": {"team_text": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase"]}}},
}
TEAM_MAPPING = {
    "_meta": TEAM_META,
    "properties": {
        "title": {"type": "text", "analyzer": "team_text"},
        "body": {"type": "text", "analyzer": "team_text"},
        "category": {"type": "keyword"},
        "views": {"type": "integer"},
    },
}


def team_docs() -> list[dict[str, Any]]:
    """The tiny collection in the team's layout (``body`` instead of ``text``), with a category."""
    docs = []
    for i, line in enumerate((TINY_COLLECTION / "corpus.jsonl").read_text().splitlines()):
        d = json.loads(line)
        docs.append({"_id": d["_id"], "title": d["title"], "body": d["text"], "category": CATEGORIES[i % 3],
                     "views": i})
    return docs


def make_team_index(client: Any, name: str, docs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Create ``name`` with plain elasticsearch-py and index ``docs`` (default :func:`team_docs`)."""
    docs = team_docs() if docs is None else docs
    client.indices.create(index=name, settings=TEAM_SETTINGS, mappings=TEAM_MAPPING)
    ops: list[dict[str, Any]] = []
    for d in docs:
        ops.append({"index": {"_index": name, "_id": d["_id"]}})
        ops.append({k: v for k, v in d.items() if k != "_id"})
    for start in range(0, len(ops), 2000):
        resp = client.bulk(operations=ops[start:start + 2000], refresh=False)
        assert not resp["errors"], resp
    client.indices.refresh(index=name)
    return docs


def team_bm25(client: Any, name: str, text: str, k: int = 10) -> list[str]:
    """The team's own BM25 query, by the name they always used."""
    resp = client.search(index=name, size=k, query={"multi_match": {"query": text, "fields": ["title^2", "body"]}},
                         source=False)
    return [h["_id"] for h in resp["hits"]["hits"]]


def physical_mapping(client: Any, name: str) -> dict[str, Any]:
    return next(iter(client.indices.get_mapping(index=name).values()))["mappings"]


def physical_settings(client: Any, name: str) -> dict[str, Any]:
    return next(iter(client.indices.get_settings(index=name).values()))["settings"]["index"]


def knn_ids(client: Any, name: str, vector: np.ndarray, *, k: int = 5, filters: dict[str, Any] | None = None,
            field: str = "embedding") -> list[tuple[str, float, dict[str, Any]]]:
    knn: dict[str, Any] = {"field": field, "query_vector": np.asarray(vector).tolist(), "k": k, "num_candidates": 100}
    if filters is not None:
        knn["filter"] = filters
    resp = client.search(index=name, knn=knn, size=k)
    return [(h["_id"], h["_score"], h["_source"]) for h in resp["hits"]["hits"]]


def stored_vectors(client: Any, name: str, field: str = "embedding") -> dict[str, np.ndarray]:
    """Every document's vector, read back with the vectors put into ``_source``."""
    out = {}
    resp = client.search(index=name, size=10_000, source={"includes": [field], "exclude_vectors": False},
                         query={"exists": {"field": field}})
    for h in resp["hits"]["hits"]:
        out[h["_id"]] = np.asarray(_decode(h["_source"][field]), dtype=np.float32)
    return out


def _decode(value: Any) -> list[float]:
    if isinstance(value, str):
        import base64

        return list(np.frombuffer(base64.b64decode(value), dtype=">f4"))
    return value


def own_vector(encoder: Any, doc: dict[str, Any], fields: tuple[str, ...] = ("title", "body")) -> np.ndarray:
    text = " ".join(doc[f].strip() for f in fields if doc.get(f))
    return encoder.encode_with_info([text], kind="document").embeddings[0]


class Writer(threading.Thread):
    """A team's own writer: partial text updates through the index's name with plain
    elasticsearch-py, retrying what the cluster refuses for a moment (a write block: 403)."""

    def __init__(self, client: Any, name: str, ids: list[str], *, start: threading.Event | None = None,
                 pause: float = 0.0, rounds: int = 1, field: str = "body") -> None:
        super().__init__(daemon=True, name="team-writer")
        self.client, self.name, self.ids, self.field = client, name, ids, field
        self.start_signal, self.pause, self.rounds = start, pause, rounds
        self.done = threading.Event()
        self.written: dict[str, str] = {}
        self.refused = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.start_signal is not None:
                self.start_signal.wait(timeout=300)
            for r in range(self.rounds):
                for doc_id in self.ids:
                    text = f"updated by the team, round {r}, for {doc_id}: tides follow the moon"
                    while True:
                        try:
                            self.client.update(index=self.name, id=doc_id, doc={self.field: text})
                            break
                        except Exception as exc:
                            if getattr(exc, "status_code", None) not in (403, 429, 503):
                                raise
                            self.refused += 1
                            time.sleep(0.05)
                    self.written[doc_id] = text
                    if self.pause:
                        time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.done.set()


def retry_refused(fn: Any, **kwargs: Any) -> Any:
    """Call ``fn(**kwargs)`` until the cluster stops refusing it for a moment (403 write block, 429, 503)."""
    while True:
        try:
            return fn(**kwargs)
        except Exception as exc:
            if getattr(exc, "status_code", None) not in (403, 429, 503):
                raise
            time.sleep(0.05)


class MixedWriter(threading.Thread):
    """A team's writers while esdistill copies: new documents, partial text updates and deletes,
    through the index's name with plain elasticsearch-py, until told to stop. ``expected`` is what
    the index must hold afterwards (id -> body)."""

    def __init__(self, client: Any, name: str, docs: list[dict[str, Any]], *, pause: float = 0.01) -> None:
        super().__init__(daemon=True, name="team-mixed-writer")
        self.client, self.name, self.pause = client, name, pause
        self.expected = {d["_id"]: d["body"] for d in docs}
        self.stop = threading.Event()
        self.ops = {"create": 0, "update": 0, "delete": 0}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                ids = sorted(self.expected)
                if i % 5 == 0 and len(ids) > 10:
                    victim = ids[(i * 7) % len(ids)]
                    retry_refused(self.client.delete, index=self.name, id=victim)
                    del self.expected[victim]
                    self.ops["delete"] += 1
                elif i % 3 == 0:
                    new_id = f"new-{i:05d}"
                    body = f"a new document number {i} about sea ice and glaciers"
                    retry_refused(self.client.index, index=self.name, id=new_id,
                                  document={"title": f"New {i}", "body": body, "category": "geo"})
                    self.expected[new_id] = body
                    self.ops["create"] += 1
                else:
                    doc_id = ids[(i * 11) % len(ids)]
                    body = f"edited {i}: {doc_id} is now about volcanoes"
                    retry_refused(self.client.update, index=self.name, id=doc_id, doc={"body": body})
                    self.expected[doc_id] = body
                    self.ops["update"] += 1
                time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def bodies(client: Any, name: str) -> dict[str, str]:
    """id -> body of every document under ``name``."""
    client.indices.refresh(index=name)
    resp = client.search(index=name, size=10_000, source=["body"])
    return {h["_id"]: h["_source"].get("body") for h in resp["hits"]["hits"]}


_WORDS = ("cell", "protein", "gene", "energy", "water", "light", "tide", "moon", "sun", "climate", "river", "ocean",
          "memory", "neuron", "vaccine", "virus", "carbon", "soil", "forest", "enzyme", "glacier", "volcano", "storm")


def synthetic_team_docs(n: int, *, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` deterministic documents in the team's layout; each has a unique integer ``views``, so
    a duplicate would show up as the same number twice."""
    import random

    rng = random.Random(seed)
    return [{"_id": f"doc-{i:05d}", "title": f"{rng.choice(_WORDS).title()} {i}",
             "body": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40))),
             "category": CATEGORIES[i % 3], "views": i} for i in range(n)]


def with_vectors(client: Any, index: str, field: str = "embedding") -> int:
    client.indices.refresh(index=index)
    return int(client.count(index=index, query={"exists": {"field": field}})["count"])


def views_of(client: Any, index: str) -> list[int]:
    """The ``views`` of every document under ``index`` (all of them, in pages)."""
    client.indices.refresh(index=index)
    out: list[int] = []
    pit = client.open_point_in_time(index=index, keep_alive="1m")["id"]
    after = None
    try:
        while True:
            kw = {"search_after": after} if after is not None else {}
            hits = client.search(pit={"id": pit, "keep_alive": "1m"}, size=5000, sort=[{"_shard_doc": "asc"}],
                                 source=["views"], track_total_hits=False, **kw)["hits"]["hits"]
            if not hits:
                return out
            out.extend(h["_source"]["views"] for h in hits)
            after = hits[-1]["sort"]
    finally:
        client.close_point_in_time(id=pit)
