"""``trilate serve`` as a child process, on free loopback ports: for tests, benchmarks and scripts.

    with ServeProcess([MODEL, "--hf-overrides", "{...}"]) as served:
        TrilateClient(served.grpc_url, protocol="grpc") ...
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class ServeError(RuntimeError):
    pass


class ServeProcess:
    """Starts ``trilate serve ARGS`` with its four ports chosen here and waits for "trilate: ready".

    Output is read continuously (tritonserver never blocks on a full pipe) and kept in ``lines``: the
    progress lines (which tritonserver, each model loading / READY / FAILED) and errors.
    """

    def __init__(self, args: list[str], *, timeout: float = 600.0, env: dict[str, str] | None = None,
                 command: list[str] | None = None):
        """``command``: what runs in place of ``trilate serve`` (e.g. the container's entrypoint script);
        it gets ``args`` and then the four port options, which win over any it sets itself."""
        self.port, self.http_port, self.grpc_port, self.metrics_port = free_ports(4)
        command = command or [str(Path(sys.executable).parent / "trilate"), "serve"]
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*command, *args, "--port", str(self.port), "--http-port", str(self.http_port),
             "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        ready = threading.Event()

        def drain():
            for line in self.proc.stdout:
                self.lines.append(line)
                if "trilate: ready" in line:
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                errors = [line for line in self.lines if re.search(r"error|Error|Traceback", line)]
                raise ServeError("trilate serve did not become ready:\n" + "".join(errors[:40] + self.lines[-20:]))

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def tritonserver_pid(self) -> int:
        """The pid of the tritonserver that this ``trilate serve`` started (a child process of it)."""
        from python_backend_models.supervision import child_processes

        for entry, argv in child_processes(self.proc.pid):
            if argv[0].endswith(b"tritonserver"):
                return int(entry.name)
        raise ServeError("this trilate serve has no tritonserver child process")

    def stop(self, timeout: float = 180.0) -> int | None:
        """Ctrl-C, as a user stops it; killed after ``timeout``.  Returns the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
