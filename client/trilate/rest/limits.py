"""What one request may ask for (:class:`Limits`, its command-line options) and the ASGI guard that enforces the
body size and counts every request."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from http import HTTPStatus

from ..schemas import BOUNDS, Bounds
from .errors import error_response
from .metrics import Metrics


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each breach is a 4xx in vLLM's error envelope.

    Tokens per input are limited by each model's ``max_model_len`` (``trilate serve --max-model-len``),
    checked where the text is tokenised, with vLLM's maximum-context message.
    """

    max_request_bytes: int = 32 * 1024 * 1024
    max_items_per_request: int = 2048  # inputs (/pooling, /v1/embeddings), documents (/rerank), pairs (/score)
    max_concurrency: int = 64  # requests talking to tritonserver at once (worker threads)
    max_text_chars: int = 1 << 20  # characters of one text (an input, a document, a /tokenize prompt)
    request_timeout: float = 300.0  # seconds from a request's arrival to its answer (504 past it)

    def bounds(self) -> Bounds:
        return Bounds(max_items=self.max_items_per_request, max_text_chars=self.max_text_chars)


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Limits()
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes,
                        help="largest request body the REST front end accepts (413 above)")
    parser.add_argument("--max-items-per-request", type=int, default=defaults.max_items_per_request,
                        help="most inputs / documents / pairs in one REST request (400 above)")
    parser.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency,
                        help="REST requests in flight to tritonserver at once (others wait their turn)")
    parser.add_argument("--max-text-chars", type=int, default=defaults.max_text_chars,
                        help="longest text (input, document, /tokenize prompt) in characters (400 above)")
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout,
                        help="seconds a REST request may take, waiting included (504 past it)")
    parser.add_argument("--uvicorn-log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug", "trace"])


def limits_from_args(args: argparse.Namespace) -> Limits:
    for name in ("max_request_bytes", "max_items_per_request", "max_concurrency", "max_text_chars"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
    if not args.request_timeout > 0:
        raise SystemExit("error: --request-timeout must be positive")
    return Limits(args.max_request_bytes, args.max_items_per_request, args.max_concurrency, args.max_text_chars,
                  args.request_timeout)


_DRAIN_BYTES = 256 * 1024 * 1024


class Guard:
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

        self.metrics.in_progress.inc()
        bounds = BOUNDS.set(self.limits.bounds())  # read by the request schemas' size checks
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
            BOUNDS.reset(bounds)
            self.metrics.in_progress.dec()
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
