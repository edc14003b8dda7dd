"""Model safety: esdistill runs only the model files its manifest vouches for, only with the index
those files made, and never executes code that comes with a model folder.

1. A folder whose files do not match the manifest's fingerprint (one byte of the ONNX graph or the
   tokenizer changed, a listed file gone) or whose ``manifest.json`` was edited after export (the
   fingerprint, or any field that changes the vectors: ``max_seq_length``, ``pooling``, a prefix,
   ``lowercase``, ``normalize``, ``similarity``, ``dims``, ...) is refused by every loader: the
   encoder, the cross-encoder, ``load_reranker``, the query hook, the service, and the CLI (exit
   code 3). The informational fields (``name``, ``source_model``, ``extra``...) may be edited.
   A folder from before the seal (``format_version`` 1) loads with one warning.
2. A model whose fingerprint or dims differ from the index's is refused before anything is
   embedded or searched: the ingest hook, the query hook, ``esdistill ingest`` and ``search``.
3. Nothing in a model folder is executed: Python files, pickles (``pytorch_model.bin``, ``*.pkl``)
   and a ``config.json`` asking for ``trust_remote_code`` are left alone by every loader (each would
   create a marker file if it ran), even a manifest that points ``onnx_file`` at a pickle. A static
   check of ``plugin/`` (its syntax tree) finds no pickle, torch, ``trust_remote_code``, ``eval`` /
   ``exec``, dynamic imports of non-constant names, or onnxruntime custom-op libraries.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from esdistill.plugin import FingerprintError, ModelError
from esdistill.plugin.cross_encoder import OnnxCrossEncoder
from esdistill.plugin.encoder import OnnxEncoder
from esdistill.plugin.index import IndexManager, IndexSpec
from esdistill.plugin.ingest import IngestHook
from esdistill.plugin.manifest import MANIFEST_NAME, Manifest
from esdistill.plugin.query import QueryHook
from esdistill.plugin.rerank import load_reranker
from esdt_helpers import TINY_COLLECTION, free_port
from esdt_onnx import make_encoder, model_folder
from qh_helpers import export_once

PLUGIN = Path(__file__).resolve().parents[1] / "plugin"
CORPUS = TINY_COLLECTION / "corpus.jsonl"
DOCS = [json.loads(line) for line in CORPUS.read_text().splitlines()]


@pytest.fixture(scope="module")
def student(tiny_bi_encoder, tmp_path_factory) -> Path:
    return model_folder(make_encoder(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "esdt-onnx", "a"))


@pytest.fixture(scope="module")
def other_student(tiny_bi_encoder, tmp_path_factory) -> Path:
    """The same weights exported without quantization: same dims, another fingerprint."""
    return model_folder(make_encoder(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "esdt-onnx", "b"))


@pytest.fixture(scope="module")
def teacher(tiny_cross_encoder, tmp_path_factory) -> Path:
    return export_once(tiny_cross_encoder, tmp_path_factory.getbasetemp() / "qh-exports", "teacher-ce")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def _tamper(folder: Path, how: str) -> None:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    if how == "onnx-byte":
        _flip_byte(folder / manifest["onnx_file"])
    elif how == "tokenizer":
        tok = json.loads((folder / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        a, b = sorted(vocab)[10:12]
        vocab[a], vocab[b] = vocab[b], vocab[a]  # two tokens swapped: still a valid tokenizer
        (folder / "tokenizer.json").write_text(json.dumps(tok))
    elif how == "missing-file":
        (folder / "vocab.txt").unlink()
    elif how == "manifest-fingerprint":
        manifest["fingerprint"] = "0" * 64
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    elif how == "manifest-field":
        manifest["max_seq_length"] = 8
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    else:  # pragma: no cover
        raise AssertionError(how)


TAMPERINGS = ["onnx-byte", "tokenizer", "missing-file", "manifest-fingerprint", "manifest-field"]


def _expected_error(how: str) -> tuple[type[Exception], str]:
    if how == "missing-file":
        return ModelError, "lacks vocab.txt"
    if how.startswith("manifest-"):
        return FingerprintError, "was edited after export"
    return FingerprintError, "do not match its manifest"


# ------------------------------------------------------------------------------- 1. tampered files
@pytest.mark.parametrize("how", TAMPERINGS)
def test_tampered_student_is_refused_by_every_loader(how, student, tmp_path, es_url, monkeypatch):
    folder = _copy(student, tmp_path / "student")
    _tamper(folder, how)
    error, match = _expected_error(how)
    with pytest.raises(error, match=match):
        OnnxEncoder(folder)
    with pytest.raises(error, match=match):
        load_reranker(folder)  # a bi-encoder teacher
    with pytest.raises(error, match=match):
        QueryHook.open("any-index", folder)
    # the CLI: refused with exit code 3 before Elasticsearch is even asked
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    out = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "search", "q", "--index", "x",
                          "--model", str(folder)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 3 and match in out.stderr, out.stderr


@pytest.mark.parametrize("how", ["onnx-byte", "tokenizer", "manifest-fingerprint", "manifest-field"])
def test_tampered_cross_encoder_is_refused(how, teacher, tmp_path):
    folder = _copy(teacher, tmp_path / "teacher")
    _tamper(folder, how)
    error, match = _expected_error(how)
    with pytest.raises(error, match=match):
        OnnxCrossEncoder(folder)
    with pytest.raises(error, match=match):
        load_reranker(folder)


def test_the_service_refuses_a_tampered_model_or_reranker_before_it_listens(student, teacher, tmp_path, es_url):
    pytest.importorskip("fastapi")
    from esdistill.plugin.service import create_app
    from esdistill.plugin.service_settings import ServiceSettings

    bad_student = _copy(student, tmp_path / "student")
    _tamper(bad_student, "onnx-byte")
    bad_teacher = _copy(teacher, tmp_path / "teacher")
    _tamper(bad_teacher, "tokenizer")
    with pytest.raises(FingerprintError):
        create_app(ServiceSettings(index="x", model=str(bad_student), es_url=es_url))
    with pytest.raises(FingerprintError):
        create_app(ServiceSettings(index="x", model=str(student), rerank=str(bad_teacher), es_url=es_url))
    # `esdistill serve` exits with code 3 instead of serving
    out = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "serve", "--index", "x", "--model",
                          str(bad_student), "--port", str(free_port()), "--es-url", es_url],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 3 and "do not match its manifest" in out.stderr, out.stderr[-1500:]


# ----------------------------------------------------------------------- 2. model vs index mismatch
def test_a_model_with_other_dims_or_fingerprint_is_refused_by_ingest_and_query(es_client, es_url, index_prefix,
                                                                              student, other_student, tmp_path,
                                                                              monkeypatch):
    enc = OnnxEncoder(student)
    # an index made by a model with the same fingerprint but other dims, and one made by another model
    wide = f"{index_prefix}-dims"
    IndexManager(es_client, wide).create(dataclasses.replace(enc.manifest, dims=enc.dims * 2),
                                         IndexSpec(index_options="flat"))
    other = f"{index_prefix}-other"
    IndexManager(es_client, other).create(OnnxEncoder(other_student).manifest, IndexSpec(index_options="flat"))
    for alias, what in ((wide, f"dims {enc.dims} vs the index's {enc.dims * 2}"), (other, "fingerprint")):
        with pytest.raises(FingerprintError, match=what):
            IngestHook(es_client, alias, enc)
        with pytest.raises(FingerprintError, match="did not make the vectors"):
            QueryHook(es_client, alias, enc).search("energy", k=3)
    # the CLI: exit code 3, and nothing was written
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for alias in (wide, other):
        ingest = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "ingest", str(CORPUS), "--index",
                                 alias, "--model", str(student), "--no-progress"],
                                capture_output=True, text=True, timeout=120, check=False)
        assert ingest.returncode == 3 and "does not match index" in ingest.stderr, ingest.stderr[-1500:]
        search = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "search", "energy", "--index", alias,
                                 "--model", str(student)], capture_output=True, text=True, timeout=120, check=False)
        assert search.returncode == 3 and "did not make the vectors" in search.stderr, search.stderr[-1500:]
        es_client.indices.refresh(index=alias)
        assert int(es_client.count(index=alias)["count"]) == 0


# ------------------------------------------------------------------------ 3. no code from the folder
class _Plant:
    """Pickles that create ``marker`` when unpickled (what a malicious ``pytorch_model.bin`` does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _booby_trap(folder: Path, marker: Path) -> None:
    """Files a loader must never run, each of which would create ``marker`` if it did. None of them is
    in the manifest's list, so the fingerprint still matches."""
    code = f"open({str(marker)!r}, 'w').close()\n"
    for name in ("__init__.py", "modeling_evil.py", "configuration_evil.py", "tokenization_evil.py",
                 "sitecustomize.py", "setup.py"):
        (folder / name).write_text(code)
    for name in ("pytorch_model.bin", "model.pkl", "training_args.bin", "optimizer.pt", "tokenizer.pkl"):
        (folder / name).write_bytes(pickle.dumps(_Plant(marker)))
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    config.update({"auto_map": {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "configuration_evil.Cfg",
                                "AutoTokenizer": ["tokenization_evil.Tok", None]},
                   "trust_remote_code": True})
    (folder / "config.json").write_text(json.dumps(config))


def test_no_loader_runs_code_or_pickles_from_a_model_folder(es_client, es_url, index_prefix, student, teacher,
                                                            tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    s = _copy(student, tmp_path / "student")
    t = _copy(teacher, tmp_path / "teacher")
    for folder in (s, t):
        _booby_trap(folder, marker)
    enc = OnnxEncoder(s)
    assert enc.encode(["energy"]).shape == (1, enc.dims)  # the folder still works: only its files count
    OnnxCrossEncoder(t).score("q", ["d"])
    load_reranker(t)
    load_reranker(s)
    IndexManager(es_client, index_prefix).create(enc.manifest, IndexSpec(index_options="flat"))
    assert IngestHook(es_client, index_prefix, enc, progress=False).ingest(DOCS[:4]).indexed == 4
    hook = QueryHook.open(index_prefix, s, rerank_model=t, client=es_client)
    assert hook.search("energy", k=2, rerank=True).hits
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    cli = subprocess.run([sys.executable, "-m", "esdistill.plugin.cli", "search", "energy", "--index", index_prefix,
                          "--model", str(s), "--rerank", str(t)], capture_output=True, text=True, timeout=120,
                         check=False)
    assert cli.returncode == 0, cli.stderr[-1500:]
    pytest.importorskip("fastapi")
    from esdistill.plugin.service import create_app
    from esdistill.plugin.service_settings import ServiceSettings

    create_app(ServiceSettings(index=index_prefix, model=str(s), rerank=str(t), es_url=es_url))
    assert not marker.exists()
    assert not {"modeling_evil", "configuration_evil", "tokenization_evil"} & set(sys.modules)


def test_a_manifest_pointing_at_a_pickle_is_refused_without_unpickling_it(student, tmp_path):
    marker = tmp_path / "pwned"
    folder = _copy(student, tmp_path / "student")
    (folder / "model.pkl").write_bytes(pickle.dumps(_Plant(marker)))
    manifest = Manifest.load(folder)
    files = [f if f != manifest.onnx_file else "model.pkl" for f in manifest.files]
    forged = dataclasses.replace(manifest, onnx_file="model.pkl", files=files)
    forged.seal(folder)  # a self-consistent manifest: the seal and the fingerprint check pass
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        OnnxEncoder(folder)
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        load_reranker(folder)
    assert not marker.exists()


# ----------------------------------------------------------------------- static check of plugin/
_BANNED_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "torch",
                   "transformers", "sentence_transformers", "optimum", "runpy", "imp", "code", "codeop"}
_BANNED_CALLS = {"eval", "exec", "compile", "__import__", "execfile"}
_BANNED_ATTRS = {"register_custom_ops_library", "load_library", "run_path", "run_module", "exec_module",
                 "spec_from_file_location", "load_source"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in _BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in _BANNED_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if isinstance(func, ast.Name) and name in _BANNED_CALLS:
                found.append(f"{where} calls {name}()")
            if name in _BANNED_ATTRS:
                found.append(f"{where} calls {name}()")
            if name == "import_module" and not all(isinstance(a, ast.Constant) for a in node.args):
                found.append(f"{where} imports a module whose name is computed")
            for kw in node.keywords:
                if kw.arg == "trust_remote_code":
                    found.append(f"{where} passes trust_remote_code")
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{where} passes allow_pickle={ast.unparse(kw.value)}")
    return found


def _command_loop_line() -> int:
    """The line of plugin/cli.py that imports the fixed command modules by name."""
    tree = ast.parse((PLUGIN / "cli.py").read_text())
    calls = [n for loop in ast.walk(tree) if isinstance(loop, ast.For) and ast.unparse(loop.iter) == "COMMAND_MODULES"
             for n in ast.walk(loop) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "import_module"]
    assert len(calls) == 1
    return calls[0].lineno


def test_plugin_never_unpickles_trusts_remote_code_or_evaluates_strings():
    files = sorted(PLUGIN.glob("*.py"))
    assert len(files) > 10
    problems = [v for f in files for v in _violations(f)]
    # the one dynamic import: the command groups of the CLI, named by constants in its source
    allowed = f"cli.py:{_command_loop_line()} imports a module whose name is computed"
    assert [p for p in problems if p != allowed] == []
    # and the plain text, for what the syntax tree check might miss (strings passed along, say)
    for f in files:
        text = f.read_text()
        for needle in ("trust_remote_code=True", "pickle.load", "torch.load", "allow_pickle=True"):
            assert needle not in text, f"{f.name} contains {needle}"


def test_the_only_dynamic_import_in_plugin_is_the_fixed_command_list():
    # plugin/cli.py imports its command groups by name; the names are constants in the source, never
    # user input or a model folder's content
    from esdistill.plugin import cli

    assert isinstance(cli.COMMAND_MODULES, tuple)
    assert all(isinstance(n, str) and n.startswith("esdistill.") for n in cli.COMMAND_MODULES)
    assert _command_loop_line() > 0


def test_the_static_check_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nfrom torch import load\nimport importlib\n"
                   "def f(path, m):\n"
                   "    eval('1')\n"
                   "    importlib.import_module(m)\n"
                   "    np.load(path, allow_pickle=True)\n"
                   "    AutoModel.from_pretrained(path, trust_remote_code=True)\n"
                   "    ort.SessionOptions().register_custom_ops_library(path)\n")
    found = _violations(bad)
    for what in ("imports pickle", "imports from torch", "calls eval()", "computed", "allow_pickle",
                 "trust_remote_code", "register_custom_ops_library"):
        assert any(what in v for v in found), (what, found)


def test_a_manifest_cannot_point_outside_its_folder(tmp_path):
    from esdistill.plugin import ModelError
    from esdistill.plugin.manifest import Manifest

    for bad in ("../elsewhere.onnx", "/etc/passwd"):
        with pytest.raises(ModelError, match="outside the model folder"):
            Manifest(name="m", kind="bi-encoder", onnx_file=bad, files=[bad], fingerprint="0" * 64,
                     dims=8, max_seq_length=16)
