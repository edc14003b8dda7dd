"""A/B assignment, the exposure log, team-draft interleaving and click attribution (pure Python)."""

from __future__ import annotations

import json
import math
import random

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.ab import (
    ABTest,
    Arm,
    ClickCredit,
    ExposureLog,
    Interleaving,
    attribute_clicks,
    bucket,
    read_exposures,
    sign_test,
    summarize_interleaving,
    team_draft_interleave,
)


# ------------------------------------------------------------------------------------- assignment
def test_100k_keys_split_90_10_within_one_percent():
    ab = ABTest.from_shares({"student": 0.9, "student+rerank": 0.1}, salt="exp-2024")
    counts = {"student": 0, "student+rerank": 0}
    for i in range(100_000):
        counts[ab.assign(f"user-{i}").name] += 1
    assert abs(counts["student"] / 100_000 - 0.9) <= 0.01
    assert abs(counts["student+rerank"] / 100_000 - 0.1) <= 0.01
    assert ab.arm("student+rerank").rerank and not ab.arm("student").rerank


def test_three_way_split_within_one_percent():
    ab = ABTest.from_shares({"a": 0.5, "b": 0.3, "c": 0.2}, salt="s")
    counts = {"a": 0, "b": 0, "c": 0}
    for i in range(60_000):
        counts[ab.assign(str(i)).name] += 1
    for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(counts[name] / 60_000 - share) <= 0.01


def test_same_key_same_arm_and_new_salt_reshuffles():
    a1 = ABTest.from_shares({"x": 0.5, "y": 0.5}, salt="one")
    a1_again = ABTest.from_shares({"x": 0.5, "y": 0.5}, salt="one")
    a2 = ABTest.from_shares({"x": 0.5, "y": 0.5}, salt="two")
    keys = [f"session-{i}" for i in range(2000)]
    first = [a1.assign(k).name for k in keys]
    assert first == [a1.assign(k).name for k in keys] == [a1_again.assign(k).name for k in keys]
    moved = sum(a != b for a, b in zip(first, (a2.assign(k).name for k in keys)))
    # independent 50/50 splits disagree on about half the keys
    assert 800 < moved < 1200


def test_bucket_is_uniform_and_salt_dependent():
    values = [bucket(str(i), "s") for i in range(20_000)]
    assert 0.0 <= min(values) and max(values) < 1.0
    assert abs(sum(values) / len(values) - 0.5) < 0.01
    assert bucket("k", "s1") != bucket("k", "s2")


def test_override_and_resolve():
    ab = ABTest.from_shares({"student": 0.9, "student+rerank": 0.1}, salt="s")
    assert ab.resolve("anyone", override="student+rerank").name == "student+rerank"
    assert ab.resolve(None) is None
    assert ab.resolve("k").name == ab.assign("k").name
    with pytest.raises(ConfigError, match="unknown arm 'nope'"):
        ab.resolve("k", override="nope")


def test_zero_share_arm_is_never_assigned():
    ab = ABTest((Arm("off", 0.0), Arm("on", 1.0)), salt="s")
    assert {ab.assign(str(i)).name for i in range(500)} == {"on"}


@pytest.mark.parametrize(
    "shares, match",
    [
        ({"a": 0.9, "b": 0.2}, "sum to 1.1"),
        ({}, "at least one arm"),
        ({"a": 1.5, "b": -0.5}, "shares must lie in"),
    ],
)
def test_bad_shares_are_refused(shares, match):
    with pytest.raises(ConfigError, match=match):
        ABTest.from_shares(shares, salt="s")


def test_interleave_arm_and_unknown_rerank_arm():
    ab = ABTest.from_shares({"student": 0.5, "interleaved": 0.5}, salt="s")
    assert ab.arm("interleaved").interleave and not ab.arm("interleaved").rerank
    with pytest.raises(ConfigError, match="not among the shares"):
        ABTest.from_shares({"a": 1.0}, salt="s", rerank=["b"])
    with pytest.raises(ConfigError, match="non-empty string"):
        ab.assign("")


# ---------------------------------------------------------------------------------- exposure log
def test_exposure_log_writes_hashed_keys_as_jsonl(tmp_path, caplog):
    path = tmp_path / "logs" / "exposure.jsonl"
    with caplog.at_level("INFO", logger="esdistill.exposure"), ExposureLog(path, key_secret="pepper") as log:
        log.record(query_id="q1", key="alice@example.org", arm="student", shown=["d1", "d2"], mode="knn")
        log.record(query_id="q2", key="alice@example.org", arm="interleaved", shown=["d3"], teams=["B"])
        log.record(query_id="q3", key=None, arm=None, shown=[])
    recs = read_exposures(path)
    assert [r["query_id"] for r in recs] == ["q1", "q2", "q3"]
    assert recs[0]["key"] == recs[1]["key"] != "alice@example.org"
    assert "alice" not in path.read_text()
    assert recs[0]["shown"] == ["d1", "d2"] and recs[0]["mode"] == "knn" and recs[0]["arm"] == "student"
    assert recs[1]["teams"] == ["B"] and "teams" not in recs[0]
    assert recs[2]["key"] is None
    assert sum("q1" in m for m in caplog.messages) == 1
    raw = ExposureLog(None, hash_keys=False, to_logger=False)
    assert raw.record(query_id="q", key="bob", arm="a", shown=[])["key"] == "bob"


def test_read_exposures_skips_a_torn_line(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"query_id": "a", "shown": []}) + "\n{\"query_id\": \"b\", \"sho")
    assert [r["query_id"] for r in read_exposures(path)] == ["a"]


# ---------------------------------------------------------------------------------- interleaving
def _check_team_draft_invariants(a, b, il: Interleaving):
    assert len(set(il.ids)) == len(il.ids), "no duplicates"
    count_a = count_b = 0
    for i, (doc, team) in enumerate(zip(il.ids, il.teams)):
        shown_before = set(il.ids[:i])
        own = a if team == "A" else b
        # a team always contributes its best document not shown yet
        assert doc == next(d for d in own if d not in shown_before)
        count_a += team == "A"
        count_b += team == "B"
        # team sizes never differ by more than one while both teams still have documents
        if any(d not in il.ids[: i + 1] for d in a) and any(d not in il.ids[: i + 1] for d in b):
            assert abs(count_a - count_b) <= 1


def test_team_draft_invariants_on_random_rankings():
    rng = random.Random(7)
    pool = [f"d{i}" for i in range(30)]
    for trial in range(300):
        a = rng.sample(pool, rng.randint(0, 15))
        b = rng.sample(pool, rng.randint(0, 15))
        il = team_draft_interleave(a, b, seed=f"q{trial}", k=rng.randint(0, 20))
        _check_team_draft_invariants(a, b, il)
        assert set(il.ids) <= set(a) | set(b)


def test_interleaving_is_deterministic_per_seed_and_varies_across_seeds():
    a = [f"a{i}" for i in range(10)]
    b = [f"b{i}" for i in range(10)]
    one = team_draft_interleave(a, b, seed="query-17", k=10)
    assert one == team_draft_interleave(a, b, seed="query-17", k=10)
    firsts = {team_draft_interleave(a, b, seed=f"q{i}", k=10).teams[0] for i in range(50)}
    assert firsts == {"A", "B"}  # the coin flip decides who picks first
    assert one.teams.count("A") == one.teams.count("B") == 5


def test_identical_rankings_interleave_to_the_same_ranking():
    r = ["x", "y", "z", "w"]
    il = team_draft_interleave(r, r, seed=3)
    assert list(il.ids) == r


def test_one_ranking_exhausted_the_other_fills():
    il = team_draft_interleave(["a"], ["b", "c", "d"], seed=1, k=4)
    assert sorted(il.ids) == ["a", "b", "c", "d"]
    assert il.team_of("a") == "A" and il.team_of("d") == "B" and il.team_of("zz") is None


def test_click_attribution_credits_the_contributing_team():
    il = Interleaving(("d1", "d2", "d3", "d4"), ("B", "A", "A", "B"))
    c = attribute_clicks(il, ["d2", "d3"])
    assert c.credits == {"A": 2, "B": 0} and c.winner == "A" and c.ignored == 0
    c = attribute_clicks(il, ["d1", "d2"])
    assert c.credits == {"A": 1, "B": 1} and c.winner is None and c.clicked
    c = attribute_clicks(il, ["d4", "d4", "d4", "nope"])
    assert c.credits == {"A": 0, "B": 1} and c.winner == "B" and c.ignored == 1
    c = attribute_clicks(il, [])
    assert c.winner is None and not c.clicked


def test_attribution_from_an_exposure_record(tmp_path):
    a, b = ["s1", "s2", "s3"], ["t1", "s1", "t2"]
    il = team_draft_interleave(a, b, seed="qid-9", k=4, names=("student", "rerank"))
    log = ExposureLog(tmp_path / "x.jsonl", to_logger=False)
    log.record(query_id="qid-9", key="u", arm="interleaved", shown=il.ids, teams=il.teams, names=il.names)
    log.close()
    back = Interleaving.from_exposure(read_exposures(tmp_path / "x.jsonl")[0])
    assert back == il
    clicked = [d for d, t in zip(il.ids, il.teams) if t == "rerank"]
    assert attribute_clicks(back, clicked).winner == "rerank"
    with pytest.raises(ConfigError, match="not interleaved"):
        Interleaving.from_exposure({"query_id": "x", "shown": []})


def test_simulated_users_who_prefer_b_make_b_win():
    """Users click only truly relevant documents; ranking B puts them higher, so B must win."""
    rng = random.Random(11)
    credits = []
    for q in range(200):
        relevant = [f"r{q}-{i}" for i in range(3)]
        junk = [f"j{q}-{i}" for i in range(10)]
        a = junk[:5] + relevant + junk[5:]  # A buries the relevant documents
        b = relevant[:2] + junk[:3] + relevant[2:] + junk[3:]
        il = team_draft_interleave(a, b, seed=f"q{q}", k=5)
        clicks = [d for d in il.ids if d in relevant and rng.random() < 0.8]
        credits.append(attribute_clicks(il, clicks))
    s = summarize_interleaving(credits)
    assert s.wins["B"] > s.wins["A"]
    assert s.win_rate > 0.8 and s.delta > 0.2
    assert s.p_value < 1e-6 and s.preferred() == "B"
    assert s.queries == 200 and s.clicked + sum(not c.clicked for c in credits) == 200


def test_summary_counts_ties_and_no_click_queries():
    cs = [ClickCredit({"A": 1, "B": 0}, "A"), ClickCredit({"A": 1, "B": 1}, None), ClickCredit({"A": 0, "B": 0}, None)]
    s = summarize_interleaving(cs)
    assert (s.queries, s.clicked, s.ties, s.wins) == (3, 2, 1, {"A": 1, "B": 0})
    assert s.win_rate == 0.0 and s.delta == pytest.approx((0 + 0.5) / 2 - 0.5)
    assert s.preferred() is None  # one decided query is not significant
    assert json.loads(json.dumps(s.to_dict()))["wins"] == {"A": 1, "B": 0}


def test_sign_test_values():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 5) == 1.0
    assert sign_test(9, 1) == pytest.approx(22 / 1024)
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(1, 9) == sign_test(9, 1)
    # the exact tail agrees with big-integer arithmetic
    n, low = 1000, 470
    exact_int = 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    assert sign_test(n - low, low) == pytest.approx(exact_int, rel=1e-9)
    # the exact test (n <= 100,000) and the normal approximation (beyond) agree at the switch
    exact, approx = sign_test(50_400, 49_600), sign_test(50_401, 49_600)
    assert 0.01 < exact < 0.02
    assert approx == pytest.approx(exact, rel=0.05)
    with pytest.raises(ConfigError):
        sign_test(-1, 2)
