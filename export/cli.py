"""Training and export commands (``esdistill export``, ``distill``, ``adapt``).

This module imports nothing heavy at import time: each command imports torch & co. when it runs.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training and export commands to the ``esdistill`` parser."""
    return None
