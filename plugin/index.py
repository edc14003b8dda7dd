"""Index management: versioned physical indices behind an alias, blue/green re-embedding, rollback.

An esdistill index is an **alias** (the name users search and ingest into) that points at one
**physical index** ``<alias>-000001``, ``<alias>-000002``, ... Each physical index holds the vectors
of exactly one model, and says which in its mapping ``_meta`` (model fingerprint, name, dims,
similarity, text fields, vector field): at the top of ``_meta`` in an index esdistill created,
under the key ``esdistill`` in an index it adopted (the team's own ``_meta`` keys stay as they
are). A model whose fingerprint or dims differ is refused by :meth:`IndexManager.check_model`,
which ingestion and search both call.

An index a team already runs is **adopted** (:meth:`IndexManager.adopt`, :mod:`esdistill.plugin.adopt`)
in place or by a copy. Changing the model is a **blue/green re-embedding**:
:meth:`IndexManager.reindex` copies the documents into the next physical index while the old one
stays live, catches up on writes made meanwhile, verifies every document by id and version, then
moves the alias in one atomic ``_aliases`` call (:mod:`esdistill.plugin._bluegreen`). The old
index stays for :meth:`IndexManager.rollback`::

    >>> mgr = IndexManager(client, "scifact")                           # doctest: +SKIP
    >>> mgr.create(Manifest.load("runs/minilm-int8"))                   # doctest: +SKIP
    'scifact-000001'
    >>> mgr.reindex(OnnxEncoder("runs/distilled-int8")).new_index       # doctest: +SKIP
    'scifact-000002'
    >>> mgr.rollback()                                                  # doctest: +SKIP
    ('scifact-000002', 'scifact-000001')

An interrupted reindex is resumed by running it again: the unfinished newer version (marked
``building``, same previous index, model and layout) is reused, and the documents already in it
are not embedded again. A version that ever took the alias is never reused that way.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from esdistill.plugin._errors import ConfigError, FingerprintError
from esdistill.plugin.documents import RESERVED_FIELDS
from esdistill.plugin.manifest import Manifest

if TYPE_CHECKING:  # pragma: no cover
    from esdistill.plugin._copy import CopySummary
    from esdistill.plugin.adopt import AdoptResult
    from esdistill.plugin.teacher_vectors import TeacherInfo

__all__ = [
    "INDEX_OPTIONS",
    "META_FORMAT",
    "META_KEY",
    "IndexInfo",
    "IndexManager",
    "IndexMeta",
    "IndexSpec",
    "ReindexResult",
    "VersionInfo",
    "build_index_body",
    "merged_meta",
    "new_meta",
    "team_meta",
    "vector_property",
]

logger = logging.getLogger(__name__)

#: ``dense_vector`` index_options types esdistill accepts (Elasticsearch 9.x)
INDEX_OPTIONS = ("int8_hnsw", "hnsw", "flat", "int8_flat", "int4_hnsw", "int4_flat", "bbq_hnsw", "bbq_flat")
#: version of the ``_meta`` layout below
META_FORMAT = 1
#: esdistill's bookkeeping fields in every index it writes vectors into
BOOKKEEPING_PROPERTIES = {"content_hash": {"type": "keyword"}, "model_fingerprint": {"type": "keyword"}}
#: the key of mapping ``_meta`` that holds esdistill's metadata in an index it did not create
META_KEY = "esdistill"
_HNSW = ("int8_hnsw", "hnsw", "int4_hnsw", "bbq_hnsw")
_VERSION_DIGITS = 6
_BAD_NAME = re.compile(r'[\\/*?"<>| ,#:A-Z]')


def _check_alias_name(name: str) -> str:
    if not name or _BAD_NAME.search(name) or name.startswith(("-", "_", "+")) or name in (".", ".."):
        raise ConfigError(
            f"index name {name!r} is not valid in Elasticsearch: use lowercase letters, digits, '-', '_' "
            "and '.', not starting with '-', '_' or '+'"
        )
    return name


@dataclass(frozen=True)
class IndexSpec:
    """How a physical index is laid out (everything except the model, which comes from a manifest).

    Attributes:
        vector_field: name of the ``dense_vector`` field.
        text_fields: fields mapped as ``text`` (BM25) and embedded, in this order.
        index_options: ``dense_vector`` index type, one of :data:`INDEX_OPTIONS`.
        m: HNSW graph degree (HNSW types only; ``None`` = Elasticsearch's default).
        ef_construction: HNSW build candidates (HNSW types only; ``None`` = default).
        number_of_shards: primary shards.
        number_of_replicas: replicas (0 on a single node, else the index never turns green).
        analyzer: analyzer of the text fields (``standard``: the integ-test node has no others).
        extra_properties: mappings for other fields you want searchable (filters, facets). Other
            fields of your documents are stored but not indexed (``dynamic: false``).

    Raises:
        ConfigError: an invalid combination (the message names it).
    """

    vector_field: str = "embedding"
    text_fields: tuple[str, ...] = ("title", "text")
    index_options: str = "int8_hnsw"
    m: int | None = None
    ef_construction: int | None = None
    number_of_shards: int = 1
    number_of_replicas: int = 0
    analyzer: str = "standard"
    extra_properties: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_fields", tuple(self.text_fields))
        problems = []
        if self.index_options not in INDEX_OPTIONS:
            problems.append(f"index_options={self.index_options!r} (choose one of {', '.join(INDEX_OPTIONS)})")
        if self.index_options not in _HNSW and (self.m is not None or self.ef_construction is not None):
            problems.append(f"m/ef_construction only apply to HNSW types, not {self.index_options!r}")
        if self.m is not None and not 2 <= self.m <= 512:
            problems.append(f"m={self.m} (expected 2..512)")
        if self.ef_construction is not None and not 10 <= self.ef_construction <= 3200:
            problems.append(f"ef_construction={self.ef_construction} (expected 10..3200)")
        if self.number_of_shards < 1:
            problems.append(f"number_of_shards={self.number_of_shards} (expected >= 1)")
        if self.number_of_replicas < 0:
            problems.append(f"number_of_replicas={self.number_of_replicas} (expected >= 0)")
        if not self.text_fields or any(not f or not isinstance(f, str) for f in self.text_fields):
            problems.append(f"text_fields={self.text_fields!r} (give one or more field names)")
        reserved = {self.vector_field, *RESERVED_FIELDS}
        clash = reserved & (set(self.text_fields) | set(self.extra_properties))
        if clash:
            problems.append(f"fields {sorted(clash)} are reserved for esdistill")
        if not self.vector_field or self.vector_field.startswith("_"):
            problems.append(f"vector_field={self.vector_field!r} (a non-empty name not starting with '_')")
        if problems:
            raise ConfigError("invalid index settings: " + "; ".join(problems))


@dataclass
class IndexMeta:
    """What an esdistill physical index says about itself (its mapping ``_meta``).

    The ``teacher_*`` fields are set on an index that stores a bi-encoder teacher's document vectors
    (``--teacher-vectors``, :mod:`esdistill.plugin.teacher_vectors`); they are empty otherwise, and in
    indices made before them.
    """

    model_fingerprint: str
    model_name: str
    dims: int
    similarity: str
    vector_field: str
    text_fields: tuple[str, ...]
    index_options: str
    alias: str = ""
    quantization: str = "none"
    max_seq_length: int = 0
    previous_index: str | None = None
    created_at: str = ""
    esdistill_format: int = META_FORMAT
    building: bool = False
    write_blocked: str | None = None
    teacher_model: str = ""
    teacher_fingerprint: str = ""
    teacher_name: str = ""
    teacher_dims: int = 0
    teacher_vector_field: str = ""

    def to_meta(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["text_fields"] = list(self.text_fields)
        return out

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None, index: str) -> IndexMeta:
        """Parse a mapping ``_meta`` (esdistill's keys at the top, or under :data:`META_KEY`); raise
        :class:`ConfigError` when it is not esdistill's."""
        ours = own_meta(meta)
        if ours is None:
            raise ConfigError(
                f"index {index!r} was not created by esdistill (its mapping _meta has no model "
                "fingerprint), so esdistill cannot tell which model made its vectors. Adopt it with "
                f"`esdistill index adopt {index} --model DIR --text-fields F1,F2 --in-place` (or --copy), or "
                "create an index with `esdistill index create NAME --model DIR`."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in ours.items() if k in known}
        values["text_fields"] = tuple(values.get("text_fields") or ())
        return cls(**values)


def model_problems(meta: IndexMeta, *, fingerprint: str, dims: int, document_fingerprint: str = "") -> list[str]:
    """Why a model cannot embed for an index whose vectors ``meta`` describes ([] when it can).

    Args:
        meta: the index's esdistill meta.
        fingerprint / dims: the model's.
        document_fingerprint: for a model that only embeds queries, the document model it is paired
            with (a query encoder trained query-side only); ``""`` otherwise.
    """
    problems = []
    if int(dims) != int(meta.dims):
        problems.append(f"dims {dims} vs the index's {meta.dims}")
    if meta.model_fingerprint not in {fingerprint, document_fingerprint} - {""}:
        problems.append(f"fingerprint {fingerprint[:12]}… vs the index's {meta.model_fingerprint[:12]}…")
    return problems


def parse_meta(meta: dict[str, Any] | None, index: str) -> IndexMeta | None:
    """:meth:`IndexMeta.from_meta`, or ``None`` for an index esdistill did not make or adopt."""
    return IndexMeta.from_meta(meta, index) if own_meta(meta) is not None else None


def own_meta(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """esdistill's part of a mapping ``_meta`` (the mapping itself, or its :data:`META_KEY` entry in an
    index esdistill adopted), or ``None`` when esdistill did not make or adopt the index."""
    if not meta:
        return None
    nested = meta.get(META_KEY)
    if isinstance(nested, Mapping) and "model_fingerprint" in nested and "esdistill_format" in nested:
        return nested  # type: ignore[return-value]
    if "model_fingerprint" in meta and "esdistill_format" in meta:
        return meta  # type: ignore[return-value]
    return None


def merged_meta(existing: dict[str, Any] | None, meta: IndexMeta) -> dict[str, Any]:
    """The whole mapping ``_meta`` to write: everyone else's keys unchanged, esdistill's replaced.

    An index made by ``esdistill index create`` keeps esdistill's keys at the top of ``_meta``;
    any other index gets them under :data:`META_KEY`.
    """
    existing = dict(existing or {})
    if own_meta(existing) is existing:
        return meta.to_meta()
    existing[META_KEY] = meta.to_meta()
    return existing


def team_meta(existing: dict[str, Any] | None) -> dict[str, Any]:
    """The keys of a mapping ``_meta`` that are not esdistill's."""
    existing = dict(existing or {})
    if own_meta(existing) is existing:
        return {}
    existing.pop(META_KEY, None)
    return existing


@dataclass
class VersionInfo:
    """One physical index behind an alias (``esdistill`` is False for an original kept for rollback,
    which holds no esdistill vectors; its model fields are then empty)."""

    index: str
    docs: int
    current: bool
    model_name: str
    model_fingerprint: str
    dims: int
    index_options: str
    created_at: str
    previous_index: str | None
    esdistill: bool = True
    building: bool = False


@dataclass
class IndexInfo:
    """An alias and its physical indices (oldest first), and how true the current vectors are
    (``vectors``: a :class:`~esdistill.plugin.sync.VectorHealth` as a dict, when asked for)."""

    alias: str
    current: str
    versions: list[VersionInfo]
    vectors: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.vectors is not None:
            out.update({k: self.vectors[k] for k in ("missing_vectors", "stale_vectors")})
        return out


@dataclass
class ReindexResult:
    """Outcome of a blue/green re-embedding (or of ``adopt --copy``).

    Attributes:
        alias: the name users search.
        old_index: the index the alias (or the concrete index of that name) was.
        new_index: the index the alias points at now.
        docs: documents in the new index.
        seconds: wall time.
        summary: what the copy did (a :class:`~esdistill.plugin._copy.CopySummary`).
        rollback_index: where the old data is kept (``old_index``, or its clone ``<alias>-000000``
            when the old index was a concrete index of the alias's name).
    """

    alias: str
    old_index: str
    new_index: str
    docs: int
    seconds: float
    summary: CopySummary
    rollback_index: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "summary"}
        out["summary"] = self.summary.to_dict()
        return out


def vector_property(manifest: Manifest, *, index_options: str, m: int | None = None,
                    ef_construction: int | None = None) -> dict[str, Any]:
    """The ``dense_vector`` mapping of a field holding ``manifest``'s vectors.

    Raises:
        ConfigError: the model is not a bi-encoder, or it is a query encoder (trained query-side
            only), whose document model must build the index instead.
    """
    if manifest.kind != "bi-encoder":
        raise ConfigError(f"model {manifest.name!r} is a {manifest.kind}; an index needs a bi-encoder's vectors")
    if manifest.document_fingerprint:
        raise ConfigError(f"model {manifest.name!r} is a query encoder (trained query-side only): an index is built "
                          "with its document model (the export it is paired with), not with it")
    options: dict[str, Any] = {"type": index_options}
    if m is not None:
        options["m"] = m
    if ef_construction is not None:
        options["ef_construction"] = ef_construction
    return {"type": "dense_vector", "dims": int(manifest.dims), "index": True, "similarity": manifest.similarity,
            "index_options": options}


def new_meta(manifest: Manifest, *, vector_field: str, text_fields: tuple[str, ...], index_options: str,
             alias: str, previous_index: str | None = None, building: bool = False,
             teacher: TeacherInfo | None = None) -> IndexMeta:
    """The esdistill meta of an index that holds ``manifest``'s vectors (and ``teacher``'s, when
    given), stamped now."""
    return IndexMeta(
        model_fingerprint=manifest.fingerprint, model_name=manifest.name, dims=int(manifest.dims),
        similarity=manifest.similarity, vector_field=vector_field, text_fields=tuple(text_fields),
        index_options=index_options, alias=alias, quantization=manifest.quantization,
        max_seq_length=int(manifest.max_seq_length), previous_index=previous_index,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), building=building,
        **(teacher.meta_fields() if teacher is not None else {}),
    )


def build_index_body(manifest: Manifest, spec: IndexSpec, *, alias: str = "",
                     previous_index: str | None = None, teacher: TeacherInfo | None = None) -> dict[str, Any]:
    """The ``settings`` and ``mappings`` of a physical index for ``manifest``'s vectors (and a
    field for ``teacher``'s document vectors, when given).

    Example:
        >>> body = build_index_body(manifest, IndexSpec(index_options="hnsw"))   # doctest: +SKIP
        >>> body["mappings"]["properties"]["embedding"]["dims"]                   # doctest: +SKIP
        384
    """
    vector = vector_property(manifest, index_options=spec.index_options, m=spec.m,
                             ef_construction=spec.ef_construction)
    meta = new_meta(manifest, vector_field=spec.vector_field, text_fields=spec.text_fields,
                    index_options=spec.index_options, alias=alias, previous_index=previous_index, teacher=teacher)
    properties: dict[str, Any] = dict(spec.extra_properties)
    for name in spec.text_fields:
        properties[name] = {"type": "text", "analyzer": spec.analyzer}
    properties.update(BOOKKEEPING_PROPERTIES)
    properties[spec.vector_field] = vector
    if teacher is not None:
        from esdistill.plugin.teacher_vectors import teacher_property

        properties[teacher.field] = teacher_property(teacher)
    return {
        "settings": {"index": {"number_of_shards": spec.number_of_shards,
                               "number_of_replicas": spec.number_of_replicas}},
        "mappings": {"dynamic": False, "_meta": meta.to_meta(), "properties": properties},
    }


class IndexManager:
    """Create, inspect, re-embed and roll back one esdistill index (an alias).

    Args:
        client: an ``elasticsearch.Elasticsearch`` client.
        alias: the index name users see.

    Raises:
        ConfigError: ``alias`` is not a valid index name.
    """

    def __init__(self, client: Any, alias: str) -> None:
        self.client = client
        self.alias = _check_alias_name(alias)
        self._version_re = re.compile(re.escape(self.alias) + rf"-(\d{{{_VERSION_DIGITS}}})$")

    # ------------------------------------------------------------------ lookups
    def versions(self) -> list[str]:
        """Physical indices ``<alias>-NNNNNN`` that exist, oldest first."""
        found = self.client.indices.get(index=f"{self.alias}-*", allow_no_indices=True,
                                        expand_wildcards="open", filter_path="*.settings.index.uuid")
        return sorted(name for name in (found or {}) if self._version_re.fullmatch(name))

    def _alias_targets(self) -> dict[str, Any]:
        from elasticsearch import NotFoundError

        try:
            return dict(self.client.indices.get_alias(name=self.alias))
        except NotFoundError:
            return {}

    def exists(self) -> bool:
        """True when the alias (or a plain index of that name) exists."""
        return bool(self._alias_targets()) or bool(self.client.indices.exists(index=self.alias))

    def current(self) -> str:
        """The physical index the alias points at (its write index).

        Raises:
            ConfigError: no such alias or index, or the alias points at several indices.
        """
        targets = self._alias_targets()
        if not targets:
            if self.client.indices.exists(index=self.alias):
                return self.alias
            raise ConfigError(
                f"no index or alias named {self.alias!r}; create it with "
                f"`esdistill index create {self.alias} --model DIR`"
            )
        if len(targets) == 1:
            return next(iter(targets))
        writers = [i for i, body in targets.items()
                   if body.get("aliases", {}).get(self.alias, {}).get("is_write_index")]
        if len(writers) == 1:
            return writers[0]
        raise ConfigError(f"alias {self.alias!r} points at {sorted(targets)} with no single write index; "
                          f"fix it with `esdistill index rollback {self.alias} --to INDEX`")

    def meta(self, index: str | None = None) -> IndexMeta:
        """The esdistill ``_meta`` of ``index`` (default: the current physical index)."""
        index = index or self.current()
        mapping = self.client.indices.get_mapping(index=index)
        body = next(iter(mapping.values()))
        return IndexMeta.from_meta(body.get("mappings", {}).get("_meta"), index)

    def check_model(self, manifest: Manifest, *, queries_only: bool = False) -> IndexMeta:
        """Refuse a model that did not make this index's vectors; return the index's meta.

        Ingestion and search call this before they embed anything.

        Args:
            manifest: the model's manifest.
            queries_only: the model will only embed queries, so a query encoder paired with the
                index's document model (``manifest.document_fingerprint``) is accepted too.

        Raises:
            FingerprintError: the manifest's fingerprint or dims differ from the index's, or a
                query encoder is asked to embed documents.
            ConfigError: the index does not exist or was not created by esdistill.
        """
        index = self.current()
        meta = self.meta(index)
        if manifest.document_fingerprint and not queries_only:
            raise FingerprintError(
                f"model {manifest.name!r} is a query encoder (trained query-side only): it cannot embed documents. "
                f"Embed documents with its document model (fingerprint {manifest.document_fingerprint[:12]}…) and "
                "use this one for queries only.",
                expected=manifest.document_fingerprint, actual=manifest.fingerprint,
            )
        problems = model_problems(meta, fingerprint=manifest.fingerprint, dims=int(manifest.dims),
                                  document_fingerprint=manifest.document_fingerprint if queries_only else "")
        if problems:
            raise FingerprintError(
                f"model {manifest.name!r} does not match index {self.alias!r} (physical {index}), whose vectors "
                f"were made by {meta.model_name!r}: {'; '.join(problems)}. Use the model the index was built "
                f"with, or re-embed the index with the new one: `esdistill index reindex {self.alias} "
                "--model DIR`.",
                expected=meta.model_fingerprint, actual=manifest.fingerprint,
            )
        return meta

    def spec_of(self, index: str | None = None) -> IndexSpec:
        """Rebuild the :class:`IndexSpec` a physical index was created with."""
        index = index or self.current()
        meta = self.meta(index)
        mapping = next(iter(self.client.indices.get_mapping(index=index).values()))["mappings"]
        props = dict(mapping.get("properties", {}))
        vec = props.pop(meta.vector_field, {})
        opts = vec.get("index_options", {})
        analyzer = "standard"
        for name in meta.text_fields:
            analyzer = props.pop(name, {}).get("analyzer", analyzer)
        for name in RESERVED_FIELDS:
            props.pop(name, None)
        settings = self.client.indices.get_settings(index=index)[index]["settings"]["index"]
        return IndexSpec(
            vector_field=meta.vector_field, text_fields=meta.text_fields, index_options=meta.index_options,
            m=opts.get("m") if meta.index_options in _HNSW else None,
            ef_construction=opts.get("ef_construction") if meta.index_options in _HNSW else None,
            number_of_shards=int(settings.get("number_of_shards", 1)),
            number_of_replicas=int(settings.get("number_of_replicas", 0)),
            analyzer=analyzer, extra_properties=props,
        )

    def count(self, index: str | None = None) -> int:
        """Documents in ``index`` (default: the alias), after a refresh."""
        target = index or self.alias
        self.client.indices.refresh(index=target)
        return int(self.client.count(index=target)["count"])

    def info(self, *, vectors: bool = False, exact_limit: int = 10_000) -> IndexInfo:
        """The alias, its current index and every version with its model and document count.

        Args:
            vectors: also count the current index's missing and stale vectors
                (:func:`~esdistill.plugin.sync.vector_health`: exact up to ``exact_limit``
                documents with a vector, sampled above).
            exact_limit: see ``vectors``.
        """
        current = self.current()
        names = self.versions() or [current]
        if names == [current]:
            self.meta(current)  # an index esdistill knows nothing of: the error says how to adopt it
        if current not in names:
            names.append(current)
        out = []
        for name in names:
            docs = int(self.client.count(index=name)["count"])
            try:
                meta = self.meta(name)
            except ConfigError:  # an original kept for rollback
                out.append(VersionInfo(index=name, docs=docs, current=name == current, model_name="",
                                       model_fingerprint="", dims=0, index_options="", created_at="",
                                       previous_index=None, esdistill=False))
                continue
            out.append(VersionInfo(
                index=name, docs=docs, current=name == current, model_name=meta.model_name,
                model_fingerprint=meta.model_fingerprint, dims=meta.dims, index_options=meta.index_options,
                created_at=meta.created_at, previous_index=meta.previous_index, building=meta.building,
            ))
        health = None
        if vectors and any(v.current and v.esdistill for v in out):
            from esdistill.plugin.sync import vector_health

            health = vector_health(self.client, self.alias, exact_limit=exact_limit).to_dict()
        return IndexInfo(alias=self.alias, current=current, versions=out, vectors=health)

    def update_meta(self, index: str, **changes: Any) -> IndexMeta:
        """Change fields of ``index``'s esdistill meta (everyone else's ``_meta`` keys are kept)."""
        mapping = next(iter(self.client.indices.get_mapping(index=index).values()))["mappings"]
        existing = mapping.get("_meta") or {}
        meta = dataclasses.replace(IndexMeta.from_meta(existing, index), **changes)
        self.client.indices.put_mapping(index=index, meta=merged_meta(existing, meta))
        return meta

    def _next_name(self) -> str:
        numbers = [int(self._version_re.fullmatch(v).group(1)) for v in self.versions()]  # type: ignore[union-attr]
        return f"{self.alias}-{(max(numbers, default=0) + 1):0{_VERSION_DIGITS}d}"

    def create_physical(self, name: str, *, settings: dict[str, Any], mappings: dict[str, Any],
                        what: str) -> str:
        """Create the physical index ``name`` (``what`` explains a refusal in the error)."""
        from elasticsearch import ApiError

        try:
            self.client.indices.create(index=name, settings=settings, mappings=mappings, wait_for_active_shards="1")
        except ApiError as exc:
            raise ConfigError(f"Elasticsearch refused to create index {name!r}: {_api_reason(exc)}. Check {what}.") \
                from None
        return name

    def _create_physical(self, manifest: Manifest, spec: IndexSpec, previous: str | None,
                         teacher: TeacherInfo | None = None) -> str:
        body = build_index_body(manifest, spec, alias=self.alias, previous_index=previous, teacher=teacher)
        name = self.create_physical(self._next_name(), settings=body["settings"], mappings=body["mappings"],
                                    what=f"the index settings (index_options={spec.index_options!r}, "
                                         f"dims={manifest.dims})")
        logger.info("created %s for model %s (%s…, %d dims, %s)", name, manifest.name,
                    manifest.short_fingerprint, manifest.dims, spec.index_options)
        return name

    def create(self, manifest: Manifest, spec: IndexSpec | None = None, *, teacher: TeacherInfo | None = None) -> str:
        """Create ``<alias>-000001`` for ``manifest``'s vectors and point the alias at it.

        Args:
            manifest: the student model's manifest.
            spec: the layout (default :class:`IndexSpec`).
            teacher: also store this bi-encoder teacher's document vectors
                (:func:`~esdistill.plugin.teacher_vectors.describe_teacher`), so that its rerank
                embeds no document.

        Returns:
            The physical index name.

        Raises:
            ConfigError: the alias or an index of that name exists already (use :meth:`reindex`
                to change the model), or Elasticsearch refused the settings.
        """
        if self.exists():
            raise ConfigError(
                f"index {self.alias!r} exists already (see `esdistill index info {self.alias}`); to move it to "
                f"another model use `esdistill index reindex {self.alias} --model DIR`"
            )
        name = self._create_physical(manifest, spec or IndexSpec(), previous=None, teacher=teacher)
        self._point_alias_at(name, current=[])
        return name

    def _point_alias_at(self, target: str, current: list[str]) -> None:
        actions: list[dict[str, Any]] = [{"remove": {"index": i, "alias": self.alias}} for i in current]
        actions.append({"add": {"index": target, "alias": self.alias, "is_write_index": True}})
        self.client.indices.update_aliases(actions=actions)  # one call: atomic
        logger.info("alias %s -> %s (was %s)", self.alias, target, ", ".join(current) or "nothing")

    def reindex(
        self,
        encoder: Any,
        *,
        index_options: str | None = None,
        m: int | None = None,
        ef_construction: int | None = None,
        number_of_replicas: int | None = None,
        batch_size: int = 256,
        page_size: int = 500,
        progress: bool | None = None,
        dead_letter: str | None = None,
    ) -> ReindexResult:
        """Blue/green: re-embed every document into a new physical index, verify, swap the alias.

        The index keeps taking writes while this runs, and none is lost: writes that reach the old
        index during the copy are caught up, the old index is write-blocked for the last changes
        and a per-document verification (id and version), then the alias moves in one atomic call
        (see :mod:`esdistill.plugin._copy`). The old index stays for :meth:`rollback`. A concrete
        index of the alias's name (adopted in place) is replaced by the alias; its data is kept in
        the clone ``<alias>-000000``. An index that stores teacher vectors keeps them: the new
        version stores the same teacher's vectors, embedded again from each document's text.

        Args:
            encoder: the new model (an ``OnnxEncoder``; its manifest goes into the new index).
            index_options / m / ef_construction / number_of_replicas: change these on the way
                (default: as in the current index).
            batch_size: documents per embedding chunk and bulk request.
            page_size: documents read per request.
            progress: show a progress bar (default: when stderr is a terminal).
            dead_letter: unused (kept for compatibility): a document the new index refuses stops
                the swap and is named in the error.

        Returns:
            The old and new index names and the copy summary.

        Raises:
            ConfigError: the alias is not an esdistill index.
            IngestError: a document could not be carried over; the alias is left unchanged and the
                new index is kept (run the reindex again to resume into it).
        """
        from esdistill.plugin._bluegreen import blue_green

        old = self.current()
        old_meta = self.meta(old)
        from esdistill.plugin.teacher_vectors import TeacherInfo

        return blue_green(self, encoder, text_fields=old_meta.text_fields, vector_field=old_meta.vector_field,
                          index_options=index_options, m=m, ef_construction=ef_construction,
                          number_of_replicas=number_of_replicas, batch_size=batch_size, page_size=page_size,
                          progress=progress, teacher=TeacherInfo.from_meta(old_meta))

    def adopt(self, encoder: Any, *, text_fields: tuple[str, ...] | list[str], vector_field: str = "embedding",
              mode: str = "in-place", index_options: str | None = None, batch_size: int = 256,
              progress: bool | None = None, teacher: TeacherInfo | None = None) -> AdoptResult:
        """Make an index esdistill did not create searchable by ``encoder``'s vectors.

        ``mode="in-place"`` adds the vector field and esdistill's bookkeeping fields to the
        existing mapping and backfills vectors with conditional partial updates; ``mode="copy"``
        copies the index blue/green into ``<alias>-000001`` with its whole mapping and settings
        plus the vector field, and replaces a concrete index of this name by an alias of the same
        name. With ``teacher``, the index also stores that bi-encoder teacher's document vectors.
        See :mod:`esdistill.plugin.adopt`.

        Raises:
            ConfigError: no such index, a text field is not in its mapping, or a field clashes.
            FingerprintError: the index was adopted with another model already.
        """
        from esdistill.plugin.adopt import adopt

        return adopt(self, encoder, text_fields=tuple(text_fields), vector_field=vector_field, mode=mode,
                     index_options=index_options, batch_size=batch_size, progress=progress, teacher=teacher)

    def unfinished_copy(self, source: str, manifest: Manifest, *, vector_field: str,
                        text_fields: tuple[str, ...], index_options: str | None,
                        teacher_fingerprint: str = "") -> str | None:
        """A newer version left ``building`` by an interrupted copy of ``source`` with the same
        model, teacher vectors and layout (a version that ever took the alias is never reused)."""
        for name in reversed(self.versions()):
            if name == source:
                continue
            try:
                meta = self.meta(name)
            except ConfigError:
                continue
            if (meta.building and meta.previous_index == source and meta.model_fingerprint == manifest.fingerprint
                    and meta.vector_field == vector_field and tuple(meta.text_fields) == tuple(text_fields)
                    and meta.teacher_fingerprint == teacher_fingerprint
                    and (index_options is None or meta.index_options == index_options)):
                return name
        return None

    def original_name(self) -> str:
        """Where a concrete index of the alias's name is kept when the alias replaces it."""
        return f"{self.alias}-{0:0{_VERSION_DIGITS}d}"

    def rollback(self, *, to: str | None = None) -> tuple[str, str]:
        """Point the alias back at the previous physical index (or ``to``) in one atomic call.

        The previous index may be the team's original (``<alias>-000000`` after ``adopt --copy``,
        or the index the alias pointed at before): it holds no esdistill vectors, and esdistill
        search refuses it until it is adopted again.

        Returns:
            ``(from_index, to_index)``.

        Raises:
            ConfigError: there is no previous index (or ``to`` is neither one of this alias's
                versions nor the current index's previous index).
        """
        from esdistill.plugin._bluegreen import repair_interrupted

        repair_interrupted(self)
        current = self.current()
        try:
            previous = self.meta(current).previous_index
        except ConfigError:
            previous = None
        if to is None:
            to = previous
            if not to:
                raise ConfigError(f"{current} has no previous index to roll back to")
        versions = self.versions()
        allowed = set(versions) | ({previous} if previous else set())
        if to not in allowed or not self.client.indices.exists(index=to):
            raise ConfigError(f"cannot roll {self.alias!r} back to {to!r}: it is not one of its versions "
                              f"({', '.join(versions) or 'none'}); it may have been deleted")
        if to == current:
            raise ConfigError(f"alias {self.alias!r} already points at {to}")
        if current == self.alias:
            raise ConfigError(f"{self.alias!r} is a concrete index, not an alias: there is nothing to roll back")
        try:
            self.meta(to)
        except ConfigError:
            logger.warning("%s holds no esdistill vectors (the original index): esdistill search refuses it until "
                           "it is adopted again", to)
        self._point_alias_at(to, current=list(self._alias_targets()))
        return current, to

    def prune(self, *, keep: int = 1) -> list[str]:
        """Delete old versions, keeping the current one and the ``keep`` newest others.

        Returns:
            The deleted index names.
        """
        if keep < 0:
            raise ConfigError(f"keep={keep} (expected >= 0)")
        current = self.current()
        others = [v for v in self.versions() if v != current]
        doomed = others[: max(0, len(others) - keep)]
        for name in doomed:
            self.client.indices.delete(index=name)
            logger.info("deleted old version %s", name)
        return doomed


def _api_reason(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", {})
        if isinstance(err, dict):
            root = (err.get("root_cause") or [err])[0]
            return f"{root.get('type', 'error')}: {root.get('reason', '')}"
    return str(exc)
