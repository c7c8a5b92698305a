"""The FastAPI app: routes (vLLM 0.18-0.20 schemas), error handlers, the guard middleware, the API docs page.

The client library is synchronous (tritonclient), so every request runs in a worker thread (one tritonclient
connection per thread, kept between requests); the event loop only parses and sends bytes.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations at run time.
import functools
import logging
import threading
import time
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable

from .. import schemas as S
from ..client import TrilateClient
from ..errors import DeadlineExceededError, RequestCancelledError, TrilateError
from ..multimodal import MediaResolver
from .errors import APIError, RouteNotFound, error_body, error_response, lone_surrogate, validation_message
from .limits import Guard, Limits
from .metrics import METRICS_MEDIA, Metrics
from .service import Reply, Service

logger = logging.getLogger("trilate.frontend")

ROUTES = {"/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/pooling", "/v1/embeddings", "/v2/embed",
          "/tokenize", "/detokenize", "/v1/models", "/health", "/version", "/metrics"}

DISCONNECT_POLL_S = 0.25  # how often a request in flight checks that its client is still there

TITLE = "trilate"
DESCRIPTION = ("vLLM-compatible pooling API (score, rerank, pooling, embeddings, tokenize) over a Triton "
               "Inference Server model repository.")


def docs_options() -> dict[str, Any]:
    """FastAPI's API docs settings (``/docs`` Swagger UI, ``/redoc``, ``/openapi.json``): the one place that decides
    how the docs pages are served (``add_docs_routes`` serves them)."""
    return {"docs_url": "/docs", "redoc_url": "/redoc", "openapi_url": "/openapi.json"}


def add_docs_routes(app) -> None:
    """The docs pages from the package's own copies of Swagger UI and ReDoc, not a CDN (air-gapped clusters)."""
    from ..docs_page import install_offline_docs

    install_offline_docs(app)


def request_id(request, body: Any) -> str:
    header = request.headers.get("x-request-id")
    if header:
        return header
    return getattr(body, "request_id", None) or uuid.uuid4().hex


def create_app(
    triton_url: str = "127.0.0.1:8011",
    protocol: str = "grpc",
    *,
    metrics_url: str | None = None,
    limits: Limits | None = None,
    client: TrilateClient | None = None,
    model_repository: str | Path | None = None,
    unhealthy: Callable[[], dict[str, str]] | None = None,
    media: MediaResolver | None = None,
):
    """The REST app over tritonserver at ``triton_url`` (``protocol`` "grpc" or "http").

    ``metrics_url``: tritonserver's Prometheus endpoint (``http://host:8012/metrics``), served on
    ``/metrics`` before the front end's own series.  ``client`` replaces the library client (tests).
    ``model_repository``: the repository tritonserver serves, where /detokenize finds the tokenizers.
    ``unhealthy``: the supervisor's view (Triton model name -> why it cannot answer), for ``/health`` and
    for answering 503 instead of 500 / 404 while a model is being restarted.
    ``media``: which image URLs image models' requests may name (default: data: URLs only).
    """
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or Limits()
    client = client or TrilateClient(triton_url, protocol=protocol, media=media)
    metrics = Metrics()
    service = Service(client, limits, metrics, created=int(time.time()),
                      model_repository=None if model_repository is None else Path(model_repository).resolve())
    limiter = anyio.CapacityLimiter(limits.max_concurrency)

    app = FastAPI(title=TITLE, version=version(), description=DESCRIPTION, **docs_options())
    add_docs_routes(app)
    app.state.service = service
    app.state.metrics = metrics
    app.state.limits = limits

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError):
        status = HTTPStatus.BAD_REQUEST
        return error_response(validation_message(exc), status.phrase, int(status))

    @app.exception_handler(S.BoundsError)
    async def _over_bounds(_: Request, exc: S.BoundsError):
        return error_response(exc.message, "BadRequestError", int(HTTPStatus.BAD_REQUEST), exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # Unknown routes and methods keep FastAPI's plain {"detail": ...} (as vLLM's do); anything else
        # (e.g. a body that is not UTF-8) gets the envelope.
        if exc.status_code in (404, 405):
            return await http_exception_handler(request, exc)
        return error_response(str(exc.detail), HTTPStatus(exc.status_code).phrase, exc.status_code)

    def restarting(exc: Exception) -> dict[str, str] | None:
        """While the supervisor restarts a model, its failures (a dead stub, an ensemble Triton has unloaded, a
        card that vanished) are a retryable 503 naming the model, not a 500 or a 404."""
        if unhealthy is None or isinstance(exc, (APIError, RouteNotFound)):
            return None
        if isinstance(exc, TrilateError) and exc.status in (400, 499, 504):
            return None
        return unhealthy() or None

    async def call(fn: Callable[..., Reply], args: tuple, request: Request | None) -> Reply:
        """``fn(*args)`` in a worker thread (waiting for a limiter slot first), bounded by --request-timeout;
        given up (and told to send Triton nothing more) when the deadline passes or the client goes away."""
        deadline = time.monotonic() + limits.request_timeout
        cancelled = threading.Event()
        outcome: dict[str, Any] = {}

        def bounded():
            with client.bounded(deadline, cancelled):
                return fn(*args)

        async def work(group):
            try:
                outcome["reply"] = await anyio.to_thread.run_sync(bounded, limiter=limiter, abandon_on_cancel=True)
            except Exception as exc:
                outcome["error"] = exc
            group.cancel_scope.cancel()

        async def watch(group):
            while not await request.is_disconnected():
                await anyio.sleep(DISCONNECT_POLL_S)
            outcome["error"] = RequestCancelledError("the client closed the connection")
            group.cancel_scope.cancel()

        with anyio.move_on_after(limits.request_timeout) as timer:
            async with anyio.create_task_group() as group:
                group.start_soon(work, group)
                if request is not None:
                    group.start_soon(watch, group)
        if timer.cancelled_caught and not outcome:
            outcome["error"] = DeadlineExceededError(
                f"the request did not finish within {limits.request_timeout:g} s (--request-timeout)")
        if "error" in outcome:
            cancelled.set()
            raise outcome["error"]
        return outcome["reply"]

    async def run(fn: Callable[..., Reply], *args, request: Request | None = None):
        for arg in args:  # before anything echoes a field (ids, model names) into a JSON answer
            if (bad := lone_surrogate(arg)) is not None:
                return error_response(bad.message, bad.type, bad.status, bad.param)
        try:
            reply = await call(fn, args, request)
        except Exception as exc:
            down = restarting(exc)
            if down:
                return unavailable_response("temporarily unavailable, retry shortly", down)
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
    # encoding_format "bytes" / "bytes_only" answer the raw tensors instead of JSON (vLLM's binary encodings).
    vectors = {**errors, 200: {"content": {"application/octet-stream": {}},
                               "description": "JSON, or with encoding_format bytes / bytes_only the raw vectors "
                                              "(bytes: their layout in the `metadata` header)"}}

    score_doc = ("Score pairs: 1:1, 1:N (side 1 broadcast) or N:N (zipped); results in pair order. "
                 "/v1/score is vLLM's deprecated alias.")
    for path in ("/score", "/v1/score"):
        async def score(body: S.ScoreRequest, request: Request):
            return await run(service.score, body, request_id(request, body), request=request)

        app.post(path, response_model=S.ScoreResponse, responses=errors, tags=["score"], description=score_doc,
                 name=f"score{path.replace('/', '_')}")(score)

    rerank_doc = ("Rerank documents by relevance to the query, best first, cut to top_n. Accepts vLLM's shape and "
                  "Jina / Cohere ones (documents as {\"text\": ...}, return_documents).")
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        async def rerank(body: S.RerankRequest, request: Request):
            return await run(service.rerank, body, request_id(request, body), request=request)

        app.post(path, response_model=S.RerankResponse, responses=errors, tags=["rerank"], description=rerank_doc,
                 name=f"rerank{path.replace('/', '_')}")(rerank)

    @app.post("/pooling", response_model=S.PoolingResponse, responses=vectors, tags=["pooling"])
    async def pooling(body: S.PoolingRequest, request: Request):
        """Per-token (task token_embed, the default where supported) or pooled (task embed) vectors."""
        return await run(service.pooling, body, request_id(request, body), request=request)

    @app.post("/v1/embeddings", response_model=S.EmbeddingResponse, responses=vectors, tags=["embeddings"])
    async def embeddings(body: S.EmbeddingRequest, request: Request):
        """OpenAI embeddings (bi-encoders; a late-interaction model answers 404 as vLLM does)."""
        return await run(service.embeddings, body, request_id(request, body), request=request)

    @app.post("/v2/embed", response_model=S.CohereEmbedResponse, responses=errors, tags=["embeddings"])
    async def cohere_embed(body: S.CohereEmbedRequest, request: Request):
        """Cohere's embed API (models that embed): texts, input_type prefixes, float / base64 / binary / ubinary."""
        return await run(service.cohere_embed, body, request_id(request, body), request=request)

    @app.post("/tokenize", response_model=S.TokenizeResponse, responses=errors, tags=["tokenizer"])
    async def tokenize(body: S.TokenizeRequest, request: Request):
        return await run(service.tokenize, body, request=request)

    @app.post("/detokenize", response_model=S.DetokenizeResponse, responses=errors, tags=["tokenizer"])
    async def detokenize(body: S.DetokenizeRequest):
        return await run(service.detokenize, body)

    @app.get("/v1/models", response_model=S.ModelList, responses=errors, tags=["server"])
    async def models():
        return await run(service.models)

    @app.get("/health", tags=["server"], response_class=Response,
             responses={200: {"description": "every served model can answer (empty body)"},
                        503: {"model": S.ErrorResponse,
                              "description": "tritonserver or a model cannot answer; `unhealthy` names which"}})
    async def health():
        # Outside the inference limiter: a busy, healthy server must answer its probes at once.
        down = await anyio.to_thread.run_sync(service.unhealthy, unhealthy)
        return unavailable_response("not ready", down) if down else Response(status_code=200)

    @app.get("/version", tags=["server"], name="version")
    async def version_route():
        return {"version": version()}

    @app.get("/metrics", tags=["server"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus():
        text = ""
        if metrics_url:
            text = await anyio.to_thread.run_sync(fetch_text, metrics_url)  # outside the inference limiter
        return Response(text + metrics.render(), media_type=METRICS_MEDIA)

    app.add_middleware(Guard, limits=limits, metrics=metrics, routes=ROUTES)
    return app


def unavailable_response(what: str, down: dict[str, str]):
    """503 in the error envelope, naming what cannot answer and why (also as ``unhealthy``: name -> why)."""
    from fastapi.responses import JSONResponse

    status = HTTPStatus.SERVICE_UNAVAILABLE
    message = f"{what}: " + "; ".join(f"{name}: {why}" for name, why in down.items())
    body = error_body(message, "ServiceUnavailableError", int(status))
    body["unhealthy"] = down
    return JSONResponse(body, status_code=int(status))


def fetch_text(url: str) -> str:
    """tritonserver's metrics text, or a comment saying why it is missing."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode("utf-8", errors="replace")
        return text if text.endswith("\n") or not text else text + "\n"
    except Exception as exc:
        return f"# trilate: tritonserver metrics at {url} unavailable: {exc}\n"


@functools.lru_cache(maxsize=1)
def version() -> str:
    try:
        from importlib.metadata import version as dist_version

        return dist_version("trilate")
    except Exception:
        return "0.0.0"
