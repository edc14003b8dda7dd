"""Blue/green copies that lose no write: re-embed an index into a new one while it stays live.

Used by ``esdistill index reindex`` (a new model or layout) and ``esdistill index adopt --copy``
(a team's own index). The source keeps taking writes during the copy; nothing written to it is
lost:

1. **Copy.** Every document of a point-in-time of the source is embedded and written into the
   target (a new version ``<alias>-NNNNNN`` with the source's whole mapping and settings, its
   analyzers included, plus the vector field), keeping the source's ``_version``. The per-shard
   ``max_seq_no`` of the source is recorded first.
2. **Catch up.** Documents written to the source meanwhile have a higher ``_seq_no``: each round
   reads them per shard (``_seq_no`` above the last round's mark) and copies them, until a round
   finds only a few.
3. **Verify, block, verify the rest.** Every document is compared by id and version with the
   target while the source still takes writes: a missing or outdated one is copied again, one the
   source no longer has (deleted during the copy) is deleted from the target. Then the source gets
   a write block (``index.blocks.write``; writers see a 403 ``cluster_block_exception`` while it
   lasts and should retry), and only what changed since that pass (``_seq_no`` above its marks) is
   verified and fixed, until a pass finds nothing to fix; deletes are caught by the counts (the
   target holds every source document by then, so equal counts mean equal sets). The block thus
   lasts for the last changes, not for the whole index.
4. **Swap.** Only then does the alias move, in one atomic ``_aliases`` call. When the source was a
   concrete index of the alias's own name, it is first cloned to ``<alias>-000000`` (hard links,
   no re-embedding) and the same atomic call replaces the concrete index by the alias; the clone
   is the rollback target until ``esdistill index prune``. Otherwise the old index stays as it
   is, and its write block is lifted.

If a document cannot be carried over (Elasticsearch refuses it, or the target holds a newer
version than the source), the alias does not move, the block is lifted, and the error lists the
documents and the reasons. A run killed at any point is resumed by running it again: the target
(marked ``building`` in its ``_meta``) is reused and documents already there in the source's
version are not embedded again; a write block left by the killed run is lifted first
(:func:`repair_interrupted`). Run one copy per alias at a time.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from esdistill.plugin._bulk import RetryPolicy, call_with_retry
from esdistill.plugin._copy import Copier, CopySummary, check_source_mapping, copyable_settings
from esdistill.plugin._errors import ConfigError, EsdistillError, IngestError
from esdistill.plugin._scan import scan
from esdistill.plugin.index import (
    BOOKKEEPING_PROPERTIES,
    IndexMeta,
    ReindexResult,
    merged_meta,
    new_meta,
    vector_property,
)
from esdistill.plugin.teacher_vectors import TeacherInfo, teacher_property

if TYPE_CHECKING:  # pragma: no cover
    from esdistill.plugin.index import IndexManager

__all__ = ["blue_green", "repair_interrupted"]

logger = logging.getLogger(__name__)

#: catch-up rounds before the write block, and a delta small enough to stop early
_MAX_ROUNDS = 10
_SMALL_DELTA = 100
_MAX_LISTED = 10
_POLICY = RetryPolicy()


def _retry(fn: Any, what: str) -> Any:
    return call_with_retry(fn, what=what, policy=_POLICY)


def _mapping(client: Any, index: str) -> dict[str, Any]:
    return next(iter(_retry(lambda: client.indices.get_mapping(index=index), f"mapping of {index}").values()))[
        "mappings"]


def _flat_settings(client: Any, index: str) -> dict[str, Any]:
    resp = _retry(lambda: client.indices.get_settings(index=index, flat_settings=True), f"settings of {index}")
    return dict(next(iter(resp.values()))["settings"])


def _is_blocked(client: Any, index: str) -> bool:
    return str(_flat_settings(client, index).get("index.blocks.write", "false")).lower() == "true"


def block_writes(mgr: IndexManager, source: str, target: str) -> bool:
    """Write-block ``source`` (waiting for writes in flight); False when it was blocked already
    (by someone else: then it is left as it is)."""
    if _is_blocked(mgr.client, source):
        logger.info("%s is write-blocked already; leaving its block as it is", source)
        return False
    mgr.update_meta(target, write_blocked=source)  # so that a killed run's block is lifted by the next one
    _retry(lambda: mgr.client.indices.add_block(index=source, block="write"), f"write block on {source}")
    logger.info("write-blocked %s for the final catch-up and verification", source)
    return True


def unblock_writes(mgr: IndexManager, source: str, target: str | None) -> None:
    """Lift esdistill's write block from ``source`` and clear the note of it in ``target``."""
    if mgr.client.indices.exists(index=source):
        _retry(lambda: mgr.client.indices.put_settings(index=source, settings={"index.blocks.write": None}),
               f"lift the write block on {source}")
        logger.info("lifted the write block on %s", source)
    if target is not None and mgr.client.indices.exists(index=target):
        mgr.update_meta(target, write_blocked=None)


def swap_in(mgr: IndexManager, target: str, *, source: str) -> str:
    """Move the alias to ``target`` atomically and lift the write block from what stays behind;
    return where the old data stays."""
    client = mgr.client
    if source == mgr.alias:  # a concrete index of the alias's name: keep a clone, replace it by the alias
        keep = mgr.original_name()
        if client.indices.exists(index=keep):
            logger.info("deleting %s, left by an interrupted run, to clone %s again", keep, source)
            _retry(lambda: client.indices.delete(index=keep), f"delete {keep}")
        replicas = _flat_settings(client, source).get("index.number_of_replicas", "0")
        _retry(lambda: client.indices.clone(index=source, target=keep, wait_for_active_shards="1", settings={
            "index.blocks.write": None, "index.number_of_replicas": replicas}), f"clone {source} to {keep}")
        _retry(lambda: client.indices.update_aliases(actions=[
            {"add": {"index": target, "alias": mgr.alias, "is_write_index": True}},
            {"remove_index": {"index": source}}]), f"replace {source} by an alias")
        logger.info("replaced the index %s by an alias to %s; the old data is kept in %s", source, target, keep)
    else:
        mgr._point_alias_at(target, current=list(mgr._alias_targets()))
        keep = source
        if _is_blocked(client, source) and mgr.meta(target).write_blocked == source:
            unblock_writes(mgr, source, None)
    return keep


def _mark_done(mgr: IndexManager, target: str, keep: str) -> None:
    """The target took the alias: it is no unfinished copy any more, and points at the old data."""
    mgr.update_meta(target, building=False, write_blocked=None, previous_index=keep)


def repair_interrupted(mgr: IndexManager) -> None:
    """Undo what a killed copy left behind: its write block on the source, and the ``building``
    mark of a target that already took the alias."""
    client = mgr.client
    names = mgr.versions()
    try:
        current = mgr.current()
    except ConfigError:
        return
    for name in [*names, *([current] if current not in names else [])]:
        try:
            meta = mgr.meta(name)
        except ConfigError:
            continue
        if meta.write_blocked:
            blocked = meta.write_blocked
            if client.indices.exists(index=blocked) and _is_blocked(client, blocked):
                logger.warning("an interrupted copy left %s write-blocked; lifting the block", blocked)
            unblock_writes(mgr, blocked, name)
        if meta.building and name == current:
            mgr.update_meta(name, building=False)


def _target_body(mgr: IndexManager, source: str, encoder: Any, meta: IndexMeta, *, m: int | None,
                 ef_construction: int | None, number_of_replicas: int | None,
                 source_vector: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    mapping = _mapping(mgr.client, source)
    check_source_mapping(source, mapping, action="a copy",
                         instead="re-index it yourself into an index that keeps _source, then adopt that")
    settings = copyable_settings(_flat_settings(mgr.client, source))
    dropped = sorted(k for k in _flat_settings(mgr.client, source) if k.startswith("index.lifecycle."))
    if dropped:
        logger.warning("%s is managed by index lifecycle settings %s; the copy is not (set them again on it)",
                       source, dropped)
    if number_of_replicas is not None:
        settings["index.number_of_replicas"] = number_of_replicas
    old_opts = source_vector.get("index_options") or {}
    same_type = old_opts.get("type") == meta.index_options
    props = dict(mapping.get("properties") or {})
    props.update(BOOKKEEPING_PROPERTIES)
    teacher = TeacherInfo.from_meta(meta)
    if teacher is not None:
        props[teacher.field] = teacher_property(teacher)
    props[meta.vector_field] = vector_property(
        encoder.manifest, index_options=meta.index_options,
        m=m if m is not None else (old_opts.get("m") if same_type and "hnsw" in meta.index_options else None),
        ef_construction=ef_construction if ef_construction is not None else (
            old_opts.get("ef_construction") if same_type and "hnsw" in meta.index_options else None))
    mappings = {k: v for k, v in mapping.items() if k not in ("properties", "_meta")}
    mappings["properties"] = props
    mappings["_meta"] = merged_meta(mapping.get("_meta"), meta)
    return settings, mappings


def blue_green(mgr: IndexManager, encoder: Any, *, text_fields: tuple[str, ...], vector_field: str,
               index_options: str | None = None, m: int | None = None, ef_construction: int | None = None,
               number_of_replicas: int | None = None, batch_size: int = 256, page_size: int = 500,
               progress: bool | None = None, adopting: bool = False,
               teacher: TeacherInfo | None = None) -> ReindexResult:
    """Copy the alias's current index into a new version embedded by ``encoder``, losing no write,
    and move the alias (see the module docstring).

    Args:
        mgr: the alias.
        encoder: the model that embeds the new version.
        text_fields / vector_field: what to embed, and where the vector goes.
        index_options / m / ef_construction / number_of_replicas: the new version's layout
            (default: the current one's, else ``int8_hnsw``).
        batch_size / page_size: documents per encoder call / per read.
        progress: show a progress bar (default: when stderr is a terminal).
        adopting: the current index is not esdistill's (``adopt --copy``).
        teacher: the bi-encoder teacher whose document vectors the new version stores too
            (:mod:`esdistill.plugin.teacher_vectors`; ``None``: none).

    Raises:
        ConfigError: reindex of an index esdistill did not make, or adopt of one it did.
        IngestError: a document could not be carried over (the alias did not move), or
            Elasticsearch kept failing; run the same command again to resume.
    """
    started = time.perf_counter()
    repair_interrupted(mgr)
    source = mgr.current()
    mapping = _mapping(mgr.client, source)
    try:
        source_meta: IndexMeta | None = mgr.meta(source)
    except ConfigError:
        source_meta = None
    if source_meta is None and not adopting:
        raise ConfigError(f"{source!r} was not made or adopted by esdistill, so there is nothing to re-embed; adopt it "
                          f"with `esdistill index adopt {mgr.alias} --model DIR --text-fields F1,F2 --copy`")
    if source_meta is not None and adopting:
        raise ConfigError(f"{source!r} is an esdistill index already (model {source_meta.model_name!r}); to move it to "
                          f"another model use `esdistill index reindex {mgr.alias} --model DIR`")
    source_vector = (mapping.get("properties") or {}).get(source_meta.vector_field if source_meta else vector_field) or {}
    if adopting and source_vector:
        raise ConfigError(f"{source!r} has a field {vector_field!r} already ({source_vector.get('type')}); choose "
                          "another --vector-field")
    options = index_options or (source_vector.get("index_options") or {}).get("type") or "int8_hnsw"
    manifest = encoder.manifest
    target = mgr.unfinished_copy(source, manifest, vector_field=vector_field, text_fields=text_fields,
                                 index_options=options, teacher_fingerprint=teacher.fingerprint if teacher else "")
    if target is not None:
        logger.info("resuming the unfinished copy of %s into %s: documents already there are not embedded again",
                    source, target)
        meta = mgr.meta(target)
    else:
        meta = new_meta(manifest, vector_field=vector_field, text_fields=text_fields, index_options=options,
                        alias=mgr.alias, previous_index=source, building=True, teacher=teacher)
        settings, mappings = _target_body(mgr, source, encoder, meta, m=m, ef_construction=ef_construction,
                                          number_of_replicas=number_of_replicas, source_vector=source_vector)
        target = mgr.create_physical(mgr._next_name(), settings=settings, mappings=mappings,
                                     what=f"the settings copied from {source} (index_options={options!r}, "
                                          f"dims={manifest.dims})")
        logger.info("created %s for model %s (%s…, %d dims, %s), a copy of %s", target, manifest.name,
                    manifest.short_fingerprint, manifest.dims, options, source)
    try:
        summary, keep = run_copy(mgr, source=source, target=target, encoder=encoder, meta=meta,
                                 source_vector_field=source_meta.vector_field if source_meta else None,
                                 batch_size=batch_size, page_size=page_size, progress=progress)
    except Exception as exc:
        summary = getattr(exc, "summary", None)
        if (isinstance(summary, CopySummary) and summary.failed) or (
                isinstance(exc, EsdistillError) and not isinstance(exc, IngestError)):
            raise
        reason = str(exc) if isinstance(exc, IngestError) else f"{type(exc).__name__}: {exc}"
        raise IngestError(f"copy of {source} into {target} stopped: {reason}. The alias {mgr.alias!r} did not move; "
                          "run the same command again to resume (documents already copied are not embedded again).",
                          summary=summary) from exc
    return ReindexResult(alias=mgr.alias, old_index=source, new_index=target, docs=mgr.count(target),
                         seconds=time.perf_counter() - started, summary=summary, rollback_index=keep)


def run_copy(mgr: IndexManager, *, source: str, target: str, encoder: Any, meta: IndexMeta,
             source_vector_field: str | None, batch_size: int = 256, page_size: int = 500,
             progress: bool | None = None, retry: RetryPolicy | None = None) -> tuple[CopySummary, str]:
    """Copy ``source`` into ``target`` with no write lost, verify it, and move ``mgr``'s alias.

    Args:
        mgr: the :class:`~esdistill.plugin.index.IndexManager` of the alias.
        source: the physical index the alias (or the concrete index of that name) is now.
        target: the new physical index (created, marked ``building``).
        encoder: the model embedding the documents.
        meta: the target's esdistill meta (text fields, vector field, dims).
        source_vector_field: the source's own vector field, left out of the copied documents.
        batch_size / page_size: documents per encoder call / per read.
        progress: show a progress bar (default: when stderr is a terminal).
        retry: backoff for transient failures.

    Returns:
        ``(summary, rollback_index)``: what was done and the index that holds the old data now.

    Raises:
        IngestError: a document could not be carried over (the alias did not move; the message
            says which and why), or Elasticsearch kept failing.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    copier = Copier(mgr.client, source=source, target=target, encoder=encoder, meta=meta,
                     source_vector_field=source_vector_field, policy=retry or RetryPolicy(), batch_size=batch_size,
                     page_size=page_size, progress=progress)
    summary = copier.summary
    show = progress if progress is not None else sys.stderr.isatty()
    total = copier.count(source)
    with tqdm(total=total, unit="doc", desc=f"copy {source} -> {target}", disable=not show,
              dynamic_ncols=True) as bar:
        # marks first, then a refresh, then the point-in-time: a write the point-in-time cannot see yet
        # has a _seq_no above the marks, so the catch-up finds it
        marks = copier.watermarks()
        copier.refresh(source)
        copier.copy(scan(mgr.client, source, policy=copier.policy, page_size=page_size,
                         source_excludes=copier.excludes, version=True, what="copy"), counter="read", bar=bar)
        _stop_if_failed(summary, mgr, source, target, blocked=False)
        for _ in range(_MAX_ROUNDS):  # catch up while the source stays writable
            now = copier.watermarks()
            copier.refresh(source)
            before = summary.caught_up
            copier.copy(copier.changed_since(marks, upto=now), counter="caught_up", bar=bar)
            summary.catch_up_rounds += 1
            marks = {shard: max(now.get(shard, -1), marks.get(shard, -1)) for shard in set(now) | set(marks)}
            _stop_if_failed(summary, mgr, source, target, blocked=False)
            if summary.caught_up - before <= _SMALL_DELTA:
                break
        # every document by id and version while the source still takes writes: the write block below
        # then only has to look at what changed since these marks
        marks = copier.watermarks()
        copier.refresh(source)
        copier.verify_all(bar)
        _stop_if_failed(summary, mgr, source, target, blocked=False)
        blocked = block_writes(mgr, source, target)
        t_block = time.perf_counter()
        try:
            copier.refresh(source)
            for _ in range(3):  # the last changes, verified and fixed, then verified again
                if not (copier.verify_changed(marks, bar) + copier.drop_extras()) or summary.failed:
                    break
            else:
                summary.note_failure("*", "documents kept differing after three verification passes")
            in_target, in_source = copier.count(target), copier.count(source)
            if not summary.failed and in_target != in_source:
                summary.note_failure("*", f"{target} holds {in_target} documents after verification, {source} "
                                          f"{in_source}")
            summary.verified = in_source
            _stop_if_failed(summary, mgr, source, target, blocked=blocked)
            copier.refresh(target)
            rollback_index = swap_in(mgr, target, source=source)
        except BaseException:
            if blocked:
                unblock_writes(mgr, source, target)
            summary.write_block_s = time.perf_counter() - t_block
            raise
        summary.write_block_s = time.perf_counter() - t_block
        _mark_done(mgr, target, rollback_index)
    summary.complete = True
    summary.seconds = time.perf_counter() - started
    return summary, rollback_index


def _stop_if_failed(summary: CopySummary, mgr: IndexManager, source: str, target: str, *, blocked: bool) -> None:
    if not summary.failed:
        return
    listed = "; ".join(f"{i}: {r}" for i, r in summary.failures[:_MAX_LISTED])
    more = f" (and {summary.failed - _MAX_LISTED} more)" if summary.failed > _MAX_LISTED else ""
    raise IngestError(
        f"{summary.failed} document(s) of {source} could not be carried over into {target}, so the alias "
        f"{mgr.alias!r} did not move{' and the write block on ' + source + ' was lifted' if blocked else ''}: "
        f"{listed}{more}. Fix them and run the same command again (documents already copied are not embedded "
        "again).", summary=summary)
