"""``esdistill ab report`` on hand-written logs: exposure rows say what was assigned and served, and the
report's numbers match a hand computation (no torch, no Elasticsearch)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.ab import Arm, ExposureLog, exposure_fields
from esdistill.plugin.ab_report import bootstrap_delta, read_clicks
from esdistill.plugin.cli import main

STUDENT = Arm("student", 0.5)
RERANK = Arm("student+rerank", 0.3, rerank=True)
INTER = Arm("interleaved", 0.2, interleave=True)
NAMES = ["student", "rerank"]


def _out(reranked: str, count: int, reason: str) -> SimpleNamespace:
    return SimpleNamespace(reranked=reranked, count=count, reason=reason)


def _write(path, rows) -> None:
    with ExposureLog(path, to_logger=False) as log:
        for qid, arm, variant, outcome, latency, forced, shown, teams in rows:
            extra = exposure_fields(arm, variant, outcome, forced=forced)
            if teams is not None:
                extra["names"] = NAMES
            log.record(query_id=qid, key=None if forced else f"u-{qid}", arm=arm.name, shown=shown, teams=teams,
                       latency_ms=latency, **extra)


def test_exposure_fields_say_assigned_served_and_why():
    f = exposure_fields(RERANK, "student", _out("none", 0, "budget_exhausted"))
    assert f == {"assigned_variant": "student+rerank", "variant": "student", "served_as_assigned": False,
                 "reason": "budget_exhausted", "reranked": "none", "rerank_reason": "budget_exhausted",
                 "forced": False}
    f = exposure_fields(RERANK, "student+rerank", _out("partial", 3, "budget_exhausted"), forced=True)
    assert f["served_as_assigned"] is True and f["reason"] == "as_assigned" and f["forced"] is True
    f = exposure_fields(INTER, "interleaved", _out("none", 0, "circuit_open"))
    assert f["served_as_assigned"] is False and f["reason"] == "circuit_open"  # both teams were the student
    f = exposure_fields(STUDENT, "student+rerank", _out("full", 5, "complete"), rerank_override=True)
    assert f["served_as_assigned"] is False and f["reason"] == "request_override"
    f = exposure_fields(None, "student", _out("none", 0, "not_requested"))
    assert f["served_as_assigned"] is None and f["assigned_variant"] is None


def test_report_matches_a_hand_computation(tmp_path, capsys):
    log, clicks = tmp_path / "exposures.jsonl", tmp_path / "clicks.jsonl"
    ok, budget = _out("full", 3, "complete"), _out("none", 0, "budget_exhausted")
    none = _out("none", 0, "not_requested")
    s, r = ["a", "b", "c"], ["a", "b", "c"]
    il = ["a", "b", "c", "d"]
    rows = [
        # student arm: latencies 10..50, one forced row (latency 999) left out of every number
        ("s1", STUDENT, "student", none, 10.0, False, s, None),
        ("s2", STUDENT, "student", none, 20.0, False, s, None),
        ("s3", STUDENT, "student", none, 30.0, False, s, None),
        ("s4", STUDENT, "student", none, 40.0, False, s, None),
        ("s5", STUDENT, "student", none, 50.0, False, s, None),
        ("s6", STUDENT, "student", none, 999.0, True, s, None),
        # rerank arm: 3 of 4 served as assigned, 1 budget_exhausted
        ("r1", RERANK, "student+rerank", ok, 100.0, False, r, None),
        ("r2", RERANK, "student+rerank", ok, 200.0, False, r, None),
        ("r3", RERANK, "student", budget, 50.0, False, r, None),
        ("r4", RERANK, "student+rerank", ok, 300.0, False, r, None),
        # interleaving arm: 5 queries
        ("i1", INTER, "interleaved", ok, 60.0, False, il, ["student", "rerank", "rerank", "student"]),
        ("i2", INTER, "interleaved", ok, 60.0, False, il, ["rerank", "student", "student", "rerank"]),
        ("i3", INTER, "interleaved", ok, 60.0, False, il, ["student", "rerank", "student", "rerank"]),
        ("i4", INTER, "interleaved", ok, 60.0, False, il, ["rerank", "student", "rerank", "student"]),
        ("i5", INTER, "interleaved", ok, 60.0, False, il, ["student", "rerank", "rerank", "student"]),
    ]
    _write(log, rows)
    click_rows = [
        ("i1", "b"), ("i1", "c"),            # rerank 2, student 0 -> rerank wins
        ("i2", "a"),                         # rerank 1 -> rerank wins
        ("i3", "a"), ("i3", "b"),            # student 1, rerank 1 -> tie
        ("i4", "b"), ("i4", "zzz"),          # student 1 (zzz not shown: ignored) -> student wins
        ("i5", "c"), ("i5", "c"),            # rerank 1 (the repeat counts once) -> rerank wins
        ("s1", "a"), ("s3", "q"),            # student arm: s1 clicked a shown doc, s3's click missed
        ("nope", "a"),                       # a query id not in the log
    ]
    clicks.write_text("".join(json.dumps({"query_id": q, "doc_id": d}) + "\n" for q, d in click_rows))

    assert main(["ab", "report", str(log), "--clicks", str(clicks), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 15 and report["unmatched_clicks"] == 1
    st, rr, it = (report["arms"][n] for n in ("student", "student+rerank", "interleaved"))

    assert (st["exposures"], st["forced"], st["served_as_assigned"], st["share_as_assigned"]) == (5, 1, 5, 1.0)
    # numpy's linear interpolation over [10, 20, 30, 40, 50]: rank p/100 * (n - 1)
    assert st["latency_ms"]["p50"] == pytest.approx(30.0)
    assert st["latency_ms"]["p95"] == pytest.approx(40.0 + 0.8 * 10.0)
    assert st["latency_ms"]["p99"] == pytest.approx(40.0 + 0.96 * 10.0)
    assert st["clicked_share"] == pytest.approx(1 / 5) and st["interleaving"] is None

    assert (rr["exposures"], rr["served_as_assigned"], rr["share_as_assigned"]) == (4, 3, 0.75)
    assert rr["not_served_reasons"] == {"budget_exhausted": 1}
    assert rr["variants"] == {"student+rerank": 3, "student": 1}
    # sorted latencies [50, 100, 200, 300]: p50 at rank 1.5 -> 150
    assert rr["latency_ms"]["p50"] == pytest.approx(150.0)
    assert rr["latency_ms"]["p95"] == pytest.approx(200.0 + 0.85 * 100.0)
    assert rr["clicked_share"] == 0.0

    credit = it["interleaving"]
    assert it["exposures"] == 5 and it["share_as_assigned"] == 1.0 and it["clicked_share"] == 1.0
    assert credit["names"] == NAMES
    assert credit["credits"] == {"student": 2, "rerank": 5}  # student: i3, i4; rerank: i1 2, i2, i3, i5
    assert credit["wins"] == {"student": 1, "rerank": 3} and credit["ties"] == 1
    assert credit["clicked"] == 5 and credit["queries"] == 5 and credit["ignored_clicks"] == 1
    assert credit["delta"] == pytest.approx((3 + 0.5 * 1) / 5 - 0.5)  # 0.2
    assert credit["p_value"] == pytest.approx(2 * (1 + 4) / 16)  # sign test, 3 vs 1
    lo, hi = credit["ci"]
    assert -0.5 <= lo <= credit["delta"] <= hi <= 0.5 and lo < hi
    assert credit["confidence"] == 0.95

    assert main(["ab", "report", str(log)]) == 0  # the text table, without clicks
    text = capsys.readouterr().out
    assert "arm student+rerank: 4 exposures (0 forced, not counted); served as assigned 3/4 = 75.0%" in text
    assert "{'budget_exhausted': 1}" in text and "interleaving" not in text


def test_bootstrap_interval():
    assert bootstrap_delta([1.0] * 7) == (0.5, 0.5)
    assert bootstrap_delta([0.0] * 3) == (-0.5, -0.5)
    lo, hi = bootstrap_delta([1.0, 0.0] * 50, seed=3)
    assert lo < 0.0 < hi and bootstrap_delta([1.0, 0.0] * 50, seed=3) == (lo, hi)


def test_bad_inputs_name_the_file_and_the_fix(tmp_path, capsys):
    clicks = tmp_path / "c.jsonl"
    clicks.write_text('{"query_id": "q"}\nnot json\n')
    with pytest.raises(ConfigError, match="line 1 needs a string query_id and a doc_id; line 2 is not JSON"):
        read_clicks(clicks)
    assert main(["ab", "report", str(tmp_path / "missing.jsonl"), "--json"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["message"].startswith("exposure log") and out.err == ""
