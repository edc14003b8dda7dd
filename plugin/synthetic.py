"""Synthetic queries written from a corpus's own documents (no model, no labels).

Every generated query remembers its source document, which is taken as relevant: that gives
training positives for distillation and a pseudo-dev set for choices that have no labels (the
promotion gate, teacher selection, ``esdistill tune``). The built-in :class:`RuleBasedGenerator`
writes four styles:

* ``keyword``: 2-4 salient terms of the document (tf-idf over the corpus), in random order;
* ``claim``: one informative sentence of the document, shortened (a claim- or sentence-like query);
* ``question``: a question built from the document's key phrases;
* ``title``: the document's title (or the head of its first sentence when it has none).

``claim`` and ``title`` queries copy a passage of their document (their ``span``); cut it from the
document (:func:`cut_spans`) and the query becomes an inverse-cloze query, which a lexical matcher
cannot answer by finding the copied words.

This module needs neither torch nor the training code; :mod:`esdistill.export.queries` re-exports
it next to the generators that need models. Documents are anything with ``title``, ``text`` and
``full`` (title and body joined), such as :class:`Passage` or the training code's ``Doc``::

    >>> corpus = {"d1": Passage("d1", "Jet engines", "Air is compressed by the fan. Fuel burns in the chamber.")}
    >>> gen = RuleBasedGenerator.fit(corpus)
    >>> [q.style for q in generate_queries(corpus, gen, styles=("claim",))]
    ['claim']
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from esdistill.plugin._errors import ConfigError
from esdistill.plugin.beir import Doc

__all__ = [
    "ALL_STYLES",
    "DocLike",
    "Passage",
    "QueryGenerator",
    "RuleBasedGenerator",
    "SyntheticQuery",
    "cut_spans",
    "generate_queries",
]

logger = logging.getLogger(__name__)


class DocLike(Protocol):
    """What the generators read of a document."""

    @property
    def title(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def full(self) -> str: ...


#: a document as the generators see it: the corpus document of :mod:`esdistill.plugin.beir`
Passage = Doc


ALL_STYLES = ("keyword", "claim", "question", "title")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-]*[A-Za-z0-9]|[A-Za-z]")
_SENT = re.compile(r"(?<=[.!?])\s+")
_STOP = frozenset(["a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "either", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "however", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "may", "me", "might", "more", "most", "must", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "upon", "very", "via", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "within", "without", "would", "you", "your", "yours", "yourself", "yourselves", "using", "used", "use", "based", "show", "shows", "showed", "shown", "study", "studies", "result", "results", "found", "one", "two", "three", "et", "al", "among", "however", "thus", "therefore", "whether", "well", "many", "much", "new", "non", "per"])
_QUESTION_TEMPLATES = (
    ("what is the role of {a} in {b}", 2),
    ("how does {a} affect {b}", 2),
    ("what is the relationship between {a} and {b}", 2),
    ("what is known about {a}", 1),
    ("how is {a} measured", 1),
    ("why does {a} matter", 1),
)


@dataclass(frozen=True)
class SyntheticQuery:
    """A generated query.

    Attributes:
        query_id: a stable id (``syn-<doc>-<style>-<n>``).
        text: the query.
        style: the style that produced it.
        doc_id: the source document, taken as relevant.
        span: the exact document text the query was cut from (a sentence or the title), or ``""``
            when the query is not a copy of one passage. Held-out queries with a span are scored
            against their source document *without* that span (the inverse cloze task), so a
            lexical matcher cannot win by finding the copied words.
    """

    query_id: str
    text: str
    style: str
    doc_id: str
    span: str = ""


@runtime_checkable
class QueryGenerator(Protocol):
    """Writes a query of a given style for a document, or ``None`` when it cannot."""

    def generate(self, doc: DocLike, style: str, rng: random.Random) -> str | None:
        ...


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _content(word: str) -> bool:
    w = word.lower()
    return len(w) > 2 and w not in _STOP and not w.isdigit()


def _phrase_word(word: str) -> bool:
    """A word that can sit in a topical phrase: a content word that is not an adverb (a cheap
    stand-in for part-of-speech tagging: "unfortunately obvious" is not a topic)."""
    return _content(word) and not (word.lower().endswith("ly") and len(word) > 5)


class RuleBasedGenerator:
    """Model-free query generator over corpus statistics (idf), in the four built-in styles.

    Build it with :meth:`fit` on the corpus, which computes document frequencies.

    Args:
        idf: ``{lowercased term: idf}``.
        default_idf: idf of unseen terms.
    """

    def __init__(self, idf: Mapping[str, float], *, default_idf: float = 1.0) -> None:
        self.idf = dict(idf)
        self.default_idf = default_idf

    @classmethod
    def fit(cls, corpus: Mapping[str, DocLike]) -> RuleBasedGenerator:
        """Compute idf over ``corpus``."""
        df: Counter[str] = Counter()
        for doc in corpus.values():
            df.update({w.lower() for w in _words(doc.full)})
        n = max(len(corpus), 1)
        idf = {w: math.log(1 + n / c) for w, c in df.items()}
        return cls(idf, default_idf=math.log(1 + n))

    def _salient(self, text: str, k: int) -> list[str]:
        words = [w for w in _words(text) if _content(w)]
        tf = Counter(w.lower() for w in words)
        first_form: dict[str, str] = {}
        for w in words:
            first_form.setdefault(w.lower(), w)
        ranked = sorted(tf, key=lambda w: -(1 + math.log(tf[w])) * self.idf.get(w, self.default_idf))
        return [first_form[w] for w in ranked[:k]]

    def _phrases(self, text: str, k: int) -> list[str]:
        """Key phrases: runs of 1-3 content words, scored by summed idf."""
        runs: list[list[str]] = [[]]
        for w in _words(text):
            if _phrase_word(w):
                runs[-1].append(w)
            elif runs[-1]:
                runs.append([])
        scored: dict[str, float] = {}
        for run in runs:
            for size in (3, 2, 1):
                for i in range(max(len(run) - size + 1, 0)):
                    chunk = run[i:i + size]
                    key = " ".join(chunk).lower()
                    scored[key] = max(scored.get(key, 0.0),
                                      sum(self.idf.get(w.lower(), self.default_idf) for w in chunk) / size ** 0.3)
        best: list[str] = []
        for p in sorted(scored, key=lambda p: -scored[p]):
            if not any(p in b or b in p for b in best):
                best.append(p)
            if len(best) == k:
                break
        return best

    def _sentences(self, doc: DocLike) -> list[str]:
        return [s.strip() for s in _SENT.split(doc.text) if 5 <= len(s.split()) <= 60]

    def generate(self, doc: DocLike, style: str, rng: random.Random) -> str | None:
        """A query of ``style`` for ``doc`` (``None`` when the document is too short for it).

        Raises:
            ConfigError: unknown style.
        """
        return self.generate_with_span(doc, style, rng)[0]

    def generate_with_span(self, doc: DocLike, style: str, rng: random.Random) -> tuple[str | None, str]:
        """Like :meth:`generate`, with the document passage a ``claim`` or ``title`` query copies
        (``""`` for the other styles, and when no query could be written).

        Raises:
            ConfigError: unknown style.
        """
        if style == "keyword":
            top = self._salient(doc.full, 8)
            if len(top) < 2:
                return None, ""
            n = rng.randint(2, min(4, len(top)))
            picked = rng.sample(top[:max(n + 2, 4)], n)
            return " ".join(w.lower() for w in picked), ""
        if style == "claim":
            sents = self._sentences(doc)
            if not sents:
                return None, ""
            weights = [sum(self.idf.get(w.lower(), self.default_idf) for w in _words(s) if _content(w))
                       / math.sqrt(len(s.split())) for s in sents]
            sentence = rng.choices(sents, weights=weights, k=1)[0]
            words = re.sub(r"\([^)]*\)|\[[^\]]*\]", "", sentence).split()
            if len(words) > 22:
                # keep the sentence's head (its subject and claim), cut at the last clause break
                head = words[:22]
                breaks = [i for i, w in enumerate(head) if i >= 8 and w.endswith((",", ";", ":"))]
                words = head[:breaks[-1] + 1] if breaks else head
                while len(words) > 3 and words[-1].lower().strip(",;:") in _STOP:
                    words = words[:-1]  # not "... as a power of the"
            return " ".join(words).rstrip(".;,:"), sentence
        if style == "question":
            # ask about the document's topic: its title and first sentence, when it has a title
            topic = f"{doc.title} {(self._sentences(doc) or [''])[0]}" if doc.title.strip() else doc.full
            phrases = self._phrases(topic, 4)
            if len(phrases) < 2:
                phrases = self._phrases(doc.full, 4)
            if not phrases:
                return None, ""
            templates = [t for t, need in _QUESTION_TEMPLATES if need <= len(phrases)]
            template = rng.choice(templates)
            a, b = rng.sample(phrases[:3], 2) if len(phrases) >= 2 else (phrases[0], "")
            if set(a.split()) & set(b.split()):  # "x y in x y z" is no question
                templates = [t for t, need in _QUESTION_TEMPLATES if need == 1]
                template = rng.choice(templates)
            return template.format(a=a, b=b), ""
        if style == "title":
            if doc.title and doc.title.strip() != doc.text.strip()[: len(doc.title.strip())]:
                return doc.title.strip().rstrip("."), doc.title.strip()
            sents = self._sentences(doc) or [doc.text]
            words = sents[0].split()
            return (" ".join(words[:10]).rstrip(".;,:"), sents[0]) if len(words) >= 3 else (None, "")
        raise ConfigError(f"unknown query style {style!r}; choose from {ALL_STYLES}")




def generate_queries(corpus: Mapping[str, DocLike], generator: QueryGenerator, *, per_doc: int = 1,
                     styles: Sequence[str] = ALL_STYLES, max_queries: int | None = None, seed: int = 0,
                     min_words: int = 2) -> list[SyntheticQuery]:
    """Generate queries for (a sample of) the corpus, cycling through ``styles``.

    Args:
        corpus: ``{doc_id: document}``.
        generator: any :class:`QueryGenerator`.
        per_doc: queries per sampled document (each in a different style).
        styles: styles to use.
        max_queries: cap on the total; documents are sampled at random when it binds.
        seed: sampling seed.
        min_words: shorter queries are dropped, as are exact duplicates.

    Raises:
        ConfigError: no styles, or ``per_doc`` < 1.
    """
    if not styles or per_doc < 1:
        raise ConfigError(f"need at least one style and per_doc >= 1 (got styles={styles}, per_doc={per_doc})")
    rng = random.Random(seed)
    ids = list(corpus)
    rng.shuffle(ids)
    if max_queries is not None:
        ids = ids[: math.ceil(max_queries / per_doc)]
    seen: set[str] = set()
    out: list[SyntheticQuery] = []
    offset = 0
    for doc_id in ids:
        for j in range(per_doc):
            text, span = None, ""
            with_span = getattr(generator, "generate_with_span", None)
            for k in range(len(styles)):  # the planned style, else the next one that works
                style = styles[(offset + j + k) % len(styles)]
                if with_span is not None:
                    text, span = with_span(corpus[doc_id], style, rng)
                else:
                    text = generator.generate(corpus[doc_id], style, rng)
                if text is not None:
                    break
            if text is None:
                continue
            text = " ".join(text.split())
            key = text.lower()
            if len(text.split()) < min_words or key in seen:
                continue
            seen.add(key)
            out.append(SyntheticQuery(f"syn-{doc_id}-{style}-{j}", text, style, doc_id, span))
        offset += 1
        if max_queries is not None and len(out) >= max_queries:
            break
    logger.info("generated %d synthetic queries (%s)", len(out),
                ", ".join(f"{s}={sum(q.style == s for q in out)}" for s in styles))
    return out




def cut_spans(text: str, spans: Sequence[str]) -> str:
    """``text`` without every copy of each span (case and runs of whitespace ignored).

    Example:
        >>> cut_spans("Air is compressed. Fuel   burns. Fuel burns.", ["fuel burns."])
        'Air is compressed.'
    """
    for span in spans:
        words = span.split()
        if not words:
            continue
        pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
        text = " ".join(pattern.sub(" ", text).split())
    return text
