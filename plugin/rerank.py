"""Teacher rerank of the student's top candidates, within a deadline, behind a circuit breaker.

The teacher is served in ONNX like the student: a cross-encoder (:class:`CrossEncoderReranker`,
scores each query-document pair) or a bi-encoder teacher (:class:`BiEncoderReranker`, cosine of the
teacher's embeddings of query and candidate, with candidate embeddings cached). :func:`load_reranker`
picks the right one from the folder's manifest; given a distillation run folder or a teacher spec
(``0.5*mpnet+0.5*bm25``) it serves the run's teacher ensemble
(:class:`~esdistill.plugin.teacher_rerank.SpecReranker`).

:class:`RerankStage` runs a reranker for one query under three guarantees:

* **Deadline.** Candidates are scored in small chunks in the student's order. Before each chunk the
  stage compares the time left with its running estimate of the teacher's cost per candidate,
  shrinks the chunk to what fits, and stops when not one more candidate fits (or no time is left). The reranked head is ordered by the teacher; the rest keeps the
  student's order, and the outcome says ``full``, ``partial`` or ``none`` and why. A reranker with
  ``whole_list = True`` (its scores depend on the whole list, e.g. normalised per query) is run on
  all candidates in one call or not at all: never ``partial``.
* **Circuit breaker.** After ``failure_threshold`` consecutive failures the stage stops calling the
  reranker for ``cooldown_s`` seconds, then lets one trial request through (half-open): a success
  closes the breaker, a failure opens it again.
* **Never fails the query.** Any exception from the reranker is logged and reported in the outcome;
  the student's order is returned.

Example::

    >>> class Length:                       # a toy reranker: longer text = more relevant
    ...     name, fingerprint = "length", "-"
    ...     def score(self, query, documents):
    ...         import numpy as np
    ...         return np.array([len(d) for d in documents], dtype=np.float32)
    >>> stage = RerankStage(Length())
    >>> result = stage.run("q", ["a", "ccc", "bb"])
    >>> result.order, result.outcome.reranked
    ([1, 2, 0], 'full')
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from esdistill.plugin._errors import ConfigError, ModelError
from esdistill.plugin._lru import LRUCache
from esdistill.plugin.encoder import l2_normalize
from esdistill.plugin.manifest import Manifest

__all__ = [
    "BiEncoderReranker",
    "CircuitBreaker",
    "CrossEncoderReranker",
    "RerankConfig",
    "RerankOutcome",
    "RerankResult",
    "RerankStage",
    "Reranker",
    "load_reranker",
]

logger = logging.getLogger(__name__)

# why a rerank stopped where it did
REASON_COMPLETE = "complete"
REASON_BUDGET = "budget_exhausted"
REASON_CIRCUIT = "circuit_open"
REASON_ERROR = "error"
REASON_NOT_REQUESTED = "not_requested"
REASON_NO_RERANKER = "no_reranker"
REASON_NO_CANDIDATES = "no_candidates"
REASON_OVERLOADED = "overloaded"


@runtime_checkable
class Reranker(Protocol):
    """What the query hook needs from a teacher: scores for one query and its candidates.

    Attributes:
        name: a human name (from the model's manifest).
        fingerprint: the model's fingerprint, for logs and metrics.
    """

    name: str
    fingerprint: str

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """One score per document, higher = more relevant (shape ``(len(documents),)``)."""
        ...


def _score_part(reranker: Any, query: str, texts: Sequence[str], ids: Sequence[str] | None) -> np.ndarray:
    """Scores for one part of the candidates. A reranker that knows the index (stored teacher
    vectors, BM25 from Elasticsearch) implements ``score_candidates(query, ids, texts)`` and gets the
    candidates' ids too; every other reranker gets the texts."""
    if ids is not None and hasattr(reranker, "score_candidates"):
        return reranker.score_candidates(query, list(ids), list(texts))
    return reranker.score(query, list(texts))


class CrossEncoderReranker:
    """A cross-encoder teacher served by :class:`~esdistill.plugin.cross_encoder.OnnxCrossEncoder`.

    Args:
        model: an ``OnnxCrossEncoder`` or the path of an exported cross-encoder folder.
        threads: onnxruntime intra-op threads when loading from a path.
        batch_size: pairs per ONNX call when loading from a path.

    Example:
        >>> rr = CrossEncoderReranker("runs/teacher-onnx")        # doctest: +SKIP
        >>> rr.score("query", ["doc a", "doc b"])                 # doctest: +SKIP
        array([ 3.1, -2.4], dtype=float32)
    """

    def __init__(self, model: Any, *, threads: int | None = None, batch_size: int = 32) -> None:
        if isinstance(model, (str, os.PathLike)):
            from esdistill.plugin.cross_encoder import OnnxCrossEncoder

            model = OnnxCrossEncoder(model, threads=threads, batch_size=batch_size)
        self.model = model
        self.name = getattr(model.manifest, "name", "cross-encoder")
        self.fingerprint = str(model.fingerprint)

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        return np.asarray(self.model.score(query, list(documents)), dtype=np.float32).reshape(-1)


class BiEncoderReranker:
    """A bi-encoder teacher: cosine between its query embedding and each candidate's embedding.

    Candidate embeddings are kept in a bounded LRU cache keyed by the text's hash, because a
    document's teacher embedding does not depend on the query: popular documents are embedded once.

    Args:
        encoder: an ``OnnxEncoder`` or the path of an exported bi-encoder folder.
        threads: onnxruntime intra-op threads when loading from a path.
        batch_size: texts per ONNX call when loading from a path.
        cache_size: candidate embeddings kept (0 disables the cache).

    Example:
        >>> rr = BiEncoderReranker("runs/mpnet-onnx", cache_size=50_000)   # doctest: +SKIP
    """

    def __init__(
        self, encoder: Any, *, threads: int | None = None, batch_size: int = 32, cache_size: int = 20_000
    ) -> None:
        if cache_size < 0:
            raise ConfigError(f"cache_size={cache_size} must be >= 0")
        if isinstance(encoder, (str, os.PathLike)):
            from esdistill.plugin.encoder import OnnxEncoder

            encoder = OnnxEncoder(encoder, threads=threads, batch_size=batch_size)
        self.encoder = encoder
        self.name = getattr(encoder.manifest, "name", "bi-encoder")
        self.fingerprint = str(encoder.fingerprint)
        self.cache_size = cache_size
        self._docs: LRUCache[bytes, np.ndarray] = LRUCache(cache_size)
        self._queries: LRUCache[str, np.ndarray] = LRUCache(64)

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return l2_normalize(np.asarray(x, dtype=np.float32))

    def _query_vector(self, query: str) -> np.ndarray:
        hit = self._queries.get(query)
        if hit is not None:
            return hit
        vec = self._unit(self.encoder.encode([query], kind="query"))[0]
        self._queries.put(query, vec)
        return vec

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        q = self._query_vector(query)
        keys = [hashlib.blake2b(d.encode("utf-8"), digest_size=16).digest() for d in documents]
        vecs: list[np.ndarray | None] = [self._docs.get(key) for key in keys]
        missing = [i for i, v in enumerate(vecs) if v is None]
        if missing:
            fresh = self._unit(self.encoder.encode([documents[i] for i in missing], kind="document"))
            for i, v in zip(missing, fresh):
                vecs[i] = v
                self._docs.put(keys[i], v)
        if not documents:
            return np.zeros(0, dtype=np.float32)
        return np.stack(vecs) @ q  # type: ignore[arg-type]


def load_reranker(ref: str | os.PathLike[str], *, threads: int | None = None, **kwargs: Any) -> Reranker:
    """Load a teacher to rerank with: an exported model, a distillation run's teacher, or a teacher spec.

    Args:
        ref: one of

            * an exported model folder (``manifest.json`` with ``kind`` cross- or bi-encoder): a
              :class:`CrossEncoderReranker` or :class:`BiEncoderReranker`;
            * a distillation run folder (``run.json``): the teacher the run chose, served as a
              :class:`~esdistill.plugin.teacher_rerank.SpecReranker`;
            * a teacher spec (holds ``*`` or ``+``, or names ``bm25``, e.g. ``0.5*mpnet+0.5*bm25``)
              or a packaged model name (``mpnet``): a ``SpecReranker`` of it.
        threads: onnxruntime intra-op threads.
        kwargs: passed to the reranker (``batch_size``; ``cache_size`` for bi-encoders).

    Raises:
        ModelError: a folder that is neither an export nor a run, or a member that is not exported.
        ConfigError: a bad spec, or a run folder without a chosen teacher.

    Example:
        >>> rr = load_reranker("runs/teacher-onnx")      # doctest: +SKIP
        >>> rr = load_reranker("runs/scifact")           # doctest: +SKIP
        >>> rr = load_reranker("0.5*mpnet+0.5*bm25")     # doctest: +SKIP
    """
    from esdistill.plugin.teacher_rerank import SpecReranker, is_teacher_spec

    text = os.fspath(ref)
    folder = Path(text).expanduser()
    if folder.is_dir() and (folder / "run.json").is_file() and not (folder / "manifest.json").is_file():
        return SpecReranker.from_run(folder, threads=threads, **kwargs)
    if not folder.is_dir() and is_teacher_spec(text):
        return SpecReranker.from_spec(text, threads=threads, **kwargs)
    if not folder.exists():
        raise ModelError(f"--rerank {text!r} is neither a folder (an exported model, or a distillation run with "
                         "run.json) nor a teacher spec such as 0.5*mpnet+0.5*bm25; check the path")
    manifest = Manifest.load(folder, verify=False)
    if manifest.kind == "cross-encoder":
        kwargs.pop("cache_size", None)
        return CrossEncoderReranker(folder, threads=threads, **kwargs)
    if manifest.kind == "bi-encoder":
        return BiEncoderReranker(folder, threads=threads, **kwargs)
    raise ModelError(f"{text}: manifest kind {manifest.kind!r} cannot rerank")  # pragma: no cover


class CircuitBreaker:
    """Stop calling a failing dependency for a while: closed -> open -> half-open -> closed.

    Args:
        failure_threshold: consecutive failures that open the breaker.
        cooldown_s: seconds the breaker stays open before it lets one trial call through.
        clock: a monotonic clock in seconds (injectable for tests).

    Example:
        >>> b = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=lambda: 0.0)
        >>> b.record_failure(); b.record_failure(); b.state, b.allow()
        ('open', False)
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self, *, failure_threshold: int = 3, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError(f"failure_threshold={failure_threshold} must be >= 1")
        if not cooldown_s >= 0:
            raise ConfigError(f"cooldown_s={cooldown_s} must be >= 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = float(cooldown_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (an open breaker past its cool-down reads half_open)."""
        with self._lock:
            if self._state == self.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
                return self.HALF_OPEN
            return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May the dependency be called now? (In half-open state, only one trial at a time.)"""
        with self._lock:
            if self._state == self.CLOSED:
                return True
            if self._state == self.OPEN:
                if self._clock() - self._opened_at < self.cooldown_s:
                    return False
                self._state = self.HALF_OPEN
                self._trial_in_flight = False
            if self._trial_in_flight:
                return False
            self._trial_in_flight = True
            return True

    def release(self) -> None:
        """Give back an allowed call that was not made (e.g. no time was left): no state change."""
        with self._lock:
            self._trial_in_flight = False

    def record_success(self) -> None:
        with self._lock:
            if self._state != self.CLOSED:
                logger.info("circuit breaker closed again after a successful trial")
            self._state = self.CLOSED
            self._failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_in_flight = False
            if self._state == self.HALF_OPEN or (self._state == self.CLOSED and self._failures >= self.failure_threshold):
                self._state = self.OPEN
                self._opened_at = self._clock()
                self.times_opened += 1
                logger.warning("circuit breaker opened after %d consecutive failure(s); retry in %.1f s",
                               self._failures, self.cooldown_s)


@dataclass
class RerankConfig:
    """How the teacher rerank runs.

    Attributes:
        top_n: candidates (the student's top N) sent to the teacher.
        chunk_size: candidates scored per teacher call when a deadline applies (smaller = finer
            deadline control, larger = better throughput).
        failure_threshold: consecutive reranker failures that open the circuit breaker.
        cooldown_s: seconds the breaker stays open before a trial call.
        remeasure_s: when the teacher's measured cost says not one candidate fits a request's
            budget, it is skipped; at most this often one candidate is scored anyway to measure
            it again.
        max_concurrent: teacher runs at once; a query that finds them all busy is not reranked
            (reason ``overloaded``). This bounds the CPU a slow teacher takes, including calls a
            query stopped waiting for at its deadline.
    """

    top_n: int = 20
    chunk_size: int = 4
    failure_threshold: int = 3
    cooldown_s: float = 30.0
    remeasure_s: float = 30.0
    max_concurrent: int = 4

    def __post_init__(self) -> None:
        if not 1 <= int(self.top_n) <= 1000:
            raise ConfigError(f"rerank top_n={self.top_n} must be between 1 and 1000")
        if int(self.chunk_size) < 1:
            raise ConfigError(f"rerank chunk_size={self.chunk_size} must be >= 1")
        if int(self.failure_threshold) < 1:
            raise ConfigError(f"rerank failure_threshold={self.failure_threshold} must be >= 1")
        if not float(self.cooldown_s) >= 0:
            raise ConfigError(f"rerank cooldown_s={self.cooldown_s} must be >= 0")
        if not float(self.remeasure_s) >= 0:
            raise ConfigError(f"rerank remeasure_s={self.remeasure_s} must be >= 0")
        if int(self.max_concurrent) < 1:
            raise ConfigError(f"rerank max_concurrent={self.max_concurrent} must be >= 1")


@dataclass
class RerankOutcome:
    """Whether and how far the rerank ran for one query.

    Attributes:
        reranked: ``full`` (every candidate scored), ``partial`` (a head of the candidates) or
            ``none``.
        count: candidates the teacher scored.
        candidates: candidates offered to the teacher.
        reason: ``complete``, ``budget_exhausted``, ``circuit_open``, ``overloaded``, ``error``,
            ``not_requested``, ``no_reranker`` or ``no_candidates``.
        error: the exception's type and message, when ``reason`` is ``error``.
        ms: milliseconds spent in the teacher.
    """

    reranked: str = "none"
    count: int = 0
    candidates: int = 0
    reason: str = REASON_NOT_REQUESTED
    error: str | None = None
    ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RerankResult:
    """The new order of the candidates and what the teacher said.

    Attributes:
        order: a permutation of candidate indices, final order (reranked head first).
        scores: teacher score per candidate index (``None`` where not scored).
        outcome: the :class:`RerankOutcome`.
    """

    order: list[int]
    scores: list[float | None]
    outcome: RerankOutcome = field(default_factory=RerankOutcome)


class RerankStage:
    """Run a :class:`Reranker` under a deadline and a circuit breaker; never raises for its failures.

    Args:
        reranker: the teacher.
        config: :class:`RerankConfig` (defaults when ``None``).
        breaker: a :class:`CircuitBreaker` (one built from ``config`` when ``None``).
        clock: the clock deadlines are expressed in (``time.perf_counter`` seconds by default).
    """

    def __init__(
        self,
        reranker: Reranker,
        *,
        config: RerankConfig | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.reranker = reranker
        self.config = config or RerankConfig()
        self.breaker = breaker or CircuitBreaker(
            failure_threshold=self.config.failure_threshold, cooldown_s=self.config.cooldown_s
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._per_doc_s: float | None = None  # running estimate of the teacher's cost per candidate
        self._measured_at = -float("inf")     # when the estimate was last measured
        self._slots = threading.BoundedSemaphore(self.config.max_concurrent)

    @property
    def per_doc_ms(self) -> float | None:
        """The running estimate of the teacher's cost per candidate, in ms (``None`` before any call)."""
        return None if self._per_doc_s is None else self._per_doc_s * 1000.0

    def _learn(self, seconds: float, n: int) -> None:
        with self._lock:
            self._measured_at = self._clock()
            per_doc = seconds / max(n, 1)
            self._per_doc_s = per_doc if self._per_doc_s is None else 0.7 * self._per_doc_s + 0.3 * per_doc

    def _room(self, want: int, deadline: float, *, whole: bool = False) -> int:
        """How many of the next ``want`` candidates fit before ``deadline`` (0: stop now).

        With ``whole`` (a reranker whose scores depend on the whole list) the answer is ``want`` or
        0: a head of the list is never scored alone."""
        now = self._clock()
        remaining = deadline - now
        if remaining <= 0:
            return 0
        with self._lock:
            est = self._per_doc_s
            if est is None or est <= 0:
                return want
            fit = int(remaining / est + 1e-6)  # float noise must not cost a whole candidate
            if fit >= want or (fit >= 1 and not whole):
                return min(want, fit)
            # Not even one candidate fits by the estimate. Re-measure with one candidate at most
            # every ``remeasure_s``, so a teacher that was slow once (a hiccup) is not locked out
            # forever, while a teacher that is always too slow costs one candidate's overshoot
            # per interval, not per query.
            if now - self._measured_at >= self.config.remeasure_s:
                self._measured_at = now
                return want if whole else 1
            return 0

    def run(self, query: str, texts: Sequence[str], *, deadline: float | None = None,
            ids: Sequence[str] | None = None) -> RerankResult:
        """Rerank ``texts`` (the candidates, in the student's order) for ``query``.

        Args:
            query: the query text.
            texts: candidate texts, student's order; callers pass at most ``config.top_n``.
            ids: the candidates' document ids (same order), for rerankers that read the index
                (``score_candidates``); ``None`` when there are none.
            deadline: the time (on this stage's clock) by which the rerank must stop; ``None`` = no
                deadline (all candidates in one call).

        Returns:
            A :class:`RerankResult`; its ``order`` is the student's order when nothing was scored.
        """
        n = len(texts)
        student = list(range(n))
        outcome = RerankOutcome(candidates=n)
        scores: list[float | None] = [None] * n
        if n == 0:
            outcome.reason = REASON_NO_CANDIDATES
            return RerankResult(student, scores, outcome)
        if not self._slots.acquire(blocking=False):
            outcome.reason = REASON_OVERLOADED
            return RerankResult(student, scores, outcome)
        try:
            return self._run(query, texts, deadline, outcome, scores, ids)
        finally:
            self._slots.release()

    def _run(self, query: str, texts: Sequence[str], deadline: float | None, outcome: RerankOutcome,
             scores: list[float | None], ids: Sequence[str] | None = None) -> RerankResult:
        n = len(texts)
        student = list(range(n))
        if not self.breaker.allow():
            outcome.reason = REASON_CIRCUIT
            return RerankResult(student, scores, outcome)
        # a reranker that scores the list as a whole (one request for all, or scores normalised over
        # the list) gets all of it in one call, or nothing when the estimate says it does not fit
        whole = deadline is None or bool(getattr(self.reranker, "whole_list", False))
        chunk = n if whole else self.config.chunk_size
        start = self._clock()
        done = 0
        failed = called = False
        try:
            while done < n:
                size = min(chunk, n - done)
                if deadline is not None:
                    size = self._room(size, deadline, whole=whole)
                    if size == 0:
                        break
                part = list(texts[done:done + size])
                called = True
                t = self._clock()
                part_ids = None if ids is None else list(ids[done:done + size])
                got = np.asarray(_score_part(self.reranker, query, part, part_ids), dtype=np.float64).reshape(-1)
                if got.shape[0] != len(part) or not np.all(np.isfinite(got)):
                    raise ModelError(
                        f"reranker {getattr(self.reranker, 'name', '?')} returned {got.shape[0]} scores "
                        f"(finite: {bool(np.all(np.isfinite(got)))}) for {len(part)} candidates"
                    )
                self._learn(self._clock() - t, len(part))
                scores[done:done + len(part)] = [float(s) for s in got]
                done += len(part)
        except Exception as exc:  # noqa: BLE001 - a rerank failure must never fail the query
            failed = True
            outcome.error = f"{type(exc).__name__}: {exc}"[:500]
            logger.warning("rerank failed after %d/%d candidates: %s", done, n, outcome.error)
        outcome.ms = (self._clock() - start) * 1000.0
        outcome.count = done
        if failed:
            self.breaker.record_failure()
            outcome.reason = REASON_ERROR
        else:
            if called:
                self.breaker.record_success()
            else:
                self.breaker.release()
            outcome.reason = REASON_COMPLETE if done == n else REASON_BUDGET
        outcome.reranked = "full" if done == n else ("partial" if done > 0 else "none")
        head = sorted(range(done), key=lambda i: (-scores[i], i))  # type: ignore[operator]
        return RerankResult(head + student[done:], scores, outcome)

