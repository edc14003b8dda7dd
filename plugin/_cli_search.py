"""Command group (placeholder until its module lands; registers nothing yet)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the ``esdistill`` parser."""
    return None
