"""The README's main job, ``esdistill demo``, end to end with the packaged models on the shipped demo
corpus (fewer synthetic queries than the default, to keep the suite short): a real node, distil,
export, ingest twice, query with and without rerank and the A/B toggle, evaluate."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from esdistill.plugin.cli import main
from esdistill.plugin.manifest import Manifest


@pytest.mark.models
def test_demo_runs_every_step_on_the_packaged_models(es_client, es_url, index_prefix, tmp_path, monkeypatch,
                                                     capsys):
    monkeypatch.setenv("ESDISTILL_ES_URL", es_url)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--index", index_prefix, "--synthetic", "60"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "demo.json").read_text())
    steps = [s["step"] for s in summary["steps"]]
    assert len(steps) == 7 and steps[0].startswith("Elasticsearch") and steps[-1].startswith("Evaluate")
    assert "Demo finished" in printed and "A/B" in printed
    assert summary["distill"]["gate"]["metric"] == "nDCG@10"
    first, second = summary["ingest"]
    assert first["indexed"] == 24 and first["failed"] == 0
    assert second["indexed"] == 0 and second["unchanged"] == 24  # idempotent: nothing re-embedded
    assert int(es_client.count(index=index_prefix)["count"]) == 24
    for mode in ("bm25", "knn", "hybrid", "knn+rerank"):
        assert summary["eval"][mode]["ndcg@10"] >= 0.8, (mode, summary["eval"][mode])
    exported = [Manifest.load(p.parent) for p in out.rglob("manifest.json")]
    assert any(m.quantization.startswith("int8") and m.kind == "bi-encoder" for m in exported)
