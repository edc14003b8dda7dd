"""Routes Elasticsearch's inference API can call: OpenAI-shaped embeddings and a rerank endpoint.

``POST /v1/embeddings`` answers in the shape of OpenAI's embeddings API, so the official ``openai``
clients and Elasticsearch's ``openai`` inference service (its ``url`` setting pointed here) get the
served student's vectors::

    {"input": ["text", ...], "model": "<name or fingerprint>", "encoding_format": "float"}
    -> {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [...]}],
        "model": "...", "usage": {"prompt_tokens": N, "total_tokens": N}}

OpenAI has no query/document distinction and Elasticsearch's ``semantic_text`` sends documents and
queries to the same endpoint, so the side is a request field: ``input_type`` ``document`` (the
default, also spelled ``ingest``) or ``query`` (also ``search``); it decides which of the model's
prefixes is prepended. A query encoder paired with another document export can only make query
vectors: its requests must say ``input_type: query``. ``model`` must name the served model (its
manifest name, its fingerprint or the fingerprint's first 12 digits), so an inference endpoint
pinned to a fingerprint fails loudly, instead of mixing vectors of two models, once the service is
restarted on another model. ``dimensions`` is accepted only when it equals the model's.

``POST /v1/rerank`` takes what Elasticsearch's rerank services send (``query``, ``documents``,
optional ``top_n`` and ``return_documents``) and scores the documents with the service's reranker
(``--rerank DIR``)::

    {"query": "q", "documents": ["a", "b"], "top_n": 1}
    -> {"model": "...", "results": [{"index": 1, "relevance_score": 0.8}]}

Results are sorted by score, best first; ``relevance_score`` is the teacher's own score (a
cross-encoder's logit, a bi-encoder's cosine), so it may be negative. Without a reranker the route
answers 400 ``no_reranker``; a reranker that needs the documents' ids in the index (the run's teacher
with a BM25 member) cannot score bare texts and answers 400 too.

Both routes sit behind the service's API key (``X-API-Key`` or ``Authorization: Bearer``), the body
size limit and the rate limit of :mod:`esdistill.plugin._service_guards`, and are counted in the
request metrics under their route templates. Inputs are bounded: at most ``max_documents`` texts
(the service setting) and ``max_documents * max_query_chars`` characters in all per request.
"""

# No ``from __future__ import annotations``: the request models are built inside functions (so that
# importing this module needs no web framework), and FastAPI must see real types on the routes.

import base64
import logging
import threading
from typing import Any, Literal

import numpy as np
from esdistill.plugin._errors import ConfigError, EsdistillError
from esdistill.plugin._service_errors import json_error

__all__ = ["add_openai_routes"]

logger = logging.getLogger(__name__)

#: request values of ``input_type`` and the encoder side they select
INPUT_TYPES = {"document": "document", "ingest": "document", "query": "query", "search": "query"}
#: reranks running at once; more are answered 503 (a slow teacher must not take every CPU)
MAX_CONCURRENT_RERANKS = 4


#: every status these routes answer besides 200, documented in the OpenAPI schema
_ERROR_RESPONSES: dict[int | str, dict[str, str]] = {
    code: {"description": text} for code, text in [
        (400, "refused input"), (401, "no or wrong API key"), (403, "wrong API key"),
        (404, "unknown model"), (413, "body too large"), (422, "the request does not match the schema"),
        (429, "rate limited"), (503, "busy or unavailable")]}

def _schemas() -> dict[str, Any]:
    """The request and answer models (built on first use: importing this module needs no web framework)."""
    from pydantic import BaseModel, ConfigDict, Field

    class EmbeddingsRequest(BaseModel):
        """The OpenAI embeddings request (token-array inputs are not accepted: send text)."""

        model_config = ConfigDict(extra="forbid")
        input: str | list[str] = Field(description="a text or a list of texts to embed")
        model: str = Field(min_length=1, max_length=256,
                           description="the served model: its name, its fingerprint or the fingerprint's first 12 digits")
        encoding_format: Literal["float", "base64"] = Field(
            "float", description="float: lists of numbers; base64: little-endian float32 bytes, base64-encoded")
        dimensions: int | None = Field(None, ge=1, description="accepted only when equal to the model's dimensions")
        user: str | None = Field(None, max_length=256, description="accepted and ignored (OpenAI's end-user id)")
        input_type: Literal["document", "query", "ingest", "search"] | None = Field(
            None, description="which side to embed: document (default; ingest is a synonym) or query (search)")


    class EmbeddingItem(BaseModel):
        object: Literal["embedding"] = "embedding"
        index: int
        embedding: list[float] | str


    class Usage(BaseModel):
        prompt_tokens: int = Field(description="tokens of the inputs (each capped at the model's max_seq_length)")
        total_tokens: int


    class EmbeddingsResponse(BaseModel):
        object: Literal["list"] = "list"
        data: list[EmbeddingItem]
        model: str
        usage: Usage


    class RerankRequest(BaseModel):
        """What Elasticsearch's rerank services send: a query and the documents to order."""

        model_config = ConfigDict(extra="forbid")
        query: str = Field(min_length=1, description="the query text")
        documents: list[str] = Field(min_length=1, description="the texts to score against the query")
        top_n: int | None = Field(None, ge=1, description="return only the best N (default: all)")
        return_documents: bool = Field(False, description="echo each document's text in the result")
        model: str | None = Field(None, max_length=256, description="the reranker's name or fingerprint, if given")


    class RerankDocument(BaseModel):
        text: str


    class RerankItem(BaseModel):
        index: int = Field(description="the document's 0-based position in the request")
        relevance_score: float = Field(description="the reranker's score (higher is more relevant; may be negative)")
        document: RerankDocument | None = None


    class RerankResponse(BaseModel):
        model: str
        results: list[RerankItem]

    return {"EmbeddingsRequest": EmbeddingsRequest, "EmbeddingsResponse": EmbeddingsResponse,
            "RerankRequest": RerankRequest, "RerankResponse": RerankResponse}


def _names(name: str, fingerprint: str) -> set[str]:
    return {n for n in (name, fingerprint, fingerprint[:12]) if n}


def add_openai_routes(router: Any, state: Any, *, max_inputs: int, max_total_chars: int) -> None:
    """Add the ``/v1/embeddings`` and ``/v1/rerank`` routes over a service's encoder and reranker.

    Args:
        router: the app's own router (``app.router``, not an included one: every route of the app
            stays a plain route with a path template, by which the metrics label requests).
        state: the service's :class:`~esdistill.plugin._service_state.ServiceState` (``encoder``,
            ``manifest`` and ``reranker`` are used).
        max_inputs: most texts (inputs, or documents to rerank) in one request.
        max_total_chars: most characters of all texts of one request together.
    """
    if max_inputs < 1 or max_total_chars < 1:
        raise ConfigError(f"max_inputs={max_inputs} and max_total_chars={max_total_chars} must be >= 1")
    from esdistill.plugin.encoder import load_tokenizer

    schemas = _schemas()
    EmbeddingsRequest, RerankRequest = schemas["EmbeddingsRequest"], schemas["RerankRequest"]
    EmbeddingsResponse, RerankResponse = schemas["EmbeddingsResponse"], schemas["RerankResponse"]
    manifest = state.manifest
    model_names = _names(manifest.name, manifest.fingerprint)
    paired_query_encoder = bool(getattr(manifest, "document_fingerprint", None))
    tokenizer, _ = load_tokenizer(state.encoder.folder, state.encoder.max_seq_length)
    reranks = threading.BoundedSemaphore(MAX_CONCURRENT_RERANKS)

    def too_much(texts: list[str], what: str) -> Any:
        if len(texts) > max_inputs:
            return json_error(400, "bad_request", f"{len(texts)} {what} in one request; the limit is {max_inputs} "
                              "(the service's max_documents setting): send them in smaller batches")
        total = sum(len(t) for t in texts)
        if total > max_total_chars:
            return json_error(400, "bad_request", f"the {what} hold {total} characters in all; the limit is "
                              f"{max_total_chars} (max_documents x max_query_chars): send smaller batches")
        return None

    @router.post("/v1/embeddings", response_model=EmbeddingsResponse, summary="Embed texts (OpenAI shape)",
                 tags=["inference"], responses=_ERROR_RESPONSES)
    def embeddings(body: EmbeddingsRequest):
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            return json_error(400, "bad_request", "input is an empty list: send at least one text")
        refused = too_much(texts, "inputs")
        if refused is not None:
            return refused
        if body.model not in model_names:
            return json_error(404, "model_not_found", f"this service serves model {manifest.name!r} (fingerprint "
                              f"{manifest.short_fingerprint}), not {body.model[:100]!r}: set the model to its name "
                              "or fingerprint")
        if body.dimensions is not None and body.dimensions != state.encoder.dims:
            return json_error(400, "bad_request", f"model {manifest.name!r} makes {state.encoder.dims}-dimensional "
                              f"vectors and cannot shorten them: drop dimensions or set it to {state.encoder.dims}")
        side = INPUT_TYPES[body.input_type or "document"]
        if side == "document" and paired_query_encoder:
            return json_error(400, "bad_request", f"model {manifest.name!r} is a query encoder: its documents are "
                              "embedded by its paired document export; send input_type \"query\" for query vectors")
        try:
            vectors = state.encoder.encode(texts, kind=side)
        except EsdistillError as exc:
            return json_error(400, "bad_request", str(exc))
        tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=True))
        vectors = np.asarray(vectors, dtype="<f4")
        if body.encoding_format == "base64":
            items: list[Any] = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
        else:
            items = vectors.tolist()
        logger.debug("embedded %d %s text(s) (%d tokens)", len(texts), side, tokens)
        return {"object": "list", "model": body.model,
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
                 summary="Order documents for a query with the service's reranker", tags=["inference"],
                 responses=_ERROR_RESPONSES)
    def rerank(body: RerankRequest):
        reranker = state.reranker
        if reranker is None:
            return json_error(400, "no_reranker", "this service has no reranker: start it with --rerank DIR (an "
                              "exported cross-encoder or bi-encoder teacher, or a distill run folder)")
        if getattr(reranker, "needs_ids", False):
            return json_error(400, "no_reranker", f"the reranker {reranker.name!r} scores BM25 from the index by "
                              "document id and cannot score bare texts; use /v1/search with rerank instead")
        refused = too_much([body.query, *body.documents], "texts (query and documents)")
        if refused is not None:
            return refused
        if body.model is not None and body.model not in _names(reranker.name, reranker.fingerprint):
            return json_error(404, "model_not_found", f"this service reranks with {reranker.name!r}, not "
                              f"{body.model[:100]!r}: set model to its name or fingerprint, or leave it out")
        if not reranks.acquire(blocking=False):
            return json_error(503, "overloaded", f"{MAX_CONCURRENT_RERANKS} reranks are already running; retry shortly",
                              headers={"Retry-After": "1"})
        try:
            scores = np.asarray(reranker.score(body.query, list(body.documents)), dtype=np.float64).reshape(-1)
        except EsdistillError as exc:
            return json_error(400, "bad_request", str(exc))
        finally:
            reranks.release()
        if scores.shape[0] != len(body.documents) or not np.all(np.isfinite(scores)):
            logger.error("reranker %s returned %d scores for %d documents", reranker.name, scores.shape[0],
                         len(body.documents))
            return json_error(500, "internal_error", "the reranker returned unusable scores; see the service log")
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:body.top_n]
        results = [{"index": i, "relevance_score": float(scores[i]),
                    "document": {"text": body.documents[i]} if body.return_documents else None} for i in order]
        return {"model": body.model or reranker.name, "results": results}
