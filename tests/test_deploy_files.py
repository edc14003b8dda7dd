"""The deploy files, checked without Docker where a check needs more than reading them: the build stage's
sources make a wheel without torch, and the index template agrees with what IndexManager creates on a
real node (the Dockerfile and compose.yaml read alone: tests/unit/test_dockerfile_compose.py)."""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import pytest
from deploy_parse import HEAVY, ROOT, TEMPLATE, parse_dockerfile, stages


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile()


def test_build_stage_sources_make_a_wheel_with_the_service_and_no_torch(dockerfile, tmp_path):
    """Do what the build stage does: copy its COPY sources, build the wheel, read its metadata."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from packaging.requirements import Requirement

    build = stages(dockerfile)[0]
    workdir = Path(next(i.args for i in build if i.name == "WORKDIR"))
    ctx = tmp_path / "ctx"
    for ins in build:
        if ins.name != "COPY":
            continue
        *sources, dest = ins.flags()[1].split()
        target = ctx / (workdir / dest).relative_to(workdir)
        for src in sources:
            path = ROOT / src
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "models"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "wheels"), str(ctx)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "wheels").glob("esdistill-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"esdistill/plugin/service.py", "esdistill/plugin/cli.py",
            "esdistill/deploy/templates/esdistill-index-template.json"} <= names
    requires = [Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines()
                if line.startswith("Requires-Dist:")]
    installed = {r.name.lower() for r in requires
                 if r.marker is None or r.marker.evaluate({"extra": "serve"})}
    assert {"fastapi", "uvicorn", "onnxruntime", "tokenizers", "elasticsearch"} <= installed
    assert not installed & HEAVY, sorted(installed & HEAVY)


# ---------------------------------------------------------------------------------------- template
def _manifest(dims: int = 8):
    from esdistill.plugin.manifest import Manifest

    return Manifest(name="tpl-check", kind="bi-encoder", onnx_file="model.onnx", files=["model.onnx"],
                    fingerprint="f" * 64, dims=dims, max_seq_length=32, similarity="cosine")


def test_index_template_agrees_with_what_index_manager_creates(es_client, index_prefix):
    from esdistill.plugin.index import IndexManager, IndexSpec, build_index_body

    template = json.loads(TEMPLATE.read_text())
    body = dict(template)
    body["index_patterns"] = [f"{index_prefix}-*"]
    name = f"{index_prefix}-tpl"
    es_client.indices.put_index_template(name=name, **body)
    try:
        manifest = _manifest()
        mgr = IndexManager(es_client, f"{index_prefix}-docs")
        physical = mgr.create(manifest)
        got = es_client.indices.get_mapping(index=physical)[physical]["mappings"]
        # a control index made by IndexManager outside the template's pattern
        control_mgr = IndexManager(es_client, f"{index_prefix}ctl-docs")
        control = control_mgr.create(manifest)
        assert not fnmatch(control, body["index_patterns"][0])
        ref = es_client.indices.get_mapping(index=control)[control]["mappings"]
        # the template changes nothing IndexManager sets
        assert got["properties"] == ref["properties"]
        assert got.get("dynamic") == ref.get("dynamic")
        want = build_index_body(manifest, IndexSpec(), alias=mgr.alias)["mappings"]
        assert got["_meta"]["model_fingerprint"] == manifest.fingerprint
        # and every field the template defines is defined the same way by IndexManager
        for field, spec in template["template"]["mappings"]["properties"].items():
            assert want["properties"].get(field) == spec, field
        settings = es_client.indices.get_settings(index=physical)[physical]["settings"]["index"]
        tpl_settings = template["template"]["settings"]["index"]
        assert int(settings["number_of_shards"]) == tpl_settings["number_of_shards"]
        assert int(settings["number_of_replicas"]) == tpl_settings["number_of_replicas"]
        # an index created by anything else under the pattern gets esdistill's layout
        other = f"{index_prefix}-bare"
        es_client.indices.create(index=other)
        bare = es_client.indices.get_mapping(index=other)[other]["mappings"]
        assert bare["properties"] == template["template"]["mappings"]["properties"]
        assert es_client.indices.get_settings(index=other)[other]["settings"]["index"]["number_of_replicas"] == "0"
    finally:
        es_client.indices.delete_index_template(name=name)


