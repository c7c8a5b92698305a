"""Running ``tritonserver``: the container's own, or the one in the ``nvidia-pytriton`` wheel.

Which one (:func:`find_tritonserver`): ``--tritonserver PATH``, else ``tritonserver`` on ``PATH`` (NVIDIA's
container puts ``/opt/tritonserver/bin`` there), else the wheel.  A tritonserver of an installation
(``<prefix>/bin/tritonserver``) uses that installation's ``<prefix>/backends``; its Python backend stub
embeds one Python version, which must be the one running trilate (the stub imports trilate and torch from
this environment), and that is checked before starting.

The wheel carries tritonserver 2.51, its libraries and the Python backend with one stub per Python
version.  We assemble a backend folder of our own (the backend library plus the stub matching this
interpreter) instead of editing site-packages, and start the server with this interpreter's
``libpython`` first on ``LD_LIBRARY_PATH`` (else a system libpython of another patch level is found
and extension modules fail to import inside the stub).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Callable
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


# -- which tritonserver ------------------------------------------------------------------------------

WHEEL = "the nvidia-pytriton wheel"


@dataclass(frozen=True)
class Tritonserver:
    """One tritonserver installation: the binary, where it was found, its backends and libraries."""

    binary: Path
    source: str  # "--tritonserver", "PATH" or WHEEL
    backend_directory: Path
    library_dirs: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.binary} (from {self.source})"


def stub_python_version(stub: Path) -> str | None:
    """The ``X.Y`` of the ``libpython`` a ``triton_python_backend_stub`` links, or None if it names none."""
    found = set(re.findall(rb"libpython(3\.\d+)\.so", stub.read_bytes()))
    return found.pop().decode() if len(found) == 1 else None


def _installed(binary: Path, source: str) -> Tritonserver:
    """A tritonserver outside the wheel, e.g. the container's ``/opt/tritonserver/bin/tritonserver``."""
    prefix = binary.resolve().parent.parent
    backends = prefix / "backends"
    stub = backends / "python" / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"{binary} ({source}) has no Python backend: {stub} is missing. trilate's models need "
                          f"it; use NVIDIA's tritonserver container or the nvidia-pytriton wheel")
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    theirs = stub_python_version(stub)
    if theirs is not None and theirs != ours:
        raise ServerError(
            f"the Python backend stub of {binary} ({source}) embeds Python {theirs}, but trilate runs on Python "
            f"{ours}: the stub would not import this environment's packages. Run trilate with Python {theirs} "
            f"(in the tritonserver container: a venv of its python3, as docker/Dockerfile does), or pass "
            f"--tritonserver to another tritonserver"
        )
    # The installation's own libraries first; then this interpreter's libpython for the stub (as for the wheel).
    return Tritonserver(binary, source, backends,
                        (str(prefix / "lib"), sysconfig.get_config_var("LIBDIR")))


def find_tritonserver(explicit: str | os.PathLike[str] | None = None) -> Tritonserver:
    """``explicit`` (``--tritonserver``), else ``tritonserver`` on ``PATH``, else the nvidia-pytriton wheel."""
    wheel_binary = None
    try:
        wheel_binary = tritonserver_binary().resolve()
    except ServerError:
        pass
    if explicit is not None:
        found = Path(explicit).expanduser()
        if not (found.is_file() and os.access(found, os.X_OK)):
            raise ServerError(f"--tritonserver {explicit}: no executable file there")
        source = "--tritonserver"
    else:
        on_path = shutil.which("tritonserver")
        found, source = (Path(on_path), "PATH") if on_path else (None, WHEEL)
    if found is not None and (wheel_binary is None or found.resolve() != wheel_binary):
        return _installed(found, source)
    if wheel_binary is None:
        raise ServerError("no tritonserver: none on PATH and nvidia-pytriton is not installed; "
                          "pass --tritonserver PATH, or pip install nvidia-pytriton==0.7.0")
    # The wheel's binary (found directly, or named by PATH / --tritonserver): our own backend folder.
    return Tritonserver(wheel_binary, WHEEL if source == WHEEL else f"{source}: {WHEEL}",
                        backend_directory(), tuple(_library_dirs()))


def server_environment(install: Tritonserver | None = None) -> dict[str, str]:
    env = dict(os.environ)
    dirs = list(install.library_dirs) if install is not None else _library_dirs()
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    # The stub's embedded interpreter finds its prefix through PATH: put this environment's first so
    # it sees the same site-packages (and the editable install of trilate) as we do.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TOKENIZERS_PARALLELISM"] = env.get("TOKENIZERS_PARALLELISM", "false")
    # Every stub starts with one math thread and sleeping (not spinning) OpenMP workers, so the tokeniser and
    # scoring stages never compete with the encoder for cores; the encoder sets its own torch thread count
    # (``trilate serve --encoder-threads``).  Values already in the environment win.
    # Two malloc arenas per process: with one arena per thread (glibc's default, 8 x cores) the encoder's
    # buffers of ever-changing pack shapes fragment into arenas that never give memory back (the soak's growth).
    for name, value in (("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"),
                        ("MALLOC_ARENA_MAX", "2")):
        env.setdefault(name, value)
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
    tritonserver: str | None = None  # --tritonserver; None: PATH, then the wheel

    def install(self) -> Tritonserver:
        return find_tritonserver(self.tritonserver)

    def command(self, install: Tritonserver | None = None) -> list[str]:
        install = install or self.install()
        return [
            str(install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={install.backend_directory}",
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


class LoadProgress:
    """Turns tritonserver's model-lifecycle log lines into one line per event a person can follow.

    ``emit`` gets ``loading NAME``, ``NAME READY after S s``, ``NAME FAILED after S s: REASON`` and each
    encoder's ``NAME: backbone on RUNTIME``;
    ``clock`` is injectable so the arithmetic is testable without waiting.
    """

    LOADING = re.compile(r'\] "loading: (?P<name>.+):(?P<version>\d+)"\s*$')
    LOADED = re.compile(r"""\] "successfully loaded '(?P<name>[^']+)'""")
    FAILED = re.compile(r"""\] "failed to load '(?P<name>[^']+)' version \d+: (?P<reason>.*?)"?\s*$""")
    BACKBONE = re.compile(r'\] "(?P<what>[^"\s]+: backbone on [^"]+)"\s*$')  # the encoder's runtime (triton/encoder.py)

    def __init__(self, emit: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.emit = emit or (lambda _message: None)
        self.clock = clock
        self.started = clock()
        self.loading: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    def feed(self, line: str) -> None:
        if m := self.LOADING.search(line):
            self.loading[m["name"]] = self.clock()
            self.emit(f"loading {m['name']}")
        elif m := self.LOADED.search(line):
            seconds = self.clock() - self.loading.pop(m["name"], self.started)
            self.ready[m["name"]] = seconds
            self.emit(f"{m['name']} READY after {seconds:.1f} s")
        elif m := self.FAILED.search(line):
            seconds = self.clock() - self.loading.pop(m["name"], self.started)
            reason = m["reason"].replace("\\n", " ").replace('\\"', '"').strip()
            self.failed[m["name"]] = reason
            self.emit(f"{m['name']} FAILED after {seconds:.1f} s: {reason}")
        elif m := self.BACKBONE.search(line):
            self.emit(m["what"])

    def still_loading(self) -> list[tuple[str, float]]:
        now = self.clock()
        return [(name, now - since) for name, since in self.loading.items()]

    def report_still_loading(self) -> None:
        pending = self.still_loading()
        if pending:
            self.emit("still loading: " + ", ".join(f"{name} ({seconds:.0f} s)" for name, seconds in pending))


class TritonServer:
    """A tritonserver process: ``start()`` waits until every model is ready; ``stop()`` ends it.

    Its output goes to ``log_file`` (if given), to our stdout with ``stream_output``, and through
    :class:`LoadProgress` to ``progress`` (one line per model loading / READY / FAILED).
    """

    HEARTBEAT_S = 30.0  # how often `progress` hears which models are still loading

    def __init__(self, config: ServerConfig, log_file: Path | None = None):
        self.config = config
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self.install: Tritonserver | None = None
        self.load_progress = LoadProgress()
        self._reader: threading.Thread | None = None
        self._tail: list[str] = []

    def start(self, timeout: float = 300.0, stream_output: bool = False,
              progress: Callable[[str], None] | None = None) -> "TritonServer":
        self.install = self.config.install()
        self.load_progress = LoadProgress(progress)
        self.process = subprocess.Popen(
            self.config.command(self.install), env=server_environment(self.install), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump, args=(self.process, stream_output),
                                        name="tritonserver-output", daemon=True)
        self._reader.start()
        self.wait_ready(timeout)
        return self

    def _pump(self, process: subprocess.Popen, stream_output: bool) -> None:
        """Read every output line (tritonserver never blocks on a full pipe) and pass it on."""
        log = open(self.log_file, "ab") if self.log_file else None
        try:
            for raw in process.stdout:
                if log is not None:
                    log.write(raw)
                    log.flush()
                if stream_output:
                    sys.stdout.buffer.write(raw)
                    sys.stdout.flush()
                line = raw.decode("utf-8", errors="replace")
                self._tail = (self._tail + [line])[-20:]
                self.load_progress.feed(line)
        finally:
            if log is not None:
                log.close()

    def _exit_reason(self) -> str:
        failed = self.load_progress.failed
        if failed:
            return "; ".join(f"{name} failed: {reason}" for name, reason in failed.items())
        return "its last output:\n" + "".join(self._tail)

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        heartbeat = time.monotonic() + self.HEARTBEAT_S
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                if self._reader is not None:  # its last lines (stubs may hold the pipe open: bounded wait)
                    self._reader.join(timeout=5)
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} while loading models: "
                    + self._exit_reason() + (f" (full log: {self.log_file})" if self.log_file else "")
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > heartbeat:
                self.load_progress.report_still_loading()
                heartbeat = time.monotonic() + self.HEARTBEAT_S
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
