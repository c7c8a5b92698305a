"""vLLM-compatible REST front end over the client library (FastAPI + uvicorn); the entry point.

    trilate serve MODEL ...            # tritonserver + this front end on --port (default 8000)
    python -m trilate.frontend --triton-url 127.0.0.1:8011 --protocol grpc --port 8000

Routes (vLLM 0.18-0.20 schemas, ``reference/vllm_semantics.md`` section 4): ``POST /score``
(+ ``/v1/score``), ``/rerank``, ``/v1/rerank``, ``/v2/rerank`` (also Jina- and Cohere-shaped requests),
``/pooling``, ``/v1/embeddings``, ``/tokenize``, ``/detokenize``; ``GET /v1/models``, ``/health``,
``/version``, ``/metrics`` (tritonserver's Prometheus metrics plus this process's own counters) and the
OpenAPI page (``/docs``, ``/openapi.json``).

The front end is stateless: it owns no model and no tensors.  The work is split in :mod:`trilate.rest`
(errors, encodings, limits, metrics, service, app, server); this module re-exports what the CLI, the
launcher, the tests and the benchmark use.
"""

import sys

from .rest.app import create_app
from .rest.errors import APIError, RouteNotFound
from .rest.limits import Limits, add_limit_arguments, limits_from_args
from .rest.server import FrontEnd, check_port_free, main

__all__ = ["APIError", "FrontEnd", "Limits", "RouteNotFound", "add_limit_arguments", "check_port_free", "create_app",
           "limits_from_args", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
