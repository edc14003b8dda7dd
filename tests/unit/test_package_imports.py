"""The package layout: the runtime imports where torch cannot, and the bare folders are never top-level
packages (no torch, no Elasticsearch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


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
