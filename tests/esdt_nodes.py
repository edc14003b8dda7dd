"""A local Elasticsearch node of a test's own, started by esdistill's launcher and removed after.

Example::

    @pytest.fixture(scope="module")
    def own_node():
        with running_node() as node:
            yield node
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from esdt_helpers import free_port


@contextmanager
def running_node(*, heap: str = "512m", timeout: float = 240, **kwargs: Any) -> Iterator[Any]:
    """Start a :class:`~esdistill.deploy.LocalElasticsearch` on a free port (``kwargs`` go to it,
    e.g. ``extra_settings``); stop it and delete its data folder on exit."""
    from esdistill.deploy import LocalElasticsearch

    node = LocalElasticsearch(port=free_port(), heap=heap, **kwargs)
    node.start(timeout=timeout)
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.data, ignore_errors=True)
