"""Faults a user's deployment meets, through ``trilate serve`` as a user starts it.

One server (the default MiniLM, REST on 0.0.0.0, at most 2 REST requests talking to Triton at once)
is shared by the tests of this module in file order: ports, a health probe under load, a killed
encoder stub, and last a Ctrl-C with requests in flight, which ends it.  A second, short-lived
server has its tritonserver killed.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from trilate.launch import ServeProcess

pytestmark = pytest.mark.server

DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER = "sentence-transformers--all-MiniLM-L6-v2__encoder"
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 25)  # ~250 tokens
HEAVY = {"model": DEFAULT, "query": "a fox", "documents": [f"{i} {LONG}" for i in range(16)]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    # A drain timeout no request here comes near, on however busy a machine: the Ctrl-C test waits for them all.
    server = ServeProcess(["--model-repository", str(root / "repo"), "--host", "0.0.0.0", "--max-concurrency", "2",
                           "--drain-timeout", "300", "--uvicorn-log-level", "warning"], timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=120) as client:
        yield client


def listening(port: int) -> set[str]:
    """Addresses on which something LISTENs on ``port`` (from /proc/net/tcp and tcp6; IPv4-mapped IPv6
    addresses, as gRPC binds them, are given as IPv4)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
            ip = ipaddress.ip_address(raw)
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return found


def embed(http: httpx.Client, text: str) -> httpx.Response:
    return http.post("/v1/embeddings", json={"model": DEFAULT, "input": [text]})


def test_rest_on_all_interfaces_leaves_tritons_ports_on_loopback(served):
    assert listening(served.port) == {"0.0.0.0"}
    for port in (served.http_port, served.grpc_port, served.metrics_port):
        assert listening(port) == {"127.0.0.1"}, port


def test_a_health_probe_answers_within_a_second_while_the_limiter_is_full(http):
    with ThreadPoolExecutor(6) as pool:
        heavy = [pool.submit(http.post, "/rerank", json=HEAVY) for _ in range(6)]
        time.sleep(0.5)  # the two limiter slots are taken; four requests wait for one
        probes = []
        for _ in range(5):
            start = time.monotonic()
            status = http.get("/health", timeout=5).status_code
            probes.append((status, time.monotonic() - start))
            metrics = http.get("/metrics", timeout=5)
            assert metrics.status_code == 200
        busy = [f for f in heavy if not f.done()]
        assert all(f.result().status_code == 200 for f in heavy)
    assert busy, "the heavy requests finished before the probes: the limiter was never full"
    assert all(status == 200 and seconds < 1.0 for status, seconds in probes), probes


def test_a_killed_encoder_stub_is_restarted_and_health_says_so_meanwhile(served, http):
    from python_backend_models.supervision import stub_processes

    before = np.array(embed(http, "What is machine learning?").json()["data"][0]["embedding"])
    triton = served.tritonserver_pid()
    stubs = [int(entry.name) for model, entry in stub_processes(triton) if model == ENCODER]
    assert len(stubs) == 1
    os.kill(stubs[0], signal.SIGKILL)
    killed = time.monotonic()

    seen_503, failures = None, []
    while time.monotonic() - killed < 30:
        health = http.get("/health", timeout=5)
        if health.status_code == 503 and seen_503 is None:
            seen_503 = health.json()
        resp = embed(http, "What is machine learning?")
        if resp.status_code == 200:
            if seen_503 is not None:
                break
        else:
            failures.append((resp.status_code, resp.json()["error"]["message"]))
        time.sleep(0.2)
    recovered = time.monotonic() - killed
    assert seen_503 is not None, "/health never said 503 while the encoder was down"
    assert ENCODER in seen_503["error"]["message"] and ENCODER in seen_503["unhealthy"]
    assert resp.status_code == 200 and recovered < 30, f"not answering {recovered:.0f} s after the kill"
    # In between, every failure was a fast 503 that says why; never a 500.
    assert all(status == 503 for status, _ in failures), failures
    after = np.array(resp.json()["data"][0]["embedding"])
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    assert http.get("/health").status_code == 200
    new = [int(entry.name) for model, entry in stub_processes(triton) if model == ENCODER]
    assert len(new) == 1 and new != stubs


def test_ctrl_c_with_requests_in_flight_answers_them_all_then_exits_0(served, http):
    with ThreadPoolExecutor(6) as pool:
        heavy = [pool.submit(httpx.post, f"http://127.0.0.1:{served.port}/rerank", json=HEAVY, timeout=120)
                 for _ in range(6)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every request is inside the front end (the gauge counts /metrics too)
            text = http.get("/metrics").text
            gauge = [line for line in text.splitlines() if line.startswith("trilate_frontend_requests_in_progress")]
            if gauge and float(gauge[0].split()[-1]) >= 7:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the six requests never were in flight together")
        os.killpg(served.proc.pid, signal.SIGINT)
        statuses = [f.result().status_code for f in heavy]
    assert statuses == [200] * 6
    assert served.proc.wait(60) == 0
    assert any("finishing requests in flight" in line for line in served.lines)


def test_a_killed_tritonserver_makes_serve_exit_non_zero(tmp_path):
    server = ServeProcess(["--model-repository", str(tmp_path / "repo"), "--no-frontend"], timeout=300)
    try:
        os.kill(server.tritonserver_pid(), signal.SIGKILL)
        code = server.proc.wait(60)
    finally:
        server.stop()
    assert code == 1
    assert any("tritonserver exited unexpectedly" in line for line in server.lines)
