"""The service's parts that need no model: settings, metrics text format, API-key guard, rate limit."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from esdistill.plugin._errors import ConfigError
from esdistill.plugin._service_guards import ApiKeyGuard, TokenBucketLimiter
from esdistill.plugin.metrics import MAX_SERIES, Registry, ServiceMetrics
from esdistill.plugin.service_settings import ServiceSettings

KEY = "k3y-" + "a1b2c3d4" * 4


# ---------------------------------------------------------------------------------------- settings
def test_settings_merge_file_env_and_overrides_in_that_order(tmp_path):
    cfg = tmp_path / "svc.toml"
    cfg.write_text('index = "from-file"\nmodel = "m"\nport = 9001\nmax_k = 50\nrate_limit_per_s = 2.5\n')
    env = {"ESDISTILL_SERVE_PORT": "9002", "ESDISTILL_SERVE_METRICS_REQUIRE_KEY": "yes",
           "ESDISTILL_SERVE_API_KEYS": f"{KEY},{KEY}x"}
    s = ServiceSettings.load(file=cfg, env=env, overrides={"port": 9003, "index": None})
    assert (s.index, s.port, s.max_k, s.metrics_require_key) == ("from-file", 9003, 50, True)
    assert s.rate_limit_burst == 3  # ceil(2.5)
    assert len(s.key_digests) == 2 and s.auth_enabled


def test_settings_name_unknown_keys_and_bad_env_values(tmp_path):
    cfg = tmp_path / "svc.json"
    cfg.write_text(json.dumps({"index": "i", "model": "m", "prot": 1}))
    with pytest.raises(ConfigError, match="unknown service setting.*prot"):
        ServiceSettings.load(file=cfg, env={})
    with pytest.raises(ConfigError, match="ESDISTILL_SERVE_PORT='eighty'"):
        ServiceSettings.load(env={"ESDISTILL_SERVE_INDEX": "i", "ESDISTILL_SERVE_MODEL": "m",
                                  "ESDISTILL_SERVE_PORT": "eighty"})
    with pytest.raises(ConfigError, match="--index"):
        ServiceSettings.load(env={"ESDISTILL_SERVE_MODEL": "m"})


def test_api_keys_never_reach_repr_logs_or_public_dict(tmp_path, caplog):
    key_file = tmp_path / "keys"
    key_file.write_text(f"# service keys\n{KEY}\n\n")
    caplog.set_level(logging.DEBUG)
    s = ServiceSettings.load(env={"ESDISTILL_SERVE_INDEX": "i", "ESDISTILL_SERVE_MODEL": "m",
                                  "ESDISTILL_SERVE_API_KEY_FILE": str(key_file)})
    logging.getLogger("test").info("settings: %s / %r", s.public_dict(), s)
    assert s.key_digests == (hashlib.sha256(KEY.encode()).digest(),)
    for text in (repr(s), json.dumps(s.public_dict(), default=str), caplog.text):
        assert KEY not in text
    assert s.public_dict()["api_keys"] == "<1 configured>"
    key_file.write_text("tooshort\n")
    with pytest.raises(ConfigError) as exc:
        ServiceSettings(index="i", model="m", api_key_file=str(key_file))
    assert "tooshort" not in str(exc.value) and "shorter than 16" in str(exc.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        ServiceSettings(index="i", model="m", api_key_file=str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------- metrics
def test_metrics_render_valid_prometheus_text():
    from prometheus_client.parser import text_string_to_metric_families

    m = ServiceMetrics()
    m.requests.inc(route="/v1/search", method="POST", status="200")
    m.requests.inc(route="/v1/search", method="POST", status="200")
    m.requests.inc(route='/odd"path\\with\nnewline', method="GET", status="404")
    for v in (0.0005, 0.004, 0.2, 30.0):
        m.search_latency.observe(v, arm="student", mode="knn")
    m.rerank.inc(arm="student+rerank", outcome="partial")
    m.ready.set(1)
    families = {f.name: f for f in text_string_to_metric_families(m.render())}
    assert families["esdistill_http_requests"].type == "counter"
    samples = {tuple(sorted(s.labels.items())): s.value for s in families["esdistill_http_requests"].samples
               if s.name.endswith("_total")}
    assert samples[(("method", "POST"), ("route", "/v1/search"), ("status", "200"))] == 2.0
    assert samples[(("method", "GET"), ("route", '/odd"path\\with\nnewline'), ("status", "404"))] == 1.0
    hist = families["esdistill_search_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 1 and buckets["0.005"] == 2 and buckets["0.25"] == 3 and buckets["+Inf"] == 4
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    total = next(s.value for s in hist.samples if s.name.endswith("_sum"))
    assert count == 4 and total == pytest.approx(30.2045)
    assert families["esdistill_ready"].samples[0].value == 1.0


def test_metrics_cap_label_sets_and_reject_misuse():
    reg = Registry()
    c = reg.counter("x_total", "x", ("route",))
    for i in range(MAX_SERIES + 50):
        c.inc(route=f"/r{i}")
    assert c.value(route="other") == 50
    with pytest.raises(ValueError):
        c.inc(-1, route="/r1")
    with pytest.raises(ValueError):
        c.inc(path="/r1")
    with pytest.raises(ValueError):
        reg.counter("x_total", "again")
    with pytest.raises(ValueError):
        reg.histogram("h", "h", ("le",))


def test_service_metrics_have_a_hard_bound_on_series():
    m = ServiceMetrics()
    bound = m.max_series
    assert 0 < bound < 1000
    for i in range(5000):  # what a client could make of labels if they were not closed sets
        m.requests.inc(route=f"/r{i}", method=f"M{i}", status=str(i))
        m.request_latency.observe(0.01, route=f"/r{i}")
        m.es_unavailable.inc(route=f"/r{i}")
    from prometheus_client.parser import text_string_to_metric_families

    text = m.render()
    # histograms expose one series per label set and bucket: count label sets, not lines
    label_sets = {(family.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le")))
                  for family in text_string_to_metric_families(text) for sample in family.samples}
    assert len(label_sets) <= bound, (len(label_sets), bound)
    assert m.requests.value(route="other", method="other", status="other") == 5000 - m.requests.max_series
    assert len(text) < 200_000
    with pytest.raises(ValueError, match="max_series"):
        Registry().counter("y_total", "y", ("a",), max_series=0)


def test_transport_retries_log_one_line_unless_debug(caplog):
    """A retry used to log the whole traceback at WARNING; it is one line, with the traceback at DEBUG."""
    from elasticsearch import ConnectionError as EsConnectionError
    from esdistill.plugin import connect
    from esdt_helpers import free_port

    client = connect(f"http://127.0.0.1:{free_port()}", check=False, max_retries=2, retry_on_timeout=False)
    transport_logger = logging.getLogger("elastic_transport.transport")
    saved = transport_logger.level
    try:
        transport_logger.setLevel(logging.WARNING)
        caplog.set_level(logging.WARNING, logger="elastic_transport")
        with pytest.raises(EsConnectionError):
            client.options(request_timeout=1).indices.exists(index="x")
        retries = [r for r in caplog.records if "Retrying request" in r.getMessage()]
        assert len(retries) == 2
        assert all(r.exc_info is None and "ConnectionError" in r.getMessage() for r in retries)
        assert "Traceback" not in caplog.text
        caplog.clear()
        transport_logger.setLevel(logging.DEBUG)  # -vv: the traceback is kept
        with pytest.raises(EsConnectionError):
            client.options(request_timeout=1).indices.exists(index="x")
        retries = [r for r in caplog.records if "Retrying request" in r.getMessage()]
        assert retries and all(r.exc_info is not None for r in retries)
    finally:
        transport_logger.setLevel(saved)
        client.close()


# ---------------------------------------------------------------------------------------- guards
def test_api_key_guard_answers_401_403_200():
    g = ApiKeyGuard((hashlib.sha256(KEY.encode()).digest(), hashlib.sha256(b"other-key-0123456789").digest()))
    assert g.check(None) == 401 and g.check(b"") == 401
    assert g.check(KEY.encode()) == 200 and g.check(b"other-key-0123456789") == 200
    assert g.check(KEY[:-1].encode()) == 403 and g.check(KEY.encode() + b" ") == 403
    assert ApiKeyGuard(()).check(None) == 200  # auth off


def test_api_key_comparison_is_constant_time(monkeypatch):
    """Every configured digest is compared with hmac.compare_digest on equal-length digests, whichever key
    (if any) matches, so neither the key's length nor the matching position changes the work done."""
    import esdistill.plugin._service_guards as guards

    keys = [f"key-number-{i}-0123456789abcdef".encode() for i in range(3)]
    g = ApiKeyGuard(tuple(hashlib.sha256(k).digest() for k in keys))
    calls: list[tuple[int, int]] = []
    real = guards.hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(guards.hmac, "compare_digest", counting)
    for presented in (keys[0], keys[2], b"x", b"y" * 5000):
        calls.clear()
        g.check(presented)
        assert calls == [(32, 32)] * 3, presented[:10]


def test_token_bucket_allows_bursts_then_the_rate():
    now = [100.0]
    lim = TokenBucketLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [lim.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = lim.acquire("a")
    assert wait == pytest.approx(0.5)
    assert lim.acquire("b") == 0.0  # buckets are per client
    now[0] += 0.5
    assert lim.acquire("a") == 0.0 and lim.acquire("a") > 0
    now[0] += 10.0  # refills to the burst, not beyond
    assert [lim.acquire("a") == 0.0 for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        TokenBucketLimiter(rate=0, burst=1)


def test_runtime_and_cli_never_import_the_web_framework(tmp_path):
    """Only the web app imports FastAPI: every plugin module imports without it but ``service`` (which
    imports it inside create_app) and the modules only create_app imports, which need the serve extra
    at import (the routes and their pydantic models); without the extra `esdistill serve` says so."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"fastapi", "starlette", "uvicorn"}:
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        import pkgutil, importlib
        import esdistill.plugin
        web_app = {"service", "_service_routes", "_service_schemas"}
        for m in pkgutil.iter_modules(esdistill.plugin.__path__):
            if m.name not in web_app:
                importlib.import_module("esdistill.plugin." + m.name)
        from esdistill.plugin.cli import main
        rc = main(["serve", "--index", "docs", "--model", sys.argv[1]])
        print("rc", rc)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "rc 2"
    assert "pip install 'esdistill[serve]'" in proc.stderr
