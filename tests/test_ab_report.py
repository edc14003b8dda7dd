"""``esdistill ab report`` on a log written by the real query hook on a real node (the report on
hand-written logs: tests/unit/test_ab_report_math.py)."""

from __future__ import annotations

import json

import pytest
from esdistill.plugin.ab import ABTest, Arm, ExposureLog, read_exposures
from esdistill.plugin.cli import main
from esdistill.plugin.query import QueryHook
from qh_helpers import build_index


# ---------------------------------------------------------------------------- the real query hook
def test_report_on_a_log_the_query_hook_wrote(es_client, index_prefix, student_dir, teacher_dir, tmp_path, capsys):
    from esdistill.plugin.encoder import OnnxEncoder
    from esdistill.plugin.rerank import load_reranker

    alias = f"{index_prefix}-ab"
    build_index(es_client, alias, student_dir)
    ab = ABTest((Arm("student", 0.4), Arm("student+rerank", 0.3, rerank=True), Arm("interleaved", 0.3, interleave=True)),
                salt="report-test")
    path = tmp_path / "exposures.jsonl"
    log = ExposureLog(path, to_logger=False)
    hook = QueryHook(es_client, alias, OnnxEncoder(student_dir), reranker=load_reranker(teacher_dir), ab=ab,
                     exposure_log=log)
    keys = [f"user-{i}" for i in range(24)]
    queries = ["antibiotics resistance", "plants and sunlight", "black holes", "jet engines"]
    for i, key in enumerate(keys):
        hook.search(queries[i % 4], k=5, mode="knn", ab_key=key)
    hook.search("black holes", k=5, mode="knn", arm="interleaved")                        # forced
    starved = hook.search("black holes", k=5, mode="knn", arm="student+rerank", budget_ms=0.001)  # forced
    assert starved.variant == "student" and starved.rerank.reason == "budget_exhausted"
    hook.search("black holes", k=5, mode="knn", ab_key="user-budget", budget_ms=0.001)
    log.close()

    rows = read_exposures(path)
    assert len(rows) == 27
    forced = [r for r in rows if r["forced"]]
    assert len(forced) == 2 and all(r["key"] is None for r in forced)
    assert {r["arm"] for r in forced} == {"interleaved", "student+rerank"}
    assert forced[1]["served_as_assigned"] is False and forced[1]["reason"] == "budget_exhausted"
    assert all(r["latency_ms"] > 0 and r["assigned_variant"] for r in rows)

    # simulated clicks: on every interleaved exposure, the first document the rerank team contributed
    clicks = tmp_path / "clicks.jsonl"
    with clicks.open("w") as fh:
        for r in rows:
            if "teams" in r and "rerank" in r["teams"]:
                fh.write(json.dumps({"query_id": r["query_id"], "doc_id": r["shown"][r["teams"].index("rerank")]}) + "\n")

    assert main(["ab", "report", str(path), "--clicks", str(clicks), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    by_hand = {a.name: 0 for a in ab.arms}
    for key in keys + ["user-budget"]:
        by_hand[ab.assign(key).name] += 1
    for name, n in by_hand.items():
        arm = report["arms"].get(name, {"exposures": 0, "forced": 0})
        assert arm["exposures"] == n, (name, arm)
    assert report["arms"]["interleaved"]["forced"] == 1 and report["arms"]["student+rerank"]["forced"] == 1
    real = [r for r in rows if not r["forced"]]
    for name, arm in report["arms"].items():
        mine = [r for r in real if r["arm"] == name]
        served = sum(1 for r in mine if r["served_as_assigned"])
        assert arm["served_as_assigned"] == served and arm["share_as_assigned"] == pytest.approx(served / len(mine))
    budget_row = rows[-1]
    if budget_row["assigned_variant"] != "student":  # user-budget drew a rerank arm: its budget ran out
        assert budget_row["served_as_assigned"] is False and budget_row["reason"] == "budget_exhausted"
    inter = [r for r in real if r["arm"] == "interleaved" and "rerank" in r["teams"]]
    credit = report["arms"]["interleaved"]["interleaving"]
    assert credit["credits"]["rerank"] == len(inter) and credit["credits"]["student"] == 0
    assert credit["wins"]["rerank"] == len(inter) and credit["ties"] == 0
    assert credit["delta"] == pytest.approx(0.5) and credit["ci"] == [0.5, 0.5]
