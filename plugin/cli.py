"""The ``esdistill`` command line.

Command groups live next to the code they drive and register themselves here: runtime commands in
``esdistill.plugin``, the local node in ``esdistill.deploy``, training and export in
``esdistill.export`` (which needs the ``export`` extra; its commands say so when it is missing).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence

from esdistill.plugin._errors import EsdistillError

__all__ = ["build_parser", "main"]

logger = logging.getLogger("esdistill")

#: modules whose ``register(subparsers)`` adds commands; imported lazily, by name only, so the
#: runtime never imports the training code.
COMMAND_MODULES = (
    "esdistill.deploy.cli",
    "esdistill.plugin._cli_models",
    "esdistill.plugin._cli_index",     # index create|info|adopt|reindex|rollback|prune, ingest, sync, delete
    "esdistill.plugin._cli_search",    # search, eval
    "esdistill.plugin._cli_tune",      # tune: the default mode for --mode auto
    "esdistill.plugin._cli_ab",        # ab report
    "esdistill.plugin._cli_serve",     # serve (needs the serve extra when run)
    "esdistill.export.cli",            # export (needs the export extra when run)
    "esdistill.export._cli_train",     # distill, adapt (needs the export extra when run)
    "esdistill.export._cli_demo",      # demo: the README's main job
    "esdistill.deploy._cli_bench",     # bench: the quality and speed report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esdistill",
        description="Distil a teacher ranker into a fast ONNX student and plug it into Elasticsearch.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Turn argparse's prefix matching off in ``parser`` and every sub-parser below it.

    With it on, an option that does not exist but is the prefix of one that does is silently read
    as that one (``index create --index NAME`` became ``--index-options NAME``); command modules
    build their own sub-parsers, so the whole tree is walked once it is built.
    """
    todo, seen = [parser], set()
    while todo:
        p = todo.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    # esdistill's own progress at INFO; other libraries (the ONNX quantizer logs every tensor at INFO
    # on the root logger) only from -v on
    others = level if verbose else max(level, logging.WARNING)
    logging.basicConfig(level=others, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("esdistill").setLevel(level)
    if verbose < 2:
        for noisy in ("elastic_transport", "urllib3", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``esdistill`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except EsdistillError as exc:
        if getattr(args, "json", False):  # the error once, as the JSON object a --json caller parses
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        else:
            print(f"esdistill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("esdistill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
