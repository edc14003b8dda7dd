"""The team's own lexical query: a JSON template with a ``{{query}}`` placeholder for BM25 and hybrid search.

Without a template, the lexical leg of ``bm25`` and ``hybrid`` search is a ``multi_match`` over the
index's text fields. A search team usually has a lexical query of its own (field boosts, an analyzer
with synonyms, a popularity factor); a :class:`LexicalTemplate` carries it into esdistill unchanged::

    {"bool": {"should": [
        {"match": {"title": {"query": "{{query}}", "boost": 3}}},
        {"match": {"text": "{{query}}"}}
    ]}}

**Substitution is structural.** The template is parsed as JSON once; at search time every *string
value* holding ``{{query}}`` gets the query text put in its place, on the parsed object. The query
never goes through JSON text, so no quote, backslash or brace in it can leave its string (a query
``"}, {"script": ...`` stays one string). The placeholder may stand alone (``"{{query}}"``) or sit
inside a longer string (``"{{query}} manual"``); it may not appear in an object key.

**Checked at load.** The template must be valid JSON, one query clause, hold the placeholder at least
once, and, rendered, pass the allow-list of :func:`esdistill.plugin.filters.validate_filters` with
scoring clauses allowed (``function_score`` with ``field_value_factor``/``weight`` functions only):
nothing that reads other indices or runs scripts. Search filters are applied around it, as the
``bool.filter`` of the lexical leg, exactly as for the default query.

Example:
    >>> t = LexicalTemplate.from_json('{"match": {"title": {"query": "{{query}}", "boost": 2}}}')
    >>> t.render('say "hi"')
    {'match': {'title': {'query': 'say "hi"', 'boost': 2}}}
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from esdistill.plugin._errors import ConfigError
from esdistill.plugin.filters import FilterNotAllowed, validate_filters

__all__ = ["PLACEHOLDER", "LexicalTemplate"]

#: the text a template holds where the query goes
PLACEHOLDER = "{{query}}"
#: the query rendered into a template while checking it
_PROBE = "esdistill probe query"
_MAX_TEMPLATE_BYTES = 1 << 20


class LexicalTemplate:
    """A lexical query clause with ``{{query}}`` placeholders, checked against the allow-list.

    Args:
        clause: the parsed template: one Elasticsearch query clause (a mapping with one key).
        source: where it came from, for error messages (a file name, or ``"(inline)"``).

    Raises:
        ConfigError: the clause holds no placeholder, has one in an object key, or is not a
            single query clause.
        FilterNotAllowed: (a ConfigError) a clause outside the allow-list, named by its path.
    """

    def __init__(self, clause: Mapping[str, Any], *, source: str = "(inline)") -> None:
        self.source = source
        if not isinstance(clause, Mapping) or len(clause) != 1:
            raise ConfigError(f"lexical template {source}: must be one Elasticsearch query clause, an object "
                              'with one key such as {"match": {"title": "{{query}}"}}')
        found = _count(clause, source)
        if found == 0:
            raise ConfigError(f"lexical template {source}: holds no {PLACEHOLDER} placeholder; put it where the "
                              'query text goes, e.g. {"match": {"title": "{{query}}"}}')
        try:
            validate_filters(_substitute(clause, _PROBE), scoring=True)
        except FilterNotAllowed as exc:
            problems = ["template" + p[len("filters"):] if p.startswith("filters") else p for p in exc.problems]
            raise FilterNotAllowed([f"lexical template {source}: {p}" for p in problems]) from None
        self._clause = copy.deepcopy(dict(clause))
        self.placeholders = found

    @classmethod
    def from_json(cls, text: str, *, source: str = "(inline)") -> LexicalTemplate:
        """Parse a template from JSON text.

        Raises:
            ConfigError: not JSON, or not a valid template (see the class).
        """
        try:
            clause = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"lexical template {source} is not valid JSON ({exc}); write one query clause "
                              'with "{{query}}" as a string value') from None
        return cls(clause, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LexicalTemplate:
        """Read a template file (JSON).

        Raises:
            ConfigError: the file cannot be read, is too large, or is not a valid template.
        """
        p = Path(path)
        try:
            if p.stat().st_size > _MAX_TEMPLATE_BYTES:
                raise ConfigError(f"lexical template {p} is larger than {_MAX_TEMPLATE_BYTES} bytes")
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"lexical template {p} cannot be read ({exc.strerror or exc}); check the path") from None
        except UnicodeDecodeError:
            raise ConfigError(f"lexical template {p} is not UTF-8 text") from None
        return cls.from_json(text, source=str(p))

    @classmethod
    def coerce(cls, value: Any) -> LexicalTemplate | None:
        """``None``, a template, a parsed clause (mapping) or a file path, as a template (or None)."""
        if value is None or isinstance(value, LexicalTemplate):
            return value
        if isinstance(value, Mapping):
            return cls(value)
        if isinstance(value, (str, os.PathLike)):
            return cls.load(value)
        raise ConfigError(f"lexical_template must be a LexicalTemplate, a clause or a file path, got "
                          f"{type(value).__name__}")

    def render(self, query: str) -> dict[str, Any]:
        """The clause with every placeholder replaced by ``query`` (a new object each call)."""
        return _substitute(self._clause, query)

    def to_dict(self) -> dict[str, Any]:
        """The template as parsed (placeholders kept)."""
        return copy.deepcopy(self._clause)

    def __repr__(self) -> str:
        return f"LexicalTemplate({self.source!r}, placeholders={self.placeholders})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LexicalTemplate) and other._clause == self._clause

    __hash__ = None  # type: ignore[assignment]


def _count(node: Any, source: str) -> int:
    if isinstance(node, Mapping):
        n = 0
        for key, value in node.items():
            if isinstance(key, str) and PLACEHOLDER in key:
                raise ConfigError(f"lexical template {source}: {PLACEHOLDER} in the key {key[:60]!r}; the "
                                  "placeholder may only stand in a string value")
            n += _count(value, source)
        return n
    if isinstance(node, list):
        return sum(_count(v, source) for v in node)
    return node.count(PLACEHOLDER) if isinstance(node, str) else 0


def _substitute(node: Any, query: str) -> Any:
    """A copy of ``node`` with the placeholder replaced inside string values (never in keys)."""
    if isinstance(node, Mapping):
        return {k: _substitute(v, query) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, query) for v in node]
    if isinstance(node, str) and PLACEHOLDER in node:
        return node.replace(PLACEHOLDER, query)
    return node
