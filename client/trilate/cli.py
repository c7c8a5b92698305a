"""The ``trilate`` command: ``serve`` and ``build-repo``, mirroring ``vllm serve`` where it applies."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from python_backend_models.checkpoint import DEFAULT_MODEL
from python_backend_models.repository import ENCODER_BACKENDS


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"local checkpoint folder or Hugging Face id (default: {DEFAULT_MODEL})")
    parser.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                        help="name clients use, one per MODEL (default: the MODEL argument)")
    parser.add_argument("--hf-overrides", action="append", default=None, metavar="JSON",
                        help='config.json overrides, e.g. \'{"architectures": ["HF_ColBERT"]}\'; '
                             "give it once for all models or once per model")
    parser.add_argument("--max-model-len", type=int, default=None, help="longest input in tokens")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="backbone precision (auto: float32 on CPU); heads always run in float32")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="accepted for vLLM compatibility; trilate never runs code from a checkpoint")
    parser.add_argument("--runner", default=None, metavar="RUNNER",
                        help="accepted for vLLM compatibility: only 'pooling' (trilate serves pooling models only)")
    parser.add_argument("--chat-template", action="append", default=None, metavar="PATH",
                        help="Jinja chat / score template file (vLLM's flag), once for all models or once per model; "
                             "default: the checkpoint's own or trilate's template for its architecture")
    parser.add_argument("--colbert-score-modes", action="store_true",
                        help="/score and /rerank encode side 1 as ColBERT queries and side 2 as documents "
                             "with the checkpoint's own conventions (PyLate); default: vLLM's symmetric encoding")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where encoders run")
    parser.add_argument("--max-batch-tokens", type=int, default=16384,
                        help="token budget of one encoder forward pass (padded tokens)")
    parser.add_argument("--max-queue-delay-us", type=int, default=0,
                        help="how long Triton's dynamic batcher may hold a request to merge it with others")
    parser.add_argument("--encoder-instances", type=int, default=1,
                        help="encoder processes per model (each loads the weights)")
    parser.add_argument("--encoder-threads", type=int, default=0,
                        help="torch threads of each encoder instance (0: every core); the other stages use one")
    parser.add_argument("--encoder-backend", default="auto", choices=ENCODER_BACKENDS,
                        help="what runs the text backbone: auto = ONNX Runtime for BERT backbones in float32 on CPU "
                             "(faster there; PyTorch if its start-up check fails), PyTorch otherwise")


def _specs(args: argparse.Namespace):
    from python_backend_models.repository import ServeSpec

    models = args.models or [DEFAULT_MODEL]
    names = args.served_model_name or [None] * len(models)
    if len(names) != len(models):
        raise SystemExit(f"error: --served-model-name got {len(names)} names for {len(models)} models")
    raw_overrides = args.hf_overrides or []
    if len(raw_overrides) not in (0, 1, len(models)):
        raise SystemExit("error: give --hf-overrides once for all models or once per model")
    overrides = []
    for raw in raw_overrides:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"error: --hf-overrides is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise SystemExit("error: --hf-overrides must be a JSON object")
        overrides.append(value)
    if len(overrides) == 1:
        overrides = overrides * len(models)
    if not overrides:
        overrides = [{}] * len(models)
    if args.runner is not None and args.runner != "pooling":
        raise SystemExit(f"error: --runner {args.runner} is not supported: trilate serves pooling models only "
                         "(--runner pooling, or leave the flag out)")
    templates = _chat_templates(args.chat_template, len(models))
    if args.trust_remote_code:
        print("trilate: --trust-remote-code accepted; no code from any checkpoint is run "
              "(trilate's own implementation of each architecture serves it)", file=sys.stderr)
    return [
        ServeSpec(model=m, served_name=n, hf_overrides=o, max_model_len=args.max_model_len, dtype=args.dtype,
                  colbert_score_modes=args.colbert_score_modes, chat_template=t)
        for m, n, o, t in zip(models, names, overrides, templates)
    ]


def _chat_templates(raw: list[str] | None, n_models: int) -> list[str | None]:
    """``--chat-template`` per model, each an existing file; an empty value (``--chat-template ''``) keeps that
    model's default (the checkpoint's own, or trilate's template for its architecture)."""
    raw = raw or []
    if len(raw) not in (0, 1, n_models):
        raise SystemExit("error: give --chat-template once for all models or once per model ('' keeps a model's "
                         "default)")
    for path in raw:
        if path and not Path(path).is_file():
            raise SystemExit(f"error: --chat-template {path!r} is not a file")
    paths = [str(Path(p).resolve()) if p else None for p in raw]
    return paths * n_models if len(paths) == 1 else (paths or [None] * n_models)


def _build(args: argparse.Namespace, output: Path):
    from python_backend_models.checkpoint import CheckpointError
    from python_backend_models.repository import BuildOptions, build_repository

    for name, least in (("max_batch_tokens", 1), ("max_queue_delay_us", 0), ("encoder_instances", 1),
                        ("encoder_threads", 0)):
        if getattr(args, name) < least:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least {least}")
    options = BuildOptions(device=args.device, max_batch_tokens=args.max_batch_tokens,
                           max_queue_delay_us=args.max_queue_delay_us, encoder_instances=args.encoder_instances,
                           encoder_threads=args.encoder_threads, encoder_backend=args.encoder_backend)
    try:
        return build_repository(_specs(args), output, options)
    except CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from None


def _say(args: argparse.Namespace, message: str) -> None:
    """A progress line for a person (silenced by -q); errors go to stderr regardless."""
    if not getattr(args, "quiet", False):
        print(f"trilate: {message}", flush=True)


def _progress_setup(args: argparse.Namespace) -> None:
    """huggingface_hub's download progress bars on, unless -q (or HF_HUB_DISABLE_PROGRESS_BARS) says not."""
    from huggingface_hub.utils import disable_progress_bars

    if getattr(args, "quiet", False):
        disable_progress_bars()


def _build_with_progress(args: argparse.Namespace, output: Path):
    """``_build``, saying what it builds (downloads of hub ids show huggingface_hub's bars) and how long it took."""
    started = time.monotonic()
    models = args.models or [DEFAULT_MODEL]
    _say(args, f"building the model repository for {', '.join(models)} in {output.resolve()} "
               "(a Hugging Face id not in the cache is downloaded first)")
    infos = _build(args, output)
    for info in infos:
        _say(args, f"{info.served_name}: {info.architecture} ({info.score_type}, dim {info.dim}, "
                   f"max_model_len {info.max_model_len})")
    _say(args, f"model repository written in {time.monotonic() - started:.1f} s")
    return infos


def cmd_build_repo(args: argparse.Namespace) -> int:
    infos = _build(args, Path(args.output))
    for info in infos:
        print(f"{info.served_name}: {info.architecture} ({info.score_type}, dim {info.dim}, "
              f"max_model_len {info.max_model_len}) -> {Path(args.output).resolve()}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """tritonserver + supervisor + REST front end until SIGINT / SIGTERM.

    Exit codes: 0 after a requested stop (in-flight REST requests are answered first, up to
    ``--drain-timeout``); 1 when startup fails, the front end stops, or tritonserver dies.  trilate does
    not restart a dead tritonserver itself: a crash loop stays visible to the process supervisor
    (systemd ``Restart=on-failure``, Kubernetes' restart policy), which restarts the whole service.
    """
    from python_backend_models.server import ServerConfig, ServerError, TritonServer, find_tritonserver
    from python_backend_models.supervision import Supervisor, python_models

    frontend = None
    if not args.no_frontend:
        from .frontend import check_port_free, limits_from_args

        from .multimodal import media_from_args

        limits = limits_from_args(args)
        media = media_from_args(args)
        check_port_free(args.host, args.port)  # before minutes of model loading
    try:  # before any download or build
        _say(args, f"tritonserver {find_tritonserver(args.tritonserver).describe()}")
    except ServerError as exc:
        print(f"trilate: {exc}", file=sys.stderr)
        return 1
    repo = Path(args.model_repository) if args.model_repository else Path(tempfile.mkdtemp(prefix="trilate-repo-"))
    _progress_setup(args)
    infos = _build_with_progress(args, repo)
    config = ServerConfig(model_repository=repo.resolve(), host=args.triton_host, http_port=args.http_port,
                          grpc_port=args.grpc_port, metrics_port=args.metrics_port, log_verbose=args.log_verbose,
                          tritonserver=args.tritonserver, explicit_model_control=True)
    server = TritonServer(config, log_file=repo.resolve() / "tritonserver.log")
    _say(args, f"starting tritonserver; each model's loading follows (its full log: {server.log_file})")
    supervisor = None
    stop = threading.Event()

    def _on_signal(signum, frame):
        if stop.is_set():  # a second Ctrl-C: stop now, without waiting for requests in flight
            raise KeyboardInterrupt
        print(f"trilate: {signal.Signals(signum).name}: finishing requests in flight (up to "
              f"{args.drain_timeout:.0f} s), then stopping", file=sys.stderr, flush=True)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        server.start(timeout=args.startup_timeout, stream_output=args.log_verbose > 0,
                     progress=lambda message: _say(args, message))
        supervisor = Supervisor(server.process.pid, server.http_url, python_models(repo),
                                log=lambda line: print(f"trilate: {line}", file=sys.stderr, flush=True)).start()
        for info in infos:
            _say(args, f"serving {info.served_name!r} ({info.architecture}, {', '.join(info.tasks)}; "
                       f"scores: {info.score_type})")
        if not args.no_frontend:
            from .frontend import FrontEnd, create_app

            triton_url = server.grpc_url if args.frontend_protocol == "grpc" else server.http_url
            app = create_app(triton_url, args.frontend_protocol, limits=limits, media=media,
                             metrics_url=f"http://{config.host}:{config.metrics_port}/metrics",
                             model_repository=repo, unhealthy=supervisor.unhealthy)
            frontend = FrontEnd(app, args.host, args.port, log_level=args.uvicorn_log_level,
                                drain_timeout=args.drain_timeout).start()
            print(f"trilate: REST API (vLLM-compatible) {frontend.url}  (OpenAPI page {frontend.url}/docs)",
                  flush=True)
        print(f"trilate: ready. Triton HTTP http://{config.host}:{config.http_port}  gRPC {config.host}:{config.grpc_port}  "
              f"metrics http://{config.host}:{config.metrics_port}/metrics  (Ctrl-C stops)", flush=True)
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                print(f"trilate: tritonserver exited unexpectedly (code {server.process.returncode}); stopping. "
                      "Restart trilate serve (a process supervisor does this on a non-zero exit).",
                      file=sys.stderr, flush=True)
                code = 1
                break
            if frontend is not None and not frontend.alive():
                print("trilate: the REST front end stopped", file=sys.stderr, flush=True)
                code = 1
                break
    except KeyboardInterrupt:
        pass
    except (ServerError, RuntimeError) as exc:
        print(f"trilate: {exc}", file=sys.stderr)
        code = 1
    finally:
        if frontend is not None:
            frontend.stop()  # stops accepting, answers what is in flight (bounded by --drain-timeout)
        if supervisor is not None:
            supervisor.stop()
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trilate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="build the model repository and run tritonserver until Ctrl-C")
    _model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address the REST front end binds (default: loopback only); Triton's ports stay on "
                            "--triton-host")
    serve.add_argument("--triton-host", default="127.0.0.1",
                       help="address Triton's HTTP, gRPC and metrics ports bind (default: loopback only; they "
                            "have none of the REST front end's limits)")
    serve.add_argument("--http-port", type=int, default=8010)
    serve.add_argument("--grpc-port", type=int, default=8011)
    serve.add_argument("--metrics-port", type=int, default=8012)
    serve.add_argument("--model-repository", default=None, help="where to write the repository (default: a temp dir)")
    serve.add_argument("--log-verbose", type=int, default=0,
                       help="tritonserver's log level; above 0 its whole log is also shown here")
    serve.add_argument("--tritonserver", default=None, metavar="PATH",
                       help="tritonserver binary (default: `tritonserver` on PATH, else the nvidia-pytriton wheel's)")
    serve.add_argument("-q", "--quiet", action="store_true",
                       help="no progress lines or download bars: errors and the ready lines only")
    serve.add_argument("--startup-timeout", type=float, default=600.0)
    serve.add_argument("--port", type=int, default=8000,
                       help="port of the vLLM-compatible REST front end (bound to --host)")
    serve.add_argument("--no-frontend", action="store_true", help="run tritonserver only, no REST front end")
    serve.add_argument("--drain-timeout", type=float, default=30.0,
                       help="on SIGINT / SIGTERM, seconds to finish REST requests in flight before stopping")
    serve.add_argument("--frontend-protocol", default="grpc", choices=["grpc", "http"],
                       help="how the REST front end talks to tritonserver")
    from .frontend import add_limit_arguments
    from .multimodal import add_media_arguments

    add_limit_arguments(serve)
    add_media_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    build = sub.add_parser("build-repo", help="write the model repository without serving")
    _model_arguments(build)
    build.add_argument("--output", required=True, help="repository folder to write")
    build.set_defaults(func=cmd_build_repo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
