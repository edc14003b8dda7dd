"""The team's lexical query template without a node: structural ``{{query}}`` substitution, templates
refused at load, and function_score allowed in templates only (no torch, no Elasticsearch)."""

from __future__ import annotations

import json

import pytest
from esdistill.plugin import ConfigError
from esdistill.plugin.filters import FilterNotAllowed, validate_filters
from esdistill.plugin.lexical import LexicalTemplate
from esdistill.plugin.query import QueryConfig

TITLE_BOOST = {"bool": {
    "should": [{"match": {"title": {"query": "{{query}}", "boost": 10}}}, {"match": {"text": "{{query}}"}}],
    "filter": [{"term": {"lang": "en"}}], "minimum_should_match": 1,
}}


def test_substitution_is_structural_and_cannot_break_out():
    t = LexicalTemplate(TITLE_BOOST)
    evil = '"}}, {"script": {"script": "1"}} \\ {{query}}'
    rendered = t.render(evil)
    assert rendered["bool"]["should"][0]["match"]["title"]["query"] == evil
    assert rendered["bool"]["should"][1]["match"]["text"] == evil
    assert json.loads(json.dumps(rendered)) == rendered
    validate_filters(rendered, scoring=True)  # still only allowed clauses
    assert t.render("a") != t.render("b") and t.placeholders == 2
    inline = LexicalTemplate({"match": {"title": "{{query}} manual"}})
    assert inline.render("car") == {"match": {"title": "car manual"}}


@pytest.mark.parametrize("text, error, match", [
    ("{not json", ConfigError, "not valid JSON"),
    ('{"match": {"title": "fixed words"}}', ConfigError, "holds no \\{\\{query\\}\\} placeholder"),
    ('{"match": {"{{query}}": "x"}}', ConfigError, "only stand in a string value"),
    ('[{"match": {"title": "{{query}}"}}]', ConfigError, "one Elasticsearch query clause"),
    ('{"script_score": {"query": {"match": {"t": "{{query}}"}}, "script": "1"}}', FilterNotAllowed, "runs a script"),
    (('{"bool": {"should": [{"match": {"t": "{{query}}"}}, {"terms": {"f": {"index": "users", "id": "1", '
     '"path": "p"}}}]}}'), FilterNotAllowed, "template.bool.should\\[1\\].terms.f: a terms lookup"),
    ('{"function_score": {"query": {"match": {"t": "{{query}}"}}, "functions": [{"script_score": {}}]}}',
     FilterNotAllowed, "functions\\[0\\].script_score"),
])
def test_bad_templates_are_refused_at_load(tmp_path, text, error, match):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(error, match=match):
        LexicalTemplate.load(path)
    with pytest.raises(ConfigError, match="invalid query configuration"):
        QueryConfig(lexical_template=str(path))


def test_function_score_is_allowed_in_templates_only():
    fs = {"function_score": {"query": {"match": {"title": "{{query}}"}},
                             "functions": [{"field_value_factor": {"field": "pop", "modifier": "log1p", "missing": 1}},
                                           {"filter": {"term": {"lang": "en"}}, "weight": 2}],
                             "boost_mode": "multiply"}}
    assert LexicalTemplate(fs).render("q")["function_score"]["query"] == {"match": {"title": "q"}}
    with pytest.raises(FilterNotAllowed, match="'function_score' is not an allowed filter clause"):
        validate_filters(LexicalTemplate(fs).render("q"))  # a client's filter never gets it
    with pytest.raises(FilterNotAllowed, match="needs field_value_factor or weight"):
        LexicalTemplate({"function_score": {"query": {"match": {"t": "{{query}}"}}, "functions": [{"filter": {
            "match_all": {}}}]}})
