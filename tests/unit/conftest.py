"""The unit tier: tests that need neither Elasticsearch nor torch and run in seconds.

Every test collected under ``tests/unit`` gets the ``unit`` marker. A unit test that requests a
fixture which starts or reaches an Elasticsearch node, or builds or exports a model with torch, is a
usage error at collection time: such a test belongs in ``tests/`` (the integration tier).

Run the tier alone with ``python -m pytest tests/unit -q``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_UNIT_DIR = Path(__file__).parent

#: fixtures of tests/conftest.py (and of test modules) that need a node or torch
HEAVY_FIXTURES = frozenset({
    # Elasticsearch: the session's node, a client on it, per-test indices, a test's own node
    "es_url", "es_client", "index_prefix", "own_node", "secure_node",
    # torch: tiny models built from scratch, their ONNX exports, the packaged models
    "tiny_bi_encoder", "tiny_cross_encoder", "encoder_a", "encoder_b", "student", "student_dir",
    "teacher_dir", "packaged_student", "packaged_teacher",
})
#: fixture-name prefixes of the same kind (the service tests' served apps and indices)
HEAVY_PREFIXES = ("svc_",)


def heavy_fixtures(fixturenames: list[str]) -> list[str]:
    """The names in ``fixturenames`` that need Elasticsearch or torch.

    Args:
        fixturenames: a test item's fixture closure (``item.fixturenames``).

    Returns:
        The heavy ones, in the order given; empty for a proper unit test.
    """
    return [n for n in fixturenames if n in HEAVY_FIXTURES or n.startswith(HEAVY_PREFIXES)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/unit ``unit``; refuse one that requests a heavy fixture.

    Raises:
        pytest.UsageError: a unit test requests a fixture that needs Elasticsearch or torch; the
            message names the test and the fixtures, and says to move the test to ``tests/``.
    """
    for item in items:
        if not item.path.is_relative_to(_UNIT_DIR):
            continue
        item.add_marker(pytest.mark.unit)
        heavy = heavy_fixtures(list(getattr(item, "fixturenames", ())))
        if heavy:
            raise pytest.UsageError(
                f"{item.nodeid} is in the unit tier but requests {', '.join(heavy)}, which needs "
                "Elasticsearch or torch; move the test to a file under tests/ (the integration tier)"
            )
