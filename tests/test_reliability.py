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
    assert all(status == 503 for status, _ in failures), [f for f in failures if f[0] != 503]
    after = np.array(resp.json()["data"][0]["embedding"])
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    assert http.get("/health").status_code == 200
    new = [int(entry.name) for model, entry in stub_processes(triton) if model == ENCODER]
    assert len(new) == 1 and new != stubs


@pytest.fixture(scope="module")
def strict_front_end(served):
    """A second front end, in this process, over the same tritonserver: a 1 s deadline, small text bounds."""
    from trilate.frontend import FrontEnd, Limits, create_app
    from trilate.launch import free_ports

    limits = Limits(max_items_per_request=300, max_text_chars=5000, request_timeout=1.0)
    app = create_app(served.grpc_url, "grpc", limits=limits)
    front = FrontEnd(app, "127.0.0.1", free_ports(1)[0], log_level="warning", drain_timeout=5).start()
    yield front
    front.stop()


def ensemble_requests(served, name: str) -> int:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(served.grpc_url).get_inference_statistics(name, as_json=True)
    return sum(int(m["inference_stats"]["success"].get("count", 0)) + int(m["inference_stats"]["fail"].get("count", 0))
               for m in stats["model_stats"])


def pending(served, name: str) -> float:
    """Triton's nv_inference_pending_request_count of one model: requests received and not yet answered."""
    text = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics").text
    rows = [line for line in text.splitlines()
            if line.startswith("nv_inference_pending_request_count") and f'model="{name}"' in line]
    assert rows, "tritonserver exports no pending-request count"
    return sum(float(line.split()[-1]) for line in rows)


def test_a_request_past_its_deadline_is_answered_504_and_the_server_keeps_serving(strict_front_end):
    body = {"model": DEFAULT, "query": "a fox", "documents": [f"{i} {LONG}" for i in range(256)]}
    with httpx.Client(base_url=strict_front_end.url, timeout=60) as http:
        start = time.monotonic()
        resp = http.post("/rerank", json=body)
        took = time.monotonic() - start
        assert resp.status_code == 504, resp.text
        assert "--request-timeout" in resp.json()["error"]["message"] and took < 30
        assert http.post("/tokenize", json={"model": DEFAULT, "prompt": "still serving"}).status_code == 200


def test_a_client_that_goes_away_stops_its_work_in_triton_too(served, strict_front_end):
    # 300 texts are three Triton requests of at most 128, one after another; the client leaves during the first.
    body = {"model": DEFAULT, "input": [f"{i} {LONG}" for i in range(300)]}
    embed = "sentence-transformers--all-MiniLM-L6-v2"
    from trilate.frontend import FrontEnd, Limits, create_app
    from trilate.launch import free_ports

    app = create_app(served.grpc_url, "grpc", limits=Limits(request_timeout=300))
    front = FrontEnd(app, "127.0.0.1", free_ports(1)[0], log_level="warning", drain_timeout=5).start()
    try:
        deadline = time.monotonic() + 120
        while pending(served, embed) > 0:  # what earlier tests left in Triton must not count as this test's
            assert time.monotonic() < deadline, "earlier requests never left Triton"
            time.sleep(0.2)
        before = ensemble_requests(served, embed)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{front.url}/v1/embeddings", json=body, timeout=0.5)
        deadline = time.monotonic() + 120
        while 'status="499"' not in httpx.get(f"{front.url}/metrics").text:  # the front end let go of it
            assert time.monotonic() < deadline, "the front end never noticed that its client went away"
            time.sleep(0.2)
        while pending(served, embed) > 0:  # the Triton request in flight was cancelled (or finished)
            assert time.monotonic() < deadline, "Triton kept the cancelled request"
            time.sleep(0.2)
        time.sleep(0.5)  # were the next chunk sent, it would be pending in Triton by now
        assert pending(served, embed) == 0
        assert ensemble_requests(served, embed) - before <= 1
    finally:
        front.stop()


def test_bounds_refuse_long_lists_and_long_texts_before_validating_them(strict_front_end):
    cases = [
        ("/v1/embeddings", {"model": DEFAULT, "input": ["x"] * 100_000}, "input", "Too many items in one request"),
        ("/v1/embeddings", {"model": DEFAULT, "input": list(range(1_000_000))}, "input", "Too many items"),
        ("/pooling", {"model": DEFAULT, "input": [[101, 2054, 102]] * 200}, "input", "token ids"),
        ("/rerank", {"model": DEFAULT, "query": "q", "documents": ["x" * 6000]}, "documents", "--max-text-chars"),
        ("/score", {"model": DEFAULT, "text_1": "q" * 6000, "text_2": "d"}, "text_1", "--max-text-chars"),
        ("/tokenize", {"model": DEFAULT, "prompt": "p" * 6000}, "prompt", "--max-text-chars"),
    ]
    with httpx.Client(base_url=strict_front_end.url, timeout=60) as http:
        for route, body, param, words in cases:
            resp = http.post(route, json=body)
            assert resp.status_code == 400, (route, resp.text[:300])
            error = resp.json()["error"]
            assert error["param"] == param and words in error["message"], error
        assert http.post("/tokenize", json={"model": DEFAULT, "prompt": "p" * 4000}).status_code == 200


def test_a_storm_of_unknown_model_names_lists_the_models_at_most_once_a_second(served):
    from trilate import TrilateClient
    from trilate.errors import ModelNotFoundError

    class Counting(TrilateClient):
        listings = 0

        def _load_cards(self):
            Counting.listings += 1
            return super()._load_cards()

    client = Counting(served.grpc_url, protocol="grpc")
    client.models()
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        def ask(i):
            with pytest.raises(ModelNotFoundError):
                client.model(f"no/such-model-{i}")
            return client.model(DEFAULT).served_name
        assert set(pool.map(ask, range(400))) == {DEFAULT}
    elapsed = time.monotonic() - start
    assert Counting.listings <= 2 + elapsed / client.REFRESH_INTERVAL, (Counting.listings, elapsed)


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


def test_the_soak_runs_briefly_without_a_failure_and_writes_its_report(tmp_path):
    """``make soak``'s plumbing, for a few seconds (the 10-minute run is ``make soak``; its figures are in the
    README): every answer under load equals the answer to the same request sent alone."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "soak.py"), "--duration", "6", "--concurrency", "4",
                          "--output", str(tmp_path)], capture_output=True, text=True, timeout=600)
    reports = list(tmp_path.glob("soak-*.json"))
    assert len(reports) == 1 and len(list(tmp_path.glob("soak-*.md"))) == 1, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads(reports[0].read_text())
    assert result["requests"]["sent"] > 0
    assert result["requests"]["failed"] == 0 and result["requests"]["mismatched"] == 0, result["first_failures"]
    assert result["serve_exit_code"] == 0
    assert {"tritonserver", "trilate serve (front end)"} <= set(result["memory_bytes"]["end"])
