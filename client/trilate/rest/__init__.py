"""The vLLM-compatible REST front end, one job per module.

``errors`` (vLLM's error envelope), ``encodings`` (JSON and vector encodings), ``limits`` (request limits and the
ASGI guard that enforces them), ``metrics`` (Prometheus series via prometheus_client), ``service`` (one synchronous
method per route over :class:`trilate.TrilateClient`), ``app`` (the FastAPI app and its routes), ``server``
(uvicorn in a thread, the port check, the command line).  ``trilate.frontend`` re-exports the public names.
"""
