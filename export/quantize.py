"""Graph optimisation and int8 quantization of an exported transformer ONNX graph.

Two steps, both offline and hardware-independent:

1. :func:`optimize_graph` fuses the transformer's sub-graphs into onnxruntime's contrib operators
   (``Attention``, ``SkipLayerNormalization``, ``BiasGelu``, ``EmbedLayerNormalization``) with
   ``onnxruntime.transformers.optimizer``. Exact in fp32 (the parity gate checks it), and it lets the
   quantizer see whole attention blocks (``QAttention``).
2. :func:`quantize_int8` quantizes the weights of ``MatMul`` and ``Attention`` to int8 (signed,
   per output channel) with dynamic int8 activations (``onnxruntime.quantization``, the quantizer
   optimum's ``ORTQuantizer`` drives; optimum's wrapper cannot pass the default tensor type the
   fused contrib operators need). Signed weights select onnxruntime's u8s8 kernels, about twice as
   fast as u8u8 on CPUs with AVX2 but without VNNI; per-channel scales keep the accuracy that
   per-tensor u8s8 loses to saturation there.

Nothing here checks accuracy: :mod:`esdistill.export.parity` does, on real texts.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from esdistill.export._deps import require
from esdistill.plugin._errors import ConfigError

__all__ = ["OPTIMIZER_MODEL_TYPES", "QuantizationSettings", "optimize_graph", "quantize_int8"]

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
    """How to quantize (defaults measured on an AVX2 CPU without VNNI; see the module docstring).

    Attributes:
        weight_type: ``int8`` (u8s8 kernels) or ``uint8`` (u8u8, what optimum's ``avx2`` preset uses).
        per_channel: one scale per output channel (needed with ``int8`` weights on AVX2).
        reduce_range: 7-bit weights (avoids VPMADDUBSW saturation at a small accuracy cost).
        op_types: operator types whose weights are quantized.
    """

    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = field(default=("MatMul", "Attention"))

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
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            weight_type=weight_type,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": True},
        )
    return Path(dst)
