"""vLLM-compatible REST front end over the client library (FastAPI + uvicorn).

    trilate serve MODEL ...            # tritonserver + this front end on --port (default 8000)
    python -m trilate.frontend --triton-url 127.0.0.1:8011 --protocol grpc --port 8000

Routes (vLLM 0.18-0.20 schemas, ``reference/vllm_semantics.md`` section 4): ``POST /score``
(+ ``/v1/score``), ``/rerank``, ``/v1/rerank``, ``/v2/rerank`` (also Jina- and Cohere-shaped requests),
``/pooling``, ``/v1/embeddings``, ``/tokenize``, ``/detokenize``; ``GET /v1/models``, ``/health``,
``/version``, ``/metrics`` (tritonserver's Prometheus metrics plus this process's own counters) and the
OpenAPI page (``/docs``, ``/openapi.json``).

The front end is stateless: it owns no model and no tensors.  Request semantics (pairing, sorting,
``top_n``, usage) come from :class:`trilate.TrilateClient`; this module only maps JSON to its calls and
its results back to vLLM's JSON (ids, envelopes, encodings, error envelope, limits).  The client is
synchronous (tritonclient), so every request runs in a worker thread (one tritonclient connection per
thread, kept between requests); the event loop only parses and sends bytes.
"""

import argparse
import base64
import functools
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import schemas as S
from .client import TrilateClient
from .errors import TrilateError
from .types import ModelCard

logger = logging.getLogger("trilate.frontend")

JSON_MEDIA = "application/json"
METRICS_MEDIA = "text/plain; version=0.0.4; charset=utf-8"


# -- configuration ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each breach is a 4xx in vLLM's error envelope.

    Tokens per input are limited by each model's ``max_model_len`` (``trilate serve --max-model-len``),
    checked where the text is tokenised, with vLLM's maximum-context message.
    """

    max_request_bytes: int = 32 * 1024 * 1024
    max_items_per_request: int = 2048  # inputs (/pooling, /v1/embeddings), documents (/rerank), pairs (/score)
    max_concurrency: int = 64  # requests talking to tritonserver at once (worker threads)


# -- errors ----------------------------------------------------------------------------------------

class APIError(Exception):
    """An error answered in vLLM's envelope ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, message: str, status: int = 400, type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param = message, status, type, param


class RouteNotFound(Exception):
    """The model cannot serve this route: vLLM would not have registered it (FastAPI's plain 404)."""


def error_body(message: str, type: str, status: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": status}}


def error_response(message: str, type: str, status: int, param: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(message, type, status, param), status_code=status)


try:  # vLLM writes its JSON with orjson too when it is installed: same values, ~20x faster for float lists
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover - orjson is a pinned dependency
    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


# -- encodings (vLLM's encoding_format / embed_dtype / endianness) ---------------------------------

def tensor_bytes(array: np.ndarray, embed_dtype: str, endianness: str) -> bytes:
    """Cast to ``embed_dtype``, flatten row-major, byte-swap to ``endianness``; bf16/fp8 as bit patterns."""
    flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
    if embed_dtype == "float32":
        out = flat
    elif embed_dtype == "float16":
        out = flat.astype(np.float16)
    else:
        import ml_dtypes

        target = {"bfloat16": (ml_dtypes.bfloat16, np.uint16), "fp8_e4m3": (ml_dtypes.float8_e4m3fn, np.uint8),
                  "fp8_e5m2": (ml_dtypes.float8_e5m2, np.uint8)}[embed_dtype]
        out = flat.astype(target[0]).view(target[1])
    if endianness not in ("native", sys.byteorder):
        out = out.byteswap()
    return out.tobytes()


def encode_payload(array: np.ndarray, encoding_format: str, embed_dtype: str, endianness: str) -> Any:
    if encoding_format == "float":
        return array.tolist()
    return base64.b64encode(tensor_bytes(array, embed_dtype, endianness)).decode("ascii")


# -- metrics ---------------------------------------------------------------------------------------

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The front end's own Prometheus series (appended to tritonserver's on ``/metrics``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> bucket counts + [sum, count]
        self.in_progress = 0
        self.prompt_tokens: dict[tuple[str, str], int] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            hist = self.latency.setdefault(route, [0.0] * (len(_BUCKETS) + 2))
            for i, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += seconds
            hist[-1] += 1

    def add_tokens(self, route: str, model: str, n: int) -> None:
        with self._lock:
            key = (route, model)
            self.prompt_tokens[key] = self.prompt_tokens.get(key, 0) + n

    def render(self) -> str:
        def esc(value: str) -> str:
            return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        with self._lock:
            lines = [
                "# HELP trilate_frontend_requests_total REST requests answered by the trilate front end.",
                "# TYPE trilate_frontend_requests_total counter",
            ]
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(f'trilate_frontend_requests_total{{route="{esc(route)}",method="{method}",'
                             f'status="{status}"}} {n}')
            lines += [
                "# HELP trilate_frontend_request_duration_seconds Time from request received to response sent.",
                "# TYPE trilate_frontend_request_duration_seconds histogram",
            ]
            for route, hist in sorted(self.latency.items()):
                label = f'route="{esc(route)}"'
                for bound, n in zip(_BUCKETS, hist):
                    lines.append(f'trilate_frontend_request_duration_seconds_bucket{{{label},le="{bound}"}} {int(n)}')
                lines.append(f'trilate_frontend_request_duration_seconds_bucket{{{label},le="+Inf"}} {int(hist[-1])}')
                lines.append(f"trilate_frontend_request_duration_seconds_sum{{{label}}} {hist[-2]:.6f}")
                lines.append(f"trilate_frontend_request_duration_seconds_count{{{label}}} {int(hist[-1])}")
            lines += [
                "# HELP trilate_frontend_requests_in_progress REST requests being answered now.",
                "# TYPE trilate_frontend_requests_in_progress gauge",
                f"trilate_frontend_requests_in_progress {self.in_progress}",
                "# HELP trilate_frontend_prompt_tokens_total Prompt tokens reported in usage, by route and model.",
                "# TYPE trilate_frontend_prompt_tokens_total counter",
            ]
            for (route, model), n in sorted(self.prompt_tokens.items()):
                lines.append(f'trilate_frontend_prompt_tokens_total{{route="{esc(route)}",model="{esc(model)}"}} {n}')
        return "\n".join(lines) + "\n"


_DRAIN_BYTES = 256 * 1024 * 1024


class _Guard:
    """ASGI middleware: request-body limit (413 before the app sees the body) and request metrics."""

    def __init__(self, app, limits: Limits, metrics: Metrics, routes: set[str]):
        self.app, self.limits, self.metrics, self.routes = app, limits, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = {"code": 499}  # until a response starts: the client went away

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_progress += 1
        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._read_body(scope, receive, send_wrapper)
                if receive is None:
                    return
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status["code"] = 500
            raise
        finally:
            self.metrics.in_progress -= 1
            self.metrics.observe(route, scope["method"], status["code"], time.perf_counter() - start)

    async def _read_body(self, scope, receive, send):
        limit = self.limits.max_request_bytes
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(int(length), scope, receive, send)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                more = message.get("more_body", False)
                await self._too_large(size, scope, receive, send, at_least=more, drain=more)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, size, scope, receive, send, at_least=False, drain=True):
        limit = self.limits.max_request_bytes
        # Read (and drop) what the client is still sending, up to a bound, so that it gets to read the
        # answer instead of a connection reset; beyond the bound the connection is simply closed.
        drained = 0
        while drain and drained < _DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                break
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        message = (f"Request body is {'more than ' if at_least else ''}{size} bytes; this server accepts at most "
                   f"{limit} bytes per request (--max-request-bytes).")
        status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        response = error_response(message, status.phrase, int(status))
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


# -- the service: one synchronous method per route, run in a worker thread -------------------------

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
    def __init__(self, client: TrilateClient, limits: Limits, metrics: Metrics, created: int):
        self.client, self.limits, self.metrics, self.created = client, limits, metrics, created
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
    def _text_inputs(value: Any, param: str, card: ModelCard) -> Any:
        """vLLM also takes token ids here; trilate's stages tokenise themselves, so only text is served."""
        if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
            raise APIError(f"{param} as token ids is not supported by trilate ({card.served_name} tokenises its "
                           f"own text); send text instead", param=param)
        return value

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
        if "embed" not in card.tasks and "token_embed" not in card.tasks:
            raise RouteNotFound
        self._priority(req)
        # vLLM 0.18-0.20 tokenises score inputs with the HF tokenizer directly: left truncation is not
        # applied there (an over-long item then fails the length check).
        truncate = None if req.truncation_side == "left" else req.truncate_prompt_tokens
        try:
            result = self.client.score(card.served_name, side_1, side_2, truncate_prompt_tokens=truncate,
                                       use_activation=req.use_activation, **_score_extras(req))
        except TrilateError as exc:  # the library names the sides text_1 / text_2; use the request's names
            exc.param = {"text_1": first, "text_2": second}.get(exc.param or "", exc.param)
            raise
        self.metrics.add_tokens("/score", result.model, result.usage.prompt_tokens)
        return Reply(_dumps({
            "id": f"score-{rid}", "object": "list", "created": int(time.time()), "model": result.model,
            "data": [{"index": item.index, "object": "score", "score": item.score} for item in result.data],
            "usage": result.usage.to_dict(),
        }))

    def rerank(self, req: S.RerankRequest, rid: str) -> Reply:
        documents = [_plain(d) for d in _as_list(req.documents)]
        self._items(len(documents), "documents")
        card = self._card(req.model)
        if "embed" not in card.tasks and "token_embed" not in card.tasks:
            raise RouteNotFound
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
        return Reply(_dumps({"id": f"rerank-{rid}", "model": result.model, "usage": usage, "results": results}))

    def pooling(self, req: S.PoolingRequest, rid: str) -> Reply:
        card = self._card(req.model)
        return self._vectors(card, req, req.task, f"pool-{rid}", "/pooling", "pooling", "data")

    def embeddings(self, req: S.EmbeddingRequest, rid: str) -> Reply:
        card = self._card(req.model)
        if "embed" not in card.tasks:
            raise RouteNotFound
        return self._vectors(card, req, "embed", f"embd-{rid}", "/v1/embeddings", "embedding", "embedding")

    def _vectors(self, card: ModelCard, req, task: str | None, rid: str, route: str, object_name: str,
                 key: str) -> Reply:
        """/pooling and /v1/embeddings: the library's pooling call, then vLLM's encodings."""
        self._priority(req)
        if req.input is None:
            self._no_chat(card)
        inputs = self._text_inputs(req.input, "input", card)
        self._items(len(_as_list(inputs)), "input")
        result = self.client.pooling(
            card.served_name, inputs, task=task, truncate_prompt_tokens=req.truncate_prompt_tokens,
            truncation_side=req.truncation_side, use_activation=req.use_activation,
            add_special_tokens=req.add_special_tokens, dimensions=req.dimensions)
        self.metrics.add_tokens(route, result.model, result.usage.prompt_tokens)
        if req.encoding_format in ("bytes", "bytes_only"):
            return self._bytes_reply(rid, result.model, [item.data for item in result.data],
                                     result.usage.prompt_tokens, req)
        data = [{"index": item.index, "object": object_name,
                 key: encode_payload(item.data, req.encoding_format, req.embed_dtype, req.endianness)}
                for item in result.data]
        return Reply(_dumps({"id": rid, "object": "list", "created": int(time.time()), "model": result.model,
                             "data": data, "usage": result.usage.to_dict()}))

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
        return Reply(_dumps({"count": result.count, "max_model_len": result.max_model_len, "tokens": result.tokens,
                             "token_strs": result.token_strs}))

    def detokenize(self, req: S.DetokenizeRequest) -> Reply:
        card = self._card(req.model)
        tokenizer = self._tokenizer(card)
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        for i, token in enumerate(req.tokens):
            if not 0 <= token < size:
                raise APIError(f"tokens[{i}] = {token} is not a token id of {card.served_name} "
                               f"(vocabulary size {size})", param="tokens")
        return Reply(_dumps({"prompt": tokenizer.decode(req.tokens, skip_special_tokens=False)}))

    def _tokenizer(self, card: ModelCard):
        """The checkpoint's own tokenizer, read from the folder the served model was built from.

        No Triton stage decodes ids, so /detokenize needs that folder readable here (true under
        ``trilate serve``; a front end on another machine answers 501).
        """
        with self._tokenizer_lock:
            if card.triton_name in self._tokenizers:
                return self._tokenizers[card.triton_name]
        info = _model_card_json(self.client, card)
        path = Path(info.get("path", "")) / "tokenizer.json"
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
        return Reply(_dumps({"object": "list", "data": data}))

    def unhealthy(self, supervisor: Callable[[], dict[str, str]] | None = None) -> dict[str, str]:
        """What cannot answer now: tritonserver, or Triton models by name -> why ({} when all can)."""
        try:
            handle = _triton_handle(self.client)
            ready = handle.is_server_ready()  # strict readiness: false while any model is not READY
            index = (handle.get_model_repository_index() if self.client.protocol == "http"
                     else handle.get_model_repository_index(as_json=True).get("models", []))
        except Exception as exc:
            return {"tritonserver": f"unreachable at {self.client.url}: {exc}"}
        down = {m["name"]: f"state {m.get('state') or 'unknown'}" + (f" ({m['reason']})" if m.get("reason") else "")
                for m in index if m.get("state") != "READY"}
        if not ready and not down:
            down["tritonserver"] = "not ready"
        if supervisor is not None:
            down.update(supervisor())
        return dict(sorted(down.items()))


def _triton_handle(client: TrilateClient):
    """A raw tritonclient for this thread (health and configs; inference goes through the library)."""
    local = _triton_handle.__dict__.setdefault("local", threading.local())
    key = (client.url, client.protocol)
    handles = getattr(local, "handles", None)
    if handles is None:
        handles = local.handles = {}
    if key not in handles:
        if client.protocol == "http":
            import tritonclient.http as module

            handles[key] = module.InferenceServerClient(client.url, connection_timeout=5.0, network_timeout=30.0)
        else:
            import tritonclient.grpc as module

            handles[key] = module.InferenceServerClient(client.url)
    return handles[key]


def _model_card_json(client: TrilateClient, card: ModelCard) -> dict[str, Any]:
    from python_backend_models import contract as C

    handle = _triton_handle(client)
    if client.protocol == "http":
        config = handle.get_model_config(card.triton_name)
    else:
        config = handle.get_model_config(card.triton_name, as_json=True)["config"]
    raw = (config.get("parameters") or {}).get(C.MODEL_CARD_PARAMETER, {}).get("string_value", "{}")
    return json.loads(raw)


# -- the app ---------------------------------------------------------------------------------------

ROUTES = {"/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/pooling", "/v1/embeddings", "/tokenize",
          "/detokenize", "/v1/models", "/health", "/version", "/metrics"}


def _request_id(request, body: Any) -> str:
    header = request.headers.get("x-request-id")
    if header:
        return header
    return getattr(body, "request_id", None) or uuid.uuid4().hex


def _validation_message(exc) -> str:
    errors = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err.get("loc", ()))
        errors.append({"type": err.get("type"), "loc": loc, "msg": err.get("msg")})
    summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
    return f"{len(errors)} validation error{'s' if len(errors) != 1 else ''}: {summary} {json.dumps(errors)}"


def create_app(
    triton_url: str = "127.0.0.1:8011",
    protocol: str = "grpc",
    *,
    metrics_url: str | None = None,
    limits: Limits | None = None,
    client: TrilateClient | None = None,
    unhealthy: Callable[[], dict[str, str]] | None = None,
):
    """The REST app over tritonserver at ``triton_url`` (``protocol`` "grpc" or "http").

    ``metrics_url``: tritonserver's Prometheus endpoint (``http://host:8012/metrics``), served on
    ``/metrics`` before the front end's own series.  ``client`` replaces the library client (tests).
    """
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    limits = limits or Limits()
    client = client or TrilateClient(triton_url, protocol=protocol)
    metrics = Metrics()
    service = Service(client, limits, metrics, created=int(time.time()))
    limiter = anyio.CapacityLimiter(limits.max_concurrency)

    app = FastAPI(
        title="trilate",
        version=_version(),
        description="vLLM-compatible pooling API (score, rerank, pooling, embeddings, tokenize) over a Triton "
                    "Inference Server model repository.",
    )
    app.state.service = service
    app.state.metrics = metrics
    app.state.limits = limits

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError):
        status = HTTPStatus.BAD_REQUEST
        return error_response(_validation_message(exc), status.phrase, int(status))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # Unknown routes and methods keep FastAPI's plain {"detail": ...} (as vLLM's do); anything else
        # (e.g. a body that is not UTF-8) gets the envelope.
        if exc.status_code in (404, 405):
            return await http_exception_handler(request, exc)
        return error_response(str(exc.detail), HTTPStatus(exc.status_code).phrase, exc.status_code)

    def _unavailable(exc: Exception) -> dict[str, str] | None:
        """While the supervisor restarts a model, its failures (a dead stub, an ensemble Triton has
        unloaded, a card that vanished) are a retryable 503 naming the model, not a 500 or a 404."""
        if unhealthy is None or isinstance(exc, (APIError, RouteNotFound)):
            return None
        if isinstance(exc, TrilateError) and exc.status == 400:
            return None
        return unhealthy() or None

    async def run(fn: Callable[..., Reply], *args):
        try:
            reply = await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=limiter)
        except Exception as exc:
            down = _unavailable(exc)
            if down:
                status = HTTPStatus.SERVICE_UNAVAILABLE
                message = ("temporarily unavailable, retry shortly: "
                           + "; ".join(f"{name}: {why}" for name, why in down.items()))
                return error_response(message, "ServiceUnavailableError", int(status))
            if isinstance(exc, RouteNotFound):
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            if isinstance(exc, (APIError, TrilateError)):
                return error_response(exc.message, exc.type, exc.status, exc.param)
            if isinstance(exc, (ConnectionError, OSError)):
                status = HTTPStatus.SERVICE_UNAVAILABLE
                return error_response(f"cannot reach tritonserver at {client.url}: {exc}", "ServiceUnavailableError",
                                      int(status))
            logger.exception("internal error")  # a bug: answer in the envelope, keep serving, log the trace
            return error_response(f"{type(exc).__name__}: {exc}", "InternalServerError", 500)
        return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)

    errors = S.ERROR_RESPONSES

    score_doc = ("Score pairs: 1:1, 1:N (side 1 broadcast) or N:N (zipped); results in pair order. "
                 "/v1/score is vLLM's deprecated alias.")
    for path in ("/score", "/v1/score"):
        async def score(body: S.ScoreRequest, request: Request):
            return await run(service.score, body, _request_id(request, body))

        app.post(path, response_model=S.ScoreResponse, responses=errors, tags=["score"], description=score_doc,
                 name=f"score{path.replace('/', '_')}")(score)

    rerank_doc = ("Rerank documents by relevance to the query, best first, cut to top_n. Accepts vLLM's shape and "
                  "Jina / Cohere ones (documents as {\"text\": ...}, return_documents).")
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        async def rerank(body: S.RerankRequest, request: Request):
            return await run(service.rerank, body, _request_id(request, body))

        app.post(path, response_model=S.RerankResponse, responses=errors, tags=["rerank"], description=rerank_doc,
                 name=f"rerank{path.replace('/', '_')}")(rerank)

    @app.post("/pooling", response_model=S.PoolingResponse, responses=errors, tags=["pooling"])
    async def pooling(body: S.PoolingRequest, request: Request):
        """Per-token (task token_embed, the default where supported) or pooled (task embed) vectors."""
        return await run(service.pooling, body, _request_id(request, body))

    @app.post("/v1/embeddings", response_model=S.EmbeddingResponse, responses=errors, tags=["embeddings"])
    async def embeddings(body: S.EmbeddingRequest, request: Request):
        """OpenAI embeddings (bi-encoders; a late-interaction model answers 404 as vLLM does)."""
        return await run(service.embeddings, body, _request_id(request, body))

    @app.post("/tokenize", response_model=S.TokenizeResponse, responses=errors, tags=["tokenizer"])
    async def tokenize(body: S.TokenizeRequest):
        return await run(service.tokenize, body)

    @app.post("/detokenize", response_model=S.DetokenizeResponse, responses=errors, tags=["tokenizer"])
    async def detokenize(body: S.DetokenizeRequest):
        return await run(service.detokenize, body)

    @app.get("/v1/models", response_model=S.ModelList, responses=errors, tags=["server"])
    async def models():
        return await run(service.models)

    @app.get("/health", tags=["server"], response_class=Response,
             responses={200: {"description": "every served model can answer (empty body)"},
                        503: {"description": "tritonserver or a model cannot answer; the envelope says which"}})
    async def health():
        # Outside the inference limiter: a busy, healthy server must still answer its probes at once.
        down = await anyio.to_thread.run_sync(service.unhealthy, unhealthy)
        if not down:
            return Response(status_code=200)
        status = HTTPStatus.SERVICE_UNAVAILABLE
        message = "not ready: " + "; ".join(f"{name}: {why}" for name, why in down.items())
        body = error_body(message, "ServiceUnavailableError", int(status))
        body["unhealthy"] = down
        return Response(_dumps(body), status_code=int(status), media_type=JSON_MEDIA)

    @app.get("/version", tags=["server"])
    async def version():
        return {"version": _version()}

    @app.get("/metrics", tags=["server"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus():
        text = ""
        if metrics_url:
            text = await anyio.to_thread.run_sync(_fetch_text, metrics_url)  # outside the inference limiter
        return Response(text + metrics.render(), media_type=METRICS_MEDIA)

    app.add_middleware(_Guard, limits=limits, metrics=metrics, routes=ROUTES)
    return app


def _fetch_text(url: str) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode("utf-8", errors="replace")
        return text if text.endswith("\n") or not text else text + "\n"
    except Exception as exc:
        return f"# trilate: tritonserver metrics at {url} unavailable: {exc}\n"


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("trilate")
    except Exception:
        return "0.0.0"


# -- running it ------------------------------------------------------------------------------------

class FrontEnd:
    """uvicorn serving ``app`` in a background thread: ``start()`` returns once it listens."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                 drain_timeout: float = 30.0):
        import uvicorn

        # On stop, uvicorn closes the listening socket at once and lets requests in flight finish for up
        # to drain_timeout seconds (then cancels them).
        self.drain_timeout = drain_timeout
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                                     timeout_keep_alive=30, timeout_graceful_shutdown=drain_timeout)
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def start(self, timeout: float = 30.0):
        self.thread = threading.Thread(target=self.server.run, name="trilate-frontend", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the REST front end could not start on {self.config.host}:{self.config.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the REST front end did not start within {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(self.drain_timeout + 5 if timeout is None else timeout)


def check_port_free(host: str, port: int) -> None:
    """Fail fast (before minutes of model loading) when the front end's port is taken."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"error: cannot listen on {host}:{port} for the REST front end ({exc.strerror}); "
                             f"pick another port with --port") from None


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Limits()
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes,
                        help="largest request body the REST front end accepts (413 above)")
    parser.add_argument("--max-items-per-request", type=int, default=defaults.max_items_per_request,
                        help="most inputs / documents / pairs in one REST request (400 above)")
    parser.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency,
                        help="REST requests in flight to tritonserver at once")
    parser.add_argument("--uvicorn-log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug", "trace"])


def limits_from_args(args: argparse.Namespace) -> Limits:
    for name in ("max_request_bytes", "max_items_per_request", "max_concurrency"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
    return Limits(args.max_request_bytes, args.max_items_per_request, args.max_concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trilate.frontend",
                                     description="the REST front end alone, over a running tritonserver")
    parser.add_argument("--triton-url", default="127.0.0.1:8011", help="tritonserver gRPC (or HTTP) address")
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    parser.add_argument("--metrics-url", default=None, help="tritonserver metrics, e.g. http://127.0.0.1:8012/metrics")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    add_limit_arguments(parser)
    args = parser.parse_args(argv)
    import uvicorn

    app = create_app(args.triton_url, args.protocol, metrics_url=args.metrics_url, limits=limits_from_args(args))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level, timeout_keep_alive=30)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
