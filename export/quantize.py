"""Graph optimisation and int8 quantization of an exported transformer ONNX graph.

Two steps, both offline and hardware-independent:

1. :func:`optimize_graph` fuses the transformer's sub-graphs into onnxruntime's contrib operators
   (``Attention``, ``SkipLayerNormalization``, ``BiasGelu``, ``EmbedLayerNormalization``) with
   ``onnxruntime.transformers.optimizer``. Exact in fp32 (the parity gate checks it), and it lets the
   quantizer see whole attention blocks (``QAttention``).
2. :func:`quantize_int8` quantizes the weights of ``MatMul`` and ``Attention`` to int8 (signed,
   per output channel) with dynamic int8 activations (``onnxruntime.quantization``, the quantizer
   optimum's ``ORTQuantizer`` drives; optimum's wrapper cannot pass the default tensor type the
   fused contrib operators need). Signed weights select onnxruntime's u8s8 kernels, faster than
   u8u8 on CPUs with AVX2 but without VNNI; per-channel scales keep the accuracy that per-tensor
   u8s8 loses to saturation there.

Some models carry huge activation outliers into a few layers (in all-mpnet-base-v2, the inputs of
some FFN output projections), and one int8 scale per tensor cannot represent them: quantizing those
layers costs much of the agreement with the source.
:func:`rank_activation_outliers` ranks the quantizable nodes by ``max|x| / std(x)`` of their input
on a few real texts (one fp32 run), and :func:`quantize_guarded` keeps the worst ones in fp32, as
few as possible: it tries 0, 1, 2, 4, ... excluded nodes until a caller-supplied check passes.

The final accuracy check is :mod:`esdistill.export.parity`, on real texts.

Example::

    >>> optimize_graph("tmp/model.onnx", "tmp/opt.onnx", model_type="bert", num_heads=12,
    ...                hidden_size=384)                              # doctest: +SKIP
    {'Attention': 6, 'SkipLayerNormalization': 12, ...}
    >>> quantize_int8("tmp/opt.onnx", "out/model_int8.onnx")         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from esdistill.export._deps import require
from esdistill.plugin._errors import ConfigError

__all__ = [
    "OPTIMIZER_MODEL_TYPES",
    "QuantizationSettings",
    "optimize_graph",
    "quantize_guarded",
    "quantize_int8",
    "rank_activation_outliers",
]

logger = logging.getLogger(__name__)

#: Hugging Face ``model_type`` -> onnxruntime optimizer model type (encoder-only BERT-like graphs)
OPTIMIZER_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "distilbert": "bert",
    "mpnet": "bert",
    "deberta-v2": "bert",
}
_WEIGHT_TYPES = ("int8", "uint8")


@dataclass(frozen=True)
class QuantizationSettings:
    """How to quantize (the defaults suit AVX2 CPUs without VNNI; see the module docstring).

    Attributes:
        weight_type: ``int8`` (u8s8 kernels) or ``uint8`` (u8u8, what optimum's ``avx2`` preset uses).
        per_channel: one scale per output channel (needed with ``int8`` weights on AVX2).
        reduce_range: 7-bit weights (avoids VPMADDUBSW saturation at a small accuracy cost).
        op_types: operator types whose weights are quantized.
        exclude_nodes: node names kept in fp32.
    """

    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = field(default=("MatMul", "Attention"))
    exclude_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.weight_type not in _WEIGHT_TYPES:
            raise ConfigError(f"weight_type={self.weight_type!r}: expected one of {_WEIGHT_TYPES}")
        if not self.op_types:
            raise ConfigError("op_types is empty: name at least one operator type to quantize")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the chatter (INFO, and a generic pre-processing WARNING) of onnxruntime's tools."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(previous)


def optimize_graph(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, model_type: str,
                   num_heads: int = 0, hidden_size: int = 0) -> dict[str, int]:
    """Fuse attention, layer-norm and GELU sub-graphs; write the result to ``dst``.

    Args:
        src: the ONNX graph exported from the Hugging Face model.
        dst: where to write the optimised graph (weights inside the file).
        model_type: the Hugging Face ``config.model_type``.
        num_heads / hidden_size: from the model config (0: let the optimizer detect them).

    Returns:
        Counts of the fused operators (empty when the architecture is not supported: then ``dst``
        is a plain copy of ``src``, and onnxruntime still applies its generic fusions at load time).
    """
    onnx = require("onnx")
    opt_type = OPTIMIZER_MODEL_TYPES.get(model_type)
    if opt_type is None:
        logger.warning("no offline graph fusions for model type %r; exporting the unfused graph", model_type)
        onnx.save(onnx.load(os.fspath(src)), os.fspath(dst))
        return {}
    optimizer = require("onnxruntime.transformers.optimizer")
    fusion_options = require("onnxruntime.transformers.fusion_options")
    options = fusion_options.FusionOptions(opt_type)
    with _quiet():
        model = optimizer.optimize_model(
            os.fspath(src), model_type=opt_type, num_heads=num_heads, hidden_size=hidden_size,
            optimization_options=options, opt_level=0, use_gpu=False,
        )
        stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        model.save_model_to_file(os.fspath(dst))
    logger.info("graph fusions: %s", stats)
    return stats


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                  settings: QuantizationSettings | None = None) -> Path:
    """Dynamic int8 quantization of ``src`` (weights int8 offline, activations at run time).

    Args:
        src: an fp32 ONNX graph (ideally from :func:`optimize_graph`).
        dst: the quantized graph to write.
        settings: weight type, per-channel, reduce-range and operator types.

    Returns:
        ``dst`` as a :class:`~pathlib.Path`.
    """
    settings = settings or QuantizationSettings()
    onnx = require("onnx")
    q = require("onnxruntime.quantization")
    weight_type = q.QuantType.QInt8 if settings.weight_type == "int8" else q.QuantType.QUInt8
    with _quiet():
        q.quantize_dynamic(
            os.fspath(src), os.fspath(dst),
            op_types_to_quantize=list(settings.op_types),
            nodes_to_exclude=list(settings.exclude_nodes),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            weight_type=weight_type,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": True},
        )
    return Path(dst)


def _weight_nodes(model: object, op_types: Sequence[str]) -> list[object]:
    inits = {i.name for i in model.graph.initializer}  # type: ignore[attr-defined]
    return [n for n in model.graph.node  # type: ignore[attr-defined]
            if n.op_type in op_types and len(n.input) > 1 and n.input[1] in inits]


def rank_activation_outliers(src: str | os.PathLike[str], feeds: Sequence[dict[str, np.ndarray]], *,
                             op_types: Sequence[str] = ("MatMul", "Attention")) -> list[tuple[str, float]]:
    """Quantizable nodes ranked by how badly their input fits one int8 scale, worst first.

    Runs the fp32 graph once per feed with each weight node's input activation exposed, and scores a
    node by ``max|x| / std(x)`` over all feeds (padding included: feed unpadded, one text each).

    Args:
        src: the fp32 ONNX graph.
        feeds: input dicts (``input_ids``, ``attention_mask``, ...), one text each.
        op_types: operator types that will be quantized.

    Returns:
        ``[(node_name, score), ...]``, highest score first.
    """
    onnx = require("onnx")
    ort = require("onnxruntime")
    model = onnx.load(os.fspath(src))
    nodes = _weight_nodes(model, op_types)
    inputs = sorted({n.input[0] for n in nodes})
    known = {o.name for o in model.graph.output}
    for name in inputs:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(dir=Path(src).parent, prefix=".stats-") as tmp:
        path = Path(tmp) / "stats.onnx"
        onnx.save(model, os.fspath(path))
        del model
        so = ort.SessionOptions()
        so.log_severity_level = 3
        session = ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        peak = dict.fromkeys(inputs, 0.0)
        total = dict.fromkeys(inputs, 0.0)
        squares = dict.fromkeys(inputs, 0.0)
        count = dict.fromkeys(inputs, 0)
        for feed in feeds:
            outs = session.run(inputs, {k: v for k, v in feed.items() if k in wanted})
            for name, arr in zip(inputs, outs):
                x = np.asarray(arr, dtype=np.float64)
                peak[name] = max(peak[name], float(np.abs(x).max()))
                total[name] += float(x.sum())
                squares[name] += float((x * x).sum())
                count[name] += x.size
    score = {}
    for name in inputs:
        n = max(count[name], 1)
        var = max(squares[name] / n - (total[name] / n) ** 2, 0.0)
        score[name] = peak[name] / (var ** 0.5 + 1e-12)
    ranked = [(n.name, score[n.input[0]]) for n in nodes]
    return sorted(ranked, key=lambda x: -x[1])


def quantize_guarded(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                     accept: Callable[[Path], tuple[bool, dict[str, float]]],
                     feeds: Sequence[dict[str, np.ndarray]],
                     settings: QuantizationSettings | None = None,
                     steps: Sequence[int] = (0, 1, 2, 4, 6, 8, 12, 16)) -> tuple[QuantizationSettings, list[dict]]:
    """Quantize ``src``, keeping the fewest outlier-heavy nodes in fp32 that make ``accept`` pass.

    Args:
        src: the fp32 graph.
        dst: the quantized graph to write (left at the last attempt when none passes).
        accept: checks a written ``dst``; returns ``(ok, metrics)``.
        feeds: unpadded single-text inputs for :func:`rank_activation_outliers`.
        settings: base settings (their ``exclude_nodes`` are always excluded).
        steps: how many of the worst-ranked nodes to exclude, tried in order.

    Returns:
        The settings used for the written ``dst`` and a log of every attempt.
    """
    base = settings or QuantizationSettings()
    attempts: list[dict] = []
    ranked: list[tuple[str, float]] | None = None
    for k in steps:
        if k and ranked is None:
            ranked = [r for r in rank_activation_outliers(src, feeds, op_types=base.op_types)
                      if r[0] not in base.exclude_nodes]
        if ranked is not None and k > len(ranked):
            break
        extra = tuple(name for name, _ in (ranked or [])[:k])
        current = replace(base, exclude_nodes=base.exclude_nodes + extra)
        quantize_int8(src, dst, settings=current)
        ok, metrics = accept(Path(dst))
        attempts.append({"excluded": list(extra), "passed": ok, **metrics})
        logger.info("int8 with %d node(s) kept in fp32: %s %s", len(current.exclude_nodes),
                    "accepted" if ok else "rejected", metrics)
        if ok:
            return current, attempts
    return current, attempts
