"""The rerank stage without a model: deadlines, the circuit breaker, failures and overload, on fake
rerankers driven by a fake clock (no torch, no Elasticsearch)."""

from __future__ import annotations

import numpy as np
import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.rerank import CircuitBreaker, RerankConfig, RerankStage


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class SlowReranker:
    """Scores = negative position (reverses the list); each call advances the fake clock."""

    name = "slow"
    fingerprint = "fake"

    def __init__(self, clock: FakeClock, per_doc_s: float) -> None:
        self.clock = clock
        self.per_doc_s = per_doc_s
        self.calls: list[list[str]] = []

    def score(self, query, documents):
        self.calls.append(list(documents))
        self.clock.advance(self.per_doc_s * len(documents))
        return np.array([float(d.split("-")[1]) for d in documents])  # "doc-7" -> 7


class Failing:
    name = "failing"
    fingerprint = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, query, documents):
        self.calls += 1
        raise RuntimeError("teacher exploded")


def _docs(n):
    return [f"doc-{i}" for i in range(n)]


# --------------------------------------------------------------------------------------- breaker
def test_breaker_opens_after_threshold_then_half_open_trial():
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=clock)
    assert b.state == "closed" and b.allow()
    b.record_failure()
    b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open" and not b.allow() and b.times_opened == 1
    clock.advance(9.9)
    assert not b.allow()
    clock.advance(0.2)
    assert b.state == "half_open"
    assert b.allow()          # one trial
    assert not b.allow()      # and only one at a time
    b.record_failure()        # trial failed: open again for a full cool-down
    assert b.state == "open" and b.times_opened == 2
    clock.advance(10.0)
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.consecutive_failures == 0 and b.allow()


def test_breaker_success_resets_the_count():
    b = CircuitBreaker(failure_threshold=2, cooldown_s=1, clock=FakeClock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"


def test_breaker_release_does_not_close_a_half_open_breaker():
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=clock)
    b.record_failure()
    clock.advance(2)
    assert b.allow()
    b.release()
    assert b.state == "half_open" and b.allow()


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"cooldown_s": -1}])
def test_breaker_validates(kwargs):
    with pytest.raises(ConfigError):
        CircuitBreaker(**kwargs)


# ------------------------------------------------------------------------------------- deadlines
def test_no_deadline_reranks_everything_in_one_call():
    clock = FakeClock()
    rr = SlowReranker(clock, 0.001)
    res = RerankStage(rr, clock=clock).run("q", _docs(6))
    assert res.order == [5, 4, 3, 2, 1, 0]
    assert res.outcome.reranked == "full" and res.outcome.count == 6 and res.outcome.reason == "complete"
    assert len(rr.calls) == 1
    assert res.scores == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_deadline_stops_between_chunks_and_keeps_student_order_for_the_rest():
    clock = FakeClock()
    rr = SlowReranker(clock, 0.010)  # 10 ms per candidate
    stage = RerankStage(rr, config=RerankConfig(top_n=20, chunk_size=4), clock=clock)
    res = stage.run("q", _docs(20), deadline=clock() + 0.100)  # room for ten candidates
    out = res.outcome
    assert out.reranked == "partial" and out.count == 10 and out.reason == "budget_exhausted"
    assert out.candidates == 20 and out.ms == pytest.approx(100.0)
    assert [len(c) for c in rr.calls] == [4, 4, 2]           # the last chunk shrinks to what fits
    assert res.order[:10] == list(range(9, -1, -1))          # teacher's order for the scored head
    assert res.order[10:] == list(range(10, 20))             # student's order for the rest
    assert res.scores[10:] == [None] * 10
    assert stage.per_doc_ms == pytest.approx(10.0)


def test_spent_budget_gives_none_and_the_student_order():
    clock = FakeClock()
    rr = SlowReranker(clock, 0.001)
    stage = RerankStage(rr, clock=clock)
    res = stage.run("q", _docs(5), deadline=clock() - 0.001)
    assert res.order == [0, 1, 2, 3, 4]
    assert res.outcome.reranked == "none" and res.outcome.reason == "budget_exhausted" and rr.calls == []
    assert stage.breaker.state == "closed"


def test_a_known_slow_teacher_only_gets_what_fits_and_is_remeasured_now_and_then():
    clock = FakeClock()
    rr = SlowReranker(clock, 0.050)
    stage = RerankStage(rr, config=RerankConfig(chunk_size=4, remeasure_s=10.0), clock=clock)
    stage.run("q", _docs(2))  # learns: 50 ms per candidate
    res = stage.run("q", _docs(10), deadline=clock() + 0.120)
    assert res.outcome.count == 2 and [len(c) for c in rr.calls] == [2, 2]  # two fit, not a chunk of four
    calls = len(rr.calls)
    for _ in range(50):  # not one candidate fits: the teacher is not called
        res = stage.run("q", _docs(10), deadline=clock() + 0.030)
        assert res.outcome.reranked == "none" and res.outcome.reason == "budget_exhausted"
    assert len(rr.calls) == calls
    clock.advance(10.0)  # after remeasure_s, one candidate is scored to measure the teacher again
    res = stage.run("q", _docs(10), deadline=clock() + 0.030)
    assert len(rr.calls) == calls + 1 and len(rr.calls[-1]) == 1 and res.outcome.count == 1
    stage.run("q", _docs(10), deadline=clock() + 0.030)
    assert len(rr.calls) == calls + 1  # and not again right away


# ------------------------------------------------------------------------------ failures, breaker
def test_failing_reranker_never_raises_and_opens_the_breaker():
    clock = FakeClock()
    rr = Failing()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock)
    stage = RerankStage(rr, breaker=breaker, clock=clock)
    for _ in range(3):
        res = stage.run("q", _docs(4))
        assert res.order == [0, 1, 2, 3] and res.outcome.reranked == "none"
        assert res.outcome.reason == "error" and "teacher exploded" in res.outcome.error
    assert stage.breaker.state == "open" and rr.calls == 3
    res = stage.run("q", _docs(4))
    assert res.outcome.reason == "circuit_open" and rr.calls == 3  # not called while open
    clock.advance(31)
    res = stage.run("q", _docs(4))
    assert rr.calls == 4 and res.outcome.reason == "error"        # the half-open trial
    assert stage.breaker.state == "open"


def test_failure_mid_way_keeps_the_scored_head():
    clock = FakeClock()

    class BreaksOnSecondChunk(SlowReranker):
        def score(self, query, documents):
            if self.calls:
                raise TimeoutError("gone")
            return super().score(query, documents)

    stage = RerankStage(BreaksOnSecondChunk(clock, 0.0), config=RerankConfig(chunk_size=3), clock=clock)
    res = stage.run("q", _docs(7), deadline=clock() + 10)
    assert res.outcome.reranked == "partial" and res.outcome.count == 3 and res.outcome.reason == "error"
    assert res.order == [2, 1, 0, 3, 4, 5, 6]


def test_wrong_number_of_scores_or_nan_is_a_failure():
    class Bad:
        name, fingerprint = "bad", "x"

        def __init__(self, out):
            self.out = out

        def score(self, query, documents):
            return self.out

    for out in (np.zeros(1), np.array([np.nan, 1.0])):
        res = RerankStage(Bad(out)).run("q", ["a", "b"])
        assert res.outcome.reason == "error" and res.order == [0, 1]


def test_busy_teacher_slots_skip_the_rerank_instead_of_piling_up():
    import threading

    release = threading.Event()
    entered = threading.Event()

    class Blocking:
        name, fingerprint = "blocking", "x"

        def score(self, query, documents):
            entered.set()
            release.wait(10)
            return np.zeros(len(documents))

    stage = RerankStage(Blocking(), config=RerankConfig(max_concurrent=1))
    worker = threading.Thread(target=stage.run, args=("q", ["a", "b"]))
    worker.start()
    assert entered.wait(10)
    res = stage.run("q", ["a", "b"])  # the only slot is taken by a call still running
    assert res.outcome.reason == "overloaded" and res.outcome.reranked == "none" and res.order == [0, 1]
    release.set()
    worker.join(10)
    assert stage.run("q", ["a", "b"]).outcome.reranked == "full"  # the slot is free again
    assert stage.breaker.state == "closed"


def test_empty_candidates():
    res = RerankStage(Failing()).run("q", [])
    assert res.order == [] and res.outcome.reason == "no_candidates"


@pytest.mark.parametrize(
    "kwargs",
    [{"top_n": 0}, {"chunk_size": 0}, {"failure_threshold": 0}, {"cooldown_s": -1}, {"remeasure_s": -1},
     {"max_concurrent": 0}],
)
def test_rerank_config_validates(kwargs):
    with pytest.raises(ConfigError):
        RerankConfig(**kwargs)


def test_load_reranker_refuses_a_folder_that_is_not_an_export(tmp_path):
    from esdistill.plugin import ModelError
    from esdistill.plugin.rerank import load_reranker

    with pytest.raises(ModelError, match="not an esdistill model folder"):
        load_reranker(tmp_path)
