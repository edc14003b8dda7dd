"""A/B tests of the rerank: arm assignment, the exposure log, team-draft interleaving, click credit.

**Assignment.** A key (user or session id) goes to an arm by a salted hash: the first 8 bytes of
``sha256(salt \\x1f key)`` read as a number in ``[0, 1)`` pick the arm whose cumulative share covers
it. The same key and salt always give the same arm, on every machine and process; a new salt
reshuffles everybody (start a fresh experiment without carry-over). A request may override its arm.

**Exposure log.** Every answered query is one JSON line (a file and/or a logger): query id, the key
(hashed by default, so raw user ids never reach the log), the arm *assigned*, the variant that arm
asks for (``assigned_variant``), the variant actually *served* and why (``served_as_assigned``,
``reason``: ``as_assigned``, ``budget_exhausted``, ``circuit_open``, ``overloaded``, ``error``,
``request_override``...; see :func:`exposure_fields`), ``forced`` (the request named its arm: keep
it out of the traffic split), the latency, what was shown and, for interleaved results, which team
each shown document came from. Clicks joined on the query id then give per-arm metrics
(:mod:`esdistill.plugin.ab_report`, ``esdistill ab report``).

**Team-draft interleaving** (Radlinski, Kurup and Joachims, CIKM 2008) merges the rankings of two
arms into one list shown to the user: in each round the team with fewer picks (a coin flip on a tie)
adds its best document not shown yet. A click credits the team that contributed the clicked document;
the team with more credited clicks wins the query. Interleaving needs one to two orders of magnitude
fewer queries than an A/B split to detect the same difference (Chapelle et al., TOIS 2012)::

    >>> ab = ABTest.from_shares({"student": 0.9, "student+rerank": 0.1}, salt="exp-1")
    >>> ab.assign("user-42").name in {"student", "student+rerank"}
    True
    >>> il = team_draft_interleave(["a", "b", "c"], ["b", "d", "a"], seed="q1")
    >>> sorted(il.ids)
    ['a', 'b', 'c', 'd']
    >>> attribute_clicks(il, [il.ids[0]]).winner in {"A", "B"}
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esdistill.plugin._errors import ConfigError

__all__ = [
    "ABTest",
    "Arm",
    "ClickCredit",
    "ExposureLog",
    "Interleaving",
    "InterleavingSummary",
    "attribute_clicks",
    "bucket",
    "exposure_fields",
    "hash_key",
    "read_exposures",
    "sign_test",
    "summarize_interleaving",
    "team_draft_interleave",
]

logger = logging.getLogger(__name__)
exposure_logger = logging.getLogger("esdistill.exposure")

_SHARE_TOLERANCE = 1e-6
_EXACT_SIGN_TEST_MAX = 100_000


def bucket(key: str, salt: str) -> float:
    """The key's position in ``[0, 1)`` for this salt: uniform, stable, independent across salts.

    Example:
        >>> bucket("user-1", "s") == bucket("user-1", "s")
        True
    """
    digest = hashlib.sha256(f"{salt}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_key(key: str, secret: str = "") -> str:
    """A short pseudonym of a key for logs: 16 hex digits of ``sha256("exposure" secret key)``.

    Pass a secret that is not in the logs if user ids are guessable (emails, counters).
    """
    return hashlib.sha256(f"exposure\x1f{secret}\x1f{key}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Arm:
    """One arm of an experiment.

    Attributes:
        name: the arm's name, reported as the response's ``arm`` and in the exposure log.
        share: fraction of keys assigned to it, in ``[0, 1]``.
        rerank: whether queries in this arm are reranked by the teacher.
        interleave: whether this arm shows the team-draft interleaving of the student ranking (team
            ``A``) and the reranked ranking (team ``B``), for click-based comparison.
    """

    name: str
    share: float
    rerank: bool = False
    interleave: bool = False

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"an arm needs a non-empty name, got {self.name!r}")
        if not (isinstance(self.share, (int, float)) and 0.0 <= float(self.share) <= 1.0):
            raise ConfigError(f"arm {self.name!r} has share {self.share!r}; shares must lie in [0, 1]")


@dataclass(frozen=True)
class ABTest:
    """A salted, deterministic split of keys into arms.

    Args:
        arms: the arms, in a fixed order (the order decides which bucket range each arm gets).
        salt: the experiment's salt; changing it reshuffles every key.

    Raises:
        ConfigError: no arms, duplicate names, or shares that do not sum to 1.

    Example:
        >>> ab = ABTest((Arm("student", 0.5), Arm("student+rerank", 0.5, rerank=True)), salt="x")
        >>> ab.assign("k").name == ab.assign("k").name
        True
    """

    arms: tuple[Arm, ...]
    salt: str
    _bounds: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        arms = tuple(self.arms)
        object.__setattr__(self, "arms", arms)
        if not arms:
            raise ConfigError("an A/B test needs at least one arm")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ConfigError(f"arm names must be unique, got {names}")
        if not isinstance(self.salt, str):
            raise ConfigError(f"salt must be a string, got {type(self.salt).__name__}")
        total = math.fsum(a.share for a in arms)
        if abs(total - 1.0) > _SHARE_TOLERANCE:
            raise ConfigError(
                f"arm shares sum to {total:.6g}, not 1: {dict(zip(names, (a.share for a in arms)))}; "
                "adjust them so they add up to 1"
            )
        bounds, acc = [], 0.0
        for a in arms:
            acc += a.share
            bounds.append(acc)
        bounds[-1] = 1.0  # rounding never leaves a gap at the top
        object.__setattr__(self, "_bounds", tuple(bounds))

    @classmethod
    def from_shares(
        cls,
        shares: Mapping[str, float],
        *,
        salt: str,
        rerank: Iterable[str] | None = None,
        interleave: Iterable[str] | None = None,
    ) -> ABTest:
        """Build arms from ``{name: share}``.

        Args:
            shares: arm name -> share; shares sum to 1.
            salt: the experiment's salt.
            rerank: names of the arms that rerank (default: names containing ``"rerank"`` that are
                not interleaving arms).
            interleave: names of the arms that interleave (default: names containing ``"interleav"``).

        Raises:
            ConfigError: a name in ``rerank``/``interleave`` is not an arm, or the shares are invalid.
        """
        inter = set(interleave) if interleave is not None else {n for n in shares if "interleav" in n}
        rr = set(rerank) if rerank is not None else {n for n in shares if "rerank" in n and n not in inter}
        unknown = sorted((inter | rr) - set(shares))
        if unknown:
            raise ConfigError(f"arms {unknown} are not among the shares {sorted(shares)}")
        arms = tuple(Arm(n, float(s), rerank=n in rr, interleave=n in inter) for n, s in shares.items())
        return cls(arms, salt=salt)

    def arm(self, name: str) -> Arm:
        """The arm called ``name``.

        Raises:
            ConfigError: no such arm.
        """
        for a in self.arms:
            if a.name == name:
                return a
        raise ConfigError(f"unknown arm {name!r}; this experiment has {[a.name for a in self.arms]}")

    def assign(self, key: str) -> Arm:
        """The arm of ``key`` (deterministic for a given salt)."""
        if not isinstance(key, str) or not key:
            raise ConfigError(f"an A/B key must be a non-empty string, got {key!r}")
        u = bucket(key, self.salt)
        for a, hi in zip(self.arms, self._bounds):
            if u < hi and a.share > 0:
                return a
        return next(a for a in reversed(self.arms) if a.share > 0)

    def resolve(self, key: str | None = None, *, override: str | None = None) -> Arm | None:
        """The arm for a request: ``override`` when given, else the key's arm, else ``None``."""
        if override is not None:
            return self.arm(override)
        if key is None:
            return None
        return self.assign(key)


# ---------------------------------------------------------------------------------------- exposure
#: ``reason`` of an exposure served as its arm asked
REASON_AS_ASSIGNED = "as_assigned"
#: ``reason`` of an exposure whose request turned the rerank on or off itself
REASON_OVERRIDE = "request_override"


def assigned_variant(arm: Arm | None) -> str | None:
    """The variant an arm asks for: ``interleaved``, ``student+rerank`` or ``student`` (None: no arm)."""
    if arm is None:
        return None
    return "interleaved" if arm.interleave else "student+rerank" if arm.rerank else "student"


def exposure_fields(
    arm: Arm | None, variant: str, outcome: Any, *, forced: bool = False, rerank_override: bool | None = None
) -> dict[str, Any]:
    """The A/B bookkeeping of one exposure row: what was assigned, what was served, and why.

    Args:
        arm: the arm the request got (assigned by key, or forced), or ``None`` outside an experiment.
        variant: what was served: ``student``, ``student+rerank`` or ``interleaved``.
        outcome: the rerank's :class:`~esdistill.plugin.rerank.RerankOutcome` (``reranked``,
            ``count``, ``reason``).
        forced: the request named its arm (an override, not the key's assignment).
        rerank_override: the request's own ``rerank`` flag (``None``: the arm decided).

    Returns:
        ``assigned_variant``, ``variant``, ``served_as_assigned`` (``None`` outside an experiment),
        ``reason`` (``as_assigned``; else ``request_override`` or the rerank's reason, e.g.
        ``budget_exhausted``, ``circuit_open``), ``reranked``, ``rerank_reason`` and ``forced``. An
        interleaving arm counts as served only when the teacher reranked something (otherwise both
        teams showed the student's list).

    Example:
        >>> from types import SimpleNamespace as O
        >>> out = O(reranked="none", count=0, reason="budget_exhausted")
        >>> f = exposure_fields(Arm("student+rerank", 1.0, rerank=True), "student", out)
        >>> f["served_as_assigned"], f["reason"]
        (False, 'budget_exhausted')
    """
    wanted = assigned_variant(arm)
    count = int(getattr(outcome, "count", 0) or 0)
    served: bool | None = None
    if wanted is not None:
        served = variant == wanted and (wanted == "student" or count > 0)
    if served:
        reason = REASON_AS_ASSIGNED
    elif rerank_override is not None and wanted is not None:
        reason = REASON_OVERRIDE
    else:
        reason = str(outcome.reason)
    return {"assigned_variant": wanted, "variant": variant, "served_as_assigned": served, "reason": reason,
            "reranked": outcome.reranked, "rerank_reason": str(outcome.reason), "forced": bool(forced)}


class ExposureLog:
    """Append one JSON line per answered query to a file and/or the ``esdistill.exposure`` logger.

    Thread-safe; each line is flushed as it is written, so a crash loses at most the line in flight.

    Args:
        path: JSONL file to append to (its folder is created); ``None`` for the logger only.
        to_logger: also emit each record at INFO on the ``esdistill.exposure`` logger.
        hash_keys: log :func:`hash_key` of the key instead of the key itself (default).
        key_secret: secret mixed into the key hash.

    Example:
        >>> log = ExposureLog(None)
        >>> log.record(query_id="q1", key="u1", arm="student", shown=["d1"])["key"] != "u1"
        True
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        to_logger: bool = True,
        hash_keys: bool = True,
        key_secret: str = "",
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.to_logger = to_logger
        self.hash_keys = hash_keys
        self._secret = key_secret
        self._lock = threading.Lock()
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def record(
        self,
        *,
        query_id: str,
        key: str | None,
        arm: str | None,
        shown: Sequence[str],
        teams: Sequence[str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Write one exposure and return it as a dict.

        Args:
            query_id: the response's query id (join clicks on it).
            key: the A/B key, or ``None``.
            arm: the arm name, or ``None`` outside an experiment.
            shown: the ids shown, in order.
            teams: for an interleaved list, the team of each shown id.
            extra: more JSON-serializable fields (``mode``, ``variant``, ``reranked``, ...).
        """
        rec: dict[str, Any] = {"ts": round(time.time(), 3), "query_id": query_id}
        rec["key"] = None if key is None else (hash_key(key, self._secret) if self.hash_keys else key)
        rec["arm"] = arm
        rec["shown"] = list(shown)
        if teams is not None:
            rec["teams"] = list(teams)
        rec.update(extra)
        line = json.dumps(rec, separators=(",", ":"), sort_keys=False)
        with self._lock:
            if self._fh is not None:
                self._fh.write(line + "\n")
                self._fh.flush()
        if self.to_logger:
            exposure_logger.info("%s", line)
        return rec

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> ExposureLog:  # noqa: PYI034 - no typing.Self on Python 3.10
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_exposures(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read an exposure log back (one dict per line; a torn last line is skipped with a warning)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                logger.warning("exposure log %s: line %d is not JSON, skipped", path, n)
    return out


# ------------------------------------------------------------------------------------ interleaving
@dataclass(frozen=True)
class Interleaving:
    """A team-draft interleaved list.

    Attributes:
        ids: the merged list, in display order.
        teams: the team (one of ``names``) that contributed each entry of ``ids``.
        names: the two team names, for ranking A and ranking B.
    """

    ids: tuple[str, ...]
    teams: tuple[str, ...]
    names: tuple[str, str] = ("A", "B")

    def team_of(self, doc_id: str) -> str | None:
        """The team that contributed ``doc_id``, or ``None`` if it was not shown."""
        for d, t in zip(self.ids, self.teams):
            if d == doc_id:
                return t
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "teams": list(self.teams), "names": list(self.names)}

    @classmethod
    def from_exposure(cls, record: Mapping[str, Any], *, names: tuple[str, str] = ("A", "B")) -> Interleaving:
        """Rebuild from an exposure-log record that has ``shown`` and ``teams``.

        Raises:
            ConfigError: the record has no ``teams`` (it was not an interleaved query).
        """
        if "teams" not in record:
            raise ConfigError(f"exposure {record.get('query_id')!r} has no teams: it was not interleaved")
        return cls(tuple(record["shown"]), tuple(record["teams"]), tuple(record.get("names", names)))


def _seed_int(seed: int | str) -> int:
    if isinstance(seed, int):
        return seed
    return int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "big")


def team_draft_interleave(
    a: Sequence[str],
    b: Sequence[str],
    *,
    seed: int | str,
    k: int | None = None,
    names: tuple[str, str] = ("A", "B"),
) -> Interleaving:
    """Team-draft interleaving of rankings ``a`` and ``b``.

    Each round, the team with fewer picks so far (a seeded coin flip when equal) adds its
    highest-ranked document that is not shown yet. When one ranking runs out, the other fills up.

    Args:
        a: ranking of team ``names[0]``, best first.
        b: ranking of team ``names[1]``, best first.
        seed: per-query seed (e.g. the query id), so the same query replays the same list.
        k: length of the result (default: every distinct document of ``a`` and ``b``).
        names: the team labels.

    Returns:
        The :class:`Interleaving`.

    Raises:
        ConfigError: ``k`` is negative or the two names are equal.
    """
    if names[0] == names[1]:
        raise ConfigError(f"the two team names must differ, got {names}")
    distinct = len(set(a) | set(b))
    k = distinct if k is None else k
    if k < 0:
        raise ConfigError(f"interleaving length k={k} must be >= 0")
    k = min(k, distinct)
    rng = random.Random(_seed_int(seed))
    shown: set[str] = set()
    ids: list[str] = []
    teams: list[str] = []
    pos = [0, 0]
    picks = [0, 0]
    lists = (a, b)

    def next_of(t: int) -> str | None:
        ranking = lists[t]
        while pos[t] < len(ranking) and ranking[pos[t]] in shown:
            pos[t] += 1
        return ranking[pos[t]] if pos[t] < len(ranking) else None

    while len(ids) < k:
        if picks[0] < picks[1]:
            team = 0
        elif picks[1] < picks[0]:
            team = 1
        else:
            team = 0 if rng.random() < 0.5 else 1
        doc = next_of(team)
        if doc is None:
            team = 1 - team
            doc = next_of(team)
            if doc is None:
                break
        shown.add(doc)
        ids.append(doc)
        teams.append(names[team])
        picks[team] += 1
    return Interleaving(tuple(ids), tuple(teams), tuple(names))


@dataclass(frozen=True)
class ClickCredit:
    """Clicks on one interleaved query, credited to teams.

    Attributes:
        credits: team name -> number of distinct clicked documents it contributed.
        winner: the team with more credits, or ``None`` for a tie (including no clicks).
        ignored: clicks on documents that were not shown (counted, not credited).
    """

    credits: dict[str, int]
    winner: str | None
    ignored: int = 0

    @property
    def clicked(self) -> bool:
        return sum(self.credits.values()) > 0


def attribute_clicks(interleaving: Interleaving, clicked_ids: Iterable[str]) -> ClickCredit:
    """Credit each distinct clicked document to the team that contributed it.

    Example:
        >>> il = Interleaving(("x", "y", "z"), ("A", "B", "A"))
        >>> attribute_clicks(il, ["y", "y", "q"])
        ClickCredit(credits={'A': 0, 'B': 1}, winner='B', ignored=1)
    """
    team_of = dict(zip(interleaving.ids, interleaving.teams))
    credits = {n: 0 for n in interleaving.names}
    seen: set[str] = set()
    ignored = 0
    for doc in clicked_ids:
        team = team_of.get(doc)
        if team is None:
            ignored += 1
            continue
        if doc in seen:
            continue
        seen.add(doc)
        credits[team] += 1
    first, second = interleaving.names
    winner = first if credits[first] > credits[second] else second if credits[second] > credits[first] else None
    return ClickCredit(credits, winner, ignored)


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided sign test p-value for ``wins_a`` vs ``wins_b`` under H0: each side wins with p=1/2.

    The exact binomial tail (summed in log space) up to 100,000 decided queries, a normal
    approximation with continuity correction beyond.

    Example:
        >>> round(sign_test(9, 1), 4)
        0.0215
        >>> sign_test(5, 5)
        1.0
    """
    if wins_a < 0 or wins_b < 0:
        raise ConfigError(f"win counts must be >= 0, got {wins_a}, {wins_b}")
    n = wins_a + wins_b
    if n == 0:
        return 1.0
    low = min(wins_a, wins_b)
    if n <= _EXACT_SIGN_TEST_MAX:
        base = math.lgamma(n + 1) - n * math.log(2.0)
        logs = [base - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(low + 1)]
        top = max(logs)
        tail = math.exp(top) * math.fsum(math.exp(x - top) for x in logs)
        return min(1.0, 2.0 * tail)
    z = (abs(wins_a - wins_b) - 1.0) / math.sqrt(n)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0)))


@dataclass(frozen=True)
class InterleavingSummary:
    """Aggregate of many interleaved queries.

    Attributes:
        names: the two teams (A, B).
        queries: queries counted (including ones without clicks).
        clicked: queries with at least one credited click.
        wins: team -> queries it won.
        ties: clicked queries that neither team won.
        win_rate: share of decided queries that team B won (0.5 = no preference; NaN if none decided).
        delta: ``(wins_B + ties/2) / clicked - 0.5`` (Chapelle et al.'s preference; > 0 favours B).
        p_value: two-sided sign test over decided queries.
    """

    names: tuple[str, str]
    queries: int
    clicked: int
    wins: dict[str, int]
    ties: int
    win_rate: float
    delta: float
    p_value: float

    def preferred(self, alpha: float = 0.05) -> str | None:
        """The winning team if the sign test rejects "no preference" at ``alpha``, else ``None``."""
        a, b = self.names
        if self.p_value >= alpha or self.wins[a] == self.wins[b]:
            return None
        return a if self.wins[a] > self.wins[b] else b

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names), "queries": self.queries, "clicked": self.clicked,
            "wins": dict(self.wins), "ties": self.ties, "win_rate": self.win_rate,
            "delta": self.delta, "p_value": self.p_value,
        }


def summarize_interleaving(
    credits: Iterable[ClickCredit], *, names: tuple[str, str] = ("A", "B")
) -> InterleavingSummary:
    """Aggregate per-query click credits into wins, ties, win rate, delta and a sign-test p-value.

    Example:
        >>> s = summarize_interleaving([ClickCredit({"A": 0, "B": 1}, "B")] * 9 + [ClickCredit({"A": 1, "B": 0}, "A")])
        >>> (s.wins["B"], round(s.win_rate, 2), s.preferred())
        (9, 0.9, 'B')
    """
    a, b = names
    wins = {a: 0, b: 0}
    ties = queries = clicked = 0
    for c in credits:
        queries += 1
        if not c.clicked:
            continue
        clicked += 1
        if c.winner is None:
            ties += 1
        elif c.winner in wins:
            wins[c.winner] += 1
        else:
            raise ConfigError(f"a click credit names team {c.winner!r}, not one of {names}")
    decided = wins[a] + wins[b]
    win_rate = wins[b] / decided if decided else float("nan")
    delta = (wins[b] + 0.5 * ties) / clicked - 0.5 if clicked else 0.0
    return InterleavingSummary(
        names=(a, b), queries=queries, clicked=clicked, wins=wins, ties=ties,
        win_rate=win_rate, delta=delta, p_value=sign_test(wins[a], wins[b]),
    )
