"""esdistill training and export: distil a teacher into a student, export it to ONNX.

Needs the ``export`` extra (torch, transformers, sentence-transformers, optimum):
``pip install 'esdistill[export]'``. May import :mod:`esdistill.plugin`; the runtime never imports
this package.
"""

from __future__ import annotations

__all__: list[str] = []
