"""Where the benchmarks find their collections: an explicit folder, else ``$ESDISTILL_DATA``.

Nothing is looked up outside what the user names: the collections (BEIR layout, e.g. SciFact,
Cranfield) are not part of the package.
"""

from __future__ import annotations

import os
from pathlib import Path

from esdistill.plugin._errors import ConfigError

__all__ = ["DATA_ENV", "data_dir"]

#: the environment variable naming the folder that holds the benchmark collections
DATA_ENV = "ESDISTILL_DATA"


def data_dir(given: str | os.PathLike[str] | None, *, option: str = "--data DIR") -> Path:
    """The folder of benchmark collections: ``given``, else ``$ESDISTILL_DATA``.

    Args:
        given: the folder passed on the command line (or ``None``).
        option: how to pass it on the command line, named in the error.

    Returns:
        The folder (it exists).

    Raises:
        ConfigError: neither is set, or the folder does not exist.

    Example:
        >>> data_dir(None)  # doctest: +SKIP
        PosixPath('/data/beir')           # with ESDISTILL_DATA=/data/beir
    """
    raw = os.fspath(given) if given else os.environ.get(DATA_ENV, "")
    if not raw:
        raise ConfigError(f"no benchmark data: pass {option} or set {DATA_ENV}=DIR, a folder of BEIR-layout "
                          "collections such as scifact/ (each with corpus.jsonl, queries.jsonl and qrels/)")
    path = Path(raw).expanduser()
    if not path.is_dir():
        source = "the data folder" if given else f"${DATA_ENV}"
        raise ConfigError(f"{source} {path} does not exist: pass {option} or set {DATA_ENV} to the folder that "
                          "holds the collections")
    return path
