"""The unit tier stays light: importing it never loads torch, and heavy fixtures are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

UNIT = Path(__file__).parent
TESTS = UNIT.parent
#: a pytest without the installed plugins (hypothesis, schemathesis...): the hook alone, started fast
_BARE_PYTEST = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def test_importing_every_unit_module_never_loads_torch():
    """Each module of tests/unit (and the conftests it runs under) is imported in a fresh interpreter;
    torch must not be among the loaded modules afterwards."""
    files = [TESTS / "conftest.py", UNIT / "conftest.py", *sorted(UNIT.glob("test_*.py"))]
    assert len(files) > 3, files
    code = textwrap.dedent(
        """
        import importlib.util, sys
        sys.path[:0] = [sys.argv[1], sys.argv[2]]
        for i, path in enumerate(sys.argv[3:]):
            spec = importlib.util.spec_from_file_location(f"_unit_tier_{i}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            if "torch" in sys.modules:
                print("torch loaded by", path)
                break
        print("modules", len(sys.argv) - 3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(TESTS), str(UNIT), *map(str, files)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch loaded by" not in proc.stdout, proc.stdout
    assert proc.stdout.split()[-1] == str(len(files))


def test_a_unit_test_asking_for_elasticsearch_is_a_usage_error(tmp_path):
    """The collection hook refuses a test that reaches a heavy fixture, even through a fixture of its
    own, and names the test before anything starts."""
    (tmp_path / "conftest.py").write_text((UNIT / "conftest.py").read_text())
    (tmp_path / "test_misplaced.py").write_text(textwrap.dedent(
        """
        import pytest

        @pytest.fixture
        def es_url():
            raise AssertionError("never reached: collection stops first")

        @pytest.fixture
        def docs(es_url):
            return es_url

        def test_light():
            pass

        def test_needs_a_node(docs):
            pass
        """
    ))
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path, env=_BARE_PYTEST)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "test_misplaced.py::test_needs_a_node is in the unit tier but requests es_url" in proc.stderr
    assert "move the test" in proc.stderr and "test_light" not in proc.stderr


def test_light_tests_are_collected_with_the_unit_marker(tmp_path):
    (tmp_path / "conftest.py").write_text((UNIT / "conftest.py").read_text())
    (tmp_path / "test_light.py").write_text("def test_light(tmp_path, monkeypatch):\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "unit", "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path, env=_BARE_PYTEST)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_light.py::test_light" in proc.stdout and "1 test collected" in proc.stdout
