"""Synthetic query generation, the pluggable generator, and grounding filters."""

from __future__ import annotations

import random
import re

import pytest
from esdistill.export.mining import CandidateList
from esdistill.export.queries import (
    ALL_STYLES,
    CallableGenerator,
    RuleBasedGenerator,
    filter_grounded,
    generate_queries,
    load_generator,
    mask_source,
    split_dev,
)
from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import Doc, load_corpus


@pytest.fixture(scope="module")
def corpus(tiny_collection):
    return load_corpus(tiny_collection)


def test_every_style_is_produced_and_grounded_in_its_document(corpus):
    gen = RuleBasedGenerator.fit(corpus)
    qs = generate_queries(corpus, gen, per_doc=4, seed=3)
    assert {q.style for q in qs} == set(ALL_STYLES)
    assert len({q.text.lower() for q in qs}) == len(qs)  # no duplicates
    for q in qs:
        doc_words = {w.lower() for w in re.findall(r"[\w\-]+", corpus[q.doc_id].full)}
        words = [w.lower().strip(",;:") for w in q.text.split()]
        assert len(words) >= 2
        if q.style in ("keyword", "title"):
            assert all(w in doc_words for w in words), q
        else:  # a claim or question reuses the document's salient words
            assert sum(w in doc_words for w in words) >= 1, q


def test_keyword_queries_prefer_rare_terms():
    docs = {f"d{i}": Doc(f"d{i}", "", "the cell energy study of cells and energy") for i in range(5)}
    docs["x"] = Doc("x", "", "the cell energy study of mitochondria cristae and energy")
    gen = RuleBasedGenerator.fit(docs)
    q = gen.generate(docs["x"], "keyword", random.Random(0))
    assert "mitochondria" in q or "cristae" in q


def test_generation_is_seeded_capped_and_styles_validated(corpus):
    gen = RuleBasedGenerator.fit(corpus)
    a = generate_queries(corpus, gen, max_queries=5, seed=1)
    assert a == generate_queries(corpus, gen, max_queries=5, seed=1)
    assert len(a) == 5
    with pytest.raises(ConfigError, match="style"):
        gen.generate(next(iter(corpus.values())), "poem", random.Random(0))
    with pytest.raises(ConfigError):
        generate_queries(corpus, gen, styles=())


def test_callable_generator_plugs_in(corpus):
    gen = CallableGenerator(lambda doc, style: f"{style} about {doc.title.lower()}")
    qs = generate_queries(corpus, gen, styles=("question",), seed=0)
    assert len(qs) == len(corpus)
    assert all(q.text.startswith("question about ") for q in qs)
    loaded = load_generator("os.path:join", corpus)
    assert isinstance(loaded, CallableGenerator)
    with pytest.raises(ConfigError, match="generator"):
        load_generator("no_such_module_xyz:fn", corpus)


def test_filter_grounded_and_split():
    def cl(rank):
        return CandidateList("q", "t", ["a"], [1.0], positives=["a"], teacher_rank_of_positive=rank)

    kept, dropped = filter_grounded([cl(0), cl(2), cl(5), cl(-1)], max_rank=3)
    assert [c.teacher_rank_of_positive for c in kept] == [0, 2]
    assert len(dropped) == 2
    train, dev = split_dev(list(range(10)), dev_size=3, seed=0)
    assert len(dev) == 3 and sorted(train + dev) == list(range(10))


def test_copied_passages_are_recorded_and_cut_from_the_dev_copy_of_the_source(corpus):
    qs = generate_queries(corpus, RuleBasedGenerator.fit(corpus), per_doc=4, seed=3)
    by_style = {s: [q for q in qs if q.style == s] for s in ("keyword", "claim", "question", "title")}
    assert by_style["claim"] and by_style["title"]
    assert all(q.span == "" for q in by_style["keyword"] + by_style["question"])
    for q in by_style["claim"] + by_style["title"]:
        doc = corpus[q.doc_id]
        assert q.span and q.span in doc.full  # the passage the query was cut from
        masked = mask_source(doc, [q.span])
        assert q.span not in masked.full and len(masked.full) < len(doc.full)
        assert masked.doc_id == doc.doc_id
    # the spans do not change which queries are generated (same seed, same texts as generate())
    plain = generate_queries(corpus, _NoSpans(RuleBasedGenerator.fit(corpus)), per_doc=4, seed=3)
    assert [q.text for q in plain] == [q.text for q in qs] and all(q.span == "" for q in plain)
    title_doc = Doc("t", "Jet engines", "Air is compressed and burned.")
    assert mask_source(title_doc, ["Jet engines"]) == Doc("t", "", "Air is compressed and burned.")
    assert mask_source(title_doc, ["", "not there"]) == title_doc
    # a title repeated at the head of the body (as in Cranfield) is cut from both places, whatever
    # its case and spacing there; the rest of the body stays
    repeated = Doc("r", "Shear flow past a plate .", "shear flow  past a plate . The boundary layer thickens.")
    masked = mask_source(repeated, ["Shear flow past a plate ."])
    assert masked == Doc("r", "", "The boundary layer thickens.")
    assert "shear" not in masked.full.lower()


class _NoSpans:
    """A generator with only ``generate`` (like a user's LLM)."""

    def __init__(self, inner):
        self.inner = inner

    def generate(self, doc, style, rng):
        return self.inner.generate(doc, style, rng)


def test_queries_read_as_queries_no_dangling_words_adverbs_or_repeated_phrases(corpus):
    from esdistill.export.queries import _STOP

    long_sentence = ("the measured heat transfer to the cooled plate agrees with the theory of laminar "
                     "boundary layers only when the wall temperature ratio stays below a critical value of the")
    docs = dict(corpus)
    docs["long"] = Doc("long", "Heat transfer to cooled plates", long_sentence + ". Unfortunately nothing else.")
    gen = RuleBasedGenerator.fit(docs)
    for seed in range(20):
        claim = gen.generate(docs["long"], "claim", random.Random(seed))
        if claim and claim.startswith("the measured"):
            # the head of an over-long sentence, never a window cut mid-phrase, never ending on "the"
            assert len(claim.split()) <= 22 and claim.split()[-1].lower() not in _STOP, claim
    for doc in docs.values():
        for seed in range(5):
            q = gen.generate(doc, "question", random.Random(seed))
            assert q is None or "unfortunately" not in q.lower(), q
            m = re.match(r"what is the relationship between (.+) and (.+)$", q or "")
            if m:
                assert not set(m.group(1).split()) & set(m.group(2).split()), q
