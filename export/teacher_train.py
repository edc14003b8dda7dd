"""Teacher training: fine-tune a cross-encoder teacher from a plain encoder.

No cross-encoder reranker with weights may be installable (no hub access), so esdistill can train
one itself from any encoder (the packaged MiniLM or MPNet weights): a 1-logit sequence-classification
head on top, trained on candidate lists with hard negatives and a listwise loss, as in Rank-DistiLLM
(listwise losses, hard negatives, deep candidate lists) and Trans-Encoder (a bi-encoder pseudo-labels
pairs for a cross-encoder). Two signals, usable together:

* labels: the known positives of each list (qrels or the source documents of synthetic queries), as
  a listwise softmax cross-entropy (``label_weight``);
* pseudo-labels: the current teacher's scores of the list (e.g. the mpnet bi-encoder or an
  ensemble), as listwise KL distillation (``distill_weight``).

The result is a Hugging Face folder that :class:`~esdistill.export.teachers.CrossEncoderTeacher`
loads (and that ``esdistill export --kind cross-encoder`` exports).

Example::

    >>> train_cross_encoder(lists, corpus, base="minilm", out_dir="runs/ce")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from esdistill.export._deps import require
from esdistill.export.losses import InfoNCELoss, ListwiseKLLoss
from esdistill.export.mining import CandidateList
from esdistill.export.teachers import normalize_scores
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import Doc
from esdistill.plugin.models import resolve_model

__all__ = ["CrossEncoderTrainConfig", "train_cross_encoder"]

logger = logging.getLogger(__name__)


@dataclass
class CrossEncoderTrainConfig:
    """Settings of cross-encoder teacher training.

    Attributes:
        label_weight: weight of the listwise cross-entropy on known positives.
        distill_weight: weight of listwise KL to the lists' teacher scores (pseudo-labels).
        teacher_temperature: temperature of the (z-scored) pseudo-labels.
        lists_per_step: lists per optimiser step.
        epochs / lr / weight_decay / max_length / seed: the usual.
        list_size: truncate lists to this many candidates.
    """

    label_weight: float = 1.0
    distill_weight: float = 1.0
    teacher_temperature: float = 1.0
    lists_per_step: int = 2
    epochs: int = 1
    lr: float = 3e-5
    weight_decay: float = 0.01
    max_length: int = 256
    list_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.label_weight < 0 or self.distill_weight < 0 or self.label_weight + self.distill_weight <= 0:
            problems.append(f"weights label={self.label_weight}, distill={self.distill_weight} (>= 0, not both 0)")
        for name in ("lists_per_step", "epochs", "max_length", "list_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (need >= 1)")
        if self.lr <= 0:
            problems.append(f"lr={self.lr} (need > 0)")
        if problems:
            raise ConfigError("bad cross-encoder training settings: " + "; ".join(problems))


def _hf_folder(ref: Path) -> Path:
    """The folder holding the transformer weights (a sentence-transformers folder keeps them at the
    root, older layouts in ``0_Transformer``)."""
    for cand in (ref, ref / "0_Transformer"):
        if (cand / "config.json").is_file():
            return cand
    raise ConfigError(f"{ref} holds no Hugging Face config.json; pass an encoder folder or packaged name")


def train_cross_encoder(lists: Sequence[CandidateList], corpus: Mapping[str, Doc], *, base: str | os.PathLike[str],
                        out_dir: str | os.PathLike[str], config: CrossEncoderTrainConfig | None = None) -> Path:
    """Fine-tune a 1-logit cross-encoder from ``base`` on candidate lists; return its folder.

    Args:
        lists: mined lists (teacher scores = pseudo-labels; ``positives`` = labels).
        corpus: ``{doc_id: Doc}``.
        base: an encoder folder or packaged name (``minilm``, ``mpnet``).
        out_dir: where the model is saved (a Hugging Face folder).
        config: settings.

    Raises:
        ConfigError: no usable lists, or only labels are asked for and no list has a positive.
    """
    torch = require("torch")
    tr = require("transformers")
    cfg = config or CrossEncoderTrainConfig()
    usable = [c for c in lists if len(c.doc_ids) >= 2]
    if cfg.distill_weight == 0:
        usable = [c for c in usable if c.positives]
    if not usable:
        raise ConfigError("no candidate list can train the cross-encoder (need >= 2 candidates, and positives "
                          "when distill_weight is 0)")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    src = _hf_folder(Path(os.fspath(resolve_model(base))))
    tok = tr.AutoTokenizer.from_pretrained(src)
    model = tr.AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    kl = ListwiseKLLoss(student_temperature=1.0, teacher_temperature=cfg.teacher_temperature)
    ce = InfoNCELoss(student_temperature=1.0)
    rng = random.Random(cfg.seed)
    started = time.time()
    history: list[float] = []
    for _ in range(cfg.epochs):
        order = list(range(len(usable)))
        rng.shuffle(order)
        for start in range(0, len(order), cfg.lists_per_step):
            total = None
            for i in order[start:start + cfg.lists_per_step]:
                c = usable[i]
                ids = c.doc_ids[:cfg.list_size]
                enc = tok([c.query] * len(ids), [corpus[d].full for d in ids], truncation="only_second",
                          padding=True, max_length=cfg.max_length, return_tensors="pt")
                logits = model(**enc).logits[:, 0].unsqueeze(0)
                teacher = torch.from_numpy(normalize_scores(np.asarray(c.teacher_scores[:len(ids)]), "zscore"))
                teacher = teacher.unsqueeze(0)
                loss = cfg.distill_weight * kl(logits, teacher) if cfg.distill_weight else 0.0
                pos = [j for j, d in enumerate(ids) if d in c.positives]
                if cfg.label_weight and pos:
                    loss = loss + cfg.label_weight * ce(logits, teacher, positives=torch.tensor([pos[0]]))
                total = loss if total is None else total + loss
            if total is None or not torch.is_tensor(total):
                continue
            (total / cfg.lists_per_step).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            history.append(float(total.item()) / cfg.lists_per_step)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "esdistill_teacher_training.json").write_text(json.dumps(
        {"base": str(src), "config": asdict(cfg), "lists": len(usable), "steps": len(history),
         "loss_first": history[:5], "loss_last": history[-5:], "seconds": round(time.time() - started, 1)},
        indent=2) + "\n")
    logger.info("trained a cross-encoder teacher from %s on %d lists -> %s", src, len(usable), out)
    return out
