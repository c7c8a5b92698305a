"""Running ``tritonserver`` without Docker, from the ``nvidia-pytriton`` wheel.

The wheel carries tritonserver 2.51, its libraries and the Python backend with one stub per Python
version.  We assemble a backend folder of our own (the backend library plus the stub matching this
interpreter) instead of editing site-packages, and start the server with this interpreter's
``libpython`` first on ``LD_LIBRARY_PATH`` (else a system libpython of another patch level is found
and extension modules fail to import inside the stub).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    pass


def _pytriton_root() -> Path:
    try:
        import pytriton  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - pinned dependency
        raise ServerError("nvidia-pytriton is not installed; it provides the tritonserver binary") from exc
    return Path(pytriton.__file__).parent / "tritonserver"


def tritonserver_binary() -> Path:
    return _pytriton_root() / "bin" / "tritonserver"


def _library_dirs() -> list[str]:
    root = _pytriton_root()
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return [sysconfig.get_config_var("LIBDIR"), str(libs), str(root / "lib")]


def cache_dir() -> Path:
    base = os.environ.get("TRILATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "trilate"
    )
    return Path(base)


def backend_directory() -> Path:
    """A backend folder with the Python backend and the stub for this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = _pytriton_root()
    dest = cache_dir() / f"backends-py{version}"
    python_dir = dest / "python"
    stub_src = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub_src.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    wanted = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": stub_src,
    }
    python_dir.mkdir(parents=True, exist_ok=True)
    for name, src in wanted.items():
        target = python_dir / name
        if not target.exists() or target.stat().st_size != src.stat().st_size or target.stat().st_mtime < src.stat().st_mtime:
            tmp = python_dir / f".{name}.tmp{os.getpid()}"
            shutil.copy2(src, tmp)
            os.replace(tmp, target)
    return dest


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(_library_dirs() + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    # The stub's embedded interpreter finds its prefix through PATH: put this environment's first so
    # it sees the same site-packages (and the editable install of trilate) as we do.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TOKENIZERS_PARALLELISM"] = env.get("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass
class ServerConfig:
    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8010
    grpc_port: int = 8011
    metrics_port: int = 8012
    log_verbose: int = 0
    # Models are (re)loaded through the repository API: the supervisor restarts a model whose stub died.
    explicit_model_control: bool = False
    extra_args: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory()}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
            f"--log-verbose={self.log_verbose}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=16777216",
            *(["--model-control-mode=explicit", "--load-model=*"] if self.explicit_model_control else []),
            *self.extra_args,
        ]


class TritonServer:
    """A tritonserver process: ``start()`` waits until every model is ready; ``stop()`` ends it."""

    def __init__(self, config: ServerConfig, log_file: Path | None = None):
        self.config = config
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0, stream_output: bool = False) -> "TritonServer":
        out = None if stream_output else open(self.log_file or os.devnull, "ab")
        self.process = subprocess.Popen(
            self.config.command(), env=server_environment(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} while loading models"
                    + (f"; see {self.log_file}" if self.log_file else "")
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s" + (f"; see {self.log_file}" if self.log_file else ""))

    def stop(self, timeout: float = 30.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
