"""The service: one synchronous method per route, run in a worker thread; JSON in, vLLM's JSON bytes out.

Request semantics (pairing, sorting, ``top_n``, usage) come from :class:`trilate.TrilateClient`; this module only
maps the request models to its calls and its results back to vLLM's JSON (ids, encodings, error cases).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import schemas as S
from ..client import TrilateClient, refuse_cross_encoder
from ..errors import TrilateError
from ..types import ModelCard
from .encodings import JSON_MEDIA, dumps, encode_payload, tensor_bytes
from .errors import APIError, RouteNotFound
from .limits import Limits
from .metrics import Metrics


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _plain(value: Any) -> Any:
    """Request models -> what the client library takes (str, or the ``{"content": [...]}`` dict)."""
    if isinstance(value, S.TextDocument):
        return value.text
    if isinstance(value, S.ScoreMultiModalParam):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _score_extras(req) -> dict[str, Any]:
    """BGE-M3's score_mode / score_weights, passed on only when the request sets them."""
    return {k: getattr(req, k) for k in ("score_mode", "score_weights") if getattr(req, k) is not None}


@dataclass
class Reply:
    body: bytes
    status: int = 200
    media_type: str = JSON_MEDIA
    headers: dict[str, str] | None = None


class Service:
    def __init__(self, client: TrilateClient, limits: Limits, metrics: Metrics, created: int,
                 model_repository: Path | None = None):
        self.client, self.limits, self.metrics, self.created = client, limits, metrics, created
        self.model_repository = model_repository  # where checkpoint paths of the model cards are relative to
        self._tokenizers: dict[str, Any] = {}
        self._tokenizer_lock = threading.Lock()

    # -- shared checks -----------------------------------------------------------------------------
    def _card(self, name: str | None) -> ModelCard:
        return self.client.model(name)

    def _items(self, n: int, param: str) -> None:
        if n > self.limits.max_items_per_request:
            raise APIError(f"Too many items in one request: {n}. This server accepts at most "
                           f"{self.limits.max_items_per_request} per request (--max-items-per-request).", param=param)

    @staticmethod
    def _priority(req: S._Common) -> None:
        if req.priority != 0:
            raise APIError(f"Got priority {req.priority} but Priority scheduling is not enabled.", param="priority")

    @staticmethod
    def _scores(card: ModelCard) -> None:
        """vLLM registers /score and /rerank for embedding, token-embedding and cross-encoder models only."""
        if "embed" not in card.tasks and "token_embed" not in card.tasks and not card.cross_encoder:
            raise RouteNotFound

    @staticmethod
    def _no_chat(card: ModelCard, param: str = "messages") -> None:
        raise APIError(f"chat-style `messages` are not supported for {card.served_name} ({card.architecture}): it "
                       f"has no chat template; send text with `input` / `prompt`", param=param)

    # -- routes ------------------------------------------------------------------------------------
    def score(self, req: S.ScoreRequest, rid: str) -> Reply:
        first, second = req.pair()  # type: ignore[misc]
        side_1, side_2 = _plain(getattr(req, first)), _plain(getattr(req, second))
        self._items(max(len(_as_list(side_1)), len(_as_list(side_2))), second)
        card = self._card(req.model)
        self._scores(card)
        self._priority(req)
        # vLLM 0.18-0.20 tokenises score inputs with the HF tokenizer directly: left truncation is not
        # applied there (an over-long item then fails the length check).
        truncate = None if req.truncation_side == "left" else req.truncate_prompt_tokens
        try:
            result = self.client.score(card.served_name, side_1, side_2, truncate_prompt_tokens=truncate,
                                       use_activation=req.use_activation, fields=(first, second),
                                       **_score_extras(req))
        except TrilateError as exc:  # the library names the sides text_1 / text_2; use the request's names
            exc.param = {"text_1": first, "text_2": second}.get(exc.param or "", exc.param)
            raise
        self.metrics.add_tokens("/score", result.model, result.usage.prompt_tokens)
        return Reply(dumps({
            "id": f"score-{rid}", "object": "list", "created": int(time.time()), "model": result.model,
            "data": [{"index": item.index, "object": "score", "score": item.score} for item in result.data],
            "usage": result.usage.to_dict(),
        }))

    def rerank(self, req: S.RerankRequest, rid: str) -> Reply:
        documents = [_plain(d) for d in _as_list(req.documents)]
        self._items(len(documents), "documents")
        card = self._card(req.model)
        self._scores(card)
        self._priority(req)
        truncate = None if req.truncation_side == "left" else req.truncate_prompt_tokens
        result = self.client.rerank(card.served_name, _plain(req.query), documents, top_n=req.top_n,
                                    truncate_prompt_tokens=truncate, use_activation=req.use_activation,
                                    **_score_extras(req))
        self.metrics.add_tokens("/rerank", result.model, result.usage.prompt_tokens)
        results = []
        for item in result.results:
            entry: dict[str, Any] = {"index": item.index}
            if req.return_documents is not False:
                entry["document"] = {"text": item.document.text, "multi_modal": item.document.multi_modal}
            entry["relevance_score"] = item.relevance_score
            results.append(entry)
        usage = {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.total_tokens}
        return Reply(dumps({"id": f"rerank-{rid}", "model": result.model, "usage": usage, "results": results}))

    def pooling(self, req: S.PoolingRequest, rid: str) -> Reply:
        card = self._card(req.model)
        return self._vectors(card, req, req.task, f"pool-{rid}", "/pooling", "pooling", "data")

    def embeddings(self, req: S.EmbeddingRequest, rid: str) -> Reply:
        card = self._card(req.model)
        if card.cross_encoder:  # the wire contract: a 400 that says where its scores are, not a bare 404
            refuse_cross_encoder(card, "/v1/embeddings")
        if "embed" not in card.tasks:
            raise RouteNotFound
        return self._vectors(card, req, "embed", f"embd-{rid}", "/v1/embeddings", "embedding", "embedding")

    def _vectors(self, card: ModelCard, req, task: str | None, rid: str, route: str, object_name: str,
                 key: str) -> Reply:
        """/pooling and /v1/embeddings: the library's pooling call, then vLLM's encodings."""
        self._priority(req)
        if req.input is None:
            if not card.multimodal:
                self._no_chat(card)
        else:
            self._items(len(_as_list(req.input)), "input")
        mode = req.embedding_mode if isinstance(req, S.PoolingRequest) else None
        # `messages` is one conversation, one output; the library defaults its add_special_tokens to false, as vLLM.
        result = self.client.pooling(
            card.served_name, req.input, messages=req.messages if req.input is None else None, task=task,
            embedding_mode=mode, truncate_prompt_tokens=req.truncate_prompt_tokens,
            truncation_side=req.truncation_side, use_activation=req.use_activation,
            add_special_tokens=req.add_special_tokens, dimensions=req.dimensions,
            chat_template_kwargs=req.chat_template_kwargs)
        self.metrics.add_tokens(route, result.model, result.usage.prompt_tokens)
        if req.encoding_format in ("bytes", "bytes_only"):
            return self._bytes_reply(rid, result.model, [item.data for item in result.data],
                                     result.usage.prompt_tokens, req)
        data = [{"index": item.index, "object": object_name,
                 key: encode_payload(item.data, req.encoding_format, req.embed_dtype, req.endianness)}
                for item in result.data]
        return Reply(dumps({"id": rid, "object": "list", "created": int(time.time()), "model": result.model,
                             "data": data, "usage": result.usage.to_dict()}))

    def cohere_embed(self, req: S.CohereEmbedRequest, rid: str) -> Reply:
        """Cohere's /v2/embed as vLLM serves it: texts (or one-text-part inputs), input_type prefixes, typed
        embeddings.  ``binary``/``ubinary``: one bit per value (1 where >= 0), 8 per byte, first value in the
        highest bit; ``binary`` is that byte minus 128.  ``base64``: little-endian float32 per vector."""
        card = self._card(req.model)
        if "embed" not in card.tasks:
            raise RouteNotFound
        self._priority(req)
        if req.texts is None and req.images is None and req.inputs is None:
            raise APIError("One of texts, images, or inputs must be provided", param="texts")
        if req.images is not None and not card.multimodal:
            raise APIError(f"images are not supported by trilate yet for {card.served_name} (it embeds text; image "
                           "inputs need an image model); send texts", param="images")
        if req.images is not None and (req.texts is not None or req.inputs is not None):
            raise APIError("give one of texts, images or inputs, not several", param="images")
        types = list(dict.fromkeys(req.embedding_types or ["float"]))
        quantised = [t for t in types if t in ("int8", "uint8")]
        if quantised:
            raise APIError(f"embedding_types {quantised} are not supported: Cohere does not define its int8/uint8 "
                           "quantisation exactly (nor does vLLM serve it); use float, base64, binary or ubinary",
                           param="embedding_types")
        prefix = self._cohere_prefix(card, req.input_type)
        echo = None
        texts: list[Any]
        if req.images is not None:
            texts = [self._cohere_chat(prefix, [{"type": "image_url", "image_url": {"url": url}}])
                     for url in req.images]
            param = "images"
        elif req.inputs is not None and card.multimodal and any(
                part.type == "image_url" for item in req.inputs for part in item.content):
            texts = [self._cohere_chat(prefix, [self._cohere_part(part) for part in item.content])
                     for item in req.inputs]
            param = "inputs"
        elif req.inputs is not None:
            texts = [prefix + self._cohere_input_text(card, i, item) for i, item in enumerate(req.inputs)]
            param = "inputs"
        else:
            echo = list(req.texts or [])
            texts = [prefix + t for t in echo]
            param = "texts"
        self._items(len(texts), param)
        if not texts:
            raise APIError(f"{param} must not be empty", param=param)
        # vLLM: END cuts the end, START the beginning, at max_tokens (default max_model_len); NONE refuses
        # an input over max_tokens after tokenising it.
        truncate = None if req.truncate == "NONE" else (req.max_tokens if req.max_tokens is not None else -1)
        side = "left" if req.truncate == "START" else None
        try:
            result = self.client.pooling(card.served_name, texts, task="embed", truncate_prompt_tokens=truncate,
                                         truncation_side=side, dimensions=req.output_dimension, field=param)
        except TrilateError as exc:
            exc.param = {"input": param, "dimensions": "output_dimension",
                         "truncate_prompt_tokens": "max_tokens"}.get(exc.param or "", exc.param)
            raise
        if req.truncate == "NONE" and req.max_tokens is not None:
            for item in result.data:
                if item.prompt_tokens > req.max_tokens:
                    raise APIError(f"Input of {item.prompt_tokens} tokens exceeds max_tokens={req.max_tokens} with "
                                   "truncate=NONE. Set truncate to END or START to allow truncation.",
                                   param="max_tokens")
        self.metrics.add_tokens("/v2/embed", result.model, result.usage.prompt_tokens)
        matrix = np.stack([item.data for item in result.data]).astype(np.float32)
        embeddings: dict[str, Any] = {}
        for kind in ("float", "binary", "ubinary", "base64"):  # vLLM's key order
            if kind not in types:
                continue
            if kind == "float":
                embeddings[kind] = matrix.tolist()
            elif kind == "base64":
                embeddings[kind] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in matrix]
            else:
                if matrix.shape[1] % 8:
                    raise APIError("Embedding dimension must be a multiple of 8 for binary embedding types, but got "
                                   f"{matrix.shape[1]}.", param="embedding_types")
                packed = np.packbits(matrix >= 0, axis=1)  # big bit order: the first value is bit 7
                embeddings[kind] = (packed.astype(np.int16) - 128).tolist() if kind == "binary" else packed.tolist()
        body: dict[str, Any] = {"id": f"embd-{rid}", "embeddings": embeddings}
        if echo is not None:
            body["texts"] = echo
        body["meta"] = {"api_version": {"version": "2"}, "tokens": {"input_tokens": result.usage.prompt_tokens}}
        return Reply(dumps(body))

    @staticmethod
    def _cohere_prefix(card: ModelCard, input_type: str | None) -> str:
        """The checkpoint's prefix for ``input_type`` (vLLM's messages when it has none)."""
        if input_type is None:
            return ""
        if not card.prompts:
            raise APIError(f"Unsupported input_type {input_type!r}. This model does not define any input_type prompt "
                           "prefixes.", param="input_type")
        if input_type not in card.prompts:
            raise APIError(f"Unsupported input_type {input_type!r}. Supported values: "
                           f"{', '.join(sorted(card.prompts))}", param="input_type")
        return card.prompts[input_type]

    @staticmethod
    def _cohere_chat(prefix: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """One Cohere input with images for an image model: one chat conversation, rendered by the model's template.
        As vLLM does (PR #41782), the input_type prefix is a system message before the user's content."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": prefix}] if prefix else []
        return {"messages": messages + [{"role": "user", "content": parts}]}

    @staticmethod
    def _cohere_part(part: S.CohereEmbedContent) -> dict[str, Any]:
        if part.type == "image_url":
            return {"type": "image_url", "image_url": part.image_url}
        return {"type": "text", "text": part.text}

    @staticmethod
    def _cohere_input_text(card: ModelCard, index: int, item: S.CohereEmbedInput) -> str:
        if any(part.type == "image_url" for part in item.content):
            raise APIError(f"inputs[{index}] has an image_url part: images are not supported by trilate yet "
                           f"({card.served_name} embeds text); send text parts", param="inputs")
        texts = [part.text for part in item.content if part.type == "text" and part.text is not None]
        if len(texts) != 1:
            raise APIError(f"inputs[{index}] has {len(texts)} text parts; {card.served_name} has no chat template to "
                           "join several, so each input takes exactly one text part", param="inputs")
        return texts[0]

    def _bytes_reply(self, rid: str, model: str, arrays: list[np.ndarray], prompt_tokens: int, req) -> Reply:
        body, items, offset = [], [], 0
        for index, array in enumerate(arrays):
            raw = tensor_bytes(array, req.embed_dtype, req.endianness)
            items.append({"index": index, "embed_dtype": req.embed_dtype, "endianness": req.endianness,
                          "start": offset, "end": offset + len(raw), "shape": list(array.shape)})
            body.append(raw)
            offset += len(raw)
        headers = None
        if req.encoding_format == "bytes":
            metadata = {"id": rid, "created": int(time.time()), "model": model, "data": items,
                        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
            headers = {"metadata": json.dumps(metadata, separators=(",", ":"))}
        return Reply(b"".join(body), media_type="application/octet-stream", headers=headers)

    def tokenize(self, req: S.TokenizeRequest) -> Reply:
        card = self._card(req.model)
        if req.prompt is None:
            self._no_chat(card)
        add_special = True if req.add_special_tokens is None else req.add_special_tokens
        result = self.client.tokenize(card.served_name, req.prompt, add_special_tokens=add_special,
                                      return_token_strs=bool(req.return_token_strs))
        return Reply(dumps({"count": result.count, "max_model_len": result.max_model_len, "tokens": result.tokens,
                             "token_strs": result.token_strs}))

    def detokenize(self, req: S.DetokenizeRequest) -> Reply:
        card = self._card(req.model)
        tokenizer = self._tokenizer(card)
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        for i, token in enumerate(req.tokens):
            if not 0 <= token < size:
                raise APIError(f"tokens[{i}] = {token} is not a token id of {card.served_name} "
                               f"(vocabulary size {size})", param="tokens")
        return Reply(dumps({"prompt": tokenizer.decode(req.tokens, skip_special_tokens=False)}))

    def _tokenizer(self, card: ModelCard):
        """The checkpoint's own tokenizer, read from the folder the served model was built from.

        No Triton stage decodes ids, so /detokenize needs that folder readable here (true under
        ``trilate serve``; a front end on another machine answers 501).
        """
        with self._tokenizer_lock:
            if card.triton_name in self._tokenizers:
                return self._tokenizers[card.triton_name]
        folder = Path(self.client.card_json(card).get("path", ""))
        if not folder.is_absolute():  # a built repository stores it relative to the repository root
            if self.model_repository is None:
                raise APIError(f"/detokenize needs {card.served_name}'s tokenizer.json, which lies beside the model "
                               "repository; give the front end the repository (--model-repository)", status=501,
                               type="NotImplementedError")
            folder = self.model_repository / folder
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise APIError(f"/detokenize needs {card.served_name}'s tokenizer.json, which is not readable by this "
                           f"front end ({path}); run the front end beside tritonserver", status=501,
                           type="NotImplementedError")
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        with self._tokenizer_lock:
            self._tokenizers[card.triton_name] = tokenizer
        return tokenizer

    def models(self) -> Reply:
        data = []
        for card in self.client.models():
            data.append({
                "id": card.served_name, "object": "model", "created": self.created, "owned_by": "trilate",
                "root": card.served_name, "parent": None, "max_model_len": card.max_model_len,
                "permission": [{
                    "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": self.created,
                    "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                    "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                    "organization": "*", "group": None, "is_blocking": False,
                }],
            })
        return Reply(dumps({"object": "list", "data": data}))

    def unhealthy(self, supervisor: Callable[[], dict[str, str]] | None = None) -> dict[str, str]:
        """What cannot answer now, name -> why: Triton's own view, plus the supervisor's (a model whose stub
        died still says READY in Triton until it is restarted).  ``{}`` when every model can answer."""
        down = self.client.unavailable()
        if supervisor is not None:
            down.update(supervisor())
        return dict(sorted(down.items()))
