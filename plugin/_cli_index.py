"""``esdistill index create|info|adopt|reindex|rollback|prune``, ``esdistill ingest``, ``sync`` and ``delete``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from esdistill.plugin._errors import ConfigError, ElasticsearchUnavailable, IngestError

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _client(args: argparse.Namespace) -> Any:
    from esdistill.plugin.es_client import connect

    return connect(args.es_url)


def _model_dir(ref: str) -> Path:
    from esdistill.plugin.models import exported_model

    return exported_model(ref)


def _manifest(ref: str) -> Any:
    from esdistill.plugin.manifest import Manifest

    return Manifest.load(_model_dir(ref))


def _encoder(args: argparse.Namespace) -> Any:
    from esdistill.plugin.encoder import OnnxEncoder

    return OnnxEncoder(_model_dir(args.model), threads=args.threads)


def _fields(text: str) -> tuple[str, ...]:
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    if not fields:
        raise ConfigError(f"--text-fields {text!r}: give comma-separated field names, e.g. title,text")
    return fields


def _extra_properties(path: str | None) -> dict[str, Any]:
    """Field mappings from ``--mapping FILE.json``: ``{"properties": {...}}`` or the properties alone."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--mapping {path}: cannot read it ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"--mapping {path}: not JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("mappings"), dict):
        data = data["mappings"]
    if isinstance(data, dict) and "properties" in data:
        data = data["properties"]
    if not isinstance(data, dict) or not all(isinstance(v, dict) and v for v in data.values()):
        raise ConfigError(f"--mapping {path}: expected {{\"properties\": {{\"FIELD\": {{\"type\": ...}}}}}}, e.g. "
                          '{"properties": {"category": {"type": "keyword"}}}')
    return data


def _spec(args: argparse.Namespace) -> Any:
    from esdistill.plugin.index import IndexSpec

    return IndexSpec(vector_field=args.vector_field, text_fields=_fields(args.text_fields),
                     index_options=args.index_options, m=args.m, ef_construction=args.ef_construction,
                     number_of_shards=args.shards, number_of_replicas=args.replicas,
                     extra_properties=_extra_properties(getattr(args, "mapping", None)))


def _teacher(args: argparse.Namespace) -> Any:
    """The teacher of ``--teacher-vectors`` (checked: a bi-encoder), or ``None``."""
    if not args.teacher_vectors:
        return None
    from esdistill.plugin.teacher_vectors import describe_teacher

    return describe_teacher(args.teacher_vectors)


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload) if args.json else text)


# ---------------------------------------------------------------------- index
def _create(args: argparse.Namespace) -> int:
    from esdistill.plugin.index import IndexManager

    manifest = _manifest(args.model)
    teacher = _teacher(args)
    mgr = IndexManager(_client(args), args.name)
    physical = mgr.create(manifest, _spec(args), teacher=teacher)
    stored = (f"; teacher vectors of {teacher.name} ({teacher.fingerprint[:12]}…, {teacher.dims} dims) in "
              f"{teacher.field}" if teacher is not None else "")
    _emit(args, {"alias": args.name, "index": physical, "model": manifest.name,
                 "model_fingerprint": manifest.fingerprint, "dims": manifest.dims,
                 "teacher": teacher.meta_fields() if teacher is not None else None},
          f"created {physical} behind alias {args.name} for model {manifest.name} "
          f"({manifest.short_fingerprint}…, {manifest.dims} dims, {args.index_options}){stored}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from esdistill.plugin.index import IndexManager

    info = IndexManager(_client(args), args.name).info(vectors=not args.no_vectors)
    lines = [f"{'alias ' + info.alias if info.current != info.alias else 'index'} -> {info.current}"]
    for v in info.versions:
        mark = "*" if v.current else " "
        if not v.esdistill:
            lines.append(f" {mark} {v.index}  docs={v.docs}  (original index, no esdistill vectors)")
            continue
        state = "  (unfinished copy)" if v.building and not v.current else ""
        lines.append(f" {mark} {v.index}  docs={v.docs}  model={v.model_name} ({v.model_fingerprint[:12]}…, "
                     f"{v.dims} dims)  {v.index_options}  created {v.created_at}{state}")
    if info.vectors is not None:
        h = info.vectors
        how = "exact" if h["stale_vectors_exact"] else f"stale sampled from {h['checked']} documents"
        lines.append(f"vectors: {h['missing_vectors']} missing, {h['stale_vectors']} stale, {h['no_text']} documents "
                     f"without text ({how}); fix with `esdistill sync --index {info.alias} --model DIR`"
                     if h["missing_vectors"] or h["stale_vectors"] else
                     f"vectors: none missing, none stale ({how})")
    _emit(args, info.to_dict(), "\n".join(lines))
    return 0


def _adopt(args: argparse.Namespace) -> int:
    from esdistill.plugin.index import IndexManager

    teacher = _teacher(args)
    mgr = IndexManager(_client(args), args.name)
    result = mgr.adopt(_encoder(args), text_fields=_fields(args.text_fields), vector_field=args.vector_field,
                       mode="copy" if args.copy else "in-place", index_options=args.index_options,
                       batch_size=args.batch_size, progress=False if args.no_progress else None, teacher=teacher)
    _emit(args, result.to_dict(), result.format())
    return 0


def _sync(args: argparse.Namespace) -> int:
    import time

    from esdistill.plugin.sync import sync_index

    if args.watch is not None and args.watch <= 0:
        raise ConfigError(f"--watch {args.watch}: give the seconds between two syncs (> 0)")
    client = _client(args)
    encoder = _encoder(args)
    while True:
        try:
            summary = sync_index(client, args.index, encoder, batch_size=args.batch_size,
                                 progress=False if args.no_progress or args.watch is not None else None)
        except (IngestError, ElasticsearchUnavailable) as exc:
            if args.watch is None:
                raise
            # a watch outlives a cluster that is down for a while: the next round resumes by itself
            print(f"esdistill: sync round failed ({exc}); trying again in {args.watch:g} s", file=sys.stderr)
        else:
            _emit(args, summary.to_dict(), summary.format())
            sys.stdout.flush()
            if args.watch is None:
                return 0
        time.sleep(args.watch)


def _delete(args: argparse.Namespace) -> int:
    from esdistill.plugin._writes import delete_documents
    from esdistill.plugin.index import IndexManager

    client = _client(args)
    mgr = IndexManager(client, args.index)
    if not mgr.exists():
        raise ConfigError(f"no index or alias named {args.index!r}")
    result = delete_documents(client, args.index, args.ids)
    text = f"deleted {result.deleted} of {len(set(args.ids))} document(s) from {args.index}"
    if result.not_found:
        text += f"; not found: {', '.join(result.not_found[:20])}"
    if result.failed:
        text += "; refused: " + "; ".join(f"{i}: {r}" for i, r in result.failed[:20])
    _emit(args, result.to_dict(), text)
    return 1 if result.failed else 0


def _reindex(args: argparse.Namespace) -> int:
    from esdistill.plugin.index import IndexManager

    mgr = IndexManager(_client(args), args.name)
    result = mgr.reindex(_encoder(args), index_options=args.index_options, m=args.m,
                         ef_construction=args.ef_construction, number_of_replicas=args.replicas,
                         batch_size=args.batch_size, progress=False if args.no_progress else None,
                         dead_letter=args.dead_letter)
    c = result.summary
    _emit(args, result.to_dict(),
          f"re-embedded {result.docs} documents into {result.new_index} in {result.seconds:.1f} s ({c.indexed} "
          f"embedded, {c.unchanged} already there, {c.caught_up} written during the copy and caught up, "
          f"{c.deleted} deleted meanwhile, {c.verified} verified; write block {c.write_block_s:.2f} s); alias "
          f"{result.alias} -> {result.new_index} (roll back with `esdistill index rollback {result.alias}`; the "
          f"old data is in {result.rollback_index})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from esdistill.plugin.index import IndexManager

    old, new = IndexManager(_client(args), args.name).rollback(to=args.to)
    _emit(args, {"alias": args.name, "from": old, "to": new}, f"alias {args.name}: {old} -> {new}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from esdistill.plugin.index import IndexManager

    deleted = IndexManager(_client(args), args.name).prune(keep=args.keep)
    _emit(args, {"alias": args.name, "deleted": deleted},
          f"deleted {', '.join(deleted)}" if deleted else "nothing to delete")
    return 0


# ---------------------------------------------------------------------- ingest
def _ingest(args: argparse.Namespace) -> int:
    from esdistill.plugin.index import IndexManager
    from esdistill.plugin.ingest import IngestHook, default_checkpoint_path

    client = _client(args)
    encoder = _encoder(args)
    mgr = IndexManager(client, args.index)
    text_fields = _fields(args.text_fields) if args.text_fields else None
    if not mgr.exists():
        if args.no_create:
            raise ConfigError(f"index {args.index!r} does not exist; create it with `esdistill index create` "
                              "or drop --no-create")
        spec = _spec_for_ingest(args, text_fields)
        physical = mgr.create(encoder.manifest, spec)
        logger.info("created index %s (%s) for model %s", args.index, physical, encoder.manifest.name)
    stdin = args.file == "-"
    if args.no_checkpoint or (stdin and not args.checkpoint):
        checkpoint = None
    else:
        checkpoint = args.checkpoint or default_checkpoint_path(args.file, args.index)
    hook = IngestHook(client, args.index, encoder, text_fields=text_fields, id_field=args.id_field,
                      batch_size=args.batch_size, dead_letter=args.dead_letter, checkpoint=checkpoint,
                      progress=False if args.no_progress else None)
    try:
        summary = hook.ingest_stream(sys.stdin.buffer, source="stdin") if stdin else hook.ingest_jsonl(args.file)
    except IngestError as exc:
        if exc.summary is not None:
            print(f"esdistill: stopped: {exc.summary.format()}", file=sys.stderr)
        if checkpoint is not None:
            print(f"esdistill: progress is saved in {checkpoint}; run the same command again to resume",
                  file=sys.stderr)
        raise
    _emit(args, summary.to_dict(), summary.format())
    return 0


def _spec_for_ingest(args: argparse.Namespace, text_fields: tuple[str, ...] | None) -> Any:
    from esdistill.plugin.index import IndexSpec

    return IndexSpec(text_fields=text_fields or ("title", "text"), index_options=args.index_options)


# ---------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--es-url", default=None, help="cluster URL (default: ESDISTILL_ES_URL or http://127.0.0.1:9200)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _teacher_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher-vectors", default=None, metavar="TEACHER",
                   help="also store this bi-encoder teacher's document vectors (exported folder or packaged name, "
                        "e.g. mpnet), so that `search --rerank` with it embeds one query, no document; "
                        "every writer (ingest, sync, adopt, reindex) fills them")


def _layout(p: argparse.ArgumentParser, *, for_reindex: bool) -> None:
    from esdistill.plugin.index import INDEX_OPTIONS

    default = None if for_reindex else "int8_hnsw"
    p.add_argument("--index-options", choices=INDEX_OPTIONS, default=default,
                   help="dense_vector index type" + (" (default: as now)" if for_reindex else " (default int8_hnsw)"))
    p.add_argument("--m", type=int, default=None, help="HNSW graph degree (default: Elasticsearch's)")
    p.add_argument("--ef-construction", type=int, default=None, help="HNSW build candidates (default: Elasticsearch's)")
    p.add_argument("--replicas", type=int, default=None if for_reindex else 0,
                   help="number_of_replicas" + (" (default: as now)" if for_reindex else " (default 0)"))


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``index``, ``ingest``, ``sync`` and ``delete`` to the ``esdistill`` parser."""
    idx = sub.add_parser("index", help="create, inspect, re-embed (blue/green) and roll back esdistill indices")
    isub = idx.add_subparsers(dest="index_cmd", required=True)

    c = isub.add_parser("create", help="create NAME-000001 for a model's vectors, behind the alias NAME")
    c.add_argument("name", help="the alias users search and ingest into")
    c.add_argument("--model", required=True, help="exported model folder (has manifest.json), or a packaged name")
    c.add_argument("--vector-field", default="embedding", help="dense_vector field (default embedding)")
    c.add_argument("--text-fields", default="title,text", help="text fields, comma-separated (default title,text)")
    c.add_argument("--shards", type=int, default=1, help="primary shards (default 1)")
    c.add_argument("--mapping", default=None, metavar="FILE.json",
                   help='more fields to map, e.g. {"properties": {"category": {"type": "keyword"}}} (filters and '
                        "facets on them work from the first document)")
    _teacher_option(c)
    _layout(c, for_reindex=False)
    _common(c)
    c.set_defaults(func=_create)

    i = isub.add_parser("info", help="show the alias, its versions, their models, document counts, and how many "
                                     "vectors are missing or stale")
    i.add_argument("name")
    i.add_argument("--no-vectors", action="store_true", help="do not count missing and stale vectors")
    _common(i)
    i.set_defaults(func=_info)

    a = isub.add_parser("adopt", help="give an existing index (made without esdistill) vectors: in place, or by a "
                                      "blue/green copy that replaces it with an alias of the same name")
    a.add_argument("name", help="the existing index (or alias) the team uses")
    a.add_argument("--model", required=True, help="exported model folder, or a packaged name (minilm)")
    a.add_argument("--text-fields", required=True, help="fields to embed, comma-separated, e.g. title,body")
    a.add_argument("--vector-field", default="embedding", help="dense_vector field to add (default embedding)")
    how = a.add_mutually_exclusive_group(required=True)
    how.add_argument("--in-place", action="store_true", help="add the vector field to the index and backfill it "
                                                             "with conditional partial updates")
    how.add_argument("--copy", action="store_true", help="copy into NAME-000001 with the whole mapping and "
                                                         "settings, then swap (the old data stays for rollback)")
    a.add_argument("--index-options", choices=_index_options(), default=None,
                   help="dense_vector index type (default int8_hnsw)")
    a.add_argument("--threads", type=int, default=None, help="encoder threads (default: all cores)")
    a.add_argument("--batch-size", type=int, default=256, help="documents per chunk (default 256)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    _teacher_option(a)
    _common(a)
    a.set_defaults(func=_adopt)

    r = isub.add_parser("reindex", help="blue/green: re-embed all documents with --model into a new version, catch "
                                        "up on writes made meanwhile, verify every document, swap the alias "
                                        "atomically (the old version stays)")
    r.add_argument("name")
    r.add_argument("--model", required=True, help="exported model folder of the new model")
    r.add_argument("--threads", type=int, default=None, help="encoder threads (default: all cores)")
    r.add_argument("--batch-size", type=int, default=256, help="documents per chunk (default 256)")
    r.add_argument("--dead-letter", default=None, help="JSONL file for documents the new index refuses")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    _layout(r, for_reindex=True)
    _common(r)
    r.set_defaults(func=_reindex)

    b = isub.add_parser("rollback", help="point the alias back at the previous version (one atomic call)")
    b.add_argument("name")
    b.add_argument("--to", default=None, help="a specific version, e.g. NAME-000001 (default: the previous one)")
    _common(b)
    b.set_defaults(func=_rollback)

    p = isub.add_parser("prune", help="delete old versions, keeping the current one and --keep others")
    p.add_argument("name")
    p.add_argument("--keep", type=int, default=1, help="older versions to keep for rollback (default 1)")
    _common(p)
    p.set_defaults(func=_prune)

    y = sub.add_parser("sync", help="re-embed only the documents whose vector is missing or stale (written by "
                                    "others); a sync over an unchanged index embeds nothing")
    y.add_argument("--index", required=True, help="the esdistill (or adopted) index or alias")
    y.add_argument("--model", required=True, help="the model the index was built with (folder or packaged name)")
    y.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="keep syncing, every SECONDS (one line, or one JSON object, per round)")
    y.add_argument("--threads", type=int, default=None, help="encoder threads (default: all cores)")
    y.add_argument("--batch-size", type=int, default=256, help="documents per chunk (default 256)")
    y.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(y)
    y.set_defaults(func=_sync)

    d = sub.add_parser("delete", help="delete documents by id")
    d.add_argument("ids", nargs="+", metavar="ID", help="document ids")
    d.add_argument("--index", required=True, help="index or alias to delete from")
    _common(d)
    d.set_defaults(func=_delete)

    g = sub.add_parser("ingest", help="embed a JSONL file (BEIR corpus.jsonl works) into an index; "
                                      'lines {"_id": ..., "_op": "delete"} delete')
    g.add_argument("file", help="JSONL input, one document per line ('-' reads stdin)")
    g.add_argument("--index", required=True, help="index (alias) to write; created when missing")
    g.add_argument("--model", required=True, help="exported model folder (has manifest.json)")
    g.add_argument("--id-field", default="_id", help="field holding the document id (default _id); "
                                                      "documents without it get their content hash")
    g.add_argument("--text-fields", default=None,
                   help="fields to embed, comma-separated (default: the index's, title,text for a new one)")
    g.add_argument("--dead-letter", default=None, help="JSONL file for bad documents, with reasons")
    g.add_argument("--checkpoint", default=None,
                   help="progress file for resuming after a crash (default: one per input and index under "
                        "~/.local/state/esdistill/checkpoints; deleted when a run completes)")
    g.add_argument("--no-checkpoint", action="store_true", help="do not keep a checkpoint")
    g.add_argument("--batch-size", type=int, default=256, help="documents per chunk (default 256)")
    g.add_argument("--threads", type=int, default=None, help="encoder threads (default: all cores)")
    g.add_argument("--index-options", choices=_index_options(), default="int8_hnsw",
                   help="dense_vector index type when the index is created here (default int8_hnsw)")
    g.add_argument("--no-create", action="store_true", help="fail when the index does not exist")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(g)
    g.set_defaults(func=_ingest)


def _index_options() -> tuple[str, ...]:
    from esdistill.plugin.index import INDEX_OPTIONS

    return INDEX_OPTIONS
