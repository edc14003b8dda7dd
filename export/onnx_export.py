"""Export a sentence-transformers bi-encoder or a cross-encoder to a servable ONNX folder.

``export_model`` turns a model (a folder, a packaged name such as ``minilm``, or a hub id) into a
folder the runtime serves directly::

    out/
      manifest.json      what the model is and the fingerprint of the files below
      model_int8.onnx    (or model.onnx for --quantize none)
      tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt
      parity.json        the parity gate's report

Steps: the transformer goes through optimum's ONNX exporter (fp32), then graph fusions and, for
``int8``, dynamic int8 quantization (:mod:`esdistill.export.quantize`). Pooling, normalisation,
maximum length, prompts and similarity are read from the source's sentence-transformers
configuration and written to the manifest; the runtime reproduces them in numpy. The parity gate
(:mod:`esdistill.export.parity`) then compares the source (torch) with the fp32 and the int8 graph,
*through the runtime encoder itself*, and refuses the export (:class:`ParityError`, every failure
listed) unless ``force``. A refused export leaves ``out`` as it was, apart from
``parity.rejected.json``.

Example::

    >>> res = export_model("minilm", "runs/minilm-int8", quantize="int8",
    ...                    parity_collection="data/scifact")        # doctest: +SKIP
    >>> res.passed, res.manifest.dims, res.manifest.quantization     # doctest: +SKIP
    (True, 384, 'int8-dynamic')
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from esdistill.export._deps import require
from esdistill.export.parity import (
    ParitySample,
    ParityThresholds,
    bi_encoder_metrics,
    check_variant,
    cross_encoder_metrics,
    cross_encoder_pairs,
    query_text,
)
from esdistill.export.quantize import QuantizationSettings, optimize_graph, quantize_guarded
from esdistill.plugin._errors import ConfigError, ModelError, ParityError
from esdistill.plugin.manifest import MANIFEST_NAME, TOKENIZER_FILES, Manifest
from esdistill.plugin.models import resolve_model, sha256_file

__all__ = ["QUANTIZE_CHOICES", "ExportResult", "export_model"]

logger = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("int8", "none")
PARITY_NAME = "parity.json"
REJECTED_NAME = "parity.rejected.json"
_KINDS = ("bi-encoder", "cross-encoder")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_LIBRARIES = ("torch", "transformers", "sentence-transformers", "optimum", "optimum-onnx", "onnx",
              "onnxruntime", "tokenizers", "numpy", "esdistill")
_SIMILARITY = {"cosine": "cosine", "dot": "dot_product", "euclidean": "l2_norm"}


@dataclass
class ExportResult:
    """What :func:`export_model` produced.

    Attributes:
        out: the servable folder.
        manifest: its manifest.
        report: the parity report (as written to ``parity.json``).
        passed: True when every parity threshold held.
        forced: True when thresholds were broken and ``force`` exported anyway.
    """

    out: Path
    manifest: Manifest
    report: dict[str, Any]
    passed: bool
    forced: bool = False


@dataclass
class _Source:
    """The loaded source model and what the manifest needs from it."""

    kind: str
    name: str
    ref: str
    model: Any
    hf_model: Any
    tokenizer: Any
    dims: int
    max_seq_length: int
    pooling: str = "mean"
    normalize: bool = False
    query_prefix: str = ""
    document_prefix: str = ""
    similarity: str = "cosine"
    lowercase: bool = False
    activation: str = "none"
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ public
def export_model(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    quantize: str = "int8",
    kind: str | None = None,
    parity_texts: Sequence[str] | Mapping[str, str] | None = None,
    parity_queries: Sequence[str] | Mapping[str, str] | None = None,
    parity_qrels: Mapping[str, Mapping[str, int]] | None = None,
    parity_collection: str | os.PathLike[str] | None = None,
    parity_docs: int = 500,
    parity_max_queries: int = 200,
    thresholds: ParityThresholds | None = None,
    force: bool = False,
    name: str | None = None,
    quantization: QuantizationSettings | None = None,
    threads: int | None = None,
    document_model: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Export ``model`` to ONNX in ``out``, check parity, write the manifest.

    Args:
        model: a local folder, a packaged name (``minilm``, ``mpnet``) or a hub id.
        out: the folder to write (created; an earlier esdistill export there is replaced).
        quantize: ``int8`` (dynamic int8, the default) or ``none`` (fp32).
        kind: ``bi-encoder`` or ``cross-encoder`` (default: detected from the folder).
        parity_texts: texts to check parity on (a list, or ``{doc_id: text}`` with qrels).
        parity_queries: queries for the retrieval check (list or ``{query_id: text}``).
        parity_qrels: ``{query_id: {doc_id: grade}}`` for the nDCG@10 check.
        parity_collection: a BEIR-layout folder to sample instead of the three above.
        parity_docs / parity_max_queries: sample sizes for ``parity_collection``.
        thresholds: the gate's limits (default :class:`ParityThresholds`).
        force: write the export even when thresholds are broken (recorded in ``parity.json``).
        name: the manifest's model name (default: from the source).
        quantization: quantizer settings (default :class:`QuantizationSettings`).
        threads: onnxruntime threads for the parity run.
        document_model: for a query encoder trained query-side only: the exported folder whose
            document vectors it searches (the one the index was built with). Its fingerprint is
            recorded as ``manifest.document_fingerprint``, so the query hook accepts this model on
            that index and the ingestion hook refuses it.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ConfigError: bad arguments, an unsupported model layout, or ``out`` is a non-empty folder
            that is not an esdistill export.
        ModelError: the model cannot be loaded or exported.
        ParityError: a threshold was broken and ``force`` is False (carries every failure).
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"quantize={quantize!r}: expected one of {QUANTIZE_CHOICES}")
    if kind is not None and kind not in _KINDS:
        raise ConfigError(f"kind={kind!r}: expected one of {_KINDS} (or None to detect it)")
    thresholds = thresholds or ParityThresholds()
    quantization = quantization or QuantizationSettings()
    paired: Manifest | None = None
    if document_model is not None:
        paired = Manifest.load(document_model, verify=True)
        if paired.kind != "bi-encoder":
            raise ConfigError(f"document_model {document_model}: a {paired.kind}, not a bi-encoder export")
    out = Path(out)
    _check_out(out)
    if parity_collection is not None:
        if parity_texts is not None or parity_queries is not None or parity_qrels is not None:
            raise ConfigError("pass either parity_collection or parity_texts/queries/qrels, not both")
        sample = ParitySample.from_collection(parity_collection, max_docs=parity_docs,
                                              max_queries=parity_max_queries)
    else:
        sample = ParitySample.from_inputs(parity_texts, queries=parity_queries, qrels=parity_qrels)

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    ref = resolve_model(model)
    source = _load_source(ref, kind=kind, display=os.fspath(model))
    timings["load_source"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.export-") as tmp_s:
        tmp = Path(tmp_s)
        t = time.perf_counter()
        raw = _onnx_export(source, tmp)
        timings["onnx_export"] = time.perf_counter() - t
        t = time.perf_counter()
        fp32_dir = tmp / "fp32"
        fp32_dir.mkdir()
        config = source.hf_model.config
        fusions = optimize_graph(raw / "model.onnx", fp32_dir / "model.onnx",
                                 model_type=str(getattr(config, "model_type", "")),
                                 num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
                                 hidden_size=int(getattr(config, "hidden_size", 0) or 0))
        timings["optimize"] = time.perf_counter() - t
        tok_files = _copy_tokenizer(raw, fp32_dir)
        libraries = _library_versions()
        extra = {"graph_fusions": fusions, **source.extra}
        variants = {"fp32": (fp32_dir, _write_manifest(fp32_dir, source, "model.onnx", tok_files, "none",
                                                       libraries, name, extra))}
        if quantize == "int8":
            t = time.perf_counter()
            int8_dir = tmp / "int8"
            int8_dir.mkdir()
            _copy_tokenizer(raw, int8_dir)

            def write(settings: QuantizationSettings, attempts: list[dict[str, Any]]) -> Manifest:
                q_extra = {**extra, "quantization_settings": {
                    "weight_type": settings.weight_type, "per_channel": settings.per_channel,
                    "reduce_range": settings.reduce_range, "op_types": list(settings.op_types),
                    "fp32_nodes": list(settings.exclude_nodes), "attempts": attempts}}
                return _write_manifest(int8_dir, source, "model_int8.onnx", tok_files, "int8-dynamic",
                                       libraries, name, q_extra)

            used, attempts = _quantize(source, fp32_dir, int8_dir, sample, thresholds, quantization, write,
                                       threads=threads)
            variants["int8"] = (int8_dir, write(used, attempts))
            timings["quantize"] = time.perf_counter() - t
        t = time.perf_counter()
        results = _run_parity(source, sample, variants, threads=threads)
        timings["parity"] = time.perf_counter() - t
        failures: list[str] = []
        for variant, metrics in results.items():
            metrics_failures = check_variant(variant, source.kind, metrics, thresholds)
            failures += metrics_failures
            results[variant] = {**metrics, "passed": not metrics_failures, "failures": metrics_failures}
        served = "int8" if quantize == "int8" else "fp32"
        report = {
            "model": source.name,
            "source": source.ref,
            "source_sha256": source.sha256,
            "kind": source.kind,
            "served": served,
            "quantization": variants[served][1].quantization,
            "fingerprint": variants[served][1].fingerprint,
            "sample": sample.summary(),
            "thresholds": thresholds.to_dict(),
            "variants": results,
            "failures": failures,
            "passed": not failures,
            "forced": bool(failures) and force,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "libraries": libraries,
        }
        if failures and not force:
            out.mkdir(parents=True, exist_ok=True)
            (out / REJECTED_NAME).write_text(json.dumps(report, indent=2) + "\n")
            raise ParityError(failures, report=report)
        if failures:
            logger.warning("exporting despite %d parity failure(s) (--force): %s", len(failures), failures)
        final_dir, manifest = variants[served]
        manifest.extra = {**manifest.extra, "parity": {"passed": not failures, "forced": report["forced"],
                                                       "sample": sample.summary(),
                                                       "variants": _brief(results)}}
        if paired is not None:
            if int(paired.dims) != int(manifest.dims):
                raise ConfigError(f"document_model {document_model} makes {paired.dims}-dim vectors, this model "
                                  f"{manifest.dims}: a query encoder must match its document model")
            manifest.document_fingerprint = paired.fingerprint
            manifest.extra["document_model"] = {"name": paired.name, "folder": str(document_model)}
        manifest = manifest.seal(final_dir)  # the pairing is part of the seal
        (final_dir / PARITY_NAME).write_text(json.dumps(report, indent=2) + "\n")
        _install(final_dir, out)
    logger.info("exported %s to %s (%s, fingerprint %s) in %.1f s", source.name, out, manifest.quantization,
                manifest.short_fingerprint, time.perf_counter() - t0)
    return ExportResult(out=out, manifest=Manifest.load(out, verify=True), report=report,
                        passed=not failures, forced=report["forced"])


# ------------------------------------------------------------------------------------------ source
def _detect_kind(ref: Path | str) -> str:
    if isinstance(ref, Path):
        if (ref / "modules.json").is_file():
            cfg = ref / "config.json"
            if cfg.is_file() and _is_classifier(cfg) and not (ref / "1_Pooling").exists():
                return "cross-encoder"
            return "bi-encoder"
        cfg = ref / "config.json"
        if cfg.is_file() and _is_classifier(cfg):
            return "cross-encoder"
        raise ConfigError(f"cannot tell what {ref} is: it has neither a sentence-transformers modules.json nor "
                          "a sequence-classification config.json; pass kind='bi-encoder' or 'cross-encoder'")
    return "bi-encoder"


def _is_classifier(config_path: Path) -> bool:
    try:
        archs = json.loads(config_path.read_text()).get("architectures") or []
    except ValueError:
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


def _load_source(ref: Path | str, *, kind: str | None, display: str) -> _Source:
    kind = kind or _detect_kind(ref)
    require("torch")  # a clear error when the export extra is missing
    st = require("sentence_transformers")
    name = Path(ref).name if isinstance(ref, Path) else str(ref).rsplit("/", 1)[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == "bi-encoder":
                model = st.SentenceTransformer(os.fspath(ref), device="cpu")
            else:
                model = st.CrossEncoder(os.fspath(ref), device="cpu")
        except Exception as exc:  # noqa: BLE001 - loaders raise many unrelated types
            raise ModelError(f"cannot load {display!r} as a {kind} ({type(exc).__name__}: {exc})") from None
    model.eval()  # no global torch.set_grad_enabled(False): it would leak into training in this process
    source = _describe_bi_encoder(model, name) if kind == "bi-encoder" else _describe_cross_encoder(model, name)
    source.ref = display
    source.sha256 = _source_sha256(ref)
    return source


def _describe_bi_encoder(model: Any, name: str) -> _Source:
    mods = list(model)
    types = [type(m).__name__ for m in mods]
    if not types or types[0] != "Transformer" or len(types) < 2 or types[1] != "Pooling" \
            or any(t != "Normalize" for t in types[2:]):
        raise ConfigError(f"model {name!r} has modules {types}; esdistill exports Transformer + Pooling "
                          "(+ Normalize). Fold extra layers (e.g. Dense) into the model before exporting.")
    transformer, pooling = mods[0], mods[1]
    mode = pooling.pooling_mode
    if not isinstance(mode, str) or mode not in ("mean", "cls", "max", "lasttoken"):
        raise ConfigError(f"model {name!r} pools with {mode!r}; the runtime supports mean, cls, max, lasttoken")
    prompts = dict(getattr(model, "prompts", None) or {})
    default = prompts.get(getattr(model, "default_prompt_name", None) or "", "") or ""
    query_prefix = prompts.get("query") or default
    document_prefix = prompts.get("document") or prompts.get("passage") or prompts.get("corpus") or default
    if not getattr(pooling, "include_prompt", True) and (query_prefix or document_prefix):
        raise ConfigError(f"model {name!r} excludes its prompts from pooling (include_prompt=False), which "
                          "the runtime does not reproduce")
    normalize = len(types) > 2
    sim_name = getattr(model, "similarity_fn_name", None) or "cosine"
    if sim_name not in _SIMILARITY:
        raise ConfigError(f"model {name!r} uses {sim_name!r} similarity, which Elasticsearch cannot index; "
                          f"supported: {sorted(_SIMILARITY)}")
    similarity = _SIMILARITY[sim_name]
    if similarity == "dot_product" and not normalize:
        similarity = "max_inner_product"  # ES's dot_product requires unit-length vectors
    max_len = model.max_seq_length or getattr(transformer.tokenizer, "model_max_length", 512)
    return _Source(
        kind="bi-encoder", name=name, ref=name, model=model, hf_model=transformer.auto_model,
        tokenizer=transformer.tokenizer, dims=_embedding_dimension(model),
        max_seq_length=int(min(max_len, 100_000)), pooling=mode, normalize=normalize,
        query_prefix=query_prefix, document_prefix=document_prefix, similarity=similarity,
        lowercase=bool(getattr(transformer, "do_lower_case", False)),
    )


def _embedding_dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def _describe_cross_encoder(model: Any, name: str) -> _Source:
    hf = model.model
    labels = int(getattr(hf.config, "num_labels", 1))
    if labels != 1:
        raise ConfigError(f"cross-encoder {name!r} has {labels} labels; esdistill serves one-logit rerankers")
    act = type(model.activation_fn).__name__
    activation = {"Sigmoid": "sigmoid", "Identity": "none"}.get(act)
    if activation is None:
        raise ConfigError(f"cross-encoder {name!r} applies {act}; the runtime supports Sigmoid and Identity")
    max_len = getattr(model, "max_seq_length", None) or getattr(model.tokenizer, "model_max_length", 512)
    return _Source(kind="cross-encoder", name=name, ref=name, model=model, hf_model=hf, tokenizer=model.tokenizer,
                   dims=1, max_seq_length=int(min(max_len, 100_000)), activation=activation)


def _source_sha256(ref: Path | str) -> str:
    if isinstance(ref, Path):
        candidates = [ref]
        modules = ref / "modules.json"
        if modules.is_file():
            try:
                for m in json.loads(modules.read_text()):
                    if str(m.get("type", "")).endswith("Transformer"):
                        candidates.insert(0, ref / m.get("path", ""))
            except (ValueError, AttributeError):
                pass
        for folder in candidates:
            for fname in _WEIGHT_FILES:
                if (folder / fname).is_file():
                    return sha256_file(folder / fname)
        return ""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return ""
    for fname in _WEIGHT_FILES:
        found = try_to_load_from_cache(str(ref), fname)
        if isinstance(found, str) and os.path.isfile(found):
            return sha256_file(Path(found))
    return ""


# ------------------------------------------------------------------------------------------ export
def _onnx_export(source: _Source, tmp: Path) -> Path:
    """Save the transformer and its tokenizer, run optimum's exporter; return the folder."""
    hf_dir, raw = tmp / "hf", tmp / "raw"
    source.hf_model.save_pretrained(hf_dir)
    source.tokenizer.save_pretrained(hf_dir)
    if not (hf_dir / "tokenizer.json").is_file():
        raise ConfigError(f"{source.name}: its tokenizer has no tokenizer.json (a 'fast' tokenizer is needed "
                          "by the runtime); convert it with transformers' AutoTokenizer(use_fast=True)")
    exporters = require("optimum.exporters.onnx")
    task = "feature-extraction" if source.kind == "bi-encoder" else "text-classification"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exporters.main_export(os.fspath(hf_dir), output=os.fspath(raw), task=task, library_name="transformers",
                                  do_validation=False, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - optimum raises many unrelated types
            raise ModelError(f"optimum could not export {source.name} to ONNX ({type(exc).__name__}: {exc})") from None
    for fname in TOKENIZER_FILES:
        if (hf_dir / fname).is_file() and not (raw / fname).is_file():
            shutil.copy2(hf_dir / fname, raw / fname)
    return raw


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    names = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    for f in names:
        shutil.copy2(src / f, dst / f)
    return names


def _library_versions() -> dict[str, str]:
    out = {}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def _write_manifest(folder: Path, source: _Source, onnx_file: str, tok_files: list[str], quantization: str,
                    libraries: dict[str, str], name: str | None, extra: dict[str, Any]) -> Manifest:
    files = [onnx_file, *tok_files]
    manifest = Manifest(
        name=name or source.name,
        kind=source.kind,
        onnx_file=onnx_file,
        files=files,
        fingerprint="",  # set by seal(): the files and the fields that change the vectors
        dims=source.dims,
        max_seq_length=source.max_seq_length,
        pooling=source.pooling,
        normalize=source.normalize,
        query_prefix=source.query_prefix,
        document_prefix=source.document_prefix,
        lowercase=source.lowercase,
        similarity=source.similarity,
        quantization=quantization,
        output_name="last_hidden_state" if source.kind == "bi-encoder" else "logits",
        pooled_in_graph=False,
        activation=source.activation,
        source_model=source.ref,
        source_sha256=source.sha256,
        libraries=libraries,
        extra=dict(extra),
    )
    return manifest.seal(folder)


# ------------------------------------------------------------------------------------------ int8
_CALIBRATION_TEXTS = 64
_OUTLIER_TEXTS = 8


def _quantize(source: _Source, fp32_dir: Path, int8_dir: Path, sample: ParitySample, thresholds: ParityThresholds,
              settings: QuantizationSettings, write: Any, *, threads: int | None,
              ) -> tuple[QuantizationSettings, list[dict[str, Any]]]:
    """Quantize, keeping outlier-heavy nodes in fp32 until int8 agrees with fp32 on sample texts.

    The check compares with the fp32 ONNX graph (cheap, no torch) using the gate's own int8
    thresholds (the cosines and, when the sample has judged queries, the nDCG@10 drop); the gate
    itself then compares with the source model. Without the nDCG@10 check here, a fine-tuned
    student whose cosines pass at the first attempt could fail the gate's nDCG@10 limit at the end
    of a long training run, with fp32 nodes left untried.
    """
    from esdistill.plugin.encoder import load_tokenizer, pad_batch

    texts = [source.document_prefix + t for t in list(sample.docs.values())[:_CALIBRATION_TEXTS]]
    tok, pad_id = load_tokenizer(fp32_dir, source.max_seq_length)
    feeds = [pad_batch([e], pad_id, with_type_ids=True) for e in tok.encode_batch(texts[:_OUTLIER_TEXTS])]
    if source.kind == "bi-encoder":
        from esdistill.plugin.encoder import OnnxEncoder

        fp32 = OnnxEncoder(fp32_dir, threads=threads)
        reference = fp32.encode(texts)
        judged = bool(sample.queries) and bool(sample.qrels)
        if judged:
            docs, queries = list(sample.docs.values()), list(sample.queries.values())
            ref_d, ref_q = fp32.encode(docs, kind="document"), fp32.encode(queries, kind="query")

        def accept(_: Path) -> tuple[bool, dict[str, float]]:
            write(settings, [])
            enc = OnnxEncoder(int8_dir, threads=threads)
            got = enc.encode(texts)
            cos = np.sum(got * reference, axis=1) / np.maximum(
                np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1), 1e-12)
            metrics = {"cosine_min": round(float(cos.min()), 6), "cosine_mean": round(float(cos.mean()), 6)}
            ok = metrics["cosine_min"] >= thresholds.int8_min_cosine \
                and metrics["cosine_mean"] >= thresholds.int8_min_mean_cosine
            if ok and judged:
                m = bi_encoder_metrics(sample, ref_d, enc.encode(docs, kind="document"), ref_q,
                                       enc.encode(queries, kind="query"), similarity=source.similarity)
                if "ndcg10_delta" in m:
                    metrics["ndcg10_delta_vs_fp32"] = round(m["ndcg10_delta"], 6)
                    ok = -m["ndcg10_delta"] <= thresholds.int8_max_ndcg10_drop
            return ok, metrics
    else:
        from esdistill.plugin.cross_encoder import OnnxCrossEncoder

        lists = cross_encoder_pairs(sample, candidates=8, max_queries=8)
        pairs = [(query_text(sample, q), sample.docs[d]) for q, ids in lists for d in ids]
        reference = OnnxCrossEncoder(fp32_dir, threads=threads).score_pairs(pairs)

        def accept(_: Path) -> tuple[bool, dict[str, float]]:
            write(settings, [])
            got = OnnxCrossEncoder(int8_dir, threads=threads).score_pairs(pairs)
            pearson = float(np.corrcoef(got, reference)[0, 1]) if np.std(got) > 0 and np.std(reference) > 0 \
                else float(np.allclose(got, reference))
            metrics = {"score_pearson": round(pearson, 6)}
            return pearson >= thresholds.int8_min_score_pearson, metrics

    return quantize_guarded(fp32_dir / "model.onnx", int8_dir / "model_int8.onnx", accept=accept, feeds=feeds,
                            settings=settings)


# ------------------------------------------------------------------------------------------ parity
def _run_parity(source: _Source, sample: ParitySample, variants: dict[str, tuple[Path, Manifest]], *,
                threads: int | None) -> dict[str, dict[str, float]]:
    docs = list(sample.docs.values())
    queries = list(sample.queries.values())
    results: dict[str, dict[str, float]] = {}
    if source.kind == "bi-encoder":
        from esdistill.plugin.encoder import OnnxEncoder

        def st_encode(texts: list[str], prefix: str) -> np.ndarray:
            if not texts:
                return np.zeros((0, source.dims), np.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(source.model.encode(texts, prompt=prefix, batch_size=32,
                                                      convert_to_numpy=True, show_progress_bar=False))

        ref_d = st_encode(docs, source.document_prefix)
        ref_q = st_encode(queries, source.query_prefix) if queries else None
        for variant, (folder, _) in variants.items():
            enc = OnnxEncoder(folder, threads=threads)
            cand_d = enc.encode(docs, kind="document")
            cand_q = enc.encode(queries, kind="query") if queries else None
            results[variant] = bi_encoder_metrics(sample, ref_d, cand_d, ref_q, cand_q, similarity=source.similarity)
        return results

    from esdistill.plugin.cross_encoder import OnnxCrossEncoder

    lists = cross_encoder_pairs(sample)
    pairs = [[(query_text(sample, qid), sample.docs[d]) for d in ids] for qid, ids in lists]
    flat = [p for group in pairs for p in group]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_flat = np.asarray(source.model.predict(flat, batch_size=32, show_progress_bar=False), dtype=np.float64)
    ref_scores = _split(ref_flat, pairs)
    for variant, (folder, _) in variants.items():
        ce = OnnxCrossEncoder(folder, threads=threads)
        cand_scores = _split(ce.score_pairs(flat), pairs)
        results[variant] = cross_encoder_metrics(sample, lists, ref_scores, cand_scores)
    return results


def _split(flat: np.ndarray, groups: list[list[Any]]) -> list[np.ndarray]:
    out, start = [], 0
    for g in groups:
        out.append(np.asarray(flat[start:start + len(g)]))
        start += len(g)
    return out


def _brief(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v: {k: (round(x, 6) if isinstance(x, float) else x) for k, x in m.items() if k != "failures"}
            for v, m in results.items()}


# ------------------------------------------------------------------------------------------ output
def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file() \
            and not (out / REJECTED_NAME).is_file():
        raise ConfigError(f"--out {out} is a non-empty folder that is not an esdistill export; "
                          "pass a new or empty folder (esdistill only replaces its own exports)")


def _install(staged: Path, out: Path) -> None:
    """Replace ``out`` with ``staged`` (same file system) so a reader never sees half an export."""
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(backup)
    try:
        staged.rename(out)
    except OSError:
        if backup is not None:
            backup.rename(out)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
