"""Running the app: uvicorn in a background thread (:class:`FrontEnd`), the port check, and the command line of
``python -m trilate.frontend``."""

from __future__ import annotations

import argparse
import threading
import time

from .app import create_app
from ..multimodal import add_media_arguments, media_from_args
from .limits import add_limit_arguments, limits_from_args


class FrontEnd:
    """uvicorn serving ``app`` in a background thread: ``start()`` returns once it listens."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                 drain_timeout: float = 30.0):
        import uvicorn

        # On stop, uvicorn closes the listening socket at once and lets requests in flight finish for up to
        # drain_timeout seconds (then cancels them).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trilate.frontend",
                                     description="the REST front end alone, over a running tritonserver")
    parser.add_argument("--triton-url", default="127.0.0.1:8011", help="tritonserver gRPC (or HTTP) address")
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    parser.add_argument("--metrics-url", default=None, help="tritonserver metrics, e.g. http://127.0.0.1:8012/metrics")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-repository", default=None,
                        help="the repository tritonserver serves (for /detokenize, which reads the tokenizers)")
    add_limit_arguments(parser)
    add_media_arguments(parser)
    args = parser.parse_args(argv)
    import uvicorn

    app = create_app(args.triton_url, args.protocol, metrics_url=args.metrics_url, limits=limits_from_args(args),
                     model_repository=args.model_repository, media=media_from_args(args))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level, timeout_keep_alive=30)
    return 0
