"""Property-based fuzzing of the REST front end (the ``trilate serve`` of ``test_rest.py``).

* schemathesis generates requests from the front end's own OpenAPI page, for every operation, and checks
  that none is answered with a 5xx, that answers match the documented schemas, status codes and
  content types;
* hypothesis sends score / rerank / pooling requests built from plausible and hostile pieces and checks
  vLLM's invariants on every 200 (rerank order = score order, top_n, pair order, shapes) and the
  error envelope on every 4xx;
* afterwards the server still answers a known request with the known numbers.

Bounded for a 2-core machine: ~40 schemathesis examples per operation, 120 hypothesis examples.
"""

from __future__ import annotations

import collections
import zlib

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from test_rest import COLBERT, DEFAULT, DOCS, QUERY, acquire_rest_server, release_rest_server
from tolerances import SCORE_ATOL, SCORE_RTOL

pytestmark = pytest.mark.server

SERVED = [COLBERT, DEFAULT]


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory, stanford_colbert, bge_m3):
    server = acquire_rest_server(tmp_path_factory, stanford_colbert, bge_m3)  # the same process as test_rest.py's
    yield server
    release_rest_server()


def _offline_schema():
    """The OpenAPI document of the front end, built without a server (the same app ``trilate serve`` runs)."""
    from trilate.frontend import create_app

    return create_app("127.0.0.1:1", "grpc").openapi()


schema = schemathesis.openapi.from_dict(_offline_schema())
STATUSES: collections.Counter = collections.Counter()  # (test, status) -> answers, checked at the end


def _served_model(body) -> None:
    """Random model names all end in 404: give four bodies in five a served model (chosen by the body)."""
    if isinstance(body, dict):
        pick = zlib.crc32(repr(sorted(body.items(), key=str)).encode()) % 5
        if pick < 4:
            body["model"] = SERVED[pick % 2]


def test_the_fuzzed_schema_is_the_served_one(fuzz_server):
    assert httpx.get(f"{fuzz_server.url}/openapi.json").json() == _offline_schema()


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_openapi_fuzzing_finds_no_server_error(case, fuzz_server):
    _served_model(case.body)
    response = case.call_and_validate(base_url=fuzz_server.url, timeout=60, checks=[
        not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance])
    STATUSES[("schemathesis", response.status_code)] += 1


# -- semantic fuzzing of score / rerank / pooling ---------------------------------------------------------

texts = st.one_of(
    st.sampled_from([QUERY, *DOCS, "x", "  spaced  out  ", "Ünïcödé, émojis 🙂 and 中文", "a" * 300, "\n\t"]),
    st.text(min_size=1, max_size=40),
)
text_lists = st.lists(texts, min_size=1, max_size=6)
hostile = st.one_of(st.none(), st.just(""), st.just([]), st.integers(-5, 5),
                    st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                    st.just({"content": [{"type": "text", "text": "x"}]}), st.just({"text": "doc"}),
                    st.lists(st.integers(0, 30000), max_size=3), st.dictionaries(st.text(max_size=3), st.integers()),
                    st.lists(texts, min_size=7, max_size=9))
sides = st.one_of(texts, text_lists, hostile)
models = st.sampled_from([COLBERT, DEFAULT, None, "no/such-model"])
truncation = st.one_of(st.none(), st.integers(-2, 600))


def _check_error(resp: httpx.Response) -> None:
    assert resp.status_code < 500, resp.text
    body = resp.json()
    if resp.status_code == 404 and "detail" in body:
        assert body == {"detail": "Not Found"}
        return
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == resp.status_code


@pytest.fixture(scope="module")
def fuzz_http(fuzz_server):
    with httpx.Client(base_url=fuzz_server.url, timeout=120) as client:
        yield client


def _draw_request(data, route: str, well_formed: bool) -> dict:
    """A request body: ``well_formed`` ones must succeed; the others mix in hostile pieces."""
    if well_formed:
        body = {"model": data.draw(st.sampled_from(SERVED)),
                "truncate_prompt_tokens": data.draw(st.one_of(st.none(), st.integers(1, 64)))}
        docs = data.draw(st.one_of(texts, text_lists))
        if route == "/score":
            first, second = data.draw(st.sampled_from(PAIRS))
            n = len(docs) if isinstance(docs, list) else 1
            body |= {second: docs, first: data.draw(st.one_of(texts, st.lists(texts, min_size=n, max_size=n)))}
        elif route == "/rerank":
            if isinstance(docs, list):
                docs = [{"text": d} if data.draw(st.booleans()) else d for d in docs]  # Jina / Cohere documents
            body |= {"query": data.draw(texts), "documents": docs, "top_n": data.draw(st.integers(-2, 8))}
        else:
            tasks = [None, "token_embed"] + (["embed"] if body["model"] == DEFAULT else [])
            body |= {"input": docs, "task": data.draw(st.sampled_from(tasks)),
                     "encoding_format": data.draw(st.sampled_from(["float", "base64"]))}
        return body
    model = data.draw(models)
    body = {} if model is None else {"model": model}
    if route == "/score":
        first, second = data.draw(st.sampled_from(PAIRS))
        body |= {first: data.draw(sides), second: data.draw(sides)}
    elif route == "/rerank":
        body |= {"query": data.draw(st.one_of(texts, hostile)), "documents": data.draw(sides),
                 "top_n": data.draw(st.one_of(st.integers(-2, 8), hostile))}
    else:
        body |= {"input": data.draw(sides), "task": data.draw(st.sampled_from([None, "token_embed", "embed", "x"])),
                 "encoding_format": data.draw(st.sampled_from(["float", "base64", "utf8"]))}
    body["truncate_prompt_tokens"] = data.draw(truncation)
    return body


PAIRS = [("text_1", "text_2"), ("queries", "documents"), ("data_1", "data_2"), ("queries", "items")]


@given(data=st.data())
@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_score_rerank_pooling_requests_keep_vllm_invariants(fuzz_http, data):
    route = data.draw(st.sampled_from(["/score", "/rerank", "/pooling"]))
    well_formed = data.draw(st.sampled_from([True, True, False]))
    body = _draw_request(data, route, well_formed)
    resp = fuzz_http.post(route, json=body)
    STATUSES[("semantic", resp.status_code)] += 1
    if resp.status_code != 200:
        _check_error(resp)
        assert not well_formed, resp.text
        return
    got = resp.json()
    if route == "/score":
        first, second = next((a, b) for a, b in PAIRS if a in body and b in body)
        first_items = body[first] if isinstance(body[first], list) else [body[first]]
        second_items = body[second] if isinstance(body[second], list) else [body[second]]
        assert len(first_items) in (1, len(second_items))
        assert [d["index"] for d in got["data"]] == list(range(len(second_items)))
        assert got["usage"]["prompt_tokens"] > 0
    elif route == "/rerank":
        docs = body["documents"] if isinstance(body["documents"], list) else [body["documents"]]
        texts_ = [d["text"] if isinstance(d, dict) else d for d in docs]
        scores = [r["relevance_score"] for r in got["results"]]
        assert scores == sorted(scores, reverse=True)
        top_n = body["top_n"]
        assert len(scores) == (top_n if 0 < top_n < len(docs) else len(docs))
        assert len({r["index"] for r in got["results"]}) == len(scores)
        assert [r["document"]["text"] for r in got["results"]] == [texts_[r["index"]] for r in got["results"]]
        # Rerank order is score order: the same pairs through /score.
        score_body = {"model": body.get("model"), "text_1": body["query"], "text_2": texts_,
                      "truncate_prompt_tokens": body["truncate_prompt_tokens"]}
        paired = fuzz_http.post("/score", json=score_body).json()["data"]
        for r in got["results"]:
            assert r["relevance_score"] == pytest.approx(paired[r["index"]]["score"], rel=SCORE_RTOL, abs=SCORE_ATOL)
    else:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        assert [d["index"] for d in got["data"]] == list(range(len(inputs)))
        if body["encoding_format"] == "float":
            for item in got["data"]:
                vectors = np.asarray(item["data"], dtype=np.float32)
                assert vectors.shape[-1] in (16, 384) and np.isfinite(vectors).all()


def test_the_server_still_answers_correctly_after_the_fuzzing(fuzz_http, fuzz_server):
    from trilate import TrilateClient

    assert fuzz_http.get("/health").status_code == 200
    lib = TrilateClient(fuzz_server.grpc_url, protocol="grpc")
    got = fuzz_http.post("/rerank", json={"model": COLBERT, "query": QUERY, "documents": DOCS}).json()
    expected = lib.rerank(COLBERT, QUERY, DOCS)
    assert [(r["index"], r["relevance_score"]) for r in got["results"]] == [
        (r.index, pytest.approx(r.relevance_score, rel=SCORE_RTOL, abs=SCORE_ATOL)) for r in expected.results]
    assert fuzz_server.proc.poll() is None
    # The fuzzing reached the success paths, not only the validators.
    if sum(n for (test, _), n in STATUSES.items() if test == "semantic") >= 100:
        assert STATUSES[("semantic", 200)] >= 50, STATUSES
