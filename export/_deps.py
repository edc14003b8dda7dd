"""Lazy imports of the heavy training dependencies, failing with the install command."""

from __future__ import annotations

import importlib
from types import ModuleType

from esdistill.plugin._errors import ConfigError

__all__ = ["require"]

_HINT = "pip install 'esdistill[export]'"


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a :class:`ConfigError` that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{module} is needed for this command but is not installed ({exc}); "
                          f"install the training extra: {_HINT}") from None
