"""``esdistill es start`` on a node of its own: a single node whose index asks for replicas (health
yellow) serves, so start accepts it, whether the node already runs or is launched on that data; and
a node that answers but stays red past the timeout is reported and left running, never killed.

Each launch of a node takes a while, so the module shares one node folder and restarts it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from esdistill.plugin import LauncherError, connect
from esdt_nodes import running_node

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def node():
    with running_node() as node:
        yield node


def _alive(pid: int) -> bool:
    from esdistill.deploy.es_local import _alive as alive

    return alive(pid)


def test_a_yellow_single_node_is_accepted_running_or_launched(node):
    es = connect(node.url)
    try:
        es.indices.create(index="with-replicas", settings={"number_of_shards": 1, "number_of_replicas": 1})
        es.cluster.health(index="with-replicas", wait_for_status="yellow", timeout="30s")
        assert es.cluster.health()["status"] == "yellow"
    finally:
        es.close()
    pid = node.status().pid

    t0 = time.monotonic()
    assert node.start(timeout=20) == node.url  # already running and yellow: ready at once
    assert time.monotonic() - t0 < 15 and node.status().pid == pid
    cli = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "es", "start", "--port", str(node.port),
                          "--timeout", "20"], capture_output=True, text=True, timeout=120, check=False)
    assert cli.returncode == 0 and "is yellow" in cli.stdout and "replicas" in cli.stdout, cli.stderr[-1500:]

    # launched on data whose index wants a replica: it serves yellow, and start returns instead of
    # waiting for a green that never comes and killing the node
    assert node.stop()
    assert node.start(timeout=180) == node.url
    st = node.status()
    assert st.health == "yellow" and st.pid is not None and _alive(st.pid)


@pytest.mark.slow  # it waits out a launch timeout on a red node (about 2 minutes)
def test_a_node_that_answers_but_stays_red_is_left_running(node):
    es = connect(node.url)
    try:
        # a primary that can never be placed: the cluster stays red
        es.indices.create(index="unplaceable", settings={"number_of_shards": 1, "number_of_replicas": 0,
                                                         "index.routing.allocation.require._name": "nowhere"},
                          wait_for_active_shards="0")
        assert es.cluster.health()["status"] == "red"
    finally:
        es.close()
    pid = node.status().pid
    with pytest.raises(LauncherError, match="left running"):
        node.start(timeout=5)
    assert _alive(pid) and node.status().pid == pid

    assert node.stop()
    with pytest.raises(LauncherError, match="answers, but its health is still red") as info:
        node.start(timeout=100)  # time for a launch to answer, on a busy machine too
    assert "esdistill es stop" in str(info.value)
    st = node.status()
    assert st.pid is not None and _alive(st.pid) and st.health == "red"  # not killed
    es = connect(node.url)
    try:
        es.indices.delete(index="unplaceable")
    finally:
        es.close()
    assert node.start(timeout=60) == node.url  # serving again once the red index is gone
