"""Synthetic training queries generated from the corpus, when the user has none (or too few).

Every generated query remembers its source document, which is taken as relevant: that gives
training positives and a pseudo-dev set for the promotion gate and teacher selection (as in GPL and
Tamber et al.). The built-in :class:`RuleBasedGenerator` needs no model and writes four styles:

* ``keyword``: 2-4 salient terms of the document (tf-idf over the corpus), in random order;
* ``claim``: one informative sentence of the document, shortened (a claim- or sentence-like query);
* ``question``: a question built from the document's key phrases;
* ``title``: the document's title (or the head of its first sentence when it has none).

Anything that maps ``(doc, style) -> query text`` plugs in through :class:`CallableGenerator`
(an LLM or a doc2query seq2seq model). :func:`filter_grounded` then drops the queries the teacher
cannot ground: those whose source document the teacher does not rank near the top of its pool.

Example::

    >>> gen = RuleBasedGenerator.fit(corpus)                                  # doctest: +SKIP
    >>> qs = generate_queries(corpus, gen, per_doc=1, styles=ALL_STYLES)       # doctest: +SKIP
"""


from __future__ import annotations

import importlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence

from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import Doc
from esdistill.plugin.synthetic import (  # noqa: F401 - re-exported: the generators live in the runtime
    _STOP,
    ALL_STYLES,
    QueryGenerator,
    RuleBasedGenerator,
    SyntheticQuery,
    cut_spans,
    generate_queries,
)

__all__ = [
    "ALL_STYLES",
    "CallableGenerator",
    "QueryGenerator",
    "RuleBasedGenerator",
    "SyntheticQuery",
    "filter_grounded",
    "generate_queries",
    "load_generator",
    "mask_source",
    "split_dev",
]

logger = logging.getLogger(__name__)


class CallableGenerator:
    """Adapt any ``fn(doc, style) -> str | None`` (an LLM prompt, a doc2query model) as a generator.

    Example::

        >>> def llm(doc, style):                     # doctest: +SKIP
        ...     return my_llm(f"Write a {style} search query for: {doc.full[:2000]}")
        >>> gen = CallableGenerator(llm)             # doctest: +SKIP
    """

    def __init__(self, fn: Callable[[Doc, str], str | None]) -> None:
        self.fn = fn

    def generate(self, doc: Doc, style: str, rng: random.Random) -> str | None:
        return self.fn(doc, style)


def load_generator(spec: str, corpus: Mapping[str, Doc]) -> QueryGenerator:
    """``rules`` (the built-in generator) or ``package.module:function`` (a :class:`CallableGenerator`).

    Raises:
        ConfigError: the module or function cannot be imported.
    """
    if spec == "rules":
        return RuleBasedGenerator.fit(corpus)
    module, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot load the query generator {spec!r} ({exc}); pass 'rules' or "
                          "'package.module:function' with function(doc, style) -> str | None") from None
    return CallableGenerator(fn)


def filter_grounded(lists: Sequence, *, max_rank: int = 3) -> tuple[list, list]:
    """Keep the candidate lists whose source document the teacher ranks within ``max_rank``.

    A synthetic query whose source document the teacher does not put near the top of the mined pool
    is one the teacher "cannot ground" (too vague, or the generator drifted): training on it would
    teach noise (reranker filtering, as in Tamber et al.).

    Args:
        lists: :class:`~esdistill.export.mining.CandidateList` objects mined with positives.
        max_rank: keep when ``0 <= teacher_rank_of_positive < max_rank``.

    Returns:
        ``(kept, dropped)``.
    """
    kept = [c for c in lists if 0 <= c.teacher_rank_of_positive < max_rank]
    dropped = [c for c in lists if not 0 <= c.teacher_rank_of_positive < max_rank]
    return kept, dropped


def mask_source(doc: Doc, spans: Sequence[str]) -> Doc:
    """``doc`` without the passages its held-out queries were copied from (the inverse cloze task).

    Every copy of a span is cut, from the title and from the body: many corpora repeat the title
    at the head of the body (Cranfield does), and a copy left in either place lets a lexical
    matcher find the source by the copied words. Matching ignores case and runs of whitespace.

    Example:
        >>> mask_source(Doc("d", "Jet engines", "Air is compressed. Fuel burns."), ["Fuel burns."]).text
        'Air is compressed.'
        >>> mask_source(Doc("d", "Jet engines .", "jet engines . Air is compressed."), ["Jet engines ."])
        Doc(doc_id='d', title='', text='Air is compressed.')
    """
    return Doc(doc.doc_id, cut_spans(doc.title, spans), cut_spans(doc.text, spans))


def split_dev(items: Sequence, *, dev_size: int, seed: int = 0) -> tuple[list, list]:
    """Split ``items`` into ``(train, dev)`` at random, with ``dev_size`` items in dev."""
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    dev = set(idx[:dev_size])
    return [x for i, x in enumerate(items) if i not in dev], [x for i, x in enumerate(items) if i in dev]

