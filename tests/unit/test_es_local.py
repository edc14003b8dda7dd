"""The local Elasticsearch launcher without a node: argument checks, a taken port, finding Java, and the
status of a node that is not running (no torch, no Elasticsearch started)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from esdistill.deploy import LocalElasticsearch, find_java
from esdistill.plugin import ConfigError, LauncherError
from esdt_helpers import free_port


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
