"""Analysis of an A/B exposure log (``esdistill ab report``): per arm, what was served, how fast, and who won the clicks.

Input: the JSONL exposure log the query hook writes (:class:`esdistill.plugin.ab.ExposureLog`), and
optionally a clicks file, JSON Lines with one click per line::

    {"query_id": "3f2a...", "doc_id": "d17"}

``query_id`` is the response's ``query_id`` (the exposure's id); ``doc_id`` the clicked hit's id.
Clicks on documents the exposure did not show are counted as ``ignored`` and credit nobody.

Per arm (by the arm *assigned*), the report gives:

* ``exposures``: rows of real traffic; rows whose request forced its arm are counted apart
  (``forced``) and left out of every other number, so they never skew the split;
* ``served_as_assigned`` and its share: how often the arm's variant was what the user saw (a rerank
  arm whose budget ran out served the student), with the reasons when it was not;
* ``latency_ms``: p50 / p95 / p99 / mean / max of the end-to-end latency (linear interpolation, as
  :func:`esdistill.plugin.evaluate.latency_summary`);
* with clicks: ``clicked_share`` (exposures with at least one click on a shown document) and, for
  interleaving arms, the team-draft credit: credited clicks per team, wins and ties per query, the
  preference ``delta = (wins_B + ties / 2) / clicked - 0.5`` (> 0 favours the second team, the
  reranked ranking) with a percentile bootstrap confidence interval over the clicked queries, and
  the sign test's p-value.

Example:
    >>> report = ab_report(read_exposures("exposures.jsonl"), read_clicks("clicks.jsonl"))  # doctest: +SKIP
    >>> report.arms["student+rerank"].share_as_assigned                                     # doctest: +SKIP
    0.97
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.ab import Interleaving, attribute_clicks, summarize_interleaving
from esdistill.plugin.evaluate import latency_summary

__all__ = ["ABReport", "ArmReport", "InterleavingCredit", "ab_report", "bootstrap_delta", "read_clicks"]

#: the name an exposure without an arm (no experiment) is reported under
NO_ARM = "(no arm)"


def read_clicks(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a clicks file: JSON Lines of ``{"query_id": ..., "doc_id": ...}``, in click order.

    Returns:
        query id -> clicked document ids, in file order.

    Raises:
        ConfigError: the file cannot be read, or a line is not such an object (all bad lines named).
    """
    out: dict[str, list[str]] = {}
    problems = []
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigError(f"clicks file {path} cannot be read ({exc.strerror or exc})") from None
    with fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                problems.append(f"line {n} is not JSON")
                continue
            if not (isinstance(row, dict) and isinstance(row.get("query_id"), str)
                    and isinstance(row.get("doc_id"), (str, int))):
                problems.append(f"line {n} needs a string query_id and a doc_id")
                continue
            out.setdefault(row["query_id"], []).append(str(row["doc_id"]))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ConfigError(f"clicks file {path}: {shown}. Each line must be "
                          '{"query_id": "<the response\'s query_id>", "doc_id": "<the clicked hit\'s id>"}')
    return out


def bootstrap_delta(outcomes: Iterable[float], *, resamples: int = 2000, confidence: float = 0.95,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(outcomes) - 0.5`` (outcomes: 1 = B won, 0.5 tie, 0 = A won).

    Example:
        >>> bootstrap_delta([1.0, 1.0, 1.0])
        (0.5, 0.5)
    """
    arr = np.asarray(list(outcomes), dtype=np.float64)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    if not 0 < confidence < 1 or resamples < 1:
        raise ConfigError(f"bootstrap needs 0 < confidence < 1 and resamples >= 1, got {confidence}, {resamples}")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(resamples, arr.size))].mean(axis=1) - 0.5
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return (float(lo), float(hi))


@dataclass
class InterleavingCredit:
    """Team-draft click credit of one interleaving arm (see the module docstring)."""

    names: tuple[str, str]
    queries: int
    clicked: int
    credits: dict[str, int]
    wins: dict[str, int]
    ties: int
    delta: float
    ci: tuple[float, float]
    confidence: float
    p_value: float
    ignored_clicks: int

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "queries": self.queries, "clicked": self.clicked,
                "credits": dict(self.credits), "wins": dict(self.wins), "ties": self.ties, "delta": self.delta,
                "ci": list(self.ci), "confidence": self.confidence, "p_value": self.p_value,
                "ignored_clicks": self.ignored_clicks}


@dataclass
class ArmReport:
    """What one arm served (real traffic only; forced rows counted in ``forced``)."""

    arm: str
    exposures: int
    forced: int
    served_as_assigned: int
    share_as_assigned: float
    variants: dict[str, int]
    not_served_reasons: dict[str, int]
    latency_ms: dict[str, float]
    clicked_share: float | None = None
    interleaving: InterleavingCredit | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "exposures": self.exposures, "forced": self.forced,
                "served_as_assigned": self.served_as_assigned, "share_as_assigned": self.share_as_assigned,
                "variants": dict(self.variants), "not_served_reasons": dict(self.not_served_reasons),
                "latency_ms": dict(self.latency_ms), "clicked_share": self.clicked_share,
                "interleaving": None if self.interleaving is None else self.interleaving.to_dict()}


@dataclass
class ABReport:
    """The whole report: one :class:`ArmReport` per arm, in first-seen order."""

    rows: int
    arms: dict[str, ArmReport] = field(default_factory=dict)
    clicks_given: bool = False
    unmatched_clicks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "clicks_given": self.clicks_given, "unmatched_clicks": self.unmatched_clicks,
                "arms": {name: a.to_dict() for name, a in self.arms.items()}}

    def format(self) -> str:
        """A plain-text table, one block per arm."""
        lines = [f"{self.rows} exposures" + (f", {self.unmatched_clicks} clicks on unknown query ids"
                                              if self.unmatched_clicks else "")]
        for a in self.arms.values():
            lat = a.latency_ms
            lines.append(f"arm {a.arm}: {a.exposures} exposures ({a.forced} forced, not counted); served as "
                         f"assigned {a.served_as_assigned}/{a.exposures} = {a.share_as_assigned:.1%}")
            lines.append(f"  variants {a.variants}" + (f"  not as assigned because {a.not_served_reasons}"
                                                       if a.not_served_reasons else ""))
            lines.append(f"  latency ms: p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}")
            if a.clicked_share is not None:
                lines.append(f"  clicked share {a.clicked_share:.1%}")
            il = a.interleaving
            if il is not None:
                x, y = il.names
                lines.append(f"  interleaving {x} vs {y}: credited clicks {il.credits}, wins {il.wins}, ties "
                             f"{il.ties} over {il.clicked}/{il.queries} clicked queries; delta ({y}) {il.delta:+.3f} "
                             f"[{il.ci[0]:+.3f}, {il.ci[1]:+.3f}] at {il.confidence:.0%}, sign test p={il.p_value:.3g}")
        return "\n".join(lines)


def ab_report(
    exposures: Iterable[Mapping[str, Any]],
    clicks: Mapping[str, list[str]] | None = None,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ABReport:
    """Summarise exposure rows (and clicks) per arm; see the module docstring for each number.

    Args:
        exposures: rows of the exposure log (:func:`esdistill.plugin.ab.read_exposures`).
        clicks: query id -> clicked document ids (:func:`read_clicks`), or ``None``.
        resamples: bootstrap resamples for the interleaving interval.
        confidence: the interval's confidence.
        seed: the bootstrap's seed (the same input and seed give the same interval).

    Returns:
        An :class:`ABReport`.
    """
    rows = list(exposures)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["arm"]) if row.get("arm") is not None else NO_ARM, []).append(row)
    known_ids = {str(r.get("query_id")) for r in rows}
    report = ABReport(rows=len(rows), clicks_given=clicks is not None,
                      unmatched_clicks=sum(len(v) for q, v in (clicks or {}).items() if q not in known_ids))
    for name, group in groups.items():
        real = [r for r in group if not r.get("forced")]
        served = [r for r in real if r.get("served_as_assigned") is not False]
        report.arms[name] = ArmReport(
            arm=name, exposures=len(real), forced=len(group) - len(real), served_as_assigned=len(served),
            share_as_assigned=len(served) / len(real) if real else float("nan"),
            variants=dict(Counter(str(r.get("variant")) for r in real)),
            not_served_reasons=dict(Counter(str(r.get("reason")) for r in real if r.get("served_as_assigned") is False)),
            latency_ms=latency_summary(float(r["latency_ms"]) for r in real if r.get("latency_ms") is not None),
        )
        if clicks is not None:
            arm = report.arms[name]
            arm.clicked_share = (sum(1 for r in real if set(clicks.get(str(r["query_id"]), ())) & set(r["shown"]))
                                 / len(real)) if real else float("nan")
            inter = [r for r in real if "teams" in r]
            if inter:
                arm.interleaving = _credit(inter, clicks, resamples=resamples, confidence=confidence, seed=seed)
    return report


def _credit(rows: list[Mapping[str, Any]], clicks: Mapping[str, list[str]], *, resamples: int,
            confidence: float, seed: int) -> InterleavingCredit:
    names = tuple(rows[0].get("names") or ("A", "B"))
    per_query = []
    totals = dict.fromkeys(names, 0)
    ignored = 0
    for r in rows:
        il = Interleaving.from_exposure(r, names=names)  # type: ignore[arg-type]
        if tuple(il.names) != names:
            raise ConfigError(f"exposure {r.get('query_id')!r} interleaves teams {list(il.names)}, the arm's others "
                              f"{list(names)}; report one pair of teams per arm")
        credit = attribute_clicks(il, clicks.get(str(r["query_id"]), ()))
        ignored += credit.ignored
        for team, n in credit.credits.items():
            totals[team] += n
        per_query.append(credit)
    summary = summarize_interleaving(per_query, names=names)  # type: ignore[arg-type]
    b = names[1]
    outcomes = [1.0 if c.winner == b else 0.5 if c.winner is None else 0.0 for c in per_query if c.clicked]
    return InterleavingCredit(
        names=names, queries=summary.queries, clicked=summary.clicked, credits=totals, wins=dict(summary.wins),
        ties=summary.ties, delta=summary.delta,
        ci=bootstrap_delta(outcomes, resamples=resamples, confidence=confidence, seed=seed),
        confidence=confidence, p_value=summary.p_value, ignored_clicks=ignored,
    )
