"""esdistill against a real Elasticsearch node with x-pack security on: HTTPS with a CA of the node's
own and a password for the ``elastic`` user (``LocalElasticsearch(security=True)``, the same code as
``esdistill es start --secure``).

- esdistill connects with the CA file and the credentials from the environment, ingests and
  searches (library and CLI);
- a wrong password, a wrong API key, a missing CA and plain HTTP fail with a clear
  :class:`ElasticsearchUnavailable` (exit code 4 in the CLI) that never contains the secret;
- the secrets appear in no log: Python logging captured at DEBUG (the HTTP client's included), the
  CLI's stderr at ``-vv``, and the node's own log files.

The integ-test distribution has no ``analysis-common`` module, which the ``.security`` index needs
for its mapping, so this node cannot store API keys or native users: the password is the keystore's
``bootstrap.password`` of the reserved ``elastic`` user, and API keys are checked only as refused.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from esdistill.plugin import ConfigError, ElasticsearchUnavailable, connect
from esdistill.plugin.index import IndexManager
from esdistill.plugin.ingest import IngestHook
from esdistill.plugin.query import QueryHook
from esdt_helpers import TINY_COLLECTION, free_port
from esdt_onnx import make_encoder, model_folder

CORPUS = TINY_COLLECTION / "corpus.jsonl"
DOCS = [json.loads(line) for line in CORPUS.read_text().splitlines()]
_ENV = ("ESDISTILL_ES_URL", "ESDISTILL_ES_USER", "ESDISTILL_ES_PASSWORD", "ESDISTILL_ES_PASSWORD_FILE",
        "ESDISTILL_ES_CA_CERTS", "ESDISTILL_ES_API_KEY")


@pytest.fixture(scope="module")
def secure_node():
    """One node with TLS and a password for this module (its password is generated)."""
    from esdistill.deploy import LocalElasticsearch

    saved = os.environ.pop("ESDISTILL_ES_PASSWORD", None)  # the node must generate its own
    node = LocalElasticsearch(port=free_port(), heap="512m", security=True)
    try:
        node.start(timeout=300)
    finally:
        if saved is not None:
            os.environ["ESDISTILL_ES_PASSWORD"] = saved
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.data, ignore_errors=True)


@pytest.fixture(scope="module")
def password(secure_node) -> str:
    return secure_node.password_file.read_text().strip()


@pytest.fixture(scope="module")
def encoder(tiny_bi_encoder, tmp_path_factory):
    return make_encoder(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "esdt-onnx", "a")


@pytest.fixture
def env(monkeypatch, secure_node, password):
    """The environment a user of the secure node sets (what ``es start --secure`` prints)."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ESDISTILL_ES_URL", secure_node.url)
    monkeypatch.setenv("ESDISTILL_ES_USER", "elastic")
    monkeypatch.setenv("ESDISTILL_ES_PASSWORD_FILE", str(secure_node.password_file))
    monkeypatch.setenv("ESDISTILL_ES_CA_CERTS", str(secure_node.ca_cert))
    monkeypatch.setenv("XDG_STATE_HOME", str(secure_node.data / "state"))
    return monkeypatch


@pytest.fixture
def secure_index(env, encoder, request):
    """An index on the secure node, filled with the tiny collection through the real hooks."""
    client = connect()
    alias = "esdt-sec-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:30].strip("-")
    IndexManager(client, alias).create(encoder.manifest)
    summary = IngestHook(client, alias, encoder, progress=False).ingest(DOCS)
    assert summary.indexed == len(DOCS)
    yield client, alias
    for index in client.indices.get(index=f"{alias}*", allow_no_indices=True, expand_wildcards="all"):
        client.indices.delete(index=index)
    client.close()


def _secrets(password: str) -> list[str]:
    """The password and the forms it could leak in (the Basic header value)."""
    return [password, base64.b64encode(f"elastic:{password}".encode()).decode()]


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", *args], capture_output=True, text=True,
                          env=env if env is not None else dict(os.environ), timeout=300, check=False)


# ---------------------------------------------------------------------------------- the node itself
def test_the_secure_node_speaks_only_https_with_a_password(secure_node, password):
    assert secure_node.url.startswith("https://127.0.0.1:")
    st = secure_node.status()
    assert st.running and st.secure and st.health == "green"
    mode = secure_node.password_file.stat()
    assert mode.st_mode & 0o777 == 0o600 and mode.st_uid == os.getuid()
    assert len(password) >= 16
    assert Path(st.ca_cert).is_file() and "BEGIN CERTIFICATE" in Path(st.ca_cert).read_text()
    assert password not in json.dumps(st.to_dict())


def test_es_start_secure_prints_where_the_secrets_are_never_the_secrets(secure_node, password):
    # on a running node `es start` is a no-op that prints how to connect
    common = ["--port", str(secure_node.port), "--data", str(secure_node.data), "--secure"]
    started = _cli(["es", "start", *common])
    assert started.returncode == 0, started.stderr
    assert f"ESDISTILL_ES_URL={secure_node.url}" in started.stdout
    assert f"ESDISTILL_ES_PASSWORD_FILE={secure_node.password_file}" in started.stdout
    assert f"ESDISTILL_ES_CA_CERTS={secure_node.ca_cert}" in started.stdout
    status = _cli(["es", "status", "--json", *common])
    assert status.returncode == 0 and json.loads(status.stdout)["health"] == "green"
    for out in (started, status):
        for secret in _secrets(password):
            assert secret not in out.stdout + out.stderr


# ---------------------------------------------------------------------------- connecting for real
def test_connects_with_ca_and_password_from_the_environment_ingests_and_searches(secure_index, encoder):
    client, alias = secure_index
    assert connect().cluster.health()["status"] == "green"  # everything from the environment
    hits = QueryHook(client, alias, encoder).search("bacteria antibiotics", k=5, mode="hybrid").hits
    assert len(hits) == 5 and all(h.index.startswith(alias) for h in hits)
    assert int(client.count(index=alias)["count"]) == len(DOCS)


def test_cli_ingests_and_searches_over_tls_with_a_password_file(env, secure_node, password, encoder, tmp_path):
    alias = "esdt-sec-cli"
    try:
        ingest = _cli(["-vv", "ingest", str(CORPUS), "--index", alias, "--model", str(model_folder(encoder)),
                       "--json", "--no-progress"])
        assert ingest.returncode == 0, ingest.stderr[-2000:]
        assert json.loads(ingest.stdout.splitlines()[-1])["indexed"] == len(DOCS)
        search = _cli(["-vv", "search", "bacteria antibiotics", "--index", alias, "--model",
                       str(model_folder(encoder)), "--mode", "hybrid", "--k", "3", "--json"])
        assert search.returncode == 0, search.stderr[-2000:]
        assert len(json.loads(search.stdout.splitlines()[-1])["hits"]) == 3
        # -vv logs every HTTP request of the client, and still no secret
        assert "https://127.0.0.1" in ingest.stderr and "DEBUG" in ingest.stderr
        for out in (ingest, search):
            for secret in _secrets(password):
                assert secret not in out.stdout + out.stderr
    finally:
        client = connect()
        for index in client.indices.get(index=f"{alias}*", allow_no_indices=True, expand_wildcards="all"):
            client.indices.delete(index=index)
        client.close()


# -------------------------------------------------------------------------------- refusing clearly
def test_wrong_password_fails_clearly_and_never_shows_it(env, secure_node, encoder):
    wrong = "not-the-password-" + "x" * 12
    with pytest.raises(ElasticsearchUnavailable, match=r"rejected the credentials \(401\)") as err:
        connect(basic_auth=("elastic", wrong))
    assert wrong not in str(err.value)
    env.delenv("ESDISTILL_ES_PASSWORD_FILE")
    env.setenv("ESDISTILL_ES_PASSWORD", wrong)
    out = _cli(["search", "anything", "--index", "esdt-sec-none", "--model", str(model_folder(encoder))])
    assert out.returncode == 4, out.stderr
    assert "rejected the credentials" in out.stderr and "ESDISTILL_ES_PASSWORD" in out.stderr
    assert wrong not in out.stdout + out.stderr


def test_wrong_api_key_fails_clearly_and_never_shows_it(env, encoder):
    key = base64.b64encode(b"made-up-id:made-up-secret-0123456789").decode()
    for name in ("ESDISTILL_ES_USER", "ESDISTILL_ES_PASSWORD_FILE"):
        env.delenv(name)
    env.setenv("ESDISTILL_ES_API_KEY", key)
    with pytest.raises(ElasticsearchUnavailable, match="rejected the credentials.*ESDISTILL_ES_API_KEY") as err:
        connect()
    assert key not in str(err.value)
    out = _cli(["-vv", "eval", "--collection", str(TINY_COLLECTION), "--index", "esdt-sec-none", "--model",
                str(model_folder(encoder))])
    assert out.returncode == 4 and "rejected the credentials" in out.stderr
    assert key not in out.stdout + out.stderr and "made-up-secret" not in out.stderr


def test_untrusted_certificate_fails_clearly(env, secure_node, password, encoder, tmp_path):
    env.delenv("ESDISTILL_ES_CA_CERTS")
    with pytest.raises(ElasticsearchUnavailable, match="not trusted.*ESDISTILL_ES_CA_CERTS"):
        connect(max_retries=0)
    # a CA that did not sign the node's certificate is no better than none
    other = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    assert other.is_file()
    with pytest.raises(ElasticsearchUnavailable, match="not trusted"):
        connect(ca_certs=str(other), max_retries=0)
    out = _cli(["search", "anything", "--index", "esdt-sec-none", "--model", str(model_folder(encoder))])
    assert out.returncode == 4, out.stderr
    assert "not trusted" in out.stderr and "ESDISTILL_ES_CA_CERTS" in out.stderr
    assert password not in out.stdout + out.stderr


def test_plain_http_to_the_https_port_fails_clearly(env, secure_node, encoder):
    http_url = secure_node.url.replace("https://", "http://")
    env.setenv("ESDISTILL_ES_URL", http_url)
    # with a CA file, an http:// URL is a contradiction, said before any connection
    with pytest.raises(ConfigError, match="not https://"):
        connect()
    out = _cli(["search", "anything", "--index", "esdt-sec-none", "--model", str(model_folder(encoder))])
    assert out.returncode == 2 and "ESDISTILL_ES_CA_CERTS" in out.stderr and "Traceback" not in out.stderr
    # without one, the node refuses plain HTTP and the message says what to try
    env.delenv("ESDISTILL_ES_CA_CERTS")
    with pytest.raises(ElasticsearchUnavailable, match="must start with https://"):
        connect(max_retries=0)
    out = _cli(["search", "anything", "--index", "esdt-sec-none", "--model", str(model_folder(encoder))])
    assert out.returncode == 4 and "https://" in out.stderr


# ------------------------------------------------------------------------------------------- logs
def test_no_secret_in_debug_logs_even_with_the_password_in_the_url(env, secure_node, password, encoder, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the HTTP client's included
    for name in ("elastic_transport", "urllib3", "elasticsearch"):
        caplog.set_level(logging.DEBUG, logger=name)
    # the password in the URL instead of the environment
    env.delenv("ESDISTILL_ES_USER")
    env.delenv("ESDISTILL_ES_PASSWORD_FILE")
    url = secure_node.url.replace("https://", f"https://elastic:{password}@")
    client = connect(url)
    alias = "esdt-sec-logs"
    try:
        IndexManager(client, alias).create(encoder.manifest)
        IngestHook(client, alias, encoder, progress=False).ingest(DOCS[:6])
        assert QueryHook(client, alias, encoder).search("energy", k=3).hits
        # and the failures, whose messages are logged and printed
        with pytest.raises(ElasticsearchUnavailable) as err:
            connect(url.replace(password, password[::-1]))
        assert "elastic:***@" in str(err.value)
        logging.getLogger("esdt").error("%s", err.value)
    finally:
        for index in client.indices.get(index=f"{alias}*", allow_no_indices=True, expand_wildcards="all"):
            client.indices.delete(index=index)
        client.close()
    assert any(r.name.startswith("elastic_transport") for r in caplog.records)  # the client did log
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for secret in [*_secrets(password), password[::-1]]:
        assert secret not in text


def test_the_node_never_logs_its_password(secure_node, password):
    logs = [p for p in (secure_node.data / "logs").rglob("*") if p.is_file()]
    assert logs
    for path in logs:
        assert password not in path.read_text(errors="replace"), path


# ------------------------------------------------------------------------------ least privilege
# The service runs with the role of deploy/security/esdistill-service-role.json (deploy/README.md,
# "Least-privilege role"). This node cannot store native roles or users (no .security index, see the
# module docstring), so the very same role body goes into the file realm: roles.yml, and a user made
# by the distribution's elasticsearch-users tool. Elasticsearch then enforces it like a native role.
ROOT = Path(__file__).resolve().parents[1]
ROLE_FILE = ROOT / "deploy" / "security" / "esdistill-service-role.json"
COMPOSE_ALIAS = "esdistill-docs"
ROLE_ALIAS = "esdt-role-docs"
SERVICE_USER = "esdistill_svc"


def _role_body(alias: str) -> dict:
    """The role of the deploy folder, with the compose file's alias replaced by ``alias``."""
    return json.loads(ROLE_FILE.read_text().replace(COMPOSE_ALIAS, alias))


def _readme_role() -> dict:
    text = (ROOT / "deploy" / "README.md").read_text()
    section = text.split("## Least-privilege role", 1)[1].split("\n## ", 1)[0]
    block = section.split("```json", 1)[1].split("```", 1)[0]
    return json.loads(block)


def test_the_documented_role_is_the_deploy_file_and_names_only_the_alias():
    role = json.loads(ROLE_FILE.read_text())
    assert _readme_role() == role, "deploy/README.md shows another role than deploy/security/"
    assert role["cluster"] == []
    (grant,) = role["indices"]
    assert grant.get("allow_restricted_indices", False) is False
    assert set(grant["privileges"]) == {"read", "view_index_metadata", "index", "maintenance"}
    plain = [n for n in grant["names"] if not n.startswith("/")]
    patterns = [n.strip("/") for n in grant["names"] if n.startswith("/")]
    assert plain == [COMPOSE_ALIAS] and len(patterns) == 1
    assert not any(c in n for n in plain for c in "*?")  # no wildcard: nothing but the alias itself
    versions = re.compile(patterns[0])
    assert versions.fullmatch(f"{COMPOSE_ALIAS}-000001") and versions.fullmatch(f"{COMPOSE_ALIAS}-123456")
    for other in (f"{COMPOSE_ALIAS}-secret", f"{COMPOSE_ALIAS}-000001-x", "esdistill-docsx-000001", ".security"):
        assert not versions.fullmatch(other), other


def test_compose_creates_the_role_and_runs_the_service_without_the_superuser():
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    svc = compose["services"]["esdistill"]
    env = svc["environment"]
    assert env["ESDISTILL_ES_USER"] not in ("elastic", "", None)
    assert "ELASTIC_PASSWORD" not in env["ESDISTILL_ES_PASSWORD"]
    assert env["ESDISTILL_SERVE_INDEX"] == COMPOSE_ALIAS
    setup = compose["services"]["security"]
    assert svc["depends_on"]["security"]["condition"] == "service_completed_successfully"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in setup["volumes"]}
    assert (ROOT / "deploy" / mounts["/security"]).resolve() == ROLE_FILE.parent
    command = " ".join(setup["command"])
    assert f"--data-binary @/security/{ROLE_FILE.name}" in command
    assert "/_security/role/esdistill_service" in command
    assert f"/_security/user/{env['ESDISTILL_ES_USER']}" in command
    # the user's body is built by printf from the password variable: run that part for real
    printf = command.split("&& ", 1)[1].split(" | ", 1)[0].replace("$$", "$")
    password = "a-pass-0123456789_-"
    out = subprocess.run(["sh", "-c", printf], capture_output=True, text=True, check=True,
                         env={"ESDISTILL_ES_SERVICE_PASSWORD": password, "PATH": os.environ["PATH"]})
    assert json.loads(out.stdout) == {"password": password, "roles": ["esdistill_service"]}
    var = re.search(r"\$\{(\w+):\?", env["ESDISTILL_ES_PASSWORD"]).group(1)
    assert var == "ESDISTILL_ES_SERVICE_PASSWORD" and var in " ".join(setup["environment"].values())


@pytest.fixture(scope="module")
def service_account(secure_node, password, encoder):
    """The role in the node's file realm, a user that has only it, and the alias it covers, filled."""
    import time

    from esdistill.deploy import find_java

    conf = secure_node.data / "config"
    (conf / "roles.yml").write_text(f"esdistill_service: {json.dumps(_role_body(ROLE_ALIAS))}\n")
    user_password = "svc-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
    secure_node._tool("elasticsearch-users", ["useradd", SERVICE_USER, "-r", "esdistill_service"], find_java(),
                      conf, stdin=f"{user_password}\n{user_password}\n")
    admin = connect(secure_node.url, basic_auth=("elastic", password), ca_certs=str(secure_node.ca_cert))
    IndexManager(admin, ROLE_ALIAS).create(encoder.manifest)
    assert IngestHook(admin, ROLE_ALIAS, encoder, progress=False).ingest(DOCS).indexed == len(DOCS)
    outside = [f"{ROLE_ALIAS}-secret", "esdt-role-other"]  # the first one matches "ALIAS-*"
    for name in outside:
        admin.index(index=name, id="1", document={"ids": [DOCS[0]["_id"]], "text": DOCS[0]["text"]}, refresh=True)
    svc = connect(secure_node.url, basic_auth=(SERVICE_USER, user_password), ca_certs=str(secure_node.ca_cert),
                  check=False, max_retries=0)
    deadline = time.monotonic() + 60  # the file realm is reloaded every few seconds
    while True:
        try:
            assert svc.security.authenticate()["roles"] == ["esdistill_service"]
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    yield {"user": SERVICE_USER, "password": user_password, "client": svc, "admin": admin, "outside": outside}
    for index in admin.indices.get(index=f"{ROLE_ALIAS}*,esdt-role-other", allow_no_indices=True,
                                   expand_wildcards="all"):
        admin.indices.delete(index=index)
    svc.close()
    admin.close()


def test_the_service_works_with_the_least_privilege_role(service_account, secure_node, encoder, monkeypatch):
    pytest.importorskip("fastapi")
    from esdistill.plugin.service import create_app
    from esdistill.plugin.service_settings import ServiceSettings
    from fastapi.testclient import TestClient

    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ESDISTILL_ES_USER", service_account["user"])
    monkeypatch.setenv("ESDISTILL_ES_PASSWORD", service_account["password"])
    monkeypatch.setenv("ESDISTILL_ES_CA_CERTS", str(secure_node.ca_cert))
    app = create_app(ServiceSettings(index=ROLE_ALIAS, model=str(model_folder(encoder)), es_url=secure_node.url))
    with TestClient(app) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"elasticsearch": True, "index": True,
                                                                        "model": True}, ready.text
        for mode in ("knn", "hybrid", "bm25"):
            resp = c.post("/v1/search", json={"query": "bacteria antibiotics", "k": 5, "mode": mode})
            assert resp.status_code == 200 and resp.json()["hits"], (mode, resp.text[:300])
        ingest = c.post("/v1/ingest", json={"documents": [{"_id": "role-new", "title": "t", "text": "fresh words"}]})
        assert ingest.status_code == 200 and ingest.json()["indexed"] == 1, ingest.text[:300]
        info = c.get(f"/v1/index/{ROLE_ALIAS}")
        assert info.status_code == 200 and info.json()["versions"][0]["docs"] == len(DOCS) + 1, info.text[:300]
        assert "esdistill_ready 1.0" in c.get("/metrics").text


def test_the_role_refuses_everything_beyond_the_alias(service_account):
    from elasticsearch import AuthorizationException

    svc = service_account["client"]
    physical = IndexManager(service_account["admin"], ROLE_ALIAS).current()
    refused = {
        "search another index": lambda name: svc.search(index=name),
        "get a document of another index": lambda name: svc.get(index=name, id="1"),
        "terms lookup into another index": lambda name: svc.search(index=ROLE_ALIAS, query={
            "terms": {"_id": {"index": name, "id": "1", "path": "ids"}}}),
    }
    for what, call in refused.items():
        for name in service_account["outside"]:
            with pytest.raises(AuthorizationException):
                call(name)
                pytest.fail(f"{what} ({name}) was allowed")
    for what, call in {
        "delete an index": lambda: svc.indices.delete(index=physical),
        "create an index": lambda: svc.indices.create(index=f"{ROLE_ALIAS}-999999"),
        "re-point the alias": lambda: svc.indices.update_aliases(actions=[
            {"add": {"index": service_account["outside"][0], "alias": ROLE_ALIAS}}]),
        "cluster health": lambda: svc.cluster.health(),
    }.items():
        with pytest.raises(AuthorizationException):
            call()
            pytest.fail(f"{what} was allowed")
    # more_like_this does not fail: Elasticsearch leaves out the document it may not read, so the
    # query that finds the alias's twin of that document as the superuser finds nothing here
    for name in service_account["outside"]:
        mlt = {"more_like_this": {"fields": ["text"], "like": [{"_index": name, "_id": "1"}],
                                  "min_term_freq": 1, "min_doc_freq": 1}}
        as_admin = service_account["admin"].search(index=ROLE_ALIAS, query=mlt)["hits"]["hits"]
        assert DOCS[0]["_id"] in [h["_id"] for h in as_admin]
        assert svc.search(index=ROLE_ALIAS, query=mlt)["hits"]["hits"] == []
    # the wildcard a client might try resolves to the alias's versions only
    assert set(svc.indices.get(index=f"{ROLE_ALIAS}-*")) == {physical}
