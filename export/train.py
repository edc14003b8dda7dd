"""The training loop: distil teacher-scored candidate lists into a sentence-transformers student.

Plain torch over a ``SentenceTransformer`` (so the result saves and exports like any ST model):

* **length-bucketed batches**: lists are sorted by text length, cut into batches of ``batch_size``
  queries and the batches shuffled (less padding, same randomness per epoch);
* **gradient accumulation**, linear warm-up and decay, gradient clipping;
* **checkpoints** every ``checkpoint_steps`` (model, optimiser, scheduler, position, and a
  fingerprint of what is trained) and **resume** from the latest one when its fingerprint matches
  (other checkpoints are deleted and training starts again from the base);
* a **progress bar** with the running loss and the last dev metric;
* **query-side-only adaptation**: the document tower is a frozen copy of the base student, so an
  existing index needs no re-embedding; only the query encoder learns;
* **weight averaging with the base** (:func:`average_with_base`, WiSE-FT): the trained weights
  interpolated with the base's, which keeps what the base knows about queries unlike the training
  ones (used by the pipeline when every training query is synthetic).

Teacher scores come from the candidate lists (computed and cached before training); the loss is
any :class:`~esdistill.export.losses.DistillLoss`.

Example::

    >>> result = train_student(lists, corpus, student="minilm", out_dir="runs/r1",
    ...                        config=TrainConfig(loss="kl", epochs=1))          # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.export._deps import require
from esdistill.export.losses import InfoNCELoss, build_loss
from esdistill.export.mining import CandidateList
from esdistill.export.teachers import normalize_scores
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import Doc
from esdistill.plugin.models import resolve_model

__all__ = ["AUTO_TEMPERATURE_RANGE", "StudentEncoder", "TrainConfig", "TrainResult", "average_with_base", "load_student",
           "train_student", "training_fingerprint"]

logger = logging.getLogger(__name__)
_NORMS = ("zscore", "minmax", "rank", "none")
#: the range ``teacher_temperature="auto"`` searches (for z-scored or otherwise normalised teacher scores)
AUTO_TEMPERATURE_RANGE = (0.05, 1.0)


@dataclass
class TrainConfig:
    """Training settings (validated on construction).

    Attributes:
        loss: loss spec for :func:`~esdistill.export.losses.build_loss` (``kl``, ``margin-mse``,
            ``pairwise``, ``infonce``, ``plackett-luce``, ``kl+0.1*infonce``, ...). Default: listwise
            KL plus a contrastive term of weight 0.1 (the recipe of Tamber et al.).
        student_temperature / teacher_temperature: passed to the loss. ``teacher_temperature="auto"``
            (the default) picks, before training, the temperature at which the teacher's targets are
            as sharp as the base student's own softmax over the same lists (equal mean entropy; see
            :func:`~esdistill.export.losses.match_teacher_temperature`), within
            :data:`AUTO_TEMPERATURE_RANGE`.
        teacher_normalization: per-query normalisation of teacher scores before the loss.
        positive_boost: known positives (qrels, or a synthetic query's source document) get a
            normalised teacher score at least this far above the best other candidate, so the
            target never ranks a labelled positive below a teacher mistake (``None``: pure teacher).
        epochs: passes over the lists.
        batch_size: queries per micro-batch (each with its list of candidates).
        grad_accum: micro-batches per optimiser step.
        list_size: truncate lists to this many candidates (``None``: as mined).
        lr / weight_decay / warmup_ratio / max_grad_norm: optimiser settings.
        max_seq_length / max_query_length: token limits for documents and queries.
        query_side_only: freeze the document tower (a copy of the base) and train queries only (the
            default, also of the CLI, which reads it from here; ``False`` is ``--full-fine-tune``).
        in_batch_negatives: InfoNCE also contrasts with the other queries' candidates.
        checkpoint_steps: save a checkpoint every N optimiser steps (0: at the end of each epoch).
        keep_checkpoints: how many checkpoints to keep.
        eval_steps: run the dev evaluator every N steps (0: at the end of each epoch only).
        max_steps: stop after this many optimiser steps (``None``: all epochs).
        gradient_checkpointing: recompute the transformer's activations in the backward pass
            instead of keeping them: more compute, far less memory (the activations of a batch of
            lists of long documents otherwise dominate memory).
        seed: seeds Python, numpy and torch.
        show_progress: progress bar (also off when stderr is not a terminal).
    """

    loss: str = "kl+0.1*infonce"
    student_temperature: float = 0.05
    teacher_temperature: float | str = "auto"
    teacher_normalization: str = "zscore"
    positive_boost: float | None = 1.0
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    list_size: int | None = None
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_seq_length: int = 256
    max_query_length: int = 64
    query_side_only: bool = True
    in_batch_negatives: bool = True
    checkpoint_steps: int = 0
    keep_checkpoints: int = 2
    eval_steps: int = 0
    max_steps: int | None = None
    gradient_checkpointing: bool = True
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("epochs", "batch_size", "grad_accum", "max_seq_length", "max_query_length", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (need >= 1)")
        if self.lr <= 0:
            problems.append(f"lr={self.lr} (need > 0)")
        if self.list_size is not None and self.list_size < 2:
            problems.append(f"list_size={self.list_size} (need >= 2)")
        if self.teacher_temperature != "auto" and not (
                isinstance(self.teacher_temperature, (int, float)) and self.teacher_temperature > 0):
            problems.append(f"teacher_temperature={self.teacher_temperature!r} (a number > 0, or 'auto')")
        if self.student_temperature <= 0:
            problems.append(f"student_temperature={self.student_temperature} (need > 0)")
        if self.teacher_normalization not in _NORMS:
            problems.append(f"teacher_normalization={self.teacher_normalization!r} (one of {_NORMS})")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio={self.warmup_ratio} (need 0 <= r < 1)")
        if problems:
            raise ConfigError("bad training settings: " + "; ".join(problems))
        build_loss(self.loss)  # validates the spec


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_dir: the trained student (the query encoder when ``query_side_only``).
        document_model: what embeds documents (the base student when ``query_side_only``, else
            ``model_dir``).
        steps: optimiser steps taken (over all runs, when resumed).
        history: ``{"step", "loss", "dev"}`` rows.
        seconds: training wall time (over all runs, when resumed).
        teacher_temperature: the teacher temperature used (the matched one with ``"auto"``).
        fingerprint: the digest of what was trained (see :func:`training_fingerprint`).
        resumed_from_step: the checkpoint's step this run continued from (``None``: from the base).
        restarted: why existing checkpoints were deleted instead of resumed (``None``: there were
            none, or they were resumed).
    """

    model_dir: Path
    document_model: str
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    teacher_temperature: float | None = None
    fingerprint: str | None = None
    resumed_from_step: int | None = None
    restarted: str | None = None


class StudentEncoder:
    """Encodes queries and documents with the student (or its query/document towers).

    Args:
        query_model: the ``SentenceTransformer`` for queries.
        doc_model: the one for documents (the same object unless the towers are split).
        batch_size: inference batch size.
    """

    def __init__(self, query_model: Any, doc_model: Any | None = None, *, batch_size: int = 64) -> None:
        self.query_model = query_model
        self.doc_model = doc_model if doc_model is not None else query_model
        self.batch_size = batch_size

    def _encode(self, model: Any, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            return np.zeros((0, dim()), dtype=np.float32)
        was_training = model.training
        model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vecs = model.encode([texts[i] for i in order], batch_size=self.batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)
        out = np.empty_like(vecs)
        out[order] = vecs
        if was_training:
            model.train()
        return out.astype(np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(self.query_model, texts)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(self.doc_model, texts)


def load_student(ref: str | os.PathLike[str], *, max_seq_length: int = 256) -> Any:
    """Load a sentence-transformers student on CPU (packaged names and folders work).

    Raises:
        ModelError: the reference cannot be resolved.
    """
    st = require("sentence_transformers")
    model = st.SentenceTransformer(os.fspath(resolve_model(ref)), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def average_with_base(trained: str | os.PathLike[str], base: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                      alpha: float, max_seq_length: int = 256) -> Path:
    """Weight-space ensemble of a trained student and its base (WiSE-FT, Wortsman et al. 2022):
    every floating-point weight becomes ``alpha * trained + (1 - alpha) * base``.

    Fine-tuning on one distribution of inputs (here: synthetic queries) can cost accuracy on
    another (the users' real queries); the interpolated model keeps most of the gain on the first
    and much of the base's behaviour on the second. ``alpha=1`` is the trained model, ``0`` the base.

    Args:
        trained: the trained student's folder.
        base: the base it was trained from (folder or packaged name).
        out_dir: where the averaged model is saved (replaced if it exists; may not be ``trained``).
        alpha: the trained model's weight, in ``(0, 1]``.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: ``alpha`` out of range, ``out_dir`` is ``trained``, or the two models do not
            have the same weights (a student trained from another base).
    """
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"alpha={alpha}: the trained model's weight must be in (0, 1] (1: no averaging)")
    out = Path(out_dir)
    if out.resolve() == Path(trained).resolve():
        raise ConfigError(f"average_with_base: out_dir {out} is the trained model's folder; write elsewhere")
    model = load_student(trained, max_seq_length=max_seq_length)
    t, b = model.state_dict(), load_student(base, max_seq_length=max_seq_length).state_dict()
    bad = sorted(set(t) ^ set(b)) or sorted(k for k in t if t[k].shape != b[k].shape)
    if bad:
        raise ConfigError(f"{trained} and {base} do not have the same weights (e.g. {bad[:3]}): average a student "
                          "only with the base it was trained from")
    model.load_state_dict({k: alpha * v + (1.0 - alpha) * b[k] if v.is_floating_point() else v
                           for k, v in t.items()})
    if out.exists():
        shutil.rmtree(out)
    model.save(str(out))
    return out


def _seed_all(seed: int) -> None:
    torch = require("torch")
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _bucketed_batches(lists: Sequence[CandidateList], corpus: Mapping[str, Doc], batch_size: int,
                      rng: random.Random) -> list[list[int]]:
    lengths = [len(c.query) + sum(len(corpus[d].full) for d in c.doc_ids) for c in lists]
    order = sorted(range(len(lists)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def boost_positives(scores: np.ndarray, is_positive: Sequence[bool], boost: float | None) -> np.ndarray:
    """Raise each known positive's (normalised) teacher score to at least ``boost`` above the best
    non-positive candidate; other scores are unchanged.

    Example:
        >>> boost_positives(np.array([0.0, 2.0, 1.0]), [True, False, False], 1.0).tolist()
        [3.0, 2.0, 1.0]
    """
    flags = np.asarray(is_positive, dtype=bool)
    if boost is None or not flags.any() or flags.all():
        return scores
    out = np.array(scores, dtype=np.float64)
    floor = out[~flags].max() + boost
    out[flags] = np.maximum(out[flags], floor)
    return out


def _embed(model: Any, texts: Sequence[str], max_len: int) -> Any:
    torch = require("torch")
    saved = model.max_seq_length
    model.max_seq_length = max_len
    try:
        features = model.preprocess(list(texts))
    finally:
        model.max_seq_length = saved
    features = {k: v for k, v in features.items() if hasattr(v, "shape")}
    emb = model(features)["sentence_embedding"]
    return torch.nn.functional.normalize(emb, dim=-1)


def _targets(c: CandidateList, width: int, cfg: TrainConfig) -> np.ndarray:
    """The teacher targets of a list's first ``width`` candidates: normalised, positives boosted."""
    t = normalize_scores(np.asarray(c.teacher_scores[:width]), cfg.teacher_normalization)
    return boost_positives(t, [x in c.positives for x in c.doc_ids[:width]], cfg.positive_boost)


def _matched_temperature(model: Any, lists: Sequence[CandidateList], corpus: Mapping[str, Doc], cfg: TrainConfig,
                         frozen_docs: Mapping[str, Any], sample: int = 256) -> float:
    """``teacher_temperature="auto"``: match the teacher's targets to the base student's sharpness
    on (a sample of) the training lists."""
    from esdistill.export.losses import match_teacher_temperature

    rows = list(lists) if len(lists) <= sample else random.Random(cfg.seed).sample(list(lists), sample)
    width = cfg.list_size or max(len(c.doc_ids) for c in rows)
    enc = StudentEncoder(model)
    queries = enc.encode_queries([c.query for c in rows])
    todo = sorted({d for c in rows for d in c.doc_ids[:width]} - set(frozen_docs))
    vecs = {d: np.asarray(frozen_docs[d], dtype=np.float32) for c in rows for d in c.doc_ids[:width]
            if d in frozen_docs}
    vecs.update(zip(todo, enc.encode_documents([corpus[d].full for d in todo])))
    student = [np.array([float(q @ vecs[d]) for d in c.doc_ids[:width]]) for q, c in zip(queries, rows)]
    # never flatter than the normalised teacher as is (1.0): an untrained student has no
    # preference to match, and a flat target would teach it nothing
    temperature = match_teacher_temperature(student, [_targets(c, width, cfg) for c in rows],
                                            student_temperature=cfg.student_temperature, bounds=AUTO_TEMPERATURE_RANGE)
    logger.info("teacher temperature (auto): %.3f, as sharp as the base student at %.3f on %d lists",
                temperature, cfg.student_temperature, len(rows))
    return temperature


def _checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.pt").is_file()),
                  key=lambda p: int(p.name.split("-")[1]))


#: settings that say how far to train, how to report or where to save, not what is learnt: a run
#: that differs from a checkpoint only in these continues from it
_BUDGET_FIELDS = frozenset({"epochs", "max_steps", "checkpoint_steps", "keep_checkpoints", "eval_steps",
                            "show_progress"})
FINGERPRINT_NAME = "fingerprint.json"


def _sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def training_fingerprint(cfg: TrainConfig, lists: Sequence[CandidateList], corpus: Mapping[str, Doc], *,
                         base_student: str, base_weights: str) -> dict[str, Any]:
    """What a checkpoint was trained from: the settings that shape the weights, the lists (queries,
    candidates, teacher scores, positives), the listed documents' text and the base student.

    A checkpoint is resumed only when the run's fingerprint equals the one stored with it.

    Args:
        cfg: the training settings (the budget fields, :data:`_BUDGET_FIELDS`, are left out).
        lists: the lists trained on, in order.
        corpus: the documents they list.
        base_student: the base student's resolved path (shown in messages).
        base_weights: a digest of the base student's weights (see :func:`_weights_digest`).

    Returns:
        ``{"fingerprint": digest, "config": ..., "base_student": ..., "base_weights": ..., "lists": ...,
        "documents": ..., "n_lists": ...}``; ``fingerprint`` digests every other value except
        ``base_student`` (a moved folder with the same weights is the same base).
    """
    config = {k: v for k, v in asdict(cfg).items() if k not in _BUDGET_FIELDS}
    rows = [[c.query_id, c.query, list(c.doc_ids), [float(x) for x in c.teacher_scores], list(c.positives),
             list(c.false_negatives)] for c in lists]
    ids = sorted({d for c in lists for d in c.doc_ids})
    parts = {"config": config, "base_weights": base_weights, "lists": _sha256(rows),
             "documents": _sha256([[d, corpus[d].full] for d in ids]), "n_lists": len(lists)}
    return {"fingerprint": _sha256(parts), "base_student": base_student, **parts}


def _weights_digest(model: Any) -> str:
    """A digest of a model's weights (names, shapes, dtypes and values)."""
    torch = require("torch")
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        t = tensor.detach().cpu().contiguous()
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words."""
    out = []
    old_cfg, new_cfg = stored.get("config") or {}, current["config"]
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key) != new_cfg.get(key):
            out.append(f"{key} {old_cfg.get(key)!r} -> {new_cfg.get(key)!r}")
    if stored.get("base_weights") != current["base_weights"]:
        out.append(f"base student {stored.get('base_student')} -> {current['base_student']}")
    if stored.get("lists") != current["lists"]:
        out.append(f"candidate lists ({stored.get('n_lists')} -> {current['n_lists']}; queries, candidates or "
                   "teacher scores changed)")
    if stored.get("documents") != current["documents"]:
        out.append("the listed documents' text")
    return out or ["fingerprint"]


def _resume_point(out: Path, fingerprint: Mapping[str, Any], total_steps: int) -> tuple[Path | None, str | None]:
    """The checkpoint to resume from (or ``None``), and why the existing ones cannot be used (or ``None``).

    Only the newest checkpoint is considered: it must carry this run's fingerprint and must not be
    past this run's last step.
    """
    ckpts = _checkpoints(out)
    if not ckpts:
        return None, None
    latest = ckpts[-1]
    try:
        stored = json.loads((latest / FINGERPRINT_NAME).read_text())
    except (OSError, ValueError):
        return None, f"{latest.name} has no readable {FINGERPRINT_NAME} (written by an older esdistill)"
    if stored.get("fingerprint") != fingerprint["fingerprint"]:
        return None, f"{latest.name} was trained with other inputs: " + "; ".join(_differences(stored, fingerprint))
    step = int(latest.name.split("-")[1])
    if step > total_steps:
        return None, f"{latest.name} is past this run's last step ({total_steps})"
    return latest, None


def _usable_lists(lists: Sequence[CandidateList], corpus: Mapping[str, Doc]) -> list[CandidateList]:
    """The lists with two or more candidates.

    Raises:
        ConfigError: no list has two candidates, or a listed document is not in ``corpus``.
    """
    usable = [c for c in lists if len(c.doc_ids) >= 2]
    if not usable:
        raise ConfigError("no candidate list has two or more candidates; mine with a larger list_size")
    missing = {d for c in usable for d in c.doc_ids if d not in corpus}
    if missing:
        raise ConfigError(f"{len(missing)} listed documents are not in the corpus (e.g. {sorted(missing)[:3]}); "
                          "mine and train on the same corpus")
    return usable


def _frozen_document_tower(model: Any, lists: Sequence[CandidateList], corpus: Mapping[str, Doc],
                           known: Mapping[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """For query-side-only training: a frozen copy of the base student (the document tower) and the
    vectors of every listed document as tensors (``known`` ones reused, the others computed)."""
    torch = require("torch")
    doc_model = copy.deepcopy(model)
    for p in doc_model.parameters():
        p.requires_grad_(False)
    enc = StudentEncoder(doc_model)
    ids = sorted({d for c in lists for d in c.doc_ids} - set(known))
    vecs = enc.encode_documents([corpus[d].full for d in ids])
    frozen_docs = {d: torch.from_numpy(np.asarray(v, dtype=np.float32)) for d, v in known.items()}
    frozen_docs.update({d: torch.from_numpy(v) for d, v in zip(ids, vecs)})
    return doc_model, frozen_docs


def _batch_loss(model: Any, rows: Sequence[CandidateList], corpus: Mapping[str, Doc], cfg: TrainConfig,
                loss_fn: Any, *, frozen_docs: Mapping[str, Any], uses_nce: bool) -> Any:
    """The loss of one batch of lists: the student's scores of each list's first ``list_size``
    candidates against the teacher targets (for InfoNCE parts: with the known positives, the
    candidates not to contrast, and, with ``in_batch_negatives``, the other lists' candidates)."""
    torch = require("torch")
    width = max(len(c.doc_ids) for c in rows)
    if cfg.list_size:
        width = min(width, cfg.list_size)
    uniq = list(dict.fromkeys(d for c in rows for d in c.doc_ids[:width]))
    pos_of = {d: i for i, d in enumerate(uniq)}
    q = _embed(model, [c.query for c in rows], cfg.max_query_length)
    if cfg.query_side_only:
        d = torch.stack([frozen_docs[x] for x in uniq])
    else:
        d = _embed(model, [corpus[x].full for x in uniq], cfg.max_seq_length)
    sims = q @ d.T  # (B, U)
    index = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    teacher = torch.zeros((len(rows), width))
    positives = torch.zeros(len(rows), dtype=torch.long)
    for r, c in enumerate(rows):
        ids = c.doc_ids[:width]
        t = _targets(c, width, cfg)
        index[r, :len(ids)] = torch.tensor([pos_of[x] for x in ids])
        mask[r, :len(ids)] = True
        teacher[r, :len(ids)] = torch.from_numpy(t)
        known = [j for j, x in enumerate(ids) if x in c.positives]
        positives[r] = known[0] if known else int(np.argmax(t))
    student_scores = sims.gather(1, index)
    kwargs: dict[str, Any] = {}
    if uses_nce:
        kwargs["positives"] = positives
        exclude = torch.zeros_like(mask)
        for r, c in enumerate(rows):
            for j, x in enumerate(c.doc_ids[:width]):
                exclude[r, j] = x in c.false_negatives or x in c.positives
        kwargs["exclude"] = exclude
        if cfg.in_batch_negatives and len(rows) > 1:
            own = torch.zeros_like(sims, dtype=torch.bool)
            for r, c in enumerate(rows):
                for x in c.doc_ids[:width]:
                    own[r, pos_of[x]] = True
                for x in c.positives + c.false_negatives:  # never contrast a relevant doc
                    if x in pos_of:
                        own[r, pos_of[x]] = True
            kwargs["extra_negatives"] = sims.masked_fill(own, -1e4 * cfg.student_temperature)
    return loss_fn.compute_loss(student_scores, teacher, mask, **kwargs)


def train_student(lists: Sequence[CandidateList], corpus: Mapping[str, Doc], *, student: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], config: TrainConfig | None = None,
                  evaluator: Callable[[StudentEncoder], float] | None = None, resume: bool = True,
                  frozen_doc_vectors: Mapping[str, np.ndarray] | None = None) -> TrainResult:
    """Train ``student`` on teacher-scored candidate lists.

    Args:
        lists: mined :class:`CandidateList` objects (with teacher scores).
        corpus: ``{doc_id: Doc}`` holding every listed document.
        student: the base student (folder, packaged name or hub id).
        out_dir: run folder; the model goes to ``out_dir/student``, checkpoints to
            ``out_dir/checkpoints``, the history to ``out_dir/train_history.json``.
        config: training settings.
        evaluator: called with a :class:`StudentEncoder` on the dev set; returns the dev metric.
        resume: continue from the latest checkpoint in ``out_dir`` when it was made from the same
            inputs: the same settings (the budget, ``epochs`` and ``max_steps``, may grow), lists,
            documents and base student (see :func:`training_fingerprint`). Checkpoints made from other
            inputs, or past this run's last step, are deleted with a warning and training starts from
            the base (:attr:`TrainResult.restarted` says why); ``False`` deletes them too.
        frozen_doc_vectors: base-student document vectors already computed (``{doc_id: vector}``):
            the frozen document tower with ``query_side_only``, and the base's scores for
            ``teacher_temperature="auto"`` in either mode; missing ones are computed.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: no usable lists, or a listed document is not in the corpus.
    """
    torch = require("torch")
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lists = _usable_lists(lists, corpus)
    _seed_all(cfg.seed)
    base_ref = os.fspath(resolve_model(student))
    model = load_student(base_ref, max_seq_length=cfg.max_seq_length)
    fingerprint = training_fingerprint(cfg, lists, corpus, base_student=base_ref, base_weights=_weights_digest(model))
    if cfg.gradient_checkpointing:
        for module in model.modules():
            if hasattr(module, "gradient_checkpointing_enable") and getattr(module, "supports_gradient_checkpointing",
                                                                            False):
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    doc_model = None
    frozen_docs: dict[str, Any] = {}
    if cfg.query_side_only:
        doc_model, frozen_docs = _frozen_document_tower(model, lists, corpus, frozen_doc_vectors or {})
    teacher_temperature = cfg.teacher_temperature
    if teacher_temperature == "auto":
        known = frozen_docs if cfg.query_side_only else (frozen_doc_vectors or {})
        teacher_temperature = _matched_temperature(model, lists, corpus, cfg, known)
    loss_fn = build_loss(cfg.loss, student_temperature=cfg.student_temperature,
                         teacher_temperature=float(teacher_temperature))
    uses_nce = isinstance(loss_fn, InfoNCELoss) or any(isinstance(p, InfoNCELoss) for _, p in getattr(loss_fn, "parts", []))
    n_batches = math.ceil(len(lists) / cfg.batch_size)
    steps_per_epoch = max(n_batches // cfg.grad_accum, 1)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(total_steps * cfg.warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(total_steps - warmup, 1))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, schedule)
    step, start_epoch, skip = 0, 0, 0
    trained_before = 0.0
    history: list[dict[str, float]] = []
    start, stale = _resume_point(out, fingerprint, total_steps) if resume else (None, None)
    if not resume and _checkpoints(out):
        stale = "resume=False"
    if stale:
        # never let checkpoints of another run win later: a fresh run starts from an empty folder
        logger.warning("not resuming from %s: %s; training from scratch (the old checkpoints are deleted)",
                       out / "checkpoints", stale)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    if start is not None:
        state = torch.load(start / "state.pt", weights_only=True)  # tensors and plain data only: never unpickle code
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        step, start_epoch, skip, history = state["step"], state["epoch"], state["batch"], state["history"]
        trained_before = float(state.get("seconds", 0.0))
        logger.info("resumed from %s (step %d)", start, step)
    resumed_step = step if start is not None else None

    def save_checkpoint(epoch: int, batch: int) -> None:
        path = out / "checkpoints" / f"step-{step}"
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optim": optim.state_dict(), "sched": sched.state_dict(),
                    "step": step, "epoch": epoch, "batch": batch, "history": history,
                    "seconds": trained_before + time.time() - started}, path / "state.pt")
        (path / FINGERPRINT_NAME).write_text(json.dumps(fingerprint, indent=2, default=str) + "\n")
        for old in _checkpoints(out)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    encoder = StudentEncoder(model, doc_model)
    show = cfg.show_progress and (os.isatty(2) if hasattr(os, "isatty") else False)
    bar = tqdm(total=total_steps, initial=step, desc="distill", unit="step", disable=not show)
    started = time.time()
    last_dev: float | None = None
    running: float | None = None
    model.train()
    done = step >= total_steps
    for epoch in range(start_epoch, cfg.epochs):
        if done:
            break
        batches = _bucketed_batches(lists, corpus, cfg.batch_size, random.Random(cfg.seed * 1000 + epoch))
        for b_idx, batch in enumerate(batches):
            if epoch == start_epoch and b_idx < skip:
                continue
            rows = [lists[i] for i in batch]
            loss = _batch_loss(model, rows, corpus, cfg, loss_fn, frozen_docs=frozen_docs,
                               uses_nce=uses_nce) / cfg.grad_accum
            loss.backward()
            value = float(loss.item()) * cfg.grad_accum
            running = value if running is None else 0.9 * running + 0.1 * value
            if (b_idx + 1) % cfg.grad_accum and b_idx + 1 != len(batches):
                continue
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            row: dict[str, float] = {"step": step, "loss": round(running, 5), "lr": sched.get_last_lr()[0]}
            if evaluator is not None and cfg.eval_steps and step % cfg.eval_steps == 0:
                last_dev = float(evaluator(encoder))
                row["dev"] = last_dev
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", dev="-" if last_dev is None else f"{last_dev:.4f}")
            if cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0:
                save_checkpoint(epoch, b_idx + 1)
            if step >= total_steps:
                done = True
                break
        skip = 0
        if evaluator is not None and not cfg.eval_steps:
            last_dev = float(evaluator(encoder))
            history.append({"step": step, "dev": last_dev})
            bar.set_postfix(loss=f"{running or 0:.4f}", dev=f"{last_dev:.4f}")
        if not cfg.checkpoint_steps:
            save_checkpoint(epoch + 1, 0)
    bar.close()
    model.eval()
    model_dir = out / "student"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model.save(str(model_dir))
    seconds = trained_before + time.time() - started
    doc_ref = base_ref if cfg.query_side_only else str(model_dir)
    info = {"config": asdict(cfg), "teacher_temperature": float(teacher_temperature), "base_student": base_ref,
            "document_model": doc_ref, "steps": step, "lists": len(lists), "seconds": round(seconds, 1),
            "fingerprint": fingerprint["fingerprint"], "resumed_from_step": resumed_step, "restarted": stale,
            "history": history}
    (out / "train_history.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("trained %d steps in %.0f s -> %s", step, seconds, model_dir)
    return TrainResult(model_dir=model_dir, document_model=doc_ref, steps=step, history=history, seconds=seconds,
                       teacher_temperature=float(teacher_temperature), fingerprint=fingerprint["fingerprint"],
                       resumed_from_step=resumed_step, restarted=stale)
