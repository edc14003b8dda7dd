"""Faults at query time, for the CLI and the query hook, against the real node.

- ``esdistill search`` / ``eval`` when Elasticsearch is down, hung, slow on searches, dies in the
  middle of an evaluation, or answers 503: exit code 4 (:class:`ElasticsearchUnavailable`) with a
  message that says what happened and what to do, never a traceback, and within a bounded time.
- A slow, hanging or failing teacher degrades to the student's ranking *within the request's
  budget*: the response comes back on time, the candidates the teacher did not score keep the
  student's order, and the outcome says why.

The hook-level timeout with a hung node, the 1 ms budget and the circuit breaker are tested in
``test_query.py`` and ``test_rerank.py``; this module adds what those do not cover.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from esdistill.plugin.cli import main
from esdistill.plugin.query import QueryConfig, QueryHook
from esdistill.plugin.rerank import RerankConfig, load_reranker
from esdt_helpers import TINY_COLLECTION, free_port
from esdt_proxy import FlakyProxy
from qh_helpers import BlackHole, build_index

QUERY = "why do bacteria stop responding to antibiotics"


@pytest.fixture
def alias(es_client, index_prefix, student_dir):
    name = f"{index_prefix}-docs"
    build_index(es_client, name, student_dir)
    return name


class SearchFaults(FlakyProxy):
    """Forwards everything, except that searches after the first ``healthy`` ones are delayed by
    ``delay`` seconds, dropped (connection closed, no answer) or answered with 503."""

    def __init__(self, upstream: str, *, fault: str, healthy: int = 0, delay: float = 0.0) -> None:
        super().__init__(upstream)
        self.fault, self.healthy, self.delay = fault, healthy, delay
        self.searches = 0

    def _forward(self, handler, body: bytes) -> None:
        if "_search" in handler.path or "_msearch" in handler.path:
            with self._lock:
                self.searches += 1
                spoil = self.searches > self.healthy
            if spoil and self.fault == "drop":
                handler.close_connection = True
                handler.connection.shutdown(2)
                return
            if spoil and self.fault == "503":
                err = {"error": {"type": "unavailable_shards_exception", "reason": "injected by the test"},
                       "status": 503}
                self._reply(handler, 503, [], json.dumps(err).encode())
                return
            if spoil and self.fault == "delay":
                time.sleep(self.delay)
        try:
            super()._forward(handler, body)
        except OSError:  # the client gave up waiting
            pass


def _run(argv: list[str], capsys) -> tuple[int, str, float]:
    t = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - t
    err = capsys.readouterr().err
    return code, err, elapsed


def _search_args(alias: str, student_dir) -> list[str]:
    return ["search", QUERY, "--index", alias, "--model", str(student_dir), "--k", "5"]


def _eval_args(alias: str, student_dir) -> list[str]:
    return ["eval", "--collection", str(TINY_COLLECTION), "--index", alias, "--model", str(student_dir),
            "--no-progress"]


# ------------------------------------------------------------------------------ the CLI, ES faults
@pytest.mark.parametrize("command", ["search", "eval"])
def test_cli_with_elasticsearch_down_exits_4_saying_so(command, student_dir, monkeypatch, capsys):
    monkeypatch.setenv("ESDISTILL_ES_URL", f"http://127.0.0.1:{free_port()}")
    args = _search_args("docs", student_dir) if command == "search" else _eval_args("docs", student_dir)
    code, err, elapsed = _run(args, capsys)
    assert code == 4
    assert "cannot reach Elasticsearch at http://127.0.0.1:" in err and "Is it running?" in err
    assert "Traceback" not in err and elapsed < 30


@pytest.mark.parametrize("command", ["search", "eval"])
def test_cli_with_a_hung_elasticsearch_exits_4_after_the_timeout(command, student_dir, monkeypatch, capsys):
    hole = BlackHole()  # accepts connections, never answers
    try:
        monkeypatch.setenv("ESDISTILL_ES_URL", hole.url)
        monkeypatch.setenv("ESDISTILL_ES_TIMEOUT", "1")
        args = _search_args("docs", student_dir) if command == "search" else _eval_args("docs", student_dir)
        code, err, elapsed = _run(args, capsys)
    finally:
        hole.close()
    assert code == 4
    assert "did not answer within 1 s" in err and "ESDISTILL_ES_TIMEOUT" in err
    assert "Traceback" not in err and elapsed < 15


def test_bad_timeout_setting_is_a_config_error(student_dir, monkeypatch, capsys):
    monkeypatch.setenv("ESDISTILL_ES_TIMEOUT", "soon")
    code, err, _ = _run(_search_args("docs", student_dir), capsys)
    assert code == 2 and "ESDISTILL_ES_TIMEOUT='soon'" in err


def test_cli_search_when_searches_are_slower_than_the_timeout(es_url, alias, student_dir, monkeypatch, capsys):
    proxy = SearchFaults(es_url, fault="delay", delay=15.0)  # health answers at once, searches hang
    try:
        monkeypatch.setenv("ESDISTILL_ES_URL", proxy.url)
        code, err, elapsed = _run(_search_args(alias, student_dir), capsys)
    finally:
        proxy.close()
    assert code == 4
    assert "did not answer the kNN search within 10 s" in err and "overloaded" in err
    assert elapsed < 14  # the query hook's timeout, not the slow node, decides


@pytest.mark.parametrize("fault, message", [
    ("drop", "cannot reach Elasticsearch for the kNN search"),
    ("503", "failed the kNN search on .* with status 503"),
])
def test_cli_eval_when_elasticsearch_fails_half_way(fault, message, es_url, alias, student_dir, monkeypatch,
                                                    capsys):
    import re

    proxy = SearchFaults(es_url, fault=fault, healthy=5)
    try:
        monkeypatch.setenv("ESDISTILL_ES_URL", proxy.url)
        code, err, elapsed = _run(_eval_args(alias, student_dir), capsys)
    finally:
        proxy.close()
    assert proxy.searches > 5  # it failed after answering some queries
    assert code == 4 and re.search(message, err), err
    assert "Traceback" not in err and elapsed < 60


# ------------------------------------------------------------------------ the teacher misbehaves
class SlowTeacher:
    """The real exported cross-encoder, ``seconds`` slower on every call (or only on some)."""

    name, fingerprint = "slow", "x"

    def __init__(self, inner, seconds: float, *, hang_calls: tuple[int, ...] | None = None) -> None:
        self.inner, self.seconds, self.hang_calls = inner, seconds, hang_calls
        self.calls = 0
        self._lock = threading.Lock()

    def score(self, query, documents):
        with self._lock:
            self.calls += 1
            call = self.calls
        if self.hang_calls is None or call in self.hang_calls:
            time.sleep(self.seconds)
        return self.inner.score(query, documents)


def _student_ids(hook: QueryHook, k: int) -> list[str]:
    return hook.search(QUERY, k=k, rerank=False).ids


def test_a_slow_teacher_stays_within_the_budget_and_keeps_the_student_order_for_the_rest(
        es_client, alias, student_dir, teacher_dir):
    from esdistill.plugin.encoder import OnnxEncoder

    teacher = SlowTeacher(load_reranker(teacher_dir), 0.03)  # 30 ms per call of 4 candidates
    hook = QueryHook(es_client, alias, OnnxEncoder(student_dir), reranker=teacher,
                     config=QueryConfig(rerank=RerankConfig(top_n=20, chunk_size=4)))
    student = _student_ids(hook, 20)
    budget = 120.0
    for _ in range(4):
        t = time.perf_counter()
        r = hook.search(QUERY, k=20, rerank=True, budget_ms=budget)
        wall = (time.perf_counter() - t) * 1000
        m = r.rerank.count
        assert r.rerank.reason == "budget_exhausted" and 0 <= m < 20
        assert r.ids[m:] == student[m:] and sorted(r.ids[:m]) == sorted(student[:m])
        # on time (the query stops waiting at the deadline), give or take scheduling on a busy machine
        assert wall < budget + 130, (wall, r.rerank)
    assert teacher.calls >= 2  # the teacher did run: this is a partial rerank, not a skipped one


def test_a_hanging_teacher_never_holds_the_query_past_its_budget(es_client, alias, student_dir, teacher_dir):
    from esdistill.plugin.encoder import OnnxEncoder

    # the first call hangs for 3 s, far beyond any budget; later calls are fast
    teacher = SlowTeacher(load_reranker(teacher_dir), 3.0, hang_calls=(1,))
    hook = QueryHook(es_client, alias, OnnxEncoder(student_dir), reranker=teacher,
                     config=QueryConfig(rerank=RerankConfig(top_n=10)))
    student = _student_ids(hook, 10)
    t = time.perf_counter()
    r = hook.search(QUERY, k=10, rerank=True, budget_ms=200)
    wall = (time.perf_counter() - t) * 1000
    assert wall < 200 + 250, wall  # not the teacher's 3 s
    assert r.ids == student and r.rerank.reranked == "none" and r.rerank.reason == "budget_exhausted"
    assert r.variant == "student" and all(h.rerank_score is None for h in r.hits)
    # the next query, with a teacher that answers again, is reranked as usual
    deadline = time.monotonic() + 10
    while True:
        again = hook.search(QUERY, k=10, rerank=True, budget_ms=5_000)
        if again.rerank.reranked == "full" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.rerank.reranked == "full" and sorted(again.ids) == sorted(student)


def test_a_teacher_that_fails_on_every_call_degrades_every_query_to_the_student(es_client, alias, student_dir):
    from esdistill.plugin.encoder import OnnxEncoder

    class Broken:
        name, fingerprint = "broken", "x"
        calls = 0

        def score(self, query, documents):
            Broken.calls += 1
            raise MemoryError("the teacher ran out of memory")

    hook = QueryHook(es_client, alias, OnnxEncoder(student_dir), reranker=Broken(),
                     config=QueryConfig(rerank=RerankConfig(failure_threshold=3, cooldown_s=600)))
    student = _student_ids(hook, 5)
    reasons = []
    for _ in range(6):
        r = hook.search(QUERY, k=5, rerank=True, budget_ms=500)
        assert r.ids == student and r.variant == "student"
        reasons.append(r.rerank.reason)
    assert reasons == ["error"] * 3 + ["circuit_open"] * 3 and Broken.calls == 3
