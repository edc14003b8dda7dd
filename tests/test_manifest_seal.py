"""The whole manifest is vouched for: editing any field of an exported ``manifest.json`` that changes
the vectors (or the pairing of a query encoder) gets the folder refused with the re-export command;
the informational fields may be edited; a recipe change gives another fingerprint; folders from
before the seal (``format_version`` 1) load with one warning, and a sealed folder cannot be passed
off as one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from esdistill.plugin import FingerprintError
from esdistill.plugin.encoder import OnnxEncoder
from esdistill.plugin.manifest import (
    INFORMATIONAL_FIELDS,
    MANIFEST_NAME,
    RECIPE_FIELDS,
    Manifest,
    compute_fingerprint,
    files_digest,
)
from esdt_onnx import make_encoder, model_folder

TEXTS = ["mitochondria make energy for the cell", "ocean tides follow the moon", "x"]


@pytest.fixture(scope="module")
def student(tiny_bi_encoder, tmp_path_factory) -> Path:
    return model_folder(make_encoder(tiny_bi_encoder, tmp_path_factory.getbasetemp() / "esdt-onnx", "a"))


def _edit(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    raw = json.loads((dst / MANIFEST_NAME).read_text())
    raw.update(changes)
    (dst / MANIFEST_NAME).write_text(json.dumps(raw, indent=2))
    return dst


def _vector_edits(m: Manifest) -> dict[str, object]:
    """One plausible hand edit per field that is not informational (each changes what the folder means)."""
    return {
        "kind": "cross-encoder",
        "dims": m.dims * 2,
        "max_seq_length": 8,
        "pooling": "cls" if m.pooling != "cls" else "mean",
        "normalize": not m.normalize,
        "query_prefix": "query: ",
        "document_prefix": "passage: ",
        "lowercase": not m.lowercase,
        "similarity": "dot_product" if m.similarity != "dot_product" else "cosine",
        "quantization": "none" if m.quantization != "none" else "int8-dynamic",
        "output_name": "token_embeddings",
        "pooled_in_graph": not m.pooled_in_graph,
        "activation": "sigmoid",
        "document_fingerprint": "ab" * 32,
        "files": [f for f in m.files if f != "vocab.txt"],
        "fingerprint": "0" * 64,
        "manifest_sha256": "0" * 64,
    }


def test_every_non_informational_field_is_covered(student):
    m = Manifest.load(student)
    covered = set(_vector_edits(m)) | set(INFORMATIONAL_FIELDS) | {"format_version", "onnx_file", "name"}
    assert covered == set(m.to_dict()), "a manifest field is neither tested as sealed nor as informational"
    assert set(RECIPE_FIELDS) <= set(_vector_edits(m)) | {"onnx_file"}


@pytest.mark.parametrize("field", ["kind", "dims", "max_seq_length", "pooling", "normalize", "query_prefix",
                                   "document_prefix", "lowercase", "similarity", "quantization", "output_name",
                                   "pooled_in_graph", "activation", "document_fingerprint", "files", "fingerprint",
                                   "manifest_sha256"])
def test_an_edited_field_is_refused_with_the_reexport_command(field, student, tmp_path):
    m = Manifest.load(student)
    folder = _edit(student, tmp_path / "edited", **{field: _vector_edits(m)[field]})
    with pytest.raises(FingerprintError, match="was edited after export") as info:
        OnnxEncoder(folder)
    assert f"esdistill export {m.source_model} --out {folder}" in str(info.value)
    assert info.value.expected != info.value.actual
    with pytest.raises(FingerprintError, match="was edited after export"):
        Manifest.load(folder)
    Manifest.load(folder, verify=False)  # reading it on purpose without the check still works


def test_onnx_file_is_sealed_too(student, tmp_path):
    m = Manifest.load(student)
    other = next(f for f in m.files if f != m.onnx_file)
    folder = _edit(student, tmp_path / "edited", onnx_file=other)
    with pytest.raises(FingerprintError, match="was edited after export"):
        OnnxEncoder(folder)


@pytest.mark.parametrize("field, value", [("name", "my renamed student"), ("source_model", "/somewhere/else"),
                                          ("source_sha256", "f" * 64), ("libraries", {"torch": "0.0"}),
                                          ("extra", {"note": "edited by hand"})])
def test_informational_fields_may_be_edited(field, value, student, tmp_path):
    folder = _edit(student, tmp_path / "edited", **{field: value})
    enc = OnnxEncoder(folder)
    assert getattr(enc.manifest, field) == value
    assert enc.fingerprint == Manifest.load(student).fingerprint
    np.testing.assert_array_equal(enc.encode(TEXTS), OnnxEncoder(student).encode(TEXTS))


def test_the_fingerprint_changes_with_the_recipe(student):
    m = Manifest.load(student)
    assert m.format_version == 2 and m.manifest_sha256 == m.compute_seal()
    assert m.fingerprint == compute_fingerprint(student, m.files, recipe=m.recipe())
    assert m.fingerprint != files_digest(student, m.files)
    for field, value in _vector_edits(m).items():
        if field in RECIPE_FIELDS:
            recipe = {**m.recipe(), field: value}
            assert compute_fingerprint(student, m.files, recipe=recipe) != m.fingerprint, field


def test_an_edit_that_was_sealed_again_gives_another_fingerprint(student, tmp_path):
    """What a re-export with another maximum length does: the vectors differ, so the fingerprint does
    (an index made with the old one then refuses the new model instead of skipping its documents)."""
    import dataclasses

    folder = tmp_path / "resealed"
    shutil.copytree(student, folder)
    m = Manifest.load(folder)
    resealed = dataclasses.replace(m, max_seq_length=8).seal(folder)
    assert resealed.fingerprint != m.fingerprint
    enc = OnnxEncoder(folder)
    assert enc.fingerprint == resealed.fingerprint and enc.max_seq_length == 8


def _legacy(src: Path, dst: Path) -> Path:
    """``src`` as esdistill wrote it before the seal: format 1, fingerprint over the files only."""
    shutil.copytree(src, dst)
    raw = json.loads((dst / MANIFEST_NAME).read_text())
    raw.pop("manifest_sha256")
    raw["format_version"] = 1
    raw["fingerprint"] = files_digest(dst, raw["files"])
    (dst / MANIFEST_NAME).write_text(json.dumps(raw, indent=2))
    return dst


def test_a_folder_from_before_the_seal_loads_with_one_warning(student, tmp_path, caplog):
    folder = _legacy(student, tmp_path / "old")
    with caplog.at_level(logging.WARNING, logger="esdistill.plugin.manifest"):
        enc = OnnxEncoder(folder)
        OnnxEncoder(folder)
    warnings = [r for r in caplog.records if "older esdistill" in r.getMessage()]
    assert len(warnings) == 1 and "esdistill export" in warnings[0].getMessage()
    assert enc.fingerprint == files_digest(folder, enc.manifest.files)  # old indices keep matching it
    np.testing.assert_array_equal(enc.encode(TEXTS), OnnxEncoder(student).encode(TEXTS))
    (folder / enc.manifest.onnx_file).write_bytes((folder / enc.manifest.onnx_file).read_bytes() + b" ")
    with pytest.raises(FingerprintError, match="do not match its manifest"):
        OnnxEncoder(folder)  # its files are still checked


def test_a_sealed_folder_cannot_pass_as_an_old_one(student, tmp_path):
    folder = _edit(student, tmp_path / "downgraded", format_version=1, max_seq_length=8)
    with pytest.raises(FingerprintError, match="do not match its manifest"):
        OnnxEncoder(folder)


def test_an_unknown_format_version_asks_for_an_upgrade(student, tmp_path):
    from esdistill.plugin import ModelError

    folder = _edit(student, tmp_path / "future", format_version=99)
    with pytest.raises(ModelError, match="upgrade esdistill"):
        OnnxEncoder(folder)
