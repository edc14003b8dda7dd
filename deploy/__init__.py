"""Deployment helpers: a local Elasticsearch node for development and tests, and the files that
deploy the query service (``compose.yaml``, index templates).

Runtime-safe: imports no torch.
"""

from __future__ import annotations

from esdistill.deploy.es_local import ES_VERSION, LocalElasticsearch, NodeStatus, default_home, find_java

__all__ = ["ES_VERSION", "LocalElasticsearch", "NodeStatus", "default_home", "find_java"]
