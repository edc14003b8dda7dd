"""Search filters a client may send: an allow-list of Elasticsearch query clauses, checked recursively.

Filters go into the kNN ``filter`` and the BM25 ``bool.filter`` of a search that runs with the
*service's* credentials. Some query clauses read other documents while they run, from any index those
credentials reach: a ``terms`` lookup (``{"terms": {"f": {"index", "id", "path"}}}``), ``geo_shape`` /
``shape`` with ``indexed_shape``, ``more_like_this`` with ``like`` documents, ``percolate`` with a
stored document. Others run scripts (``script``, ``script_score``, ``function_score``, ``terms_set``)
or decode a query hidden from any check (``wrapper``). Passing such a clause through would let a
client read what the service can read instead of what it serves, and tell existing index names from
missing ones by the answers.

So a filter is accepted only when every clause in it is one of :data:`ALLOWED_CLAUSES`, with the
parameters listed for it and values of the expected shape: scalars, lists of scalars, and nested
clauses only where a compound clause (``bool``, ``constant_score``, ``dis_max``, ``nested``) takes
them. Anything else (an unknown clause, an unknown parameter, an object where a value belongs, such as
a terms lookup) is refused with a :class:`FilterNotAllowed` naming the path of every problem::

    >>> validate_filters({"bool": {"filter": [{"term": {"lang": "en"}}, {"range": {"year": {"gte": 2020}}}]}})
    [{'bool': {'filter': [{'term': {'lang': 'en'}}, {'range': {'year': {'gte': 2020}}}]}}]
    >>> validate_filters([{"terms": {"tags": {"index": "users", "id": "1", "path": "tags"}}}])
    Traceback (most recent call last):
    ...
    esdistill.plugin.filters.FilterNotAllowed: filter refused: filters[0].terms.tags: a terms lookup (an object) \
reads another document and is not allowed; give the values as a list, e.g. ["a", "b"]

Depth, the number of clauses and the number of listed values are bounded (:data:`MAX_DEPTH`,
:data:`MAX_CLAUSES`, :data:`MAX_VALUES`), so a filter cannot make a query of unbounded cost either.
What is returned is a plain copy (dicts, lists, scalars) of exactly what was checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from esdistill.plugin._errors import ConfigError

__all__ = [
    "ALLOWED_CLAUSES",
    "MAX_CLAUSES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "SCORING_CLAUSES",
    "FilterNotAllowed",
    "validate_filters",
]

#: deepest nesting of clauses (a leaf clause at the top is depth 1)
MAX_DEPTH = 10
#: most clauses in all the filters of one search
MAX_CLAUSES = 256
#: most values in all ``terms`` and ``ids`` lists of one search
MAX_VALUES = 10_000
#: problems named in one error message (all of them are on :attr:`FilterNotAllowed.problems`)
_SHOWN = 10

# value kinds a parameter may take
_SCALAR, _STR, _NUM, _INT, _BOOL = "scalar", "string", "number", "integer", "boolean"
_INT_OR_STR = "integer or string"
_STRS = "list of strings"
_SCALARS = "list of values"
_CLAUSE = "clause"
_CLAUSES = "clause or list of clauses"
_CLAUSE_LIST = "list of clauses"

_COMMON = {"boost": _NUM, "_name": _STR}

#: clauses on one field: ``{"term": {"FIELD": VALUE | {params}}}``; the shorthand kind (None: no
#: shorthand) and the parameters of the object form
_FIELD_CLAUSES: dict[str, tuple[str | None, dict[str, str]]] = {
    "term": (_SCALAR, {"value": _SCALAR, "case_insensitive": _BOOL, **_COMMON}),
    "prefix": (_STR, {"value": _STR, "case_insensitive": _BOOL, "rewrite": _STR, **_COMMON}),
    "wildcard": (_STR, {"value": _STR, "wildcard": _STR, "case_insensitive": _BOOL, "rewrite": _STR,
                        **_COMMON}),
    "range": (None, {"gt": _SCALAR, "gte": _SCALAR, "lt": _SCALAR, "lte": _SCALAR, "format": _STR,
                     "time_zone": _STR, "relation": _STR, **_COMMON}),
    "match": (_SCALAR, {"query": _SCALAR, "operator": _STR, "minimum_should_match": _INT_OR_STR,
                        "fuzziness": _INT_OR_STR, "analyzer": _STR, "lenient": _BOOL,
                        "zero_terms_query": _STR,
                        "prefix_length": _INT, "max_expansions": _INT, "fuzzy_transpositions": _BOOL,
                        "auto_generate_synonyms_phrase_query": _BOOL, **_COMMON}),
    "match_phrase": (_SCALAR, {"query": _SCALAR, "analyzer": _STR, "slop": _INT, "zero_terms_query": _STR,
                               **_COMMON}),
}

#: clauses with named parameters only: ``{"exists": {"field": "f"}}``; (parameters, required ones)
_PARAM_CLAUSES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "exists": ({"field": _STR, **_COMMON}, ("field",)),
    "ids": ({"values": _SCALARS, **_COMMON}, ("values",)),
    "match_all": (dict(_COMMON), ()),
    "match_none": (dict(_COMMON), ()),
    "multi_match": ({"query": _SCALAR, "fields": _STRS, "type": _STR, "operator": _STR,
                     "minimum_should_match": _INT_OR_STR, "fuzziness": _INT_OR_STR, "analyzer": _STR,
                     "lenient": _BOOL, "tie_breaker": _NUM, "zero_terms_query": _STR, "slop": _INT,
                     "prefix_length": _INT, "max_expansions": _INT, **_COMMON}, ("query",)),
    "bool": ({"must": _CLAUSES, "filter": _CLAUSES, "should": _CLAUSES, "must_not": _CLAUSES,
              "minimum_should_match": _INT_OR_STR, **_COMMON}, ()),
    "constant_score": ({"filter": _CLAUSE, **_COMMON}, ("filter",)),
    "dis_max": ({"queries": _CLAUSE_LIST, "tie_breaker": _NUM, **_COMMON}, ("queries",)),
    # no inner_hits: it can carry script_fields and fetch more than the hits
    "nested": ({"path": _STR, "query": _CLAUSE, "score_mode": _STR, "ignore_unmapped": _BOOL, **_COMMON},
               ("path", "query")),
}

_FIELD_VALUE_FACTOR = {"field": _STR, "factor": _NUM, "modifier": _STR, "missing": _NUM}
_OBJECT = "object"  # checked by the caller (function_score), never by value()
#: one entry of ``function_score.functions``
_FUNCTION = {"filter": _CLAUSE, "weight": _NUM, "field_value_factor": _OBJECT}
_FUNCTION_SCORE = {"query": _CLAUSE, "functions": _OBJECT, "field_value_factor": _OBJECT, "weight": _NUM,
                   "boost_mode": _STR, "score_mode": _STR, "max_boost": _NUM, "min_score": _NUM, **_COMMON}

#: clauses accepted only with ``scoring=True`` (an operator's lexical template, never a client's filter)
SCORING_CLAUSES: tuple[str, ...] = ("function_score",)

#: the clause types a filter may use, sorted
ALLOWED_CLAUSES: tuple[str, ...] = tuple(sorted({*_FIELD_CLAUSES, *_PARAM_CLAUSES, "terms"}))

#: why some well-known clauses are refused (the message says it; others are simply not listed)
_WHY_NOT = {
    "script": "runs a script",
    "script_score": "runs a script",
    "function_score": "can run scripts",
    "terms_set": "can run a script",
    "wrapper": "hides a query from this check",
    "geo_shape": "can read a shape from another index through indexed_shape",
    "shape": "can read a shape from another index through indexed_shape",
    "more_like_this": "can read documents from other indices through like",
    "percolate": "can read a stored document from another index",
    "has_child": "joins other documents",
    "has_parent": "joins other documents",
    "query_string": "accepts a query language this check cannot see into",
    "simple_query_string": "accepts a query language this check cannot see into",
}


class FilterNotAllowed(ConfigError):
    """A search filter uses a clause, parameter or value shape outside the allow-list.

    Attributes:
        problems: one ``"path: what is wrong"`` line per problem found (all of them).
    """

    def __init__(self, problems: list[str]) -> None:
        shown = "; ".join(problems[:_SHOWN])
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        super().__init__(f"filter refused: {shown}{more}")
        self.problems = list(problems)


def validate_filters(
    clauses: Any,
    *,
    max_depth: int = MAX_DEPTH,
    max_clauses: int = MAX_CLAUSES,
    max_values: int = MAX_VALUES,
    scoring: bool = False,
) -> list[dict[str, Any]]:
    """Check search filters against the allow-list and return them as a list of plain dicts.

    Args:
        clauses: ``None``, one query clause (a mapping with one key, the clause type) or a list of them.
        max_depth: deepest nesting of clauses accepted.
        max_clauses: most clauses accepted, counted over all filters.
        max_values: most values in ``terms`` / ``ids`` lists, counted over all filters.
        scoring: also accept :data:`SCORING_CLAUSES` (for the operator's lexical query template, see
            :mod:`esdistill.plugin.lexical`; a client's filters never get them): ``function_score``
            whose functions are ``field_value_factor`` (a numeric field of the same document) and
            ``weight`` only, each with an optional allowed ``filter``; no script, no decay.

    Returns:
        The filters as a list of clauses (empty for ``None``), copied into plain dicts and lists.

    Raises:
        FilterNotAllowed: (a :class:`ConfigError`) a clause or parameter is not allowed, a value has
            the wrong shape, or a bound is exceeded; every problem is named with its path, e.g.
            ``filters[0].bool.must[1]: 'more_like_this' is not an allowed filter clause``.
        ConfigError: ``clauses`` is neither a clause nor a list of clauses.
    """
    if clauses is None:
        return []
    if isinstance(clauses, Mapping):
        items, paths = [clauses], ["filters"]
    elif isinstance(clauses, Sequence) and not isinstance(clauses, (str, bytes, bytearray)):
        items = list(clauses)
        paths = [f"filters[{i}]" for i in range(len(items))]
    else:
        raise ConfigError(
            f"filters must be an Elasticsearch query clause or a list of them, e.g. "
            f'{{"term": {{"lang": "en"}}}}; got {type(clauses).__name__}'
        )
    check = _Checker(max_depth=max_depth, max_clauses=max_clauses, max_values=max_values, scoring=scoring)
    out = [check.clause(item, path, 1) for item, path in zip(items, paths)]
    if check.problems:
        raise FilterNotAllowed(check.problems)
    return out  # type: ignore[return-value]  # every item is a dict once no problem was found


class _Checker:
    """One walk over the filters: copies what it checks, and collects every problem."""

    def __init__(self, *, max_depth: int, max_clauses: int, max_values: int, scoring: bool = False) -> None:
        self.scoring = scoring
        self.max_depth = max_depth
        self.max_clauses = max_clauses
        self.max_values = max_values
        self.clauses = 0
        self.values = 0
        self.problems: list[str] = []
        self._bounds_hit: set[str] = set()

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def bound(self, name: str, path: str, message: str) -> None:
        if name not in self._bounds_hit:  # one message per bound, not one per clause beyond it
            self._bounds_hit.add(name)
            self.fail(path, message)

    # ------------------------------------------------------------------------------ clauses
    def clause(self, node: Any, path: str, depth: int) -> Any:
        if not isinstance(node, Mapping):
            self.fail(path, f"each filter must be an Elasticsearch query clause, an object like "
                            f"{{\"term\": {{\"lang\": \"en\"}}}}; got {_kind(node)}")
            return None
        if len(node) != 1:
            keys = ", ".join(repr(str(k))[:40] for k in list(node)[:5])
            self.fail(path, f"a filter clause must have exactly one key, the clause type; got {len(node)} "
                            f"({keys}); combine clauses with bool")
            return None
        (kind, body), = node.items()
        if not isinstance(kind, str):
            self.fail(path, f"a clause type must be a string, got {_kind(kind)}")
            return None
        self.clauses += 1
        if self.clauses > self.max_clauses:
            self.bound("clauses", path, f"more than {self.max_clauses} clauses in the filters")
            return None
        if depth > self.max_depth:
            self.bound("depth", path, f"clauses nested deeper than {self.max_depth} levels")
            return None
        here = f"{path}.{_key(kind)}"
        if kind == "terms":
            return {kind: self.terms(body, here)}
        if kind in _FIELD_CLAUSES:
            return {kind: self.field_clause(kind, body, here)}
        if kind in _PARAM_CLAUSES:
            params, required = _PARAM_CLAUSES[kind]
            return {kind: self.params(body, here, params, required, depth)}
        if kind in SCORING_CLAUSES and self.scoring:
            return {kind: self.function_score(body, here, depth)}
        why = _WHY_NOT.get(kind)
        self.fail(path, f"{kind[:60]!r} is not an allowed filter clause{f' (it {why})' if why else ''}; "
                        f"allowed: {', '.join(ALLOWED_CLAUSES)}")
        return None

    def field_clause(self, kind: str, body: Any, path: str) -> Any:
        shorthand, params = _FIELD_CLAUSES[kind]
        if not isinstance(body, Mapping):
            self.fail(path, f"must be an object {{FIELD: ...}}, got {_kind(body)}")
            return None
        if len(body) != 1:
            self.fail(path, f"names exactly one field, got {len(body)}")
            return None
        (name, value), = body.items()
        if not _field_name(name):
            self.fail(path, f"the field name must be a non-empty string, got {_kind(name)}")
            return None
        here = f"{path}.{_key(name)}"
        if isinstance(value, Mapping):
            required = ("value",) if kind == "term" else ()
            if kind in ("prefix", "wildcard") and not ({"value", "wildcard"} & set(value)):
                self.fail(here, "needs a 'value'")
            if kind in ("match", "match_phrase") and "query" not in value:
                self.fail(here, "needs a 'query'")
            if kind == "range" and not ({"gt", "gte", "lt", "lte"} & set(value)):
                self.fail(here, "needs at least one of gt, gte, lt, lte")
            return {name: self.params(value, here, params, required, 0)}
        if shorthand is None:
            self.fail(here, f"must be an object of parameters ({', '.join(sorted(params))}), "
                            f"got {_kind(value)}")
            return None
        return {name: self.value(value, here, shorthand, 0)}

    def terms(self, body: Any, path: str) -> Any:
        if not isinstance(body, Mapping):
            self.fail(path, f"must be an object {{FIELD: [values]}}, got {_kind(body)}")
            return None
        out: dict[str, Any] = {}
        fields = [k for k in body if k not in _COMMON]
        if len(fields) != 1:
            self.fail(path, f"names exactly one field (with a list of values), got {len(fields)}")
        for name, value in body.items():
            here = f"{path}.{_key(name)}"
            if name in _COMMON:
                out[name] = self.value(value, here, _COMMON[name], 0)
            elif not _field_name(name):
                self.fail(path, f"the field name must be a non-empty string, got {_kind(name)}")
            elif isinstance(value, Mapping):
                self.fail(here, 'a terms lookup (an object) reads another document and is not allowed; '
                                'give the values as a list, e.g. ["a", "b"]')
            else:
                out[name] = self.value(value, here, _SCALARS, 0)
        return out

    def params(self, body: Any, path: str, params: dict[str, str], required: tuple[str, ...],
               depth: int) -> Any:
        if not isinstance(body, Mapping):
            self.fail(path, f"must be an object of parameters ({', '.join(sorted(params))}), "
                            f"got {_kind(body)}")
            return None
        out: dict[str, Any] = {}
        for name, value in body.items():
            here = f"{path}.{_key(name)}"
            kind = params.get(name) if isinstance(name, str) else None
            if kind is None:
                self.fail(here, f"{str(name)[:60]!r} is not an allowed parameter here; allowed: "
                                f"{', '.join(sorted(params))}")
                continue
            out[name] = self.value(value, here, kind, depth)
        for name in required:
            if name not in body:
                self.fail(path, f"needs {name!r}")
        return out

    def function_score(self, body: Any, path: str, depth: int) -> Any:
        """``function_score`` with ``field_value_factor`` / ``weight`` functions only (scoring mode)."""
        out = self.params(body, path, _FUNCTION_SCORE, (), depth)
        if not isinstance(body, Mapping) or out is None:
            return out
        if "field_value_factor" in body:
            out["field_value_factor"] = self.params(body["field_value_factor"], f"{path}.field_value_factor",
                                                    _FIELD_VALUE_FACTOR, ("field",), depth)
        functions = body.get("functions")
        if functions is not None:
            if not _is_list(functions):
                self.fail(f"{path}.functions", f"must be a list of functions, got {_kind(functions)}")
                return out
            listed = []
            for i, fn in enumerate(functions):
                here = f"{path}.functions[{i}]"
                got = self.params(fn, here, _FUNCTION, (), depth)
                if isinstance(fn, Mapping) and isinstance(got, dict):
                    if "field_value_factor" in fn:
                        got["field_value_factor"] = self.params(fn["field_value_factor"], f"{here}.field_value_factor",
                                                                _FIELD_VALUE_FACTOR, ("field",), depth)
                    if not {"field_value_factor", "weight"} & set(fn):
                        self.fail(here, "needs field_value_factor or weight (scripts and decay functions are "
                                        "not allowed)")
                listed.append(got)
            out["functions"] = listed
        return out

    # ------------------------------------------------------------------------------ values
    def value(self, value: Any, path: str, kind: str, depth: int) -> Any:
        if kind == _OBJECT:
            return None  # replaced by the caller, which checks the object itself
        if kind == _CLAUSE:
            return self.clause(value, path, depth + 1)
        if kind in (_CLAUSES, _CLAUSE_LIST):
            if isinstance(value, Mapping) and kind == _CLAUSES:
                return self.clause(value, path, depth + 1)
            if not _is_list(value):
                self.fail(path, f"must be a {kind}, got {_kind(value)}")
                return None
            return [self.clause(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if kind in (_SCALARS, _STRS):
            if not _is_list(value):
                hint = " (a terms lookup is not allowed)" if isinstance(value, Mapping) else ""
                self.fail(path, f"must be a {kind}, got {_kind(value)}{hint}")
                return None
            self.values += len(value)
            if self.values > self.max_values:
                self.bound("values", path, f"more than {self.max_values} values in terms/ids lists")
                return None
            each = _STR if kind == _STRS else _SCALAR
            return [self.value(v, f"{path}[{i}]", each, depth) for i, v in enumerate(value)]
        if not _scalar_ok(value, kind):
            self.fail(path, f"must be a {_SCALAR_DESC.get(kind, kind)}, got {_kind(value)}")
            return None
        return value


_SCALAR_DESC = {_SCALAR: "string, number, boolean or null"}


def _scalar_ok(value: Any, kind: str) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if kind == _SCALAR:
        return value is None or isinstance(value, (str, int, float, bool))
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _INT_OR_STR:
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    return False  # pragma: no cover - every kind is listed above


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _field_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name.strip())


def _key(name: Any) -> str:
    """A mapping key as it appears in a path (cut, so a huge key does not make a huge message)."""
    text = str(name)
    return text if len(text) <= 60 and text.replace("_", "").replace(".", "").isalnum() else repr(text[:60])


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "an object"
    if _is_list(value):
        return "a list"
    if isinstance(value, float) and not math.isfinite(value):
        return "a non-finite number"
    return {"str": "a string", "int": "an integer", "float": "a number"}.get(type(value).__name__,
                                                                              type(value).__name__)
