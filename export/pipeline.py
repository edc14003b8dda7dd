"""The one-command paths behind ``esdistill distill`` and ``esdistill adapt``.

``distill``: queries (given, with or without qrels, and/or synthetic) -> BM25 + dense candidate
pools -> teacher scores (cached) -> training -> promotion gate -> int8 ONNX export.
``adapt``: the same with no labels at all: synthetic queries from the corpus, the teacher chosen on
a pseudo-dev set (held-out synthetic queries whose source document is relevant), the trained
weights averaged with the base's (WiSE-FT, ``merge_alpha``), and the gate on that pseudo-dev set.

Everything lands in the run folder: ``queries.synthetic.jsonl``, ``lists.train.jsonl``,
``teacher_selection.json``, ``student/`` (the student the gate scores), ``student.trained/`` (the
trained weights, when averaged), ``gate.json``, ``onnx/`` (the served
export, only when the gate promoted the student) and ``run.json`` (a summary).

:func:`run_distill` is a sequence of stages, each a function with a typed result:
:func:`prepare_inputs` (:class:`Inputs`: documents, training queries, :class:`DevSet`),
:func:`open_bm25` (:class:`Bm25Indices`), :func:`embed_with_base` (:class:`BaseStudent`),
:func:`choose_teacher` (:class:`TeacherChoice`), :func:`mine` (:class:`Mined`), :func:`train`
(:class:`Trained`), :func:`average_weights` (:class:`Averaged`), :func:`gate` (:class:`Gated`) and
:func:`export_student` (:class:`Exported`).

Example::

    >>> summary = run_distill(DistillConfig(corpus="data/cranfield", out="runs/cran"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from esdistill.export.gate import GateResult, RetrievalEvaluator, dev_corpus, promotion_gate, select_teacher
from esdistill.export.mining import (
    Bm25Index,
    CandidateList,
    DenseRetriever,
    MiningConfig,
    mine_candidates,
    retrieve_pools,
    save_lists,
)
from esdistill.export.parity import ParityThresholds
from esdistill.export.queries import (
    ALL_STYLES,
    SyntheticQuery,
    filter_grounded,
    generate_queries,
    load_generator,
    mask_source,
    split_dev,
)
from esdistill.export.score_cache import ScoreCache
from esdistill.export.teachers import BiEncoderTeacher, build_teacher, with_cache
from esdistill.export.train import (
    StudentEncoder,
    TrainConfig,
    TrainResult,
    average_with_base,
    load_student,
    train_student,
)
from esdistill.plugin._errors import ConfigError, ParityError
from esdistill.plugin.beir import Doc, load_corpus, load_qrels, load_queries, write_corpus, write_queries

__all__ = ["AUTO_TEACHERS", "CUT_DOCUMENTS", "Averaged", "BaseStudent", "Bm25Indices", "DevSet",
           "DevSource", "DistillConfig", "Exported", "Gated", "Inputs", "Mined", "TeacherChoice",
           "Teachers", "Trained", "average_weights", "choose_teacher", "embed_with_base", "export_student",
           "gate", "mine", "open_bm25", "prepare_inputs", "run_distill", "train", "training_corpus"]

logger = logging.getLogger(__name__)

#: candidates for ``--teacher auto``. Pure BM25 is left out on purpose: synthetic queries are
#: written from the documents' own words, so BM25 looks better on the pseudo-dev set than it is.
AUTO_TEACHERS = ("mpnet", "0.75*mpnet+0.25*bm25", "0.5*mpnet+0.5*bm25")


class DevSource(str, Enum):
    """Where a run's dev set (for the teacher choice and the gate) comes from; ``run.json`` records
    it as ``dev_source``, next to ``dev_origin``, the same in words."""

    #: ``--dev-queries`` / ``--dev-qrels``
    GIVEN = "given"
    #: held-out training queries, every one given with its qrels
    HELD_OUT = "held-out"
    #: held-out queries with a known relevant document, some or all of them synthetic (their source
    #: document is the relevant one): a pseudo-dev set
    PSEUDO = "pseudo-dev"

    @property
    def synthetic(self) -> bool:
        """Whether synthetic queries are among the dev queries."""
        return self is DevSource.PSEUDO


@dataclass
class DistillConfig:
    """Settings of a distillation run (validated on construction).

    Attributes:
        corpus: ``corpus.jsonl`` or a BEIR folder.
        out: the run folder.
        queries: training queries (``None``: synthetic only).
        qrels: qrels of the training queries (positives; optional). When given, only the queries
            that have qrels are used (a BEIR ``queries.jsonl`` holds every split).
        dev_queries / dev_qrels: a labelled dev set for the gate (default: held-out queries).
        student: the base student.
        teacher: teacher spec (see :func:`~esdistill.export.teachers.build_teacher`) or ``auto``
            (the best of ``auto_teachers`` on the dev set).
        synthetic: synthetic queries to generate (0: none; default: 0 with queries, else 2000;
            with queries that have no qrels and no dev set: ``3 * dev_size``, for the gate only).
        generator: ``rules`` or ``module:function``.
        styles: synthetic query styles.
        dev_size: held-out queries for the gate/teacher selection when no dev set is given.
        grounded_rank: keep synthetic queries whose source doc the teacher ranks in this top.
        mining: candidate list settings.
        train: training settings.
        teacher_max_seq_length: token limit of bi-encoder teachers.
        eval_max_docs: dev corpus size for the gate (judged + mined docs first; ``None``: all).
        export: export the promoted student to ONNX (``quantize``: ``int8`` or ``none``).
        index_prefix: name prefix of the temporary BM25 index.
        show_progress: progress bars.
        mask_dev_source: for a pseudo-dev set of synthetic queries, prefer queries that copy a
            passage (claim, title) and cut that passage from the source document in the dev copy of
            the corpus (the inverse cloze task), so that the teacher choice and the gate do not
            reward finding copied words.
        mask_train_source: a synthetic training query that copies a passage (claim, title) is trained
            against its source document *with that passage cut out* (the inverse cloze task, Lee et
            al. 2019), and the unmasked source is kept out of its list: otherwise the positive holds
            the query verbatim and the lists teach copy-matching, not relevance. Queries whose
            source is nothing but the copied passage are dropped.
        teacher_confidence: with ``teacher="auto"`` and a pseudo-dev set (synthetic queries),
            ``auto_teachers`` is a preference order (dense first): the earliest teacher not
            significantly below the best on the dev set (paired bootstrap, probability
            ``< teacher_confidence``) is chosen, since synthetic dev queries favour BM25-heavy
            teachers by construction (0: the best score wins, as it always does on judged real
            dev queries).
        gate_confidence: the gate also requires this paired-bootstrap probability that the trained
            student beats its base on the dev queries (0: only "not worse"). A gain within the noise
            of a small or synthetic dev set is refused.
        document_model: with query-side-only training, the export that embedded your index's
            documents (the base student's export): the trained query encoder is paired with it
            and can query that index without re-embedding it.
        merge_alpha: average the trained student's weights with its base's (WiSE-FT, Wortsman et
            al. 2022): ``alpha * trained + (1 - alpha) * base``, before the gate. ``"auto"``: 0.5
            (the paper's default mix) when every training query is synthetic, since the student is
            then served on queries unlike any it was trained on; 1.0 (the trained weights as they
            are) when real queries were trained on. The trained weights are kept in
            ``student.trained/``.
        parity_thresholds: the limits the promoted student's ONNX export must respect (default
            :class:`~esdistill.export.parity.ParityThresholds`). An export that breaks one is not
            written: ``run.json`` records the refusal and :class:`ParityError` is raised.
    """

    corpus: str | os.PathLike[str]
    out: str | os.PathLike[str]
    queries: str | os.PathLike[str] | None = None
    qrels: str | os.PathLike[str] | None = None
    dev_queries: str | os.PathLike[str] | None = None
    dev_qrels: str | os.PathLike[str] | None = None
    student: str = "minilm"
    teacher: str = "mpnet"
    synthetic: int | None = None
    generator: str = "rules"
    styles: tuple[str, ...] = ALL_STYLES
    dev_size: int = 200
    grounded_rank: int = 3
    mining: MiningConfig = field(default_factory=MiningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_max_seq_length: int = 256
    eval_max_docs: int | None = 2000
    export: bool = True
    quantize: str = "int8"
    index_prefix: str = "esdistill-train-"
    auto_teachers: tuple[str, ...] = AUTO_TEACHERS
    show_progress: bool = True
    seed: int = 0
    document_model: str | os.PathLike[str] | None = None
    mask_dev_source: bool = True
    mask_train_source: bool = True
    teacher_confidence: float = 0.9
    gate_confidence: float = 0.9
    merge_alpha: float | str = "auto"
    parity_thresholds: ParityThresholds | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.qrels and not self.queries:
            problems.append("--qrels needs --queries")
        if bool(self.dev_queries) != bool(self.dev_qrels):
            problems.append("--dev-queries and --dev-qrels go together")
        if self.synthetic is not None and self.synthetic < 0:
            problems.append(f"synthetic={self.synthetic} (need >= 0)")
        if self.synthetic == 0 and not self.queries:
            problems.append("no training queries: pass --queries or allow synthetic queries")
        if self.dev_size < 1:
            problems.append(f"dev_size={self.dev_size} (need >= 1)")
        if not 0.0 <= self.teacher_confidence < 1.0:
            problems.append(f"teacher_confidence={self.teacher_confidence} (need 0 <= c < 1; 0: the best score wins)")
        if not 0.0 <= self.gate_confidence < 1.0:
            problems.append(f"gate_confidence={self.gate_confidence} (need 0 <= c < 1; 0 turns it off)")
        if self.quantize not in ("int8", "none"):
            problems.append(f"quantize={self.quantize!r} (int8 or none)")
        if self.merge_alpha != "auto" and not (isinstance(self.merge_alpha, (int, float))
                                               and 0.0 < self.merge_alpha <= 1.0):
            problems.append(f"merge_alpha={self.merge_alpha!r} (the trained weights' share, 0 < a <= 1 "
                            "(1: no averaging), or 'auto')")
        if self.document_model is not None and not self.train.query_side_only:
            problems.append("--document-model pairs a query-side-only student with an index: drop --full-fine-tune")
        if problems:
            raise ConfigError("bad distill settings: " + "; ".join(problems))


class _CachedEncoder:
    """A bi-encoder teacher object used as a student encoder (shares its embedding caches)."""

    def __init__(self, model: BiEncoderTeacher) -> None:
        self.model = model

    def encode_queries(self, texts: list[str]) -> Any:
        return self.model.embed_queries(texts)

    def encode_documents(self, texts: list[str]) -> Any:
        return self.model.doc_vectors(texts)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


CUT_DOCUMENTS = "documents.cut.jsonl"
#: where a run keeps the trained weights when the student is their average with the base's
MERGED_FROM = "student.trained"


def training_corpus(run_dir: str | os.PathLike[str], corpus: Mapping[str, Doc]) -> dict[str, Doc]:
    """The documents a run's ``lists.train.jsonl`` refers to: ``corpus`` plus the run's inverse-cloze
    positives (source documents with a copied passage cut out, ids ``DOC#cut:QUERY``), so the lists
    can be trained on again (e.g. with another loss)."""
    cut = Path(run_dir) / CUT_DOCUMENTS
    return {**corpus, **load_corpus(cut)} if cut.is_file() else dict(corpus)


#: what ``run.json`` says when the gate promoted the student on synthetic dev queries only
_PSEUDO_DEV_CAVEAT = (
    "promoted on synthetic pseudo-dev queries only, and a gain on synthetic queries does not always carry "
    "over to real ones. Before serving, check the student on a few real queries with judgements "
    "(esdistill eval, or --dev-queries/--dev-qrels), or train on unlabelled real queries (distill "
    "--queries) instead of synthetic ones")


def _cache_dir(cfg: DistillConfig) -> Path:
    """The run's cache folder (teacher scores, embeddings)."""
    return Path(cfg.out) / "cache"


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the block as ``timings[name]`` (seconds)."""
    t = time.time()
    yield
    timings[name] = time.time() - t


# ---------------------------------------------------------------------------- inputs


@dataclass
class DevSet:
    """The queries the teacher choice and the gate score on.

    Attributes:
        queries: ``{query_id: text}``.
        qrels: ``{query_id: {doc_id: grade}}``.
        source: where they come from.
        origin: the same in words (``run.json``'s ``dev_origin``).
        masked: dev copies of the source documents of copied-passage dev queries, with those passages
            cut out (inverse cloze; empty when there are none).
        view: the documents the dev queries are scored against (``masked`` over the corpus).
    """

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: DevSource
    origin: str
    masked: dict[str, Doc]
    view: Mapping[str, Doc]


@dataclass
class Inputs:
    """A run's documents and queries, before any model runs (see :func:`prepare_inputs`).

    Attributes:
        corpus: the documents.
        given: the given training queries (with qrels: only the judged ones).
        synthetic: the synthetic queries generated, for training and/or the dev set.
        train_queries: the queries to train on: given and synthetic, less the dev queries and the
            synthetic queries that copy the whole of their source document.
        positives: the known relevant documents of each query (the cut source of a masked query).
        exclude: documents kept out of a query's list (the verbatim source of a masked query).
        cut: the inverse-cloze positives, ids ``DOC#cut:QUERY`` (``documents.cut.jsonl``).
        masked_train_queries: how many training queries are trained against a cut source (``None``:
            ``mask_train_source`` is off).
        train_view: the documents the training lists refer to (``cut`` over ``corpus``).
        dev: the dev set.
    """

    corpus: dict[str, Doc]
    given: dict[str, str]
    synthetic: list[SyntheticQuery]
    train_queries: dict[str, str]
    positives: dict[str, list[str]]
    exclude: dict[str, list[str]]
    cut: dict[str, Doc]
    masked_train_queries: int | None
    train_view: Mapping[str, Doc]
    dev: DevSet

    def summary(self) -> dict[str, Any]:
        """``run.json``'s entries about the queries."""
        entries: dict[str, Any] = {}
        if self.masked_train_queries is not None:
            entries["masked_train_queries"] = self.masked_train_queries
        return {**entries, "train_queries": len(self.train_queries), "given_queries": len(self.given),
                "synthetic_queries": len(self.synthetic), "dev_queries": len(self.dev.queries),
                "dev_source": self.dev.source.value, "dev_origin": self.dev.origin}


def prepare_inputs(cfg: DistillConfig) -> Inputs:
    """Load the corpus and the given queries, generate synthetic queries, hold out the dev set and
    cut the copied passages out of the positives of training queries (inverse cloze).

    Writes ``queries.synthetic.jsonl`` and ``documents.cut.jsonl`` to the run folder when there are
    synthetic queries and cut documents.

    Args:
        cfg: the settings.

    Returns:
        The run's documents and queries.

    Raises:
        ConfigError: too few queries with a known relevant document to hold out the dev set.
    """
    corpus = load_corpus(cfg.corpus)
    given, given_qrels = _given_queries(cfg)
    positives: dict[str, list[str]] = {q: [d for d, g in r.items() if g > 0 and d in corpus]
                                       for q, r in given_qrels.items()}
    # unlabelled training queries (a query log) and no dev set: the gate still needs queries with a
    # known relevant document, so synthetic ones are generated for the dev set only
    dev_only_synthetic = bool(given) and not given_qrels and not cfg.dev_queries and cfg.synthetic is None
    synthetic = _synthesize(cfg, corpus, given=given, dev_only=dev_only_synthetic)
    for q in synthetic:
        positives[q.query_id] = [q.doc_id]
    train_q: dict[str, str] = dict(given)
    train_q.update({q.query_id: q.text for q in synthetic})
    dev = _hold_out_dev(cfg, corpus, given, synthetic, train_q, positives, dev_only=dev_only_synthetic)
    cut: dict[str, Doc] = {}
    exclude: dict[str, list[str]] = {}
    if cfg.mask_train_source:
        cut, exclude = _mask_training(cfg, corpus, synthetic, train_q, positives)
    return Inputs(corpus=corpus, given=given, synthetic=synthetic, train_queries=train_q, positives=positives,
                  exclude=exclude, cut=cut, masked_train_queries=len(cut) if cfg.mask_train_source else None,
                  train_view={**corpus, **cut} if cut else corpus, dev=dev)


def _given_queries(cfg: DistillConfig) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The given training queries and their qrels; with qrels, only the queries that have some."""
    given = load_queries(cfg.queries) if cfg.queries else {}
    given_qrels = load_qrels(cfg.qrels) if cfg.qrels else {}
    if given_qrels:
        # a BEIR queries.jsonl holds every split: with qrels, train only on the judged queries so
        # that test queries never leak into training
        unjudged = [q for q in given if q not in given_qrels]
        if unjudged:
            logger.info("ignoring %d queries that have no qrels in %s", len(unjudged), cfg.qrels)
        given = {q: t for q, t in given.items() if q in given_qrels}
    return given, given_qrels


def _synthesize(cfg: DistillConfig, corpus: Mapping[str, Doc], *, given: Mapping[str, str],
                dev_only: bool) -> list[SyntheticQuery]:
    """Generate the run's synthetic queries (``cfg.synthetic``; by default 2000 without given queries,
    ``3 * dev_size`` when they are for the dev set only, else none) and write them to
    ``queries.synthetic.jsonl``."""
    n_syn = cfg.synthetic if cfg.synthetic is not None else (0 if given else 2000)
    if dev_only:
        n_syn = 3 * cfg.dev_size  # some are dropped as duplicates; about half copy a passage
    if not n_syn:
        return []
    gen = load_generator(cfg.generator, corpus)
    per_doc = min(len(cfg.styles), max(1, -(-n_syn // len(corpus))))
    synthetic = generate_queries(corpus, gen, styles=cfg.styles, per_doc=per_doc, max_queries=n_syn, seed=cfg.seed)
    write_queries(Path(cfg.out) / "queries.synthetic.jsonl", {q.query_id: q.text for q in synthetic})
    return synthetic


def _hold_out_dev(cfg: DistillConfig, corpus: Mapping[str, Doc], given: Mapping[str, str],
                  synthetic: list[SyntheticQuery], train_q: dict[str, str], positives: Mapping[str, list[str]],
                  *, dev_only: bool) -> DevSet:
    """The given dev set, or ``dev_size`` queries held out of ``train_q`` (removed from it; with
    ``dev_only``, every synthetic query is removed from it).

    Raises:
        ConfigError: too few queries with a known relevant document to hold out ``dev_size``.
    """
    if cfg.dev_queries:
        queries, qrels = load_queries(cfg.dev_queries), load_qrels(cfg.dev_qrels)  # type: ignore[arg-type]
        return DevSet(queries, qrels, DevSource.GIVEN, "given dev qrels", {}, corpus)
    judged = [q for q in train_q if positives.get(q)]
    need = cfg.dev_size if dev_only else 2 * cfg.dev_size  # else half must stay to train on
    if len(judged) < need:
        raise ConfigError(f"only {len(judged)} queries have a known relevant document; need at "
                          f"least {need} to hold out {cfg.dev_size} for the gate (lower --dev-size "
                          "or allow more synthetic queries)")
    # hold out copied-passage queries when there are enough: they can be scored against their
    # source document without the copied passage (see below)
    span_of = {q.query_id: q.span for q in synthetic if q.span}
    with_span = [q for q in judged if q in span_of]
    pick_from = with_span if cfg.mask_dev_source and len(with_span) >= need else judged
    _, held = split_dev(pick_from, dev_size=cfg.dev_size, seed=cfg.seed)
    queries = {q: train_q.pop(q) for q in held}
    qrels = {q: {d: 1 for d in positives[q]} for q in held}
    if dev_only:
        for q in synthetic:
            train_q.pop(q.query_id, None)
    n_given = sum(1 for q in held if q in given)
    source = DevSource.HELD_OUT if n_given == len(held) else DevSource.PSEUDO
    origin = ("held-out training queries with their qrels" if n_given == len(held) else
              f"held-out queries with known relevant documents (pseudo-dev; {n_given} of them given queries "
              "with qrels, the rest synthetic with their source document)" if n_given else
              "held-out queries with known relevant documents (pseudo-dev)")
    if dev_only:
        origin += f"; synthetic queries made for the gate only, training uses the {len(given)} given queries"
    masked: dict[str, Doc] = {}
    if cfg.mask_dev_source:
        spans: dict[str, list[str]] = {}
        for q in held:
            if span_of.get(q):
                spans.setdefault(next(iter(qrels[q])), []).append(span_of[q])
        masked = {d: mask_source(corpus[d], s) for d, s in spans.items()}
        if masked:
            origin += (f"; {sum(1 for q in held if span_of.get(q))} of them copy a passage, which is cut "
                       "from their source document for the dev set (inverse cloze)")
    return DevSet(queries, qrels, source, origin, masked, {**corpus, **masked} if masked else corpus)


def _mask_training(cfg: DistillConfig, corpus: Mapping[str, Doc], synthetic: list[SyntheticQuery],
                   train_q: dict[str, str], positives: dict[str, list[str]]
                   ) -> tuple[dict[str, Doc], dict[str, list[str]]]:
    """Inverse cloze for training: a query that copies a passage is trained against its source
    document without that passage (a new id, its positive in ``positives``), never against the
    verbatim copy (excluded from its list). A query whose source is nothing but the passage is
    removed from ``train_q``. The cut documents are written to ``documents.cut.jsonl``.

    Returns:
        The cut documents and, per masked query, the documents to keep out of its list.
    """
    cut: dict[str, Doc] = {}
    exclude: dict[str, list[str]] = {}
    emptied = []
    for q in synthetic:
        if not q.span or q.query_id not in train_q:
            continue
        rest = mask_source(corpus[q.doc_id], [q.span])
        if len(rest.full.split()) < 5:
            emptied.append(train_q.pop(q.query_id))
            continue
        cut_id = f"{q.doc_id}#cut:{q.query_id}"
        cut[cut_id] = rest
        positives[q.query_id] = [cut_id]
        exclude[q.query_id] = [q.doc_id]
    if cut:
        write_corpus(Path(cfg.out) / CUT_DOCUMENTS, cut)  # what the teacher and the student saw
    if emptied:
        logger.info("dropped %d synthetic queries that copy the whole of their source document", len(emptied))
    return cut, exclude


# ---------------------------------------------------------------------------- retrievers


@dataclass
class Bm25Indices:
    """A run's temporary BM25 indices (deleted when the ``ExitStack`` they were opened on closes).

    Attributes:
        train: the training documents; the cut copies are in it too, hidden from search, so that
            BM25 can score them.
        dev: the dev copy of the corpus, with the dev queries' copied passages cut out (``train``
            when nothing is cut).
    """

    train: Bm25Index
    dev: Bm25Index


def open_bm25(cfg: DistillConfig, inputs: Inputs, es: Any, stack: ExitStack) -> Bm25Indices:
    """Create the run's BM25 indices on ``es``; ``stack`` deletes them when it closes."""
    train_index = stack.enter_context(Bm25Index(es, inputs.train_view, prefix=cfg.index_prefix, hidden=inputs.cut))
    dev_index = (stack.enter_context(Bm25Index(es, inputs.dev.view, prefix=cfg.index_prefix + "dev-"))
                 if inputs.dev.masked else train_index)
    return Bm25Indices(train_index, dev_index)


@dataclass
class BaseStudent:
    """The base student and dense retrievers over its document vectors.

    Attributes:
        encoder: the base student (its embeddings cached in the run's cache folder).
        dense: over the corpus.
        dense_dev: over the dev copy of the corpus (``dense`` when nothing is cut).
    """

    encoder: BiEncoderTeacher
    dense: DenseRetriever
    dense_dev: DenseRetriever


def embed_with_base(cfg: DistillConfig, inputs: Inputs) -> BaseStudent:
    """Embed the corpus (and its dev copy) with the base student."""
    base = BiEncoderTeacher(cfg.student, max_seq_length=cfg.train.max_seq_length, embedding_cache=_cache_dir(cfg),
                            show_progress=cfg.show_progress)
    corpus, dev_view = inputs.corpus, inputs.dev.view
    doc_ids = list(corpus)
    dense = DenseRetriever(doc_ids, base.doc_vectors([corpus[d].full for d in doc_ids]), base.embed_queries)
    dense_dev = (DenseRetriever(doc_ids, base.doc_vectors([dev_view[d].full for d in doc_ids]), base.embed_queries)
                 if inputs.dev.masked else dense)
    return BaseStudent(base, dense, dense_dev)


# ---------------------------------------------------------------------------- teacher


class Teachers:
    """Builds a run's teachers: equal members (same model and settings) are one object, and every
    score goes through the run's score cache.

    Args:
        cfg: the settings.
        score_cache: the run's teacher score cache.
    """

    def __init__(self, cfg: DistillConfig, score_cache: ScoreCache) -> None:
        self.cfg = cfg
        self.score_cache = score_cache
        self.shared: dict[str, Any] = {}

    def build(self, spec: str, index: Bm25Index) -> Any:
        """The teacher ``spec`` (BM25 members search ``index``), its scores cached."""
        cfg = self.cfg
        return with_cache(build_teacher(spec, bm25_index=index, embedding_cache=_cache_dir(cfg), shared=self.shared,
                                        show_progress=cfg.show_progress, max_seq_length=cfg.teacher_max_seq_length),
                          self.score_cache)

    def prepare(self, doc_ids: list[str], queries: list[str], view: Mapping[str, Doc]) -> None:
        """Embed the pooled documents (and the queries) with every bi-encoder teacher in large
        batches, once, instead of one small batch per query."""
        for member in self.shared.values():
            if isinstance(member, BiEncoderTeacher):
                member.prepare([view[d].full for d in dict.fromkeys(doc_ids)])
                member.save_embeddings()
                if queries:
                    member.embed_queries(queries)


@dataclass
class TeacherChoice:
    """The teacher a run trains with (see :func:`choose_teacher`).

    Attributes:
        chosen: its spec.
        teacher: the teacher over the training documents (scores cached).
        selection: what ``teacher_selection.json`` holds (``run.json``'s ``teacher``).
        dev_pools: the fused BM25 + dense pools of the dev queries the candidates reranked; their
            documents join the gate's dev corpus.
    """

    chosen: str
    teacher: Any
    selection: dict[str, Any]
    dev_pools: list[CandidateList]


def choose_teacher(cfg: DistillConfig, inputs: Inputs, bm25: Bm25Indices, base: BaseStudent,
                   teachers: Teachers) -> TeacherChoice:
    """Score the candidate teachers (``auto_teachers`` for ``teacher="auto"``, else the given one)
    reranking the dev queries' fused BM25 + dense pools, and pick one; write ``teacher_selection.json``.

    With ``auto`` and synthetic dev queries, the earliest candidate not significantly below the best
    wins (``teacher_confidence``), else the best nDCG@10.
    """
    dev = inputs.dev
    dev_pos = {q: list(r) for q, r in dev.qrels.items()}
    dev_pools = retrieve_pools(dev.queries, bm25=bm25.dev, dense=base.dense_dev, positives=dev_pos,
                               depth=cfg.mining.pool_depth)
    pooled = [d for c in dev_pools for d in c.doc_ids]
    specs = list(cfg.auto_teachers) if cfg.teacher == "auto" else [cfg.teacher]
    candidates = {spec: teachers.build(spec, bm25.dev) for spec in specs}
    teachers.prepare(pooled, list(dev.queries.values()), dev.view)
    how: dict[str, Any] = {}
    # the preference for the dense teacher answers the lexical bias of *synthetic* dev queries;
    # judged real queries pick the best score
    prefer_dense = cfg.teacher == "auto" and dev.source.synthetic
    chosen, scores = select_teacher(candidates, dev_pools, dev.view, seed=cfg.seed, details=how,
                                    confidence=cfg.teacher_confidence if prefer_dense else 0.0)
    selection: dict[str, Any]
    if cfg.teacher == "auto":
        selection = {"chosen": chosen, "scores": scores, "dev_queries": len(dev_pools),
                     "why": "best nDCG@10 reranking the fused BM25+dense pools of the dev queries"}
        if how.get("p_best_better"):
            selection["p_best_better"] = how["p_best_better"]
            if chosen != how["best"]:
                selection["why"] = (
                    f"the earliest of {list(cfg.auto_teachers)} (dense first) whose nDCG@10 reranking the "
                    f"dev pools is not significantly below the best ({how['best']}: P(best better) "
                    f"{how['p_best_better'][chosen]:.2f} < {cfg.teacher_confidence}); synthetic dev queries "
                    "favour BM25-heavy teachers by construction")
    else:
        chosen = cfg.teacher
        selection = {"chosen": cfg.teacher, "scores": scores, "why": "given by the user"}
    selection["dev_source"], selection["dev_origin"] = dev.source.value, dev.origin
    teacher = teachers.build(chosen, bm25.train)  # the same teacher over the training documents
    _write_json(Path(cfg.out) / "teacher_selection.json", selection)
    return TeacherChoice(chosen, teacher, selection, dev_pools)


# ---------------------------------------------------------------------------- mining


@dataclass
class Mined:
    """The teacher-scored candidate lists a run trains on (``lists.train.jsonl``).

    Attributes:
        lists: the lists.
        ungrounded_dropped: synthetic queries dropped because the teacher did not rank their source
            document in the top ``grounded_rank``.
    """

    lists: list[CandidateList]
    ungrounded_dropped: int

    def summary(self) -> dict[str, Any]:
        """``run.json``'s entries about the lists."""
        return {"lists": len(self.lists), "ungrounded_dropped": self.ungrounded_dropped}


def mine(cfg: DistillConfig, inputs: Inputs, bm25: Bm25Indices, base: BaseStudent, choice: TeacherChoice,
         teachers: Teachers) -> Mined:
    """Mine a teacher-scored candidate list for every training query, drop the synthetic queries
    whose source the teacher ranks below ``grounded_rank``, and write ``lists.train.jsonl``."""
    train_q, view = inputs.train_queries, inputs.train_view
    lists = mine_candidates(train_q, view, teacher=choice.teacher, bm25=bm25.train, dense=base.dense,
                            before_scoring=lambda ids: teachers.prepare(ids, list(train_q.values()), view),
                            positives={q: inputs.positives.get(q, []) for q in train_q}, config=cfg.mining,
                            show_progress=cfg.show_progress, exclude=inputs.exclude)
    syn_ids = {q.query_id for q in inputs.synthetic}
    kept, dropped = filter_grounded([c for c in lists if c.query_id in syn_ids], max_rank=cfg.grounded_rank)
    lists = [c for c in lists if c.query_id not in syn_ids] + kept
    save_lists(Path(cfg.out) / "lists.train.jsonl", lists)
    return Mined(lists, len(dropped))


# ---------------------------------------------------------------------------- training


@dataclass
class Trained:
    """A trained student and the dev evaluation it was scored with.

    Attributes:
        result: what training produced (``student/``).
        evaluator: dense retrieval over ``dev_corpus`` with the dev queries (the gate's too).
        dev_corpus: the dev documents (judged and pooled first, up to ``eval_max_docs``).
    """

    result: TrainResult
    evaluator: RetrievalEvaluator
    dev_corpus: dict[str, Doc]

    def summary(self, config: TrainConfig) -> dict[str, Any]:
        """``run.json``'s ``train`` entry (``config``: the training settings)."""
        r = self.result
        return {"steps": r.steps, "seconds": round(r.seconds, 1), "teacher_temperature": r.teacher_temperature,
                "document_model": r.document_model, "config": asdict(config), "fingerprint": r.fingerprint,
                "resumed_from_step": r.resumed_from_step, "restarted": r.restarted}


def train(cfg: DistillConfig, inputs: Inputs, base: BaseStudent, choice: TeacherChoice, mined: Mined) -> Trained:
    """Train the student on the mined lists (into ``student/``), scored on the dev set as it goes."""
    dev = inputs.dev
    extra = [d for c in choice.dev_pools for d in c.doc_ids]
    ev_corpus: dict[str, Doc] = dev_corpus(dev.view, dev.qrels, max_docs=cfg.eval_max_docs, extra_ids=extra,
                                           seed=cfg.seed)
    evaluator = RetrievalEvaluator(ev_corpus, dev.queries, dev.qrels)
    # the base's document vectors are already cached (dense mining): reuse them for the frozen
    # document tower (query side only) and for the auto teacher temperature (both modes)
    listed = sorted({d for c in mined.lists for d in c.doc_ids})
    frozen = dict(zip(listed, base.encoder.doc_vectors([inputs.train_view[d].full for d in listed])))
    if cfg.train.query_side_only:
        evaluator.frozen_doc_vectors = base.encoder.doc_vectors(evaluator.doc_texts)
    result = train_student(mined.lists, inputs.train_view, student=cfg.student, out_dir=Path(cfg.out),
                           config=cfg.train, evaluator=evaluator, frozen_doc_vectors=frozen)
    return Trained(result, evaluator, ev_corpus)


@dataclass
class Averaged:
    """How the student mixes the trained weights with its base's (WiSE-FT; see ``merge_alpha``).

    Attributes:
        alpha: the trained weights' share (1.0: the trained weights as they are).
        why: the reason, in words.
        trained_weights: where the trained weights are (``student.trained/`` when averaged).
        trained_weights_dev: the trained weights' last dev score, when averaged (the gate scores
            the average).
    """

    alpha: float
    why: str
    trained_weights: Path
    trained_weights_dev: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """``run.json``'s ``weight_averaging`` entry."""
        entry: dict[str, Any] = {"alpha": self.alpha, "trained_weights": str(self.trained_weights), "why": self.why}
        if self.trained_weights_dev is not None:
            entry["trained_weights_dev"] = self.trained_weights_dev
        return entry


def average_weights(cfg: DistillConfig, inputs: Inputs, trained: Trained) -> Averaged:
    """Average the trained weights with the base's when ``merge_alpha`` (or ``auto``: 0.5 when every
    training query is synthetic, else 1.0) is below 1: the trained weights move to
    ``student.trained/`` and the average takes their place in ``student/``."""
    result = trained.result
    if cfg.merge_alpha != "auto":
        alpha, why = float(cfg.merge_alpha), f"--merge-alpha {cfg.merge_alpha}"
    elif not inputs.given:
        alpha, why = 0.5, ("every training query is synthetic: the trained weights are averaged with the base's "
                           "(WiSE-FT) so that real queries, unlike any trained on, keep much of the base's behaviour")
    else:
        alpha, why = 1.0, "real queries were trained on: the trained weights are used as they are"
    if alpha >= 1.0:
        return Averaged(alpha, why, result.model_dir)
    # keep the trained weights; the averaged model takes the student's place (gate, export)
    kept = Path(cfg.out) / MERGED_FROM
    if kept.exists():
        shutil.rmtree(kept)
    result.model_dir.rename(kept)
    average_with_base(kept, cfg.student, result.model_dir, alpha=alpha, max_seq_length=cfg.train.max_seq_length)
    dev_scores = [h["dev"] for h in result.history if "dev" in h]
    return Averaged(alpha, why, kept, dev_scores[-1] if dev_scores else None)


# ---------------------------------------------------------------------------- gate


@dataclass
class Gated:
    """The promotion gate's decision on a trained student.

    Attributes:
        decision: the gate's result (``gate.json``).
        caveat: the warning given when the student was promoted on synthetic dev queries only.
    """

    decision: GateResult
    caveat: str | None

    def summary(self) -> dict[str, Any]:
        """``run.json``'s entries about the gate."""
        return {**({"caveat": self.caveat} if self.caveat else {}), "gate": self.decision.to_dict()}


def gate(cfg: DistillConfig, inputs: Inputs, base: BaseStudent, trained: Trained) -> Gated:
    """Compare the student in ``student/`` with its base on the dev set; write ``gate.json`` (and
    log a warning when the student is promoted on synthetic dev queries only)."""
    max_len = cfg.train.max_seq_length
    query_model = load_student(trained.result.model_dir, max_seq_length=max_len)
    if cfg.train.query_side_only:
        student: Any = StudentEncoder(query_model, load_student(cfg.student, max_seq_length=max_len))
    else:
        student = StudentEncoder(query_model)
    decision = promotion_gate(trained.evaluator, base=_CachedEncoder(base.encoder), trained=student,
                              shared_documents=cfg.train.query_side_only, confidence=cfg.gate_confidence,
                              seed=cfg.seed)
    _write_json(Path(cfg.out) / "gate.json", decision.to_dict())
    caveat = None
    if decision.promoted and inputs.dev.source.synthetic:
        caveat = _PSEUDO_DEV_CAVEAT
        logger.warning("%s", caveat)
    return Gated(decision, caveat)


# ---------------------------------------------------------------------------- export


@dataclass
class Exported:
    """What :func:`export_student` did.

    Attributes:
        summary: ``run.json``'s ``export`` entry.
        refused: the parity error when the export was refused (nothing was exported); the caller
            raises it once ``run.json`` is written. ``None`` when the export was written.
    """

    summary: dict[str, Any]
    refused: ParityError | None = None


def export_student(cfg: DistillConfig, inputs: Inputs, trained: Trained) -> Exported:
    """Export the promoted student to ``onnx/`` (``quantize``), with parity checks on dev texts.

    A query-side-only student is a query encoder: it is paired with ``document_model``, or, without
    one, with the frozen base exported to ``onnx-documents/``.
    """
    from esdistill.export.onnx_export import REJECTED_NAME, export_model

    out, result, ev_corpus, dev = Path(cfg.out), trained.result, trained.dev_corpus, inputs.dev
    sample_q = dict(list(dev.queries.items())[:100])
    parity = {"parity_texts": {d: ev_corpus[d].full for d in list(ev_corpus)[:300]},
              "parity_queries": sample_q, "parity_qrels": {q: dev.qrels[q] for q in sample_q},
              "thresholds": cfg.parity_thresholds}
    name = Path(os.fspath(cfg.student)).name
    document_model = cfg.document_model
    target = out / "onnx"
    try:
        if cfg.train.query_side_only and document_model is None:
            # a query encoder must name the export that embeds its documents: export the frozen
            # base too, so the run holds both halves and the query encoder can never ingest
            document_model = target = out / "onnx-documents"
            if document_model.exists():
                shutil.rmtree(document_model)
            export_model(result.document_model, document_model, quantize=cfg.quantize, name=name, **parity)
        target = out / "onnx"
        res = export_model(result.model_dir, target, quantize=cfg.quantize, name=f"{name}-distilled",
                           document_model=document_model, **parity)
    except ParityError as exc:
        # the gate promoted the student but its export is refused: the run still leaves its summary
        return Exported({"refused": f"the export to {target} broke {len(exc.failures)} parity check(s): nothing "
                                    "was exported and the base student stays in service",
                         "failures": exc.failures, "report": str(target / REJECTED_NAME)}, exc)
    summary: dict[str, Any] = {"out": str(res.out), "fingerprint": res.manifest.fingerprint, "passed": res.passed,
                               "quantization": res.manifest.quantization}
    if cfg.train.query_side_only:
        # the export is a query encoder: documents stay embedded by the base student's export
        summary["role"] = "query encoder (documents: keep the base student's vectors)"
        summary["document_model"] = result.document_model
        summary["paired_with"] = str(document_model)
        summary["document_fingerprint"] = res.manifest.document_fingerprint
        if cfg.document_model is None:
            summary["note"] = (f"index documents with {document_model} (the base student's export; an index "
                               "built by an identical export of the base has the same fingerprint) and query "
                               "it with the onnx/ query encoder")
    return Exported(summary)


# ---------------------------------------------------------------------------- the run


def run_distill(cfg: DistillConfig, *, es: Any = None) -> dict[str, Any]:
    """Run the whole pipeline; return (and write to ``out/run.json``) a summary.

    The stages, in order: :func:`prepare_inputs`, :func:`open_bm25`, :func:`embed_with_base`,
    :func:`choose_teacher`, :func:`mine` (the BM25 indices are deleted after it), :func:`train`,
    :func:`average_weights`, :func:`gate` and, for a promoted student, :func:`export_student`.

    Args:
        cfg: the settings.
        es: an Elasticsearch client (default: :func:`esdistill.plugin.connect`).

    Raises:
        ConfigError: bad inputs. ElasticsearchUnavailable: no cluster.
        ParityError: the gate promoted the student but its ONNX export broke a parity threshold
            (``run.json`` is written first, with the refusal under ``export``).
    """
    from esdistill.plugin.es_client import connect

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    inputs = prepare_inputs(cfg)
    timings["queries"] = time.time() - t0
    es = es or connect()
    score_cache = ScoreCache(_cache_dir(cfg) / "teacher_scores.sqlite")
    with ExitStack() as stack:
        bm25 = open_bm25(cfg, inputs, es, stack)
        with _timed(timings, "student_embeddings"):
            base = embed_with_base(cfg, inputs)
        teachers = Teachers(cfg, score_cache)
        with _timed(timings, "teacher_selection"):
            choice = choose_teacher(cfg, inputs, bm25, base, teachers)
        with _timed(timings, "mining"):
            mined = mine(cfg, inputs, bm25, base, choice, teachers)
    cache_stats = score_cache.stats()
    with _timed(timings, "train"):
        trained = train(cfg, inputs, base, choice, mined)
    with _timed(timings, "merge"):
        averaged = average_weights(cfg, inputs, trained)
    with _timed(timings, "gate"):
        gated = gate(cfg, inputs, base, trained)
    summary: dict[str, Any] = {
        "corpus": str(cfg.corpus), "docs": len(inputs.corpus), "student": cfg.student, **inputs.summary(),
        "teacher": choice.selection, **mined.summary(), "score_cache": cache_stats,
        "weight_averaging": averaged.to_dict(), **gated.summary(), "train": trained.summary(cfg.train)}
    refused = None
    if gated.decision.promoted and cfg.export:
        with _timed(timings, "export"):
            exported = export_student(cfg, inputs, trained)
        summary["export"], refused = exported.summary, exported.refused
    elif not gated.decision.promoted:
        summary["export"] = {"skipped": "the gate refused the student; the base student stays in service"}
    _finish(summary, timings, t0, out)
    if refused is not None:
        raise refused
    return summary


def _finish(summary: dict[str, Any], timings: Mapping[str, float], t0: float, out: Path) -> None:
    """Add the timings to ``summary`` and write it to ``out/run.json``."""
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    summary["seconds"] = round(time.time() - t0, 1)
    _write_json(out / "run.json", summary)
