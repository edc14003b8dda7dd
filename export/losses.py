"""Distillation losses: make the student's scores over a candidate list agree with the teacher's.

Every loss is a small standalone object with one entry point,
``compute_loss(student_scores, teacher_scores, mask=None) -> scalar tensor``, over ``(batch, list)``
tensors: row ``b`` holds the scores of query ``b`` against its ``list`` candidates. ``mask`` marks
the real candidates (``True``) when lists are padded. Teacher scores are *data* computed before
training (see :mod:`esdistill.export.score_cache`), never computed inside a loss.

Conventions shared by all losses:

* ``student_scores`` are the student's similarities (cosine for the packaged students); every loss
  divides them by ``student_temperature`` (default 0.05, i.e. a scale of 20, the usual one for
  cosine bi-encoders) to get logits.
* ``teacher_scores`` are the teacher's scores after the trainer's per-query normalisation (z-scores
  by default); losses divide them by ``teacher_temperature`` (default 1.0).

Example::

    >>> import torch
    >>> loss = ListwiseKLLoss()
    >>> s = torch.tensor([[0.9, 0.1, 0.0]], requires_grad=True)
    >>> t = torch.tensor([[2.0, 0.0, -1.0]])
    >>> loss.compute_loss(s, t).backward()
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
from esdistill.export._deps import require
from esdistill.plugin._errors import ConfigError
from esdistill.plugin._spec import weighted_terms

__all__ = [
    "LOSSES",
    "CombinedLoss",
    "DistillLoss",
    "InfoNCELoss",
    "ListwiseKLLoss",
    "MarginMSELoss",
    "PairwiseDistillLoss",
    "PlackettLuceLoss",
    "build_loss",
    "match_teacher_temperature",
]

_NEG = -1e4  # a large negative logit for masked entries (finite, so gradients stay finite)


def _torch() -> Any:
    return require("torch")


class DistillLoss(abc.ABC):
    """Base class: temperatures, mask handling and the ``compute_loss`` contract.

    Args:
        student_temperature: divides the student's scores (cosine similarities) into logits.
        teacher_temperature: divides the (normalised) teacher scores into logits.

    Raises:
        ConfigError: a temperature is not positive.
    """

    name = "base"

    def __init__(self, *, student_temperature: float = 0.05, teacher_temperature: float = 1.0) -> None:
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ConfigError(
                f"{type(self).__name__}: temperatures must be > 0 (got student={student_temperature}, "
                f"teacher={teacher_temperature})"
            )
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)

    def __call__(self, student_scores: Any, teacher_scores: Any, mask: Any = None, **kwargs: Any) -> Any:
        return self.compute_loss(student_scores, teacher_scores, mask, **kwargs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(student_temperature={self.student_temperature}, "
                f"teacher_temperature={self.teacher_temperature})")

    @staticmethod
    def _prepare(student_scores: Any, teacher_scores: Any, mask: Any) -> tuple[Any, Any, Any]:
        torch = _torch()
        if student_scores.shape != teacher_scores.shape or student_scores.dim() != 2:
            raise ConfigError(
                f"student and teacher scores must both be (batch, list) tensors of the same shape; got "
                f"{tuple(student_scores.shape)} and {tuple(teacher_scores.shape)}"
            )
        if mask is None:
            mask = torch.ones_like(student_scores, dtype=torch.bool)
        else:
            mask = mask.to(torch.bool)
            if mask.shape != student_scores.shape:
                raise ConfigError(f"mask shape {tuple(mask.shape)} != scores shape {tuple(student_scores.shape)}")
        teacher_scores = teacher_scores.to(student_scores.dtype).detach()
        return student_scores, teacher_scores, mask

    @abc.abstractmethod
    def compute_loss(self, student_scores: Any, teacher_scores: Any, mask: Any = None, **kwargs: Any) -> Any:
        """Return the mean loss over the batch (a scalar tensor).

        Args:
            student_scores: ``(batch, list)`` student similarities (differentiable).
            teacher_scores: ``(batch, list)`` teacher scores (treated as constants).
            mask: optional ``(batch, list)`` booleans, ``True`` for real candidates.
        """


class ListwiseKLLoss(DistillLoss):
    """Listwise KL distillation: ``KL(softmax(t / T_t) || softmax(s / T_s))`` per query.

    The default loss of esdistill, after Tamber et al., "Teaching Dense Retrieval Models to
    Specialize with Listwise Distillation and LLM Data Augmentation" (listwise KL over candidate
    lists of ~20 from a reranker teacher), and RocketQAv2's dynamic listwise distillation. Separate
    student and teacher temperatures as in sentence-transformers' ``DistillKLDivLoss``.

    Example::

        >>> ListwiseKLLoss(student_temperature=0.05, teacher_temperature=1.0)  # doctest: +SKIP
    """

    name = "kl"

    def compute_loss(self, student_scores: Any, teacher_scores: Any, mask: Any = None, **kwargs: Any) -> Any:
        torch = _torch()
        s, t, mask = self._prepare(student_scores, teacher_scores, mask)
        s_logits = (s / self.student_temperature).masked_fill(~mask, _NEG)
        t_logits = (t / self.teacher_temperature).masked_fill(~mask, _NEG)
        log_p_s = torch.log_softmax(s_logits, dim=-1)
        log_p_t = torch.log_softmax(t_logits, dim=-1)
        p_t = log_p_t.exp()
        per_item = torch.where(mask, p_t * (log_p_t - log_p_s), torch.zeros_like(s))
        return per_item.sum(dim=-1).mean()


class MarginMSELoss(DistillLoss):
    """Margin-MSE: match the student's score margins to the teacher's margins.

    Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
    Distillation". For a list, the margins are taken against the teacher's best candidate ``p``:
    ``mean_j ((s_p - s_j)/T_s - (t_p - t_j)/T_t)^2`` over the other real candidates ``j``. With a
    list of two it is exactly the paper's pairwise (q, d+, d-) loss.
    """

    name = "margin-mse"

    def compute_loss(self, student_scores: Any, teacher_scores: Any, mask: Any = None, **kwargs: Any) -> Any:
        torch = _torch()
        s, t, mask = self._prepare(student_scores, teacher_scores, mask)
        best = t.masked_fill(~mask, float("-inf")).argmax(dim=-1, keepdim=True)
        s_m = (s.gather(1, best) - s) / self.student_temperature
        t_m = (t.gather(1, best) - t) / self.teacher_temperature
        others = mask.clone()
        others.scatter_(1, best, False)
        sq = torch.where(others, (s_m - t_m) ** 2, torch.zeros_like(s))
        return sq.sum() / others.sum().clamp(min=1)


class PairwiseDistillLoss(DistillLoss):
    """Pairwise preference distillation (PairDistill-style).

    Huang et al., "PairDistill: Pairwise Relevance Distillation for Dense Retrieval": the teacher's
    preference ``P(d_i > d_j | q) = sigmoid((t_i - t_j) / T_t)`` is the target of the student's
    ``sigmoid((s_i - s_j) / T_s)``, with binary cross-entropy over all ordered pairs of real
    candidates ``i != j``.
    """

    name = "pairwise"

    def compute_loss(self, student_scores: Any, teacher_scores: Any, mask: Any = None, **kwargs: Any) -> Any:
        torch = _torch()
        s, t, mask = self._prepare(student_scores, teacher_scores, mask)
        s_d = (s.unsqueeze(2) - s.unsqueeze(1)) / self.student_temperature
        p_t = torch.sigmoid((t.unsqueeze(2) - t.unsqueeze(1)) / self.teacher_temperature)
        n = s.shape[1]
        pair_mask = mask.unsqueeze(2) & mask.unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=s.device)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(s_d, p_t, reduction="none")
        bce = torch.where(pair_mask, bce, torch.zeros_like(bce))
        return bce.sum() / pair_mask.sum().clamp(min=1)


class InfoNCELoss(DistillLoss):
    """InfoNCE / contrastive loss: the positive against the list's other candidates (and in-batch).

    van den Oord et al., "Representation Learning with Contrastive Predictive Coding"; the
    contrastive fine-tuning baseline (and a small auxiliary term, weight 0.1) in Tamber et al. The
    positive of each row is ``positives`` when given (column indices), else the teacher's best
    candidate. ``extra_negatives`` are ``(batch, m)`` student scores against other queries'
    candidates (in-batch negatives); they only enter the denominator. ``exclude`` marks list
    entries to leave out of the denominator (likely false negatives, RocketQA-style denoising).
    """

    name = "infonce"

    def compute_loss(self, student_scores: Any, teacher_scores: Any, mask: Any = None, *,
                     positives: Any = None, extra_negatives: Any = None, exclude: Any = None,
                     **kwargs: Any) -> Any:
        torch = _torch()
        s, t, mask = self._prepare(student_scores, teacher_scores, mask)
        if positives is None:
            positives = t.masked_fill(~mask, float("-inf")).argmax(dim=-1)
        keep = mask
        if exclude is not None:
            keep = mask & ~exclude.to(torch.bool)
            keep = keep.scatter(1, positives.long().unsqueeze(1), True)
        logits = (s / self.student_temperature).masked_fill(~keep, _NEG)
        if extra_negatives is not None:
            logits = torch.cat([logits, extra_negatives / self.student_temperature], dim=1)
        return torch.nn.functional.cross_entropy(logits, positives.long())


class PlackettLuceLoss(DistillLoss):
    """Plackett-Luce listwise distillation (PLD).

    The teacher's ranking ``pi`` (by teacher score) is the target permutation; the loss is the
    negative Plackett-Luce log-likelihood of ``pi`` under the student's logits, each choice weighted
    by the teacher's confidence ``softmax(t / T_t)[pi_k]``:
    ``-sum_k w_k (s_{pi_k} - logsumexp_{j >= k} s_{pi_j})``. Convex in the student's logits and
    invariant to adding a constant to them.
    """

    name = "plackett-luce"

    def compute_loss(self, student_scores: Any, teacher_scores: Any, mask: Any = None, **kwargs: Any) -> Any:
        torch = _torch()
        s, t, mask = self._prepare(student_scores, teacher_scores, mask)
        order = t.masked_fill(~mask, float("-inf")).argsort(dim=-1, descending=True)
        s_sorted = (s / self.student_temperature).gather(1, order)
        m_sorted = mask.gather(1, order)
        s_sorted = s_sorted.masked_fill(~m_sorted, _NEG)
        # logsumexp over the suffix j >= k: flip, cumulative logsumexp, flip back
        suffix = torch.logcumsumexp(s_sorted.flip(-1), dim=-1).flip(-1)
        w = torch.softmax((t / self.teacher_temperature).masked_fill(~mask, _NEG), dim=-1).gather(1, order)
        terms = torch.where(m_sorted, w * (suffix - s_sorted), torch.zeros_like(s))
        return terms.sum(dim=-1).mean()


class CombinedLoss(DistillLoss):
    """A weighted sum of losses, e.g. listwise KL + 0.1 InfoNCE (Tamber et al.'s recipe).

    Args:
        parts: ``(weight, loss)`` pairs.
    """

    name = "combined"

    def __init__(self, parts: list[tuple[float, DistillLoss]]) -> None:
        if not parts:
            raise ConfigError("CombinedLoss needs at least one (weight, loss) part")
        first = parts[0][1]
        super().__init__(student_temperature=first.student_temperature,
                         teacher_temperature=first.teacher_temperature)
        self.parts = list(parts)

    def __repr__(self) -> str:
        return " + ".join(f"{w}*{loss!r}" for w, loss in self.parts)

    def compute_loss(self, student_scores: Any, teacher_scores: Any, mask: Any = None, **kwargs: Any) -> Any:
        total = None
        for weight, loss in self.parts:
            extra = kwargs if isinstance(loss, InfoNCELoss) else {}
            value = weight * loss.compute_loss(student_scores, teacher_scores, mask, **extra)
            total = value if total is None else total + value
        return total


LOSSES: dict[str, type[DistillLoss]] = {
    cls.name: cls for cls in (ListwiseKLLoss, MarginMSELoss, PairwiseDistillLoss, InfoNCELoss, PlackettLuceLoss)
}


def build_loss(spec: str, *, student_temperature: float = 0.05, teacher_temperature: float = 1.0) -> DistillLoss:
    """Build a loss from a spec such as ``kl``, ``margin-mse`` or ``kl+0.1*infonce``.

    Args:
        spec: loss names from :data:`LOSSES` joined by ``+``, each optionally ``WEIGHT*NAME``.
        student_temperature: passed to every part.
        teacher_temperature: passed to every part.

    Raises:
        ConfigError: an unknown loss name or a bad weight.

    Example::

        >>> build_loss("kl+0.1*infonce")  # doctest: +SKIP
    """
    parts: list[tuple[float, DistillLoss]] = []
    for w, name in weighted_terms(spec, what="loss", example="kl+0.1*infonce"):
        if name not in LOSSES:
            raise ConfigError(f"unknown loss {name!r} in {spec!r}; choose from {sorted(LOSSES)}")
        parts.append((w, LOSSES[name](student_temperature=student_temperature,
                                      teacher_temperature=teacher_temperature)))
    if len(parts) == 1 and parts[0][0] == 1.0:
        return parts[0][1]
    return CombinedLoss(parts)


def _mean_entropy(rows: list[Any], temperature: float) -> float:
    total = 0.0
    for row in rows:
        z = np.asarray(row, dtype=np.float64) / temperature
        z = z - z.max()
        p = np.exp(z)
        p /= p.sum()
        total += float(-(p * np.log(np.clip(p, 1e-300, None))).sum())
    return total / max(len(rows), 1)


def match_teacher_temperature(student_scores: list[Any], teacher_scores: list[Any], *,
                              student_temperature: float = 0.05, bounds: tuple[float, float] = (1e-3, 1e3)) -> float:
    """The teacher temperature whose softmax over each list is, on average, exactly as sharp as the
    base student's (equal mean entropy).

    A teacher target much flatter than what the student already expresses makes listwise KL pull
    the candidates' scores together, which blurs the student's ranking against the rest of the
    corpus; one much sharper turns KL into top-1 classification. Matching the two at the start of
    training lets the loss move the *order* and keep the student's own scale.

    Args:
        student_scores: per list, the base student's similarities of its candidates.
        teacher_scores: per list, the (normalised) teacher targets of the same candidates.
        student_temperature: the student's temperature in the loss.
        bounds: the search range.

    Returns:
        The temperature (the nearest bound when no temperature in range matches).

    Raises:
        ConfigError: the lists differ in number, or none has two or more candidates.

    Example:
        >>> t = match_teacher_temperature([[0.9, 0.5, 0.4]], [[1.2, -0.2, -1.0]], student_temperature=0.05)
        >>> round(t, 2)
        0.18
    """
    if len(student_scores) != len(teacher_scores):
        raise ConfigError(f"{len(student_scores)} student lists but {len(teacher_scores)} teacher lists")
    pairs = [(s, t) for s, t in zip(student_scores, teacher_scores) if len(s) >= 2 and len(s) == len(t)]
    if not pairs:
        raise ConfigError("temperature matching needs lists of two or more candidates")
    target = _mean_entropy([s for s, _ in pairs], student_temperature)
    rows = [t for _, t in pairs]
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    if _mean_entropy(rows, float(np.exp(hi))) <= target:
        return float(bounds[1])
    if _mean_entropy(rows, float(np.exp(lo))) >= target:
        return float(bounds[0])
    for _ in range(60):  # entropy grows with the temperature: bisect on log T
        mid = (lo + hi) / 2
        if _mean_entropy(rows, float(np.exp(mid))) < target:
            lo = mid
        else:
            hi = mid
    return float(np.exp((lo + hi) / 2))
