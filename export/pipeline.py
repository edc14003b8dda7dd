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

Example::

    >>> summary = run_distill(DistillConfig(corpus="data/cranfield", out="runs/cran"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from esdistill.export.gate import RetrievalEvaluator, dev_corpus, promotion_gate, select_teacher
from esdistill.export.mining import (
    Bm25Index,
    DenseRetriever,
    MiningConfig,
    mine_candidates,
    retrieve_pools,
    save_lists,
)
from esdistill.export.parity import ParityThresholds
from esdistill.export.queries import (
    ALL_STYLES,
    filter_grounded,
    generate_queries,
    load_generator,
    mask_source,
    split_dev,
)
from esdistill.export.score_cache import ScoreCache
from esdistill.export.teachers import BiEncoderTeacher, build_teacher, with_cache
from esdistill.export.train import StudentEncoder, TrainConfig, average_with_base, load_student, train_student
from esdistill.plugin._errors import ConfigError, ParityError
from esdistill.plugin.beir import Doc, load_corpus, load_qrels, load_queries, write_corpus, write_queries

__all__ = ["AUTO_TEACHERS", "CUT_DOCUMENTS", "DevSource", "DistillConfig", "run_distill", "training_corpus"]

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


def run_distill(cfg: DistillConfig, *, es: Any = None) -> dict[str, Any]:
    """Run the whole pipeline; return (and write to ``out/run.json``) a summary.

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
    cache_dir = out / "cache"
    timings: dict[str, float] = {}
    corpus = load_corpus(cfg.corpus)
    summary: dict[str, Any] = {"corpus": str(cfg.corpus), "docs": len(corpus), "student": cfg.student}

    # ---------------------------------------------------------------- queries
    dev_masked: dict[str, Doc] = {}
    given = load_queries(cfg.queries) if cfg.queries else {}
    given_qrels = load_qrels(cfg.qrels) if cfg.qrels else {}
    if given_qrels:
        # a BEIR queries.jsonl holds every split: with qrels, train only on the judged queries so
        # that test queries never leak into training
        unjudged = [q for q in given if q not in given_qrels]
        if unjudged:
            logger.info("ignoring %d queries that have no qrels in %s", len(unjudged), cfg.qrels)
        given = {q: t for q, t in given.items() if q in given_qrels}
    positives: dict[str, list[str]] = {q: [d for d, g in r.items() if g > 0 and d in corpus]
                                       for q, r in given_qrels.items()}
    n_syn = cfg.synthetic if cfg.synthetic is not None else (0 if given else 2000)
    # unlabelled training queries (a query log) and no dev set: the gate still needs queries with a
    # known relevant document, so synthetic ones are generated for the dev set only
    dev_only_synthetic = bool(given) and not given_qrels and not cfg.dev_queries and cfg.synthetic is None
    if dev_only_synthetic:
        n_syn = 3 * cfg.dev_size  # some are dropped as duplicates; about half copy a passage
    synthetic = []
    if n_syn:
        gen = load_generator(cfg.generator, corpus)
        per_doc = min(len(cfg.styles), max(1, -(-n_syn // len(corpus))))
        synthetic = generate_queries(corpus, gen, styles=cfg.styles, per_doc=per_doc, max_queries=n_syn,
                                     seed=cfg.seed)
        write_queries(out / "queries.synthetic.jsonl", {q.query_id: q.text for q in synthetic})
        for q in synthetic:
            positives[q.query_id] = [q.doc_id]
    train_q: dict[str, str] = dict(given)
    train_q.update({q.query_id: q.text for q in synthetic})
    if cfg.dev_queries:
        dev_q, dev_rels = load_queries(cfg.dev_queries), load_qrels(cfg.dev_qrels)  # type: ignore[arg-type]
        dev_source, dev_origin = DevSource.GIVEN, "given dev qrels"
    else:
        judged = [q for q in train_q if positives.get(q)]
        need = cfg.dev_size if dev_only_synthetic else 2 * cfg.dev_size  # else half must stay to train on
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
        dev_q = {q: train_q.pop(q) for q in held}
        dev_rels = {q: {d: 1 for d in positives[q]} for q in held}
        if dev_only_synthetic:
            for q in synthetic:
                train_q.pop(q.query_id, None)
        n_given = sum(1 for q in held if q in given)
        dev_source = DevSource.HELD_OUT if n_given == len(held) else DevSource.PSEUDO
        dev_origin = ("held-out training queries with their qrels" if n_given == len(held) else
                      f"held-out queries with known relevant documents (pseudo-dev; {n_given} of them given queries "
                      "with qrels, the rest synthetic with their source document)" if n_given else
                      "held-out queries with known relevant documents (pseudo-dev)")
        if dev_only_synthetic:
            dev_origin += f"; synthetic queries made for the gate only, training uses the {len(given)} given queries"
        if cfg.mask_dev_source:
            spans: dict[str, list[str]] = {}
            for q in held:
                if span_of.get(q):
                    spans.setdefault(next(iter(dev_rels[q])), []).append(span_of[q])
            dev_masked = {d: mask_source(corpus[d], s) for d, s in spans.items()}
            if dev_masked:
                dev_origin += (f"; {sum(1 for q in held if span_of.get(q))} of them copy a passage, which is cut "
                               "from their source document for the dev set (inverse cloze)")
    # inverse cloze for training: a query that copies a passage is trained against its source
    # document without that passage (a new id), never against the verbatim copy
    cut: dict[str, Doc] = {}
    exclude: dict[str, list[str]] = {}
    if cfg.mask_train_source:
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
            write_corpus(out / CUT_DOCUMENTS, cut)  # what the teacher and the student saw
        summary["masked_train_queries"] = len(cut)
        if emptied:
            logger.info("dropped %d synthetic queries that copy the whole of their source document", len(emptied))
    train_view: Mapping[str, Doc] = {**corpus, **cut} if cut else corpus
    summary.update(train_queries=len(train_q), given_queries=len(given), synthetic_queries=len(synthetic),
                   dev_queries=len(dev_q), dev_source=dev_source.value, dev_origin=dev_origin)
    timings["queries"] = time.time() - t0

    es = es or connect()
    score_cache = ScoreCache(cache_dir / "teacher_scores.sqlite")
    dev_view = {**corpus, **dev_masked} if dev_masked else corpus
    with ExitStack() as stack:
        # the training index also holds the cut copies (hidden from search) so that BM25 can score them
        bm25 = stack.enter_context(Bm25Index(es, train_view, prefix=cfg.index_prefix,
                                             hidden=cut))
        # the dev queries search a copy of the corpus with their copied passages cut out
        bm25_dev = (stack.enter_context(Bm25Index(es, dev_view, prefix=cfg.index_prefix + "dev-"))
                    if dev_masked else bm25)
        # ------------------------------------------------------------ retrievers
        t = time.time()
        base = BiEncoderTeacher(cfg.student, max_seq_length=cfg.train.max_seq_length, embedding_cache=cache_dir,
                                show_progress=cfg.show_progress)
        doc_ids = list(corpus)
        dense = DenseRetriever(doc_ids, base.doc_vectors([corpus[d].full for d in doc_ids]), base.embed_queries)
        dense_dev = (DenseRetriever(doc_ids, base.doc_vectors([dev_view[d].full for d in doc_ids]), base.embed_queries)
                     if dev_masked else dense)
        timings["student_embeddings"] = time.time() - t

        # ------------------------------------------------------------ teacher
        t = time.time()

        shared: dict[str, Any] = {}

        def make(spec: str, index: Any = bm25) -> Any:
            return with_cache(build_teacher(spec, bm25_index=index, embedding_cache=cache_dir, shared=shared,
                                            show_progress=cfg.show_progress, max_seq_length=cfg.teacher_max_seq_length),
                              score_cache)

        def prepare_all(doc_ids: list[str], queries: list[str] | None = None, view: Any = corpus) -> None:
            """Embed the pooled documents (and the queries) with every bi-encoder teacher in large
            batches, once, instead of one small batch per query."""
            for member in shared.values():
                if isinstance(member, BiEncoderTeacher):
                    member.prepare([view[d].full for d in dict.fromkeys(doc_ids)])
                    member.save_embeddings()
                    if queries:
                        member.embed_queries(queries)

        dev_pos = {q: list(r) for q, r in dev_rels.items()}
        dev_pools = retrieve_pools(dev_q, bm25=bm25_dev, dense=dense_dev, positives=dev_pos,
                                   depth=cfg.mining.pool_depth)
        pooled = [d for c in dev_pools for d in c.doc_ids]
        specs = list(cfg.auto_teachers) if cfg.teacher == "auto" else [cfg.teacher]
        candidates = {spec: make(spec, bm25_dev) for spec in specs}
        prepare_all(pooled, list(dev_q.values()), dev_view)
        how: dict[str, Any] = {}
        # the preference for the dense teacher answers the lexical bias of *synthetic* dev queries;
        # judged real queries pick the best score
        prefer_dense = cfg.teacher == "auto" and dev_source.synthetic
        chosen, scores = select_teacher(candidates, dev_pools, dev_view, seed=cfg.seed, details=how,
                                        confidence=cfg.teacher_confidence if prefer_dense else 0.0)
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
        selection["dev_source"], selection["dev_origin"] = dev_source.value, dev_origin
        teacher = make(chosen)  # the same teacher over the training corpus
        _write_json(out / "teacher_selection.json", selection)
        summary["teacher"] = selection
        timings["teacher_selection"] = time.time() - t

        # ------------------------------------------------------------ mining
        t = time.time()
        lists = mine_candidates(train_q, train_view, teacher=teacher, bm25=bm25, dense=dense,
                                before_scoring=lambda ids: prepare_all(ids, list(train_q.values()), train_view),
                                positives={q: positives.get(q, []) for q in train_q}, config=cfg.mining,
                                show_progress=cfg.show_progress, exclude=exclude)
        syn_ids = {q.query_id for q in synthetic}
        kept, dropped = filter_grounded([c for c in lists if c.query_id in syn_ids], max_rank=cfg.grounded_rank)
        lists = [c for c in lists if c.query_id not in syn_ids] + kept
        save_lists(out / "lists.train.jsonl", lists)
        summary.update(lists=len(lists), ungrounded_dropped=len(dropped))
        timings["mining"] = time.time() - t
    summary["score_cache"] = score_cache.stats()

    # ---------------------------------------------------------------- training + gate
    t = time.time()
    extra = [d for c in dev_pools for d in c.doc_ids]
    ev_corpus: dict[str, Doc] = dev_corpus(dev_view, dev_rels, max_docs=cfg.eval_max_docs, extra_ids=extra,
                                           seed=cfg.seed)
    evaluator = RetrievalEvaluator(ev_corpus, dev_q, dev_rels)
    # the base's document vectors are already cached (dense mining): reuse them for the frozen
    # document tower (query side only) and for the auto teacher temperature (both modes)
    listed = sorted({d for c in lists for d in c.doc_ids})
    frozen = dict(zip(listed, base.doc_vectors([train_view[d].full for d in listed])))
    if cfg.train.query_side_only:
        evaluator.frozen_doc_vectors = base.doc_vectors(evaluator.doc_texts)
    result = train_student(lists, train_view, student=cfg.student, out_dir=out, config=cfg.train,
                           evaluator=evaluator, frozen_doc_vectors=frozen)
    timings["train"] = time.time() - t
    t = time.time()
    if cfg.merge_alpha != "auto":
        alpha, why = float(cfg.merge_alpha), f"--merge-alpha {cfg.merge_alpha}"
    elif not given:
        alpha, why = 0.5, ("every training query is synthetic: the trained weights are averaged with the base's "
                           "(WiSE-FT) so that real queries, unlike any trained on, keep much of the base's behaviour")
    else:
        alpha, why = 1.0, "real queries were trained on: the trained weights are used as they are"
    averaging: dict[str, Any] = {"alpha": alpha, "trained_weights": str(result.model_dir), "why": why}
    if alpha < 1.0:
        # keep the trained weights; the averaged model takes the student's place (gate, export)
        kept = out / MERGED_FROM
        if kept.exists():
            shutil.rmtree(kept)
        result.model_dir.rename(kept)
        average_with_base(kept, cfg.student, result.model_dir, alpha=alpha, max_seq_length=cfg.train.max_seq_length)
        averaging["trained_weights"] = str(kept)
        dev_scores = [h["dev"] for h in result.history if "dev" in h]
        if dev_scores:
            averaging["trained_weights_dev"] = dev_scores[-1]  # the gate scores the average
    summary["weight_averaging"] = averaging
    timings["merge"] = time.time() - t
    t = time.time()
    trained_q = load_student(result.model_dir, max_seq_length=cfg.train.max_seq_length)
    if cfg.train.query_side_only:
        trained: Any = StudentEncoder(trained_q, load_student(cfg.student, max_seq_length=cfg.train.max_seq_length))
    else:
        trained = StudentEncoder(trained_q)
    gate = promotion_gate(evaluator, base=_CachedEncoder(base), trained=trained,
                          shared_documents=cfg.train.query_side_only, confidence=cfg.gate_confidence, seed=cfg.seed)
    _write_json(out / "gate.json", gate.to_dict())
    if gate.promoted and dev_source.synthetic:
        summary["caveat"] = (
            "promoted on synthetic pseudo-dev queries only, and a gain on synthetic queries does not always carry "
            "over to real ones. Before serving, check the student on a few real queries with judgements "
            "(esdistill eval, or --dev-queries/--dev-qrels), or train on unlabelled real queries (distill "
            "--queries) instead of synthetic ones")
        logger.warning("%s", summary["caveat"])
    summary["gate"] = gate.to_dict()
    summary["train"] = {"steps": result.steps, "seconds": round(result.seconds, 1),
                        "teacher_temperature": result.teacher_temperature,
                        "document_model": result.document_model, "config": asdict(cfg.train),
                        "fingerprint": result.fingerprint, "resumed_from_step": result.resumed_from_step,
                        "restarted": result.restarted}
    timings["gate"] = time.time() - t

    # ---------------------------------------------------------------- export
    if gate.promoted and cfg.export:
        t = time.time()
        from esdistill.export.onnx_export import export_model

        sample_q = dict(list(dev_q.items())[:100])
        parity = {"parity_texts": {d: ev_corpus[d].full for d in list(ev_corpus)[:300]},
                  "parity_queries": sample_q, "parity_qrels": {q: dev_rels[q] for q in sample_q},
                  "thresholds": cfg.parity_thresholds}
        document_model = cfg.document_model
        target = out / "onnx"
        try:
            if cfg.train.query_side_only and document_model is None:
                # a query encoder must name the export that embeds its documents: export the frozen
                # base too, so the run holds both halves and the query encoder can never ingest
                document_model = target = out / "onnx-documents"
                if document_model.exists():
                    shutil.rmtree(document_model)
                export_model(result.document_model, document_model, quantize=cfg.quantize,
                             name=Path(os.fspath(cfg.student)).name, **parity)
            target = out / "onnx"
            res = export_model(result.model_dir, target, quantize=cfg.quantize,
                               name=f"{Path(os.fspath(cfg.student)).name}-distilled",
                               document_model=document_model, **parity)
        except ParityError as exc:
            # the gate promoted the student but its export is refused: the run still leaves its summary
            from esdistill.export.onnx_export import REJECTED_NAME

            summary["export"] = {
                "refused": f"the export to {target} broke {len(exc.failures)} parity check(s): nothing was "
                           "exported and the base student stays in service",
                "failures": exc.failures, "report": str(target / REJECTED_NAME)}
            timings["export"] = time.time() - t
            _finish(summary, timings, t0, out)
            raise
        summary["export"] = {"out": str(res.out), "fingerprint": res.manifest.fingerprint,
                             "passed": res.passed, "quantization": res.manifest.quantization}
        if cfg.train.query_side_only:
            # the export is a query encoder: documents stay embedded by the base student's export
            summary["export"]["role"] = "query encoder (documents: keep the base student's vectors)"
            summary["export"]["document_model"] = result.document_model
            summary["export"]["paired_with"] = str(document_model)
            summary["export"]["document_fingerprint"] = res.manifest.document_fingerprint
            if cfg.document_model is None:
                summary["export"]["note"] = (f"index documents with {document_model} (the base student's export; "
                                             "an index built by an identical export of the base has the same "
                                             "fingerprint) and query it with the onnx/ query encoder")
        timings["export"] = time.time() - t
    elif not gate.promoted:
        summary["export"] = {"skipped": "the gate refused the student; the base student stays in service"}
    _finish(summary, timings, t0, out)
    return summary


def _finish(summary: dict[str, Any], timings: Mapping[str, float], t0: float, out: Path) -> None:
    """Add the timings to ``summary`` and write it to ``out/run.json``."""
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    summary["seconds"] = round(time.time() - t0, 1)
    _write_json(out / "run.json", summary)
