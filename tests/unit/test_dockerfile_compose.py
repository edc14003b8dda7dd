"""The Dockerfile, .dockerignore and compose.yaml, checked without Docker and without a node: each check
reads the real file and the real code it refers to (the CLI parser, the service settings, the index
template's path), so a drift between them fails here (no torch, no Elasticsearch)."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest
import tomllib
import yaml
from deploy_parse import (
    COMPOSE,
    DOCKERFILE,
    HEAVY,
    ROOT,
    TEMPLATE,
    build_args,
    dockerignored,
    env_of,
    parse_dockerfile,
    requirement_closure,
    stages,
    substitute,
)
from esdistill.deploy import ES_VERSION
from esdistill.plugin._errors import ConfigError


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _one(dockerfile, name):
    found = [i for i in dockerfile if i.name == name]
    assert len(found) == 1, f"expected exactly one {name}, found {len(found)}"
    return found[0]


def image_argv(dockerfile) -> list[str]:
    entry = _one(dockerfile, "ENTRYPOINT").exec_form()
    cmd = _one(dockerfile, "CMD").exec_form()
    assert entry is not None and cmd is not None, "ENTRYPOINT and CMD must use the exec (JSON) form for signals"
    return entry + cmd


# ---------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_a_slim_python_311_image(dockerfile):
    froms = [i for i in dockerfile if i.name == "FROM"]
    assert froms, "no FROM"
    assert all(i.args.split()[0] == "python:3.11-slim" for i in froms), [i.args for i in froms]
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT",
             "CMD", "LABEL", "STOPSIGNAL"}
    assert {i.name for i in dockerfile} <= known, {i.name for i in dockerfile} - known


def test_image_runs_as_a_non_root_user_it_creates(dockerfile):
    users = [(n, i) for n, i in enumerate(dockerfile) if i.name == "USER"]
    assert users, "the image must switch to a non-root user"
    pos, last = users[-1]
    user = last.args.split(":")[0]
    assert user not in ("root", "0"), user
    created = " ".join(i.args for i in dockerfile[:pos] if i.name == "RUN")
    assert re.search(rf"useradd\b[^&;]*\b{re.escape(user)}\b", created), f"user {user!r} is never created"
    after = [i.name for i in dockerfile[pos + 1:]]
    assert "RUN" not in after, "RUN after USER would run as the service user; install before switching"
    assert dockerfile.index(_one(dockerfile, "CMD")) > pos


def test_image_installs_the_runtime_without_torch(dockerfile, pyproject):
    *builders, final = stages(dockerfile)
    pip_final = [i.args for i in final if i.name == "RUN" and "pip" in i.args]
    assert len(pip_final) == 1, pip_final
    assert re.search(r"pip install\b.*esdistill-\*\.whl\)?\[serve\]", pip_final[0]), pip_final[0]
    for ins in (i for stage in builders for i in stage if i.name == "RUN" and "pip" in i.args):
        assert "pip wheel" in ins.args and "--no-deps" in ins.args, ins.args  # builds esdistill only
    for text in (i.args for i in dockerfile if i.name == "RUN"):
        for word in ("torch", "transformers", "[export", "[dev", "sentence"):
            assert word not in text, f"{word!r} appears in: {text}"
    extras = pyproject["project"]["optional-dependencies"]
    assert {re.split(r"[<>=\[ ;]", r)[0] for r in extras["serve"]} >= {"fastapi", "uvicorn"}
    closure = requirement_closure("esdistill", ("serve",))
    assert {"fastapi", "uvicorn", "onnxruntime", "tokenizers", "elasticsearch"} <= closure
    assert not closure & HEAVY, f"esdistill[serve] pulls in {sorted(closure & HEAVY)}"


def test_copied_sources_exist_and_reach_the_build_context(dockerfile, pyproject):
    args = build_args(dockerfile)
    copied: set[str] = set()
    for ins in dockerfile:
        if ins.name != "COPY":
            continue
        flags, rest = ins.flags()
        if "from" in flags:
            assert flags["from"] in {i.args.split()[-1] for i in dockerfile if i.name == "FROM"}
            continue
        *sources, _dest = rest.split()
        for src in sources:
            src = substitute(src, args)
            assert "$" not in src, f"COPY source {src!r} uses an ARG without a default"
            assert (ROOT / src).exists(), f"COPY source {src} does not exist in the repository"
            assert not dockerignored(src), f"COPY source {src} is excluded by .dockerignore"
            copied.add(src.rstrip("/"))
    # everything `pip install .` needs to build the package is copied
    needed = {"pyproject.toml", pyproject["project"]["readme"], *pyproject["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"
    # and what must stay out of the image does
    for private in (".venv", ".git", "tests", "plugin/__pycache__/x.pyc", "runs/student-onnx"):
        assert dockerignored(private), f"{private} would be sent to the Docker build"


def test_model_folder_is_mounted_or_baked_at_the_path_the_service_loads(dockerfile):
    args = build_args(dockerfile)
    assert "MODEL_DIR" in args and (ROOT / args["MODEL_DIR"]).is_dir()
    copy = [i for i in dockerfile if i.name == "COPY" and "MODEL_DIR" in i.args]
    assert len(copy) == 1
    dest = copy[0].args.split()[-1].rstrip("/")
    argv = image_argv(dockerfile)
    assert argv[argv.index("--model") + 1].rstrip("/") == dest
    # the documented way to bake a model in goes through a folder that reaches the build context
    assert not dockerignored("deploy/models/student/manifest.json")


def test_image_command_is_a_real_esdistill_serve_invocation(dockerfile, pyproject, tmp_path):
    from esdistill.plugin._cli_serve import settings_from_args
    from esdistill.plugin.cli import build_parser

    argv = image_argv(dockerfile)
    assert argv[0] in pyproject["project"]["scripts"], f"{argv[0]} is not a console script of the package"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.func.__name__ == "_serve"
    env = env_of(dockerfile)
    settings = _settings_with_env(settings_from_args, args, env, tmp_path)
    exposed = {int(p.split("/")[0]) for i in dockerfile if i.name == "EXPOSE" for p in i.args.split()}
    assert settings.port in exposed and settings.host == "0.0.0.0"
    assert settings.index == env["ESDISTILL_SERVE_INDEX"]


def _settings_with_env(settings_from_args, args, env: dict[str, str], tmp_path: Path):
    import os

    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("ESDISTILL_SERVE_")]:
            del os.environ[key]
        os.environ.update(env)
        return settings_from_args(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_healthcheck_probes_healthz_on_the_served_port(dockerfile):
    hc = _one(dockerfile, "HEALTHCHECK")
    flags, rest = hc.flags()
    assert rest.startswith("CMD ")
    probe = json.loads(rest[4:])
    assert probe[0] == "python", "python:3.11-slim has no curl or wget; probe with python"
    port = image_argv(dockerfile)[image_argv(dockerfile).index("--port") + 1]
    assert f"127.0.0.1:{port}/healthz" in probe[-1]
    compile(probe[-1], "<healthcheck>", "exec")  # the probe is valid Python
    for key in ("interval", "timeout", "retries"):
        assert key in flags


# ---------------------------------------------------------------------------------------- compose
def _es_services(compose) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if str(s.get("image", "")).split(":")[0].endswith("elasticsearch")}


def test_compose_pins_the_official_elasticsearch_image_to_es_version(compose):
    es = _es_services(compose)
    assert es, "no Elasticsearch service"
    for name, svc in es.items():
        image, _, tag = svc["image"].rpartition(":")
        assert image in ("elasticsearch", "library/elasticsearch"), f"{name}: {image} is not the official image"
        assert tag == ES_VERSION, f"{name} uses Elasticsearch {tag}, deploy/es_local.py tests {ES_VERSION}"


def test_compose_elasticsearch_is_single_node_with_security_on(compose):
    node = compose["services"]["elasticsearch"]
    env = node["environment"]
    assert env["discovery.type"] == "single-node"
    assert str(env["xpack.security.enabled"]).lower() == "true"
    # the password comes from the caller's environment and is required, never written here
    assert re.fullmatch(r"\$\{ELASTIC_PASSWORD:\?[^}]+\}", env["ELASTIC_PASSWORD"])
    for svc in compose["services"].values():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"port {port} is published on every interface"
    test = node["healthcheck"]["test"]
    assert "_cluster/health" in " ".join(test) and "$${ELASTIC_PASSWORD}" in " ".join(test)


def test_compose_service_runs_the_image_command_with_valid_settings(compose, dockerfile, tmp_path):
    from esdistill.plugin._cli_serve import settings_from_args
    from esdistill.plugin.cli import build_parser

    svc = compose["services"]["esdistill"]
    context = (COMPOSE.parent / svc["build"]["context"]).resolve()
    assert (context / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    entry = _one(dockerfile, "ENTRYPOINT").exec_form()
    args = build_parser().parse_args((entry + svc["command"])[1:])
    assert args.func.__name__ == "_serve"
    env = {k: str(v) for k, v in svc["environment"].items()}
    # every ESDISTILL_ES_* variable is one the Elasticsearch client reads
    es_client_src = (ROOT / "plugin" / "es_client.py").read_text()
    for key in env:
        if key.startswith("ESDISTILL_ES_"):
            assert f'"{key}"' in es_client_src, f"{key} is not read by esdistill.plugin.es_client"
        else:
            assert key.startswith("ESDISTILL_SERVE_"), f"{key} is not an esdistill setting"
    # fill the required ${VAR:?...} values the way a user would, then validate
    filled = {k: re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "x" * 32, v) for k, v in env.items()}
    settings = _settings_with_env(settings_from_args, args, filled, tmp_path)
    assert settings.auth_enabled and settings.rate_limit_per_s > 0
    es_url = env["ESDISTILL_ES_URL"]
    assert re.fullmatch(r"http://elasticsearch:9200", es_url), es_url
    assert svc["depends_on"]["elasticsearch"]["condition"] == "service_healthy"
    for dep in svc["depends_on"]:
        assert dep in compose["services"]
    # the model mount lands where --model points
    mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
    assert settings.model in mounts
    assert (COMPOSE.parent / mounts[settings.model]).parent.is_dir()


def test_compose_puts_the_index_template_that_exists(compose):
    init = compose["services"]["templates"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in init["volumes"]}
    assert (COMPOSE.parent / mounts["/templates"]).resolve() == TEMPLATE.parent
    command = " ".join(init["command"])
    files = re.findall(r"@/templates/(\S+)", command)
    assert files == [TEMPLATE.name]
    assert "/_index_template/" in command and "-X PUT" in command
    svc_env = compose["services"]["esdistill"]["environment"]
    physical = f"{svc_env['ESDISTILL_SERVE_INDEX']}-000001"
    patterns = json.loads(TEMPLATE.read_text())["index_patterns"]
    assert any(fnmatch(physical, p) for p in patterns), f"{physical} is not covered by {patterns}"


def test_settings_refuse_bad_values_with_every_problem_named():
    from esdistill.plugin.service_settings import ServiceSettings

    with pytest.raises(ConfigError) as exc:
        ServiceSettings(index="Bad Name", model="m", port=70000, max_k=0, rate_limit_per_s=-1,
                        api_keys=("short",))
    text = str(exc.value)
    for part in ("index=", "port=70000", "max_k=0", "rate_limit_per_s=-1", "shorter than"):
        assert part in text, part
    assert "short'" not in text and "'short" not in text  # the key itself is never echoed
