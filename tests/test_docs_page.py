"""The OpenAPI pages (/docs, /redoc) work without the internet.

FastAPI's default /docs loads Swagger UI from a public CDN; in an air-gapped cluster that is an empty
white page.  The static tests check that every URL the pages reference is served by the app itself;
the browser test opens /docs in Debian's headless Chromium with every host name but the loopback one
unresolvable, records everything in Chromium's NetLog, and checks that the rendered page lists the
routes, that the page asked only the server, and that no TCP connection or datagram left loopback.  The
control, FastAPI's default CDN page, is blank in the same browser.  `make test` installs Chromium first
(`make chromium`); without it these tests fail, naming that target.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse

import pytest

from trilate.docs_page import STATIC_URL

ROUTES_SHOWN = ["/score", "/rerank", "/v2/rerank", "/pooling", "/v1/embeddings", "/tokenize", "/v1/models", "/health"]


@pytest.fixture(scope="module")
def app():
    from trilate.frontend import create_app

    # The pages need no tritonserver: the schema is the app's own.  Port 9 (discard) is never contacted.
    return create_app("127.0.0.1:9")


@pytest.fixture(scope="module")
def http(app):
    from fastapi.testclient import TestClient

    return TestClient(app)


def referenced_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", html) + re.findall(r"url: '([^']+)'", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_references_only_urls_the_app_serves(http, page):
    html = http.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    urls = referenced_urls(html.text)
    assert urls, "the page references no script at all"
    assert "cdn" not in html.text.lower() and "https://" not in html.text and "http://" not in html.text
    for url in urls:
        assert url.startswith("/"), f"{page} references {url!r}, not a path on this server"
        got = http.get(url)
        assert got.status_code == 200, f"{page} references {url}, which answers {got.status_code}"
        assert len(got.content) > 100


def test_assets_have_their_content_types_and_the_css_loads_nothing_remote(http):
    kinds = {"swagger-ui-bundle.js": "javascript", "swagger-ui.css": "text/css", "redoc.standalone.js": "javascript",
             "favicon.png": "image/png"}
    for name, kind in kinds.items():
        got = http.get(f"{STATIC_URL}/{name}")
        assert got.status_code == 200 and kind in got.headers["content-type"], (name, got.headers)
    css = http.get(f"{STATIC_URL}/swagger-ui.css").text
    remote = [u for u in re.findall(r"url\(([^)]*)\)", css) if re.match(r"""["']?(https?:)?//""", u)]
    assert remote == []


def test_default_cdn_pages_are_gone_and_the_schema_still_lists_the_routes(http):
    schema = http.get("/openapi.json").json()
    assert set(ROUTES_SHOWN) <= set(schema["paths"])
    assert not any(path.startswith(STATIC_URL) or path in ("/docs", "/redoc") for path in schema["paths"])
    assert "swagger-ui-dist" not in http.get("/docs").text  # FastAPI's CDN page spells this path


# --------------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--window-size=1280,1800",
    # Every host name but the loopback one fails to resolve, as in an air-gapped cluster.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--virtual-time-budget=20000", "--disable-extensions", "--disable-features=NetworkTimeServiceQuerying,OptimizationHintsFetching,OptimizationGuideModelDownloading",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("Debian's chromium is not installed: run `make chromium` (make test does it first)")
    return found


@pytest.fixture(scope="module")
def served_docs(app, tmp_path_factory):
    from trilate.frontend import FrontEnd
    from trilate.launch import free_ports

    (port,) = free_ports(1)
    front = FrontEnd(app, "127.0.0.1", port, log_level="warning").start()
    yield f"http://127.0.0.1:{port}"
    front.stop()


def run_chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


# Chromium's own background services (component updater, Google sign-in, network time, the optimization guide:
# its hints fetch came once in a fresh clone's run, seconds into the browser's life, whatever the page), asked for
# by the browser itself; here they fail to resolve like every other outside name.
BROWSER_SERVICES = {"update.googleapis.com", "accounts.google.com", "clients2.google.com",
                    "optimizationguide-pa.googleapis.com"}
LOOPBACK = {"127.0.0.1", "localhost"}


def netlog(path) -> dict:
    text = path.read_text().rstrip()
    if not text.endswith("}"):  # Chromium may leave the event list unterminated when it exits
        text = text.rstrip(",") + "]}"
    return json.loads(text)


def netlog_requests(log: dict) -> list[dict]:
    """Each URL request in a Chromium NetLog: ``url``, ``initiator``, ``site`` (the page it was made for)."""
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and "url" in params:
            requests.append({"url": params["url"], "initiator": params.get("initiator", ""),
                             "site": params.get("network_isolation_key", "").split(" ")[0]})
    return requests


def netlog_peers(log: dict) -> list[str]:
    """Addresses bytes were sent to: TCP connections made, UDP datagrams sent.  (Chromium also connect()s
    a UDP socket to a public address to learn its IPv6 route; that sends nothing and is not listed.)"""
    types = log["constants"]["logEventTypes"]
    wanted = {types["TCP_CONNECT"]: "remote_address", types["UDP_BYTES_SENT"]: "address"}
    return [event["params"][wanted[event["type"]]] for event in log["events"]
            if event["type"] in wanted and wanted[event["type"]] in (event.get("params") or {})]


def host(url: str) -> str | None:
    return urllib.parse.urlsplit(url).hostname


def load_in_chromium(url: str, tmp_path) -> tuple[str, list[dict], list[dict], list[str]]:
    """(rendered DOM, the page's requests, Chromium's own requests, peers sent to) for ``url`` on loopback."""
    path = tmp_path / "netlog.json"
    dom = run_chromium(tmp_path, f"--log-net-log={path}", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    origin = "{0.scheme}://{0.hostname}".format(urllib.parse.urlsplit(url))
    log = netlog(path)
    requests = netlog_requests(log)
    page = [r for r in requests if r["site"] == origin or r["initiator"].startswith(origin)]
    return dom.stdout, page, [r for r in requests if r not in page], netlog_peers(log)


def test_docs_page_renders_the_routes_in_chromium_and_asks_nothing_off_the_machine(served_docs, tmp_path):
    dom, page, browser, peers = load_in_chromium(f"{served_docs}/docs", tmp_path)
    # Swagger UI built the page from /openapi.json: each route's block is there, with its path.
    for route in ROUTES_SHOWN:
        assert f'data-path="{route}"' in dom, f"{route} is not on the rendered page"
    fetched = {urllib.parse.urlsplit(r["url"]).path for r in page}
    assert {f"{STATIC_URL}/swagger-ui-bundle.js", f"{STATIC_URL}/swagger-ui.css", "/openapi.json"} <= fetched
    assert [r["url"] for r in page if host(r["url"]) not in LOOPBACK] == []
    assert {host(r["url"]) for r in browser} - LOOPBACK <= BROWSER_SERVICES
    # And nothing at all left the machine: every byte went to loopback.
    assert peers and [p for p in peers if p.rsplit(":", 1)[0].strip("[]") not in ("127.0.0.1", "::1")] == []


@pytest.fixture
def cdn_docs():
    """FastAPI's default /docs (Swagger UI from a CDN) over one route, on loopback: the control."""
    from fastapi import FastAPI
    from trilate.frontend import FrontEnd
    from trilate.launch import free_ports

    plain = FastAPI()
    plain.get("/score")(lambda: {})
    (port,) = free_ports(1)
    front = FrontEnd(plain, "127.0.0.1", port, log_level="warning").start()
    yield f"http://127.0.0.1:{port}"
    front.stop()


def test_the_browser_check_catches_fastapis_cdn_page(cdn_docs, tmp_path):
    """Control: FastAPI's default /docs, in the same browser, asks a CDN and renders no route."""
    dom, page, _, _ = load_in_chromium(f"{cdn_docs}/docs", tmp_path)
    assert 'data-path="/score"' not in dom
    assert "cdn.jsdelivr.net" in {host(r["url"]) for r in page}


def screenshot(url: str, tmp_path, name: str):
    shot = tmp_path / name
    out = run_chromium(tmp_path, f"--screenshot={shot}", url)
    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    return shot


def test_docs_screenshot_shows_a_page_where_the_cdn_page_is_blank(served_docs, cdn_docs, tmp_path):
    """A blank 1280x1800 page compresses to a few kB of PNG; the rendered route list to far more.
    (The screenshot stays under pytest's tmp dir for a person to look at.)"""
    ours = screenshot(f"{served_docs}/docs", tmp_path, "docs.png").stat().st_size
    blank = screenshot(f"{cdn_docs}/docs", tmp_path, "cdn-docs.png").stat().st_size
    assert ours > 10 * blank, (ours, blank)
