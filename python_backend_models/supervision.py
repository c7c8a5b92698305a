"""Keeping a running tritonserver truthful and alive: dead Python-backend stubs are found and reloaded.

tritonserver 2.51 does not restart a Python-backend stub that died (killed, out of memory, a crash in
an extension module): every later request of that model fails with "Stub process '...' is not
healthy" while ``/v2/health/ready`` and the model's own readiness keep answering 200.  The
:class:`Supervisor` closes that gap from outside the server:

* every ``interval`` seconds it counts the live stub processes of each model (children of the
  tritonserver process, read from ``/proc``; Linux only, as tritonserver is) and reads Triton's
  repository index;
* a model with fewer live stubs than it had once ready, or a Python model that is not READY, is
  *unhealthy*: :meth:`Supervisor.unhealthy` names it with the reason (``/health`` answers 503 with it);
* it is then restarted through Triton's model-control API (``unload`` + ``load``; the server runs with
  ``--model-control-mode=explicit``).  Triton reloads the ensembles that use it by itself.  A failed
  load is retried with exponential backoff.

What this does not do: restart tritonserver itself (``trilate serve`` exits non-zero instead, so that
the process supervisor — systemd, Kubernetes — sees the crash), or notice a stub that is alive but
stuck (a request deadline in the front end bounds what a client waits for that).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STUB_BINARY = "triton_python_backend_stub"


def child_processes(parent_pid: int, proc: Path = Path("/proc")):
    """Yield ``(/proc entry, argv)`` for each live (not zombie) child process of ``parent_pid``."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) != parent_pid or state == "Z":
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        yield entry, argv


def stub_processes(server_pid: int, proc: Path = Path("/proc")):
    """Yield ``(model name, /proc entry)`` for each live Python-backend stub among ``server_pid``'s children.

    A stub's first argument is ``<repository>/<model>/<version>/model.py``; zombies (a killed stub
    that tritonserver has not reaped yet) are not counted.
    """
    for entry, argv in child_processes(server_pid, proc):
        if len(argv) >= 2 and argv[0].endswith(STUB_BINARY.encode()):
            yield Path(argv[1].decode(errors="replace")).parent.parent.name, entry


def resident_bytes(entry: Path) -> int:
    """Resident memory of the process at ``/proc/<pid>``."""
    return int((entry / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_stubs(server_pid: int, proc: Path = Path("/proc")) -> dict[str, int]:
    """Live Python-backend stubs of a tritonserver: model name -> count."""
    counts: dict[str, int] = {}
    for model, _ in stub_processes(server_pid, proc):
        counts[model] = counts.get(model, 0) + 1
    return counts


@dataclass
class ModelHealth:
    reason: str
    attempts: int = 0
    next_try: float = 0.0


class TritonControl:
    """The few calls of Triton's HTTP API the supervisor needs (urllib: no extra client in this thread)."""

    def __init__(self, http_url: str, timeout: float = 600.0):
        self.base = f"http://{http_url}"
        self.timeout = timeout

    def _post(self, path: str, timeout: float | None = None) -> bytes:
        req = urllib.request.Request(self.base + path, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            raise RuntimeError(f"{path}: HTTP {exc.code}: {detail}") from None

    def index(self) -> dict[str, str]:
        """Model name -> state (READY, LOADING, UNLOADING, UNAVAILABLE) of every model Triton knows."""
        rows = json.loads(self._post("/v2/repository/index", timeout=10))
        return {row["name"]: row.get("state", "") for row in rows}

    def unload(self, name: str) -> None:
        self._post(f"/v2/repository/models/{name}/unload", timeout=30)

    def load(self, name: str) -> None:
        """Blocks until the model (and the ensembles Triton reloads with it) is loaded or failed."""
        self._post(f"/v2/repository/models/{name}/load")


class Supervisor:
    """Watches one tritonserver's Python models and restarts those that can no longer answer.

    ``python_models``: names of the repository's Python-backend models (stages; ensembles have no stub).
    ``log``: one line per event (a model found dead, restarted, failed to restart).
    """

    def __init__(self, server_pid: int, http_url: str, python_models: list[str], *, interval: float = 0.5,
                 backoff: tuple[float, float] = (1.0, 60.0), log: Callable[[str], None] = lambda line: None):
        self.server_pid = server_pid
        self.control = TritonControl(http_url)
        self.python_models = sorted(python_models)
        self.interval = interval
        self.backoff = backoff
        self.log = log
        self._expected: dict[str, int] = {}
        self._health: dict[str, ModelHealth] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the front end asks ----------------------------------------------------------------------
    def unhealthy(self) -> dict[str, str]:
        """Models that cannot answer now -> why ({} when every model can)."""
        with self._lock:
            return {name: h.reason for name, h in sorted(self._health.items())}

    # -- the loop -------------------------------------------------------------------------------------
    def start(self) -> "Supervisor":
        self._expected = {m: n for m, n in live_stubs(self.server_pid).items() if m in self.python_models}
        self._thread = threading.Thread(target=self._run, name="trilate-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # tritonserver going away: cmd_serve notices and exits
                self.log(f"supervisor: check failed: {exc}")

    def check(self) -> None:
        """One round: find models that cannot answer, restart those whose backoff has passed."""
        stubs = live_stubs(self.server_pid)
        try:
            states = self.control.index()
        except (OSError, RuntimeError):
            states = None
        now = time.monotonic()
        for model in self.python_models:
            reason = None
            expected = self._expected.get(model, 0)
            if stubs.get(model, 0) < expected:
                reason = (f"{expected - stubs.get(model, 0)} of its {expected} Python-backend stub process(es) "
                          "died; restarting it")
            elif states is not None and states.get(model, "READY") != "READY":
                reason = f"Triton reports it {states.get(model) or 'missing'}; restarting it"
            with self._lock:
                health = self._health.get(model)
                if reason is None and health is None:
                    continue
                if health is None:
                    health = self._health[model] = ModelHealth(reason)
                    self.log(f"supervisor: model {model!r} cannot answer: {reason}")
                if now < health.next_try:
                    continue
            self._restart(model, health)

    def _wait_all_ready(self, timeout: float = 60.0) -> None:
        """Until every model Triton knows is READY again (the ensembles it reloads with the stage), so that the
        model is reported healthy only once requests for it can succeed."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [name for name, state in self.control.index().items() if state != "READY"]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{', '.join(waiting)} not READY {timeout:.0f} s after the reload")
            time.sleep(0.1)

    def _restart(self, model: str, health: ModelHealth) -> None:
        health.attempts += 1
        start = time.monotonic()
        try:
            try:
                self.control.unload(model)
            except RuntimeError as exc:  # already unloaded (a failed load before): load it anyway
                self.log(f"supervisor: unloading {model!r}: {exc}")
            self.control.load(model)
            self._wait_all_ready()
        except (OSError, RuntimeError) as exc:
            delay = min(self.backoff[1], self.backoff[0] * 2 ** (health.attempts - 1))
            with self._lock:
                health.reason = f"restart {health.attempts} failed ({exc}); next try in {delay:.0f} s"
                health.next_try = time.monotonic() + delay
            self.log(f"supervisor: model {model!r}: {health.reason}")
            return
        count = live_stubs(self.server_pid).get(model, 0)
        with self._lock:
            self._expected[model] = max(count, 1)
            self._health.pop(model, None)
        self.log(f"supervisor: model {model!r} restarted in {time.monotonic() - start:.1f} s "
                 f"({count} stub process(es))")


def python_models(repository: Path) -> list[str]:
    """The repository's Python-backend models (folders whose config names the python backend)."""
    names = []
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        text = config.read_text(encoding="utf-8")
        if 'backend: "python"' in text:
            names.append(config.parent.name)
    return names


def process_tree_rss(pid: int, proc: Path = Path("/proc")) -> dict[str, int]:
    """Resident memory (bytes) of tritonserver ``pid`` (key ``"tritonserver"``) and of its
    Python-backend stubs, summed per model name.  Used by the soak run."""
    try:
        out = {"tritonserver": resident_bytes(proc / str(pid))}
    except OSError:
        return {}
    for model, entry in stub_processes(pid, proc):
        try:
            out[model] = out.get(model, 0) + resident_bytes(entry)
        except OSError:
            continue
    return out
