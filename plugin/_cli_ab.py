"""``esdistill ab report``: analyse an A/B exposure log, optionally with clicks.

::

    esdistill ab report exposures.jsonl --clicks clicks.jsonl
    esdistill ab report exposures.jsonl --json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from esdistill.plugin._errors import ConfigError

__all__ = ["register"]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def _report(args: argparse.Namespace) -> int:
    from esdistill.plugin.ab import read_exposures
    from esdistill.plugin.ab_report import ab_report, read_clicks

    log = Path(args.log)
    if not log.is_file():
        raise ConfigError(f"exposure log {log} does not exist; give the file the service or QueryHook writes "
                          "(ServiceSettings.exposure_log / ExposureLog(path))")
    rows = read_exposures(log)
    missing = [n for n, r in enumerate(rows, start=1) if not isinstance(r, dict) or "query_id" not in r
               or "shown" not in r]
    if missing:
        raise ConfigError(f"exposure log {log}: rows {missing[:5]} are not exposure records (query_id, shown)")
    clicks = read_clicks(args.clicks) if args.clicks else None
    report = ab_report(rows, clicks, resamples=args.resamples, confidence=args.confidence, seed=args.seed)
    if args.json:
        print(json.dumps(_nan_to_none(report.to_dict())))
    else:
        print(report.format())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ab report`` to the ``esdistill`` parser."""
    ab = sub.add_parser("ab", help="A/B experiments: analyse the exposure log")
    ab_sub = ab.add_subparsers(dest="ab_command", required=True, metavar="ACTION")
    r = ab_sub.add_parser("report", help="per arm: exposures, share served as assigned, latency, click credit")
    r.add_argument("log", metavar="LOG", help="the exposure log (JSONL)")
    r.add_argument("--clicks", default=None, metavar="FILE",
                   help='clicks as JSON Lines: {"query_id": "<response query_id>", "doc_id": "<hit id>"} per line')
    r.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    r.add_argument("--confidence", type=float, default=0.95, help="confidence of the interval (default 0.95)")
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=_report)
