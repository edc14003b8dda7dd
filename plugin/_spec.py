"""The weighted-sum grammar shared by teacher specs and loss specs: ``[WEIGHT*]NAME`` terms joined by
``+`` (``0.7*mpnet+0.3*bm25``, ``kl+0.1*infonce``); a term without a weight weighs 1.

Example:
    >>> weighted_terms("0.7*mpnet + 0.3*bm25", what="teacher", example="0.7*mpnet+0.3*bm25")
    [(0.7, 'mpnet'), (0.3, 'bm25')]
"""

from __future__ import annotations

from esdistill.plugin._errors import ConfigError

__all__ = ["weighted_terms"]


def weighted_terms(spec: str, *, what: str, example: str) -> list[tuple[float, str]]:
    """``spec``'s terms as ``(weight, name)`` pairs, in order (names are not checked here).

    Raises:
        ConfigError: a weight that is not a number (the message names ``what`` and shows ``example``).
    """
    terms: list[tuple[float, str]] = []
    for raw in spec.replace(" ", "").split("+"):
        weight, _, name = raw.rpartition("*")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"bad {what} weight {weight!r} in {spec!r}; write e.g. {example!r}") from None
        terms.append((w, name))
    return terms
