"""The vLLM-compatible REST front end, through ``trilate serve`` as a user starts it.

One ``trilate serve`` (tritonserver + front end) serves the tiny Stanford ColBERT under the seed's
name ``answerdotai/answerai-colbert-small-v1`` beside the default model; every test here (and in
``test_rest_fuzz.py``) talks to it over HTTP like curl, the OpenAI client or a Cohere / Jina client
would.  Numbers are checked against the client library (tritonclient underneath) and the parity
references (HF transformers backbone + projection; sentence-transformers).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import references
from tolerances import SCORE_ATOL, SCORE_RTOL, VECTOR_ATOL
from trilate.launch import ServeProcess

pytestmark = pytest.mark.server

COLBERT = "answerdotai/answerai-colbert-small-v1"  # the seed's name; the tiny Stanford checkpoint behind it
DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
BGE_M3 = "BAAI/bge-m3"  # the seed's name; the tiny BGE-M3 checkpoint behind it
# The seed document's curl commands, kept as test data (tests/data/make_seed_data.py regenerates it).
SEED_DATA = Path(__file__).resolve().parent / "data" / "seed_commands.json"
MAX_ITEMS = 64
PROMPTS = {"search_query": "query: ", "search_document": "passage: "}
MAX_BYTES = 1 << 20

QUERY = "What is machine learning?"
DOCS = [
    "Machine learning is a subset of artificial intelligence.",
    "Python is a programming language.",
    "Deep learning uses neural networks.",
]


# -- the server (one process for this module and test_rest_fuzz.py) --------------------------------

class RestServer(ServeProcess):
    def __init__(self, root: Path, stanford_colbert: Path, bge_m3: Path):
        super().__init__(
            [str(stanford_colbert), DEFAULT, str(bge_m3),
             "--served-model-name", COLBERT, DEFAULT, BGE_M3,
             # vLLM's current example for answerai-colbert-small-v1 (its dim 96 is the tiny one's 16).
             "--hf-overrides", json.dumps({"architectures": ["ColBERTModel"], "dim": 16}),
             # Cohere input_type prefixes, which vLLM reads from the config's task_instructions.
             "--hf-overrides", json.dumps({"task_instructions": PROMPTS}),
             "--hf-overrides", '{"architectures": ["BgeM3EmbeddingModel"]}',  # as the seed serves BAAI/bge-m3
             "--model-repository", str(root / "repo"),
             "--max-items-per-request", str(MAX_ITEMS), "--max-request-bytes", str(MAX_BYTES),
             "--uvicorn-log-level", "warning"],
            timeout=300, env={"HF_HUB_OFFLINE": "1"},
        )
        self.url = self.rest_url


_shared: dict[str, object] = {"server": None, "users": 0}
_shared_lock = threading.Lock()


def acquire_rest_server(tmp_path_factory, stanford_colbert, bge_m3) -> RestServer:
    with _shared_lock:
        if _shared["server"] is None:
            _shared["server"] = RestServer(tmp_path_factory.mktemp("rest"), stanford_colbert, bge_m3)
        _shared["users"] = int(_shared["users"]) + 1
        return _shared["server"]  # type: ignore[return-value]


def release_rest_server() -> None:
    with _shared_lock:
        _shared["users"] = int(_shared["users"]) - 1
        if _shared["users"] == 0 and _shared["server"] is not None:
            server: RestServer = _shared["server"]  # type: ignore[assignment]
            _shared["server"] = None
            assert server.stop() == 0, "".join(server.lines[-30:])


@pytest.fixture(scope="session")
def rest_server(tmp_path_factory, stanford_colbert, bge_m3):
    server = acquire_rest_server(tmp_path_factory, stanford_colbert, bge_m3)
    yield server
    release_rest_server()


@pytest.fixture(scope="session")
def http(rest_server):
    with httpx.Client(base_url=rest_server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def lib(rest_server):
    """The client library on the same tritonserver (the numbers REST must reproduce)."""
    from trilate import TrilateClient

    return TrilateClient(rest_server.grpc_url, protocol="grpc")


@pytest.fixture(scope="session")
def colbert_reference(stanford_colbert):
    """HF transformers backbone + projection + L2 for the query and documents of the seed's commands."""
    texts = sorted({QUERY, *DOCS, "Machine learning is a subset of AI.", "The weather is sunny."})
    return dict(zip(texts, references.hf_colbert_token_embeddings(stanford_colbert, texts)))


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q @ d.T).max(axis=1).sum())


def post(http: httpx.Client, route: str, body, **kwargs) -> httpx.Response:
    return http.post(route, json=body, **kwargs)


def assert_envelope(resp: httpx.Response, status: int, words: str = "", param: str | None = "any") -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert list(error) == ["message", "type", "param", "code"], error
    assert error["code"] == status and isinstance(error["message"], str) and isinstance(error["type"], str)
    assert words in error["message"], error["message"]
    if param != "any":
        assert error["param"] == param
    return error


def assert_usage(usage: dict, n: int) -> None:
    assert usage == {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0, "prompt_tokens_details": None}


def assert_recent(created) -> None:
    assert isinstance(created, int) and abs(created - time.time()) < 600


# -- the seed document's curl commands, verbatim ---------------------------------------------------

def seed_curl_commands() -> list[tuple[str, str, str, dict, bool]]:
    """(id, command, route, body, multimodal) for each curl command of the seed document.

    Reads the committed test data; a missing file fails the collection of this module (never a skip)."""
    data = json.loads(SEED_DATA.read_text(encoding="utf-8"))
    return [(c["key"], c["command"], c["route"], c["body"], c["multimodal"]) for c in data["curl_commands"]]


# Served by this test server (tiny checkpoints in the real HF layouts); the image models' commands run in
# test_seed_multimodal.py (its own server).
SEED_SERVED = {COLBERT, BGE_M3}
SEED_ELSEWHERE = {"TomoroAI/tomoro-colqwen3-embed-4b", "athrael-soju/colqwen3.5-4.5B",
                  "nvidia/llama-nemotron-embed-vl-1b-v2", "nvidia/llama-nemotron-rerank-vl-1b-v2"}
SEED_COMMANDS = [c for c in seed_curl_commands() if c[3]["model"] in SEED_SERVED]


def test_every_seed_command_runs_here_or_in_the_image_models_module():
    models = {body["model"] for _key, _cmd, _route, body, _mm in seed_curl_commands()}
    assert models == SEED_SERVED | SEED_ELSEWHERE


def test_the_seed_document_has_text_only_curl_commands():
    routes = {(route, body["model"]) for _key, _cmd, route, body, multimodal in SEED_COMMANDS if not multimodal}
    assert {("/rerank", COLBERT), ("/score", COLBERT), ("/pooling", COLBERT), ("/pooling", BGE_M3)} <= routes
    assert len(routes) == 4 and len(SEED_COMMANDS) == 5


@pytest.mark.parametrize("key, command, route, body, multimodal", SEED_COMMANDS, ids=[c[0] for c in SEED_COMMANDS])
def test_seed_curl_command_verbatim(request, rest_server, lib, colbert_reference, key, command, route, body,
                                    multimodal):
    assert not multimodal, "a multi-modal command for a text model: write its checks"
    # The command as the document writes it; only the port is this test server's.
    out = subprocess.run(["bash", "-c", command.replace("localhost:8000", f"localhost:{rest_server.port}")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    ref = colbert_reference
    model = body["model"]
    if route == "/rerank":
        query, docs = body["query"], body["documents"]
        assert list(got) == ["id", "model", "usage", "results"]
        assert re.fullmatch(r"rerank-[0-9a-f]{32}", got["id"])
        assert got["model"] == model
        q_tokens = lib.tokenize(model, query).count
        n = sum(q_tokens + 1 + lib.tokenize(model, d).count for d in docs)  # vLLM 0.18-0.20: per pair, + pad
        assert got["usage"] == {"prompt_tokens": n, "total_tokens": n}
        expected = lib.rerank(model, query, docs)
        assert [r["index"] for r in got["results"]] == [r.index for r in expected.results]
        scores = [r["relevance_score"] for r in got["results"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == len(docs)
        for result, lib_item in zip(got["results"], expected.results):
            assert list(result) == ["index", "document", "relevance_score"]
            assert result["document"] == {"text": docs[result["index"]], "multi_modal": None}
            assert result["relevance_score"] == pytest.approx(lib_item.relevance_score, rel=SCORE_RTOL, abs=SCORE_ATOL)
            assert result["relevance_score"] == pytest.approx(maxsim(ref[query], ref[docs[result["index"]]]),
                                                              rel=1e-4)
    elif route == "/score":
        query, docs = body["text_1"], body["text_2"]
        assert list(got) == ["id", "object", "created", "model", "data", "usage"]
        assert re.fullmatch(r"score-[0-9a-f]{32}", got["id"])
        assert got["object"] == "list" and got["model"] == model
        assert_recent(got["created"])
        q_tokens = lib.tokenize(model, query).count
        assert_usage(got["usage"], sum(q_tokens + 1 + lib.tokenize(model, d).count for d in docs))
        expected = lib.score(model, query, docs).scores
        assert [item["index"] for item in got["data"]] == list(range(len(docs)))
        for item, lib_score, doc in zip(got["data"], expected, docs):
            assert list(item) == ["index", "object", "score"] and item["object"] == "score"
            assert item["score"] == pytest.approx(lib_score, rel=SCORE_RTOL, abs=SCORE_ATOL)
            assert item["score"] == pytest.approx(maxsim(ref[query], ref[doc]), rel=1e-4)
    elif route == "/pooling":
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        task = body.get("task")
        assert list(got) == ["id", "object", "created", "model", "data", "usage"]
        assert re.fullmatch(r"pool-[0-9a-f]{32}", got["id"])
        assert got["object"] == "list" and got["model"] == model
        assert_recent(got["created"])
        counts = [lib.tokenize(model, text).count for text in inputs]
        assert_usage(got["usage"], sum(counts))  # every prompt token, specials included
        assert [item["index"] for item in got["data"]] == list(range(len(inputs)))
        lib_items = lib.pooling(model, inputs, task=task).data
        flag = references.flag_m3_encode(request.getfixturevalue("bge_m3"), inputs) if model == BGE_M3 else None
        for i, (item, lib_item, text, n) in enumerate(zip(got["data"], lib_items, inputs, counts)):
            assert list(item) == ["index", "object", "data"] and item["object"] == "pooling"
            data = np.asarray(item["data"], dtype=np.float32)
            np.testing.assert_allclose(data, lib_item.data, atol=VECTOR_ATOL)
            if model == COLBERT and task == "token_embed":
                assert data.shape == (n, 16)  # every token, [CLS] and [SEP] included
                np.testing.assert_allclose(data, ref[text], atol=1e-5)
                np.testing.assert_allclose(np.linalg.norm(data, axis=1), 1.0, atol=1e-5)
            elif model == BGE_M3 and task == "token_embed":  # colbert vectors, no BOS row (FlagEmbedding's)
                assert data.shape == (n - 1, 16)
                np.testing.assert_allclose(data, flag["colbert"][i], atol=1e-5)
            elif model == BGE_M3 and task == "token_classify":
                # Per-position lexical weights without BOS and EOS; the seed says to pair them with /tokenize
                # as vllm's test_bge_m3.py does, which must give FlagEmbedding's lexical weights.
                ids = lib.tokenize(model, text).tokens
                assert data.shape == (n - 2,)
                ids = ids[1:] if ids[0] == 0 else ids
                paired: dict[int, float] = {}
                for token_id, weight in zip(ids, data.tolist()):
                    paired[token_id] = max(paired.get(token_id, 0.0), weight)
                paired = {t: w for t, w in paired.items() if w > 0 and t not in (0, 1, 2, 3)}
                assert paired == pytest.approx(flag["lexical"][i], abs=1e-5)
            else:  # pragma: no cover - a new kind of command in the seed
                pytest.fail(f"no reference for {model} {task}")
    else:  # pragma: no cover - a new kind of command in the seed
        pytest.fail(f"no checks written for {route}")


# -- OpenAI, Cohere and Jina clients ----------------------------------------------------------------

def test_openai_client_embeddings_float_and_base64(rest_server, lib, minilm_path):
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"{rest_server.url}/v1", api_key="unused", max_retries=0)
    texts = ["What is machine learning?", "The cat sat on the mat."]
    b64 = client.embeddings.create(model=DEFAULT, input=texts)  # the SDK asks for base64 and decodes it
    flt = client.embeddings.create(model=DEFAULT, input=texts, encoding_format="float")
    ours = lib.embed(DEFAULT, texts).matrix()
    reference = references.st_mean_pooled(minilm_path, texts)
    for result in (b64, flt):
        assert result.model == DEFAULT and result.object == "list" and result.id.startswith("embd-")
        assert [d.index for d in result.data] == [0, 1] and all(d.object == "embedding" for d in result.data)
        matrix = np.asarray([d.embedding for d in result.data], dtype=np.float32)
        np.testing.assert_allclose(matrix, ours, atol=VECTOR_ATOL)
        assert (matrix * reference).sum(1).min() >= 0.99999
        n = sum(lib.tokenize(DEFAULT, t).count for t in texts)
        assert result.usage.prompt_tokens == result.usage.total_tokens == n
    np.testing.assert_allclose(np.asarray(b64.data[0].embedding, np.float32),
                               np.asarray(flt.data[0].embedding, np.float32), atol=VECTOR_ATOL)
    np.testing.assert_allclose(flt.data[0].embedding[:5], [-0.0199545, 0.0098780, 0.0102496, 0.0295537, 0.0271864],
                               atol=VECTOR_ATOL)
    with pytest.raises(NotFoundError):
        client.embeddings.create(model="no/such-model", input="x")


def test_cohere_v2_shaped_rerank(http, lib):
    body = {"model": COLBERT, "query": QUERY, "documents": DOCS, "top_n": 2, "max_tokens_per_doc": 4096}
    got = post(http, "/v2/rerank", body).json()
    expected = lib.rerank(COLBERT, QUERY, DOCS, top_n=2)
    assert [(r["index"], r["relevance_score"]) for r in got["results"]] == [
        (r.index, pytest.approx(r.relevance_score, rel=SCORE_RTOL, abs=SCORE_ATOL)) for r in expected.results]
    assert got["id"].startswith("rerank-") and got["model"] == COLBERT
    # Cohere v1 / LiteLLM read document.text; v2 clients read only index and relevance_score.
    assert [r["document"]["text"] for r in got["results"]] == [DOCS[r.index] for r in expected.results]


def test_cohere_sdk_embed_on_v2_embed(rest_server, lib, minilm_path):
    """The Cohere SDK's ClientV2.embed, as vLLM serves /v2/embed: input_type prefixes from the checkpoint's
    task_instructions, typed embeddings, truncation."""
    import cohere
    from cohere.core.api_error import ApiError

    co = cohere.ClientV2(api_key="not-checked", base_url=rest_server.url, timeout=120)
    texts = ["What is machine learning?", "The cat sat on the mat."]
    got = co.embed(model=DEFAULT, input_type="search_query", texts=texts,
                   embedding_types=["float", "base64", "binary", "ubinary"])
    prefixed = [PROMPTS["search_query"] + t for t in texts]
    floats = np.asarray(got.embeddings.float_, dtype=np.float32)
    np.testing.assert_allclose(floats, lib.embed(DEFAULT, prefixed).matrix(), atol=VECTOR_ATOL)
    assert (floats * references.st_mean_pooled(minilm_path, prefixed)).sum(1).min() >= 0.99999
    assert got.id.startswith("embd-") and got.texts == texts
    assert got.meta.api_version.version == "2"
    assert got.meta.tokens.input_tokens == sum(lib.tokenize(DEFAULT, t).count for t in prefixed)
    # base64: each vector's float32 values, little-endian, as in the same answer's floats.
    decoded = np.stack([np.frombuffer(base64.b64decode(b), dtype="<f4") for b in got.embeddings.base64])
    np.testing.assert_array_equal(decoded, floats)
    # ubinary: one bit per value (1 where >= 0), eight per byte, the first value in the highest bit; binary is
    # the same byte minus 128 (Cohere's signed form).
    for row, packed in zip(floats, got.embeddings.ubinary):
        bits = "".join("1" if v >= 0 else "0" for v in row)
        assert packed == [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]
    assert got.embeddings.binary == [[b - 128 for b in row] for row in got.embeddings.ubinary]
    assert got.embeddings.int8 is None and got.embeddings.uint8 is None
    # `inputs` with one text part each are the same texts (no `texts` echo then).
    by_parts = co.embed(model=DEFAULT, input_type="search_query",
                        inputs=[{"content": [{"type": "text", "text": t}]} for t in texts], embedding_types=["float"])
    np.testing.assert_allclose(np.asarray(by_parts.embeddings.float_), floats, atol=VECTOR_ATOL)
    assert by_parts.texts is None and by_parts.embeddings.base64 is None
    # No input_type: no prefix.  truncate END / START keep max_tokens tokens from the start / the end.
    long_text = "machine learning " * 100
    plain = co.embed(model=DEFAULT, input_type=None, texts=[QUERY], embedding_types=["float"])
    np.testing.assert_allclose(plain.embeddings.float_, lib.embed(DEFAULT, [QUERY]).matrix(), atol=VECTOR_ATOL)
    for truncate, side in (("END", "right"), ("START", "left")):
        cut = co.embed(model=DEFAULT, input_type="search_document", texts=[long_text], truncate=truncate,
                       max_tokens=9, embedding_types=["float"])
        expected = lib.embed(DEFAULT, [PROMPTS["search_document"] + long_text], truncate_prompt_tokens=9,
                             truncation_side=side).matrix()
        np.testing.assert_allclose(cut.embeddings.float_, expected, atol=VECTOR_ATOL)
        assert cut.meta.tokens.input_tokens == 9
    # Refusals reach the SDK as 4xx errors with vLLM's messages.
    with pytest.raises(ApiError) as info:
        co.embed(model=DEFAULT, input_type="image", images=["data:image/png;base64,iVBORw0KGgo="])
    assert info.value.status_code == 400 and "images are not supported" in str(info.value.body)
    with pytest.raises(ApiError) as info:
        co.embed(model=DEFAULT, input_type="search_query", texts=texts, embedding_types=["int8"])
    assert info.value.status_code == 400 and "int8" in str(info.value.body)
    with pytest.raises(ApiError) as info:
        co.embed(model=COLBERT, input_type="search_query", texts=texts)
    assert info.value.status_code == 404


def test_pooling_embedding_mode_gives_pylates_query_and_document_vectors(http, lib, stanford_colbert):
    """`embedding_mode` on REST /pooling: PyLate's encoding of the checkpoint's conventions, as the library's."""
    texts = [QUERY, DOCS[0]]
    for mode, is_query in (("query", True), ("document", False)):
        got = post(http, "/pooling", {"model": COLBERT, "input": texts, "embedding_mode": mode})
        assert got.status_code == 200, got.text
        reference = references.pylate_encode(stanford_colbert, texts, is_query=is_query)
        library = lib.pooling(COLBERT, texts, embedding_mode=mode).data
        for item, ref, mine in zip(got.json()["data"], reference, library):
            vectors = np.asarray(item["data"], dtype=np.float32)
            assert vectors.shape == ref.shape
            np.testing.assert_allclose(vectors, ref, atol=1e-5)
            np.testing.assert_allclose(vectors, mine.data, atol=VECTOR_ATOL)
        if is_query:
            assert [len(item["data"]) for item in got.json()["data"]] == [32, 32]  # query_maxlen, [MASK]-expanded
    symmetric = post(http, "/pooling", {"model": COLBERT, "input": QUERY}).json()["data"][0]["data"]
    assert len(symmetric) == lib.tokenize(COLBERT, QUERY).count  # without it: vLLM's encoding, every token


def test_colbert_model_is_served_under_vllms_newer_architecture_name(lib):
    card = lib.model(COLBERT)  # served with --hf-overrides '{"architectures": ["ColBERTModel"], "dim": 16}'
    assert (card.architecture, card.dim, card.tasks, card.score_type) == (
        "ColBERTModel", 16, ("token_embed",), "late-interaction")


def test_a_model_tritonserver_no_longer_has_answers_404_not_500(rest_server):
    """A card the front end still holds while tritonserver has no such model (restarted with another
    repository): vLLM's 404 for an unknown model, and the next request sees the server's real list."""
    import dataclasses

    from fastapi.testclient import TestClient
    from trilate import TrilateClient
    from trilate.frontend import create_app

    class Stale(TrilateClient):
        def _load_cards(self):
            cards = super()._load_cards()
            gone = dataclasses.replace(cards[DEFAULT], served_name="gone/model", triton_name="gone--model")
            return {**cards, gone.served_name: gone}

    client = Stale(rest_server.grpc_url, protocol="grpc")
    with TestClient(create_app(client=client)) as app:
        for route, body in (("/score", {"text_1": QUERY, "text_2": DOCS}), ("/pooling", {"input": QUERY}),
                            ("/v1/embeddings", {"input": QUERY}), ("/tokenize", {"prompt": QUERY})):
            error = assert_envelope(app.post(route, json={"model": "gone/model", **body}), 404,
                                    "The model `gone/model` does not exist.", param="model")
            assert error["type"] == "NotFoundError"
        assert app.post("/pooling", json={"model": DEFAULT, "input": QUERY}).status_code == 200


def test_jina_shaped_rerank_with_text_documents_and_return_documents(http, lib):
    docs = [{"text": DOCS[0]}, DOCS[1], {"text": DOCS[2]}]
    expected = lib.rerank(COLBERT, QUERY, DOCS, top_n=2)
    with_docs = post(http, "/v1/rerank", {"model": COLBERT, "query": QUERY, "documents": docs, "top_n": 2,
                                          "return_documents": True}).json()
    assert [r["index"] for r in with_docs["results"]] == [r.index for r in expected.results]
    assert [r["document"] for r in with_docs["results"]] == [
        {"text": DOCS[r.index], "multi_modal": None} for r in expected.results]
    assert with_docs["usage"]["total_tokens"] == expected.usage.total_tokens
    bare = post(http, "/v1/rerank", {"model": COLBERT, "query": QUERY, "documents": docs, "top_n": 2,
                                     "return_documents": False}).json()
    assert [list(r) for r in bare["results"]] == [["index", "relevance_score"]] * 2
    assert [r["relevance_score"] for r in bare["results"]] == pytest.approx(
        [r["relevance_score"] for r in with_docs["results"]], rel=SCORE_RTOL, abs=SCORE_ATOL)


# -- vLLM's request variants -------------------------------------------------------------------------

def test_every_score_field_pair_and_route_alias_gives_the_same_scores(http, lib):
    expected = lib.score(COLBERT, QUERY, DOCS).scores
    for first, second in (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"),
                          ("text_1", "text_2")):
        for route in ("/score", "/v1/score"):
            got = post(http, route, {"model": COLBERT, first: QUERY, second: DOCS}).json()
            assert [d["score"] for d in got["data"]] == pytest.approx(expected, rel=SCORE_RTOL, abs=SCORE_ATOL), (first, route)
    zipped = post(http, "/score", {"model": COLBERT, "queries": [QUERY, DOCS[1]], "documents": DOCS[:2]}).json()
    assert [d["score"] for d in zipped["data"]] == pytest.approx(
        lib.score(COLBERT, [QUERY, DOCS[1]], DOCS[:2]).scores, rel=SCORE_RTOL, abs=SCORE_ATOL)
    one = post(http, "/score", {"model": COLBERT, "text_1": QUERY, "text_2": DOCS[0]}).json()
    assert [d["score"] for d in one["data"]] == pytest.approx(expected[:1], rel=SCORE_RTOL, abs=SCORE_ATOL)


def test_rerank_top_n_and_single_document_and_all_routes(http, lib):
    ranked = lib.rerank(COLBERT, QUERY, DOCS)
    for route in ("/rerank", "/v1/rerank", "/v2/rerank"):
        for top_n, keep in ((0, 3), (-1, 3), (1, 1), (2, 2), (10, 3)):
            got = post(http, route, {"model": COLBERT, "query": QUERY, "documents": DOCS, "top_n": top_n}).json()
            assert [r["index"] for r in got["results"]] == [r.index for r in ranked.results[:keep]]
            assert got["usage"]["prompt_tokens"] == ranked.usage.prompt_tokens  # top_n cuts results, not work
    single = post(http, "/rerank", {"model": COLBERT, "query": QUERY, "documents": DOCS[1]}).json()
    assert [r["index"] for r in single["results"]] == [0]


def test_default_model_scores_rerank_and_pooling_tasks(http, lib):
    got = post(http, "/score", {"model": DEFAULT, "text_1": QUERY, "text_2": DOCS}).json()
    assert [d["score"] for d in got["data"]] == pytest.approx(lib.score(DEFAULT, QUERY, DOCS).scores, rel=SCORE_RTOL, abs=SCORE_ATOL)
    for task, shape in (("embed", (384,)), ("token_embed", (7, 384)), (None, (7, 384))):
        body = {"model": DEFAULT, "input": [QUERY]} | ({"task": task} if task else {})
        data = post(http, "/pooling", body).json()["data"][0]["data"]
        assert np.asarray(data).shape == shape


def test_truncation_and_special_tokens_pass_through(http, lib):
    text = "one two three four five six seven eight"
    for side in ("right", "left"):
        got = post(http, "/pooling", {"model": COLBERT, "input": text, "truncate_prompt_tokens": 4,
                                      "truncation_side": side}).json()
        vectors = np.asarray(got["data"][0]["data"], dtype=np.float32)
        expected = lib.pooling(COLBERT, text, truncate_prompt_tokens=4, truncation_side=side).data[0].data
        assert vectors.shape == (4, 16) and got["usage"]["prompt_tokens"] == 4
        np.testing.assert_allclose(vectors, expected, atol=VECTOR_ATOL)
    plain = post(http, "/pooling", {"model": COLBERT, "input": text, "add_special_tokens": False}).json()
    assert plain["usage"]["prompt_tokens"] == lib.tokenize(COLBERT, text).count - 2
    # /score truncates every item separately; vLLM 0.18-0.20 ignores truncate_prompt_tokens there when
    # truncation_side is "left" (its score path calls the tokenizer directly).
    right = post(http, "/score", {"model": COLBERT, "text_1": QUERY, "text_2": text, "truncate_prompt_tokens": 3})
    assert right.json()["data"][0]["score"] == pytest.approx(
        lib.score(COLBERT, QUERY, text, truncate_prompt_tokens=3).scores[0], rel=SCORE_RTOL, abs=SCORE_ATOL)
    left = post(http, "/score", {"model": COLBERT, "text_1": QUERY, "text_2": text, "truncate_prompt_tokens": 3,
                                 "truncation_side": "left"})
    assert left.json()["data"][0]["score"] == pytest.approx(lib.score(COLBERT, QUERY, text).scores[0], rel=SCORE_RTOL, abs=SCORE_ATOL)
    raw = post(http, "/pooling", {"model": COLBERT, "input": text, "use_activation": False}).json()
    norms = np.linalg.norm(np.asarray(raw["data"][0]["data"]), axis=1)
    assert np.abs(norms - 1).max() > 1e-3  # not L2-normalised


def _decode(payload: str, dtype: str, endianness: str) -> np.ndarray:
    import ml_dtypes

    raw = base64.b64decode(payload)
    order = {"little": "<", "big": ">", "native": "="}[endianness]
    if dtype in ("float32", "float16"):
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(order)).astype(np.float32)
    kind = {"bfloat16": (np.uint16, ml_dtypes.bfloat16), "fp8_e4m3": (np.uint8, ml_dtypes.float8_e4m3fn),
            "fp8_e5m2": (np.uint8, ml_dtypes.float8_e5m2)}[dtype]
    bits = np.frombuffer(raw, dtype=np.dtype(kind[0]).newbyteorder(order)).astype(kind[0])
    return bits.view(kind[1]).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"])
def test_base64_encodings_follow_embed_dtype_and_endianness(http, dtype):
    import ml_dtypes

    body = {"model": COLBERT, "input": [QUERY, DOCS[0]]}
    floats = [np.asarray(d["data"], np.float32) for d in post(http, "/pooling", body).json()["data"]]
    cast = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
            "fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2}[dtype]
    for endianness in ("native", "little", "big"):
        got = post(http, "/pooling", body | {"encoding_format": "base64", "embed_dtype": dtype,
                                              "endianness": endianness}).json()
        for item, matrix in zip(got["data"], floats):
            flat = _decode(item["data"], dtype, endianness)  # row-major, one buffer per input
            assert flat.shape == (matrix.size,)
            np.testing.assert_array_equal(flat, flat.astype(cast).astype(np.float32))  # values of that dtype
            # Separate requests may differ in the last float32 bit, which can move a rounding by one step.
            step = float(ml_dtypes.finfo(cast).eps) if dtype != "float32" else 1e-6
            np.testing.assert_allclose(flat, matrix.reshape(-1), rtol=step, atol=step / 4)


def test_bytes_encodings_carry_shapes_in_the_metadata_header(http):
    body = {"model": COLBERT, "input": [QUERY, DOCS[0]]}
    floats = [np.asarray(d["data"], np.float32) for d in post(http, "/pooling", body).json()["data"]]
    resp = post(http, "/pooling", body | {"encoding_format": "bytes"})
    assert resp.headers["content-type"] == "application/octet-stream"
    meta = json.loads(resp.headers["metadata"])
    assert meta["model"] == COLBERT and meta["id"].startswith("pool-")
    assert meta["usage"]["prompt_tokens"] == sum(m.shape[0] for m in floats)
    for item, matrix in zip(meta["data"], floats):
        assert item["shape"] == list(matrix.shape) and item["embed_dtype"] == "float32"
        np.testing.assert_allclose(np.frombuffer(resp.content[item["start"]:item["end"]], np.float32),
                                   matrix.reshape(-1), atol=VECTOR_ATOL)
    only = post(http, "/pooling", body | {"encoding_format": "bytes_only"})
    assert "metadata" not in only.headers and len(only.content) == len(resp.content)
    np.testing.assert_allclose(np.frombuffer(only.content, np.float32), np.frombuffer(resp.content, np.float32),
                               atol=VECTOR_ATOL)
    emb = post(http, "/v1/embeddings", {"model": DEFAULT, "input": QUERY, "encoding_format": "bytes"})
    assert json.loads(emb.headers["metadata"])["data"][0]["shape"] == [384] and len(emb.content) == 384 * 4


def test_ids_honour_x_request_id_then_the_body_request_id(http):
    cases = [("/score", {"model": COLBERT, "text_1": QUERY, "text_2": DOCS[0]}, "score"),
             ("/rerank", {"model": COLBERT, "query": QUERY, "documents": DOCS}, "rerank"),
             ("/pooling", {"model": COLBERT, "input": QUERY}, "pool"),
             ("/v1/embeddings", {"model": DEFAULT, "input": QUERY}, "embd")]
    for route, body, prefix in cases:
        assert post(http, route, body, headers={"X-Request-Id": "trace-42"}).json()["id"] == f"{prefix}-trace-42"
        assert post(http, route, body | {"request_id": "mine"}).json()["id"] == f"{prefix}-mine"


def test_unknown_fields_are_ignored(http):
    extra = {"return_documents": True, "encoding_format": "float", "whatever": {"nested": [1, 2]}, "user": "u",
             "priority": 0, "cache_salt": "salt", "mm_processor_kwargs": {}}
    for route, body in (("/score", {"model": COLBERT, "text_1": QUERY, "text_2": DOCS}),
                        ("/rerank", {"model": COLBERT, "query": QUERY, "documents": DOCS}),
                        ("/pooling", {"model": COLBERT, "input": QUERY}),
                        ("/v1/embeddings", {"model": DEFAULT, "input": QUERY}),
                        ("/tokenize", {"model": COLBERT, "prompt": QUERY}),
                        ("/detokenize", {"model": COLBERT, "tokens": [101, 102]})):
        resp = post(http, route, body | extra)
        assert resp.status_code == 200, (route, resp.text)


def test_tokenize_detokenize_models_health_version(http, lib):
    tok = post(http, "/tokenize", {"model": DEFAULT, "prompt": QUERY, "return_token_strs": True}).json()
    assert tok == {"count": 7, "max_model_len": 256, "tokens": [101, 2054, 2003, 3698, 4083, 1029, 102],
                   "token_strs": ["[CLS]", "what", "is", "machine", "learning", "?", "[SEP]"]}
    plain = post(http, "/tokenize", {"model": DEFAULT, "prompt": QUERY, "add_special_tokens": False}).json()
    assert plain["tokens"] == tok["tokens"][1:-1] and plain["token_strs"] is None
    assert post(http, "/detokenize", {"model": DEFAULT, "tokens": tok["tokens"]}).json() == {
        "prompt": "[CLS] what is machine learning? [SEP]"}
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    cards = {m["id"]: m for m in models["data"]}
    assert set(cards) == {COLBERT, DEFAULT, BGE_M3}
    assert cards[COLBERT]["max_model_len"] == 512 and cards[COLBERT]["object"] == "model"
    assert list(cards[DEFAULT]) == ["id", "object", "created", "owned_by", "root", "parent", "max_model_len",
                                    "permission"]
    health = http.get("/health")
    assert health.status_code == 200 and health.content == b""
    assert http.get("/version").json()["version"]
    assert "ScoreRequest" in http.get("/openapi.json").json()["components"]["schemas"]
    assert http.get("/docs").status_code == 200


def prometheus_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format -> {(name, labels): value}; label order and float spelling do not matter."""
    samples = {}
    for name, labels, value in re.findall(r'^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$', text, re.M):
        samples[(name, frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)))] = float(value)
    return samples


def test_metrics_join_triton_series_and_the_front_end_counters(http):
    post(http, "/score", {"model": COLBERT, "text_1": QUERY, "text_2": DOCS})
    post(http, "/score", {"model": "no/such-model", "text_1": QUERY, "text_2": DOCS})
    text = http.get("/metrics").text
    assert 'nv_inference_count{model="answerdotai--answerai-colbert-small-v1__score"' in text  # tritonserver's
    samples = prometheus_samples(text)

    def value(name: str, **labels) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("trilate_frontend_requests_total", route="/score", method="POST", status="200") >= 1
    assert value("trilate_frontend_requests_total", route="/score", method="POST", status="404") >= 1
    assert value("trilate_frontend_request_duration_seconds_count", route="/score") >= 2
    assert value("trilate_frontend_request_duration_seconds_bucket", route="/score", le="+Inf") >= 2
    assert value("trilate_frontend_prompt_tokens_total", route="/score", model=COLBERT) >= 1
    assert value("trilate_frontend_requests_in_progress") >= 1  # this /metrics request itself


def test_concurrent_rest_requests_each_get_their_own_result(http, lib):
    texts = [f"request {i}: " + " ".join(["learning"] * (i % 5 + 1)) for i in range(24)]
    expected = {t: lib.score(COLBERT, QUERY, t).scores[0] for t in texts}

    def call(text):
        with httpx.Client(base_url=str(http.base_url), timeout=120) as own:
            return text, post(own, "/score", {"model": COLBERT, "text_1": QUERY, "text_2": text}).json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        for text, got in pool.map(call, texts * 2):
            assert got["data"][0]["score"] == pytest.approx(expected[text], rel=1e-5)


# -- one served model: `model` may be omitted ---------------------------------------------------------

def test_model_may_be_omitted_when_one_model_is_served(rest_server, lib):
    """The same app over the same tritonserver, seeing only the default model."""
    from fastapi.testclient import TestClient
    from trilate import TrilateClient
    from trilate.frontend import create_app

    class OneModel(TrilateClient):
        def models(self, refresh: bool = False):
            return [card for card in super().models(refresh) if card.served_name == DEFAULT]

    with TestClient(create_app(client=OneModel(rest_server.grpc_url, protocol="grpc"))) as app:
        got = app.post("/v1/embeddings", json={"input": QUERY}).json()
        assert got["model"] == DEFAULT
        np.testing.assert_allclose(got["data"][0]["embedding"], lib.embed(DEFAULT, QUERY).matrix()[0], atol=VECTOR_ATOL)
        assert app.post("/score", json={"text_1": QUERY, "text_2": DOCS}).json()["model"] == DEFAULT
        assert app.post("/tokenize", json={"prompt": QUERY}).json()["count"] == 7
    # Two models served: the request must name one.
    with TestClient(create_app(client=TrilateClient(rest_server.grpc_url, protocol="grpc"))) as app:
        error = assert_envelope(app.post("/score", json={"text_1": QUERY, "text_2": DOCS}), 400, "several models",
                                param="model")
        assert error["type"] == "BadRequestError"


# -- bad requests: a 4xx in vLLM's envelope, and the server keeps serving ------------------------------

LONG = "word " * 600


def raw(body: dict) -> bytes:
    """JSON with non-ASCII escaped, as a client may send it (httpx's own encoder refuses lone surrogates)."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


BAD_REQUESTS = [
    # (id, route, raw body or JSON, status, words in the message, param)
    ("malformed-json", "/score", b'{"model": "x", "text_1": ', 400, "JSON decode error", None),
    ("not-utf8", "/rerank", b'\xff\xfe{"query": 1}', 400, "", None),
    ("top-level-array", "/pooling", ["x"], 400, "valid dictionary", None),
    ("text_1-wrong-type", "/score", {"model": COLBERT, "text_1": 5, "text_2": DOCS}, 400, "text_1", None),
    ("top_n-wrong-type", "/rerank", {"model": COLBERT, "query": QUERY, "documents": DOCS, "top_n": "two"}, 400,
     "top_n", None),
    ("task-unknown", "/pooling", {"model": COLBERT, "input": QUERY, "task": "generate"}, 400, "task", None),
    ("encoding-unknown", "/pooling", {"model": COLBERT, "input": QUERY, "encoding_format": "hex"}, 400,
     "encoding_format", None),
    ("embed_dtype-unknown", "/v1/embeddings", {"model": DEFAULT, "input": QUERY, "embed_dtype": "int4"}, 400,
     "embed_dtype", None),
    ("truncate-below-minus-one", "/pooling", {"model": COLBERT, "input": QUERY, "truncate_prompt_tokens": -2}, 400,
     "truncate_prompt_tokens", None),
    ("truncate-beyond-int64", "/pooling", {"model": COLBERT, "input": QUERY, "truncate_prompt_tokens": 10**20}, 400,
     "truncate_prompt_tokens", None),
    ("dimensions-beyond-int64", "/v1/embeddings", {"model": DEFAULT, "input": QUERY, "dimensions": 10**20}, 400,
     "dimensions", None),
    ("missing-pair", "/score", {"model": COLBERT, "text_1": QUERY}, 400, "one pair of fields", None),
    ("missing-query", "/rerank", {"model": COLBERT, "documents": DOCS}, 400, "query", None),
    ("missing-input", "/v1/embeddings", {"model": DEFAULT}, 400, "input", None),
    ("missing-tokens", "/detokenize", {"model": DEFAULT}, 400, "tokens", None),
    ("empty-side-1", "/score", {"model": COLBERT, "queries": [], "documents": DOCS}, 400,
     "At least one text element must be given", "queries"),
    ("empty-side-2", "/score", {"model": COLBERT, "text_1": QUERY, "text_2": []}, 400,
     "At least one text_pair element must be given", "text_2"),
    ("empty-documents", "/rerank", {"model": COLBERT, "query": QUERY, "documents": []}, 400,
     "At least one text_pair element must be given", "documents"),
    ("empty-input", "/pooling", {"model": COLBERT, "input": []}, 400, "input must not be empty", "input"),
    ("empty-string", "/pooling", {"model": COLBERT, "input": ["fine", ""]}, 400, "empty string", None),
    ("mismatched-lengths", "/score", {"model": COLBERT, "queries": [QUERY, QUERY], "documents": DOCS}, 400,
     "Input lengths must be either 1:1, 1:N or N:N", None),
    ("unknown-model", "/score", {"model": "no/such-model", "text_1": QUERY, "text_2": DOCS}, 404,
     "The model `no/such-model` does not exist.", "model"),
    ("unknown-model-tokenize", "/tokenize", {"model": "no/such-model", "prompt": QUERY}, 404, "does not exist",
     "model"),
    ("over-long-input", "/pooling", {"model": COLBERT, "input": LONG}, 400,
     "This model's maximum context length is 512 tokens. However, you requested 602 tokens in the input for "
     "embedding generation. Please reduce the length of the input.", None),
    ("over-long-document", "/score", {"model": COLBERT, "text_1": QUERY, "text_2": [DOCS[0], LONG]}, 400,
     "maximum context length is 512 tokens. However, you requested 602 tokens in the input for score", None),
    ("over-long-embedding", "/v1/embeddings", {"model": DEFAULT, "input": LONG}, 400,
     "maximum context length is 256 tokens", None),
    ("truncate-beyond-max-model-len", "/pooling", {"model": COLBERT, "input": QUERY, "truncate_prompt_tokens": 513},
     400, "truncate_prompt_tokens=513 cannot be greater than max_model_len", None),
    ("unsupported-task", "/pooling", {"model": COLBERT, "input": QUERY, "task": "embed"}, 400,
     "Unsupported task: 'embed' Supported tasks: ['token_embed']", "task"),
    ("pooling-dimensions", "/pooling", {"model": DEFAULT, "input": QUERY, "dimensions": 8}, 400,
     "does not support matryoshka representation", None),
    ("embeddings-dimensions", "/v1/embeddings", {"model": DEFAULT, "input": QUERY, "dimensions": 8}, 400,
     "does not support matryoshka representation", None),
    ("score-mode-not-bge-m3", "/score", {"model": COLBERT, "text_1": QUERY, "text_2": DOCS, "score_mode": "sparse"},
     400, "score_mode and score_weights are for BGE-M3 models", "score_mode"),
    ("token-ids", "/pooling", {"model": COLBERT, "input": [101, 2054, 102]}, 400, "token ids", "input"),
    ("chat-messages", "/pooling", {"model": COLBERT, "messages": [{"role": "user", "content": "hi"}]}, 400,
     "messages", "messages"),
    ("multi-modal-item", "/score", {"model": COLBERT, "data_1": QUERY,
                                    "data_2": [{"content": [{"type": "text", "text": "x"}]}]}, 400, "multi-modal",
     None),
    ("priority", "/score", {"model": COLBERT, "text_1": QUERY, "text_2": DOCS, "priority": 3}, 400,
     "Priority scheduling is not enabled", "priority"),
    ("too-many-documents", "/rerank", {"model": COLBERT, "query": QUERY, "documents": ["d"] * (MAX_ITEMS + 1)}, 400,
     f"Too many items in one request: {MAX_ITEMS + 1}", "documents"),
    ("too-many-inputs", "/v1/embeddings", {"model": DEFAULT, "input": ["d"] * (MAX_ITEMS + 1)}, 400,
     "at most 64 per request", "input"),
    ("body-too-large", "/pooling", {"model": COLBERT, "input": "x" * (MAX_BYTES + 1)}, 413,
     f"accepts at most {MAX_BYTES} bytes", None),
    ("token-id-out-of-vocabulary", "/detokenize", {"model": DEFAULT, "tokens": [101, 10**9]}, 400,
     "is not a token id", "tokens"),
    # A lone surrogate is valid JSON ("\ud800") but no text: 400 naming the field, on every route.
    ("surrogate-score", "/score", raw({"model": COLBERT, "text_1": "\ud800", "text_2": DOCS}), 400,
     "text_1 is not valid Unicode text: a lone surrogate U+D800", "text_1"),
    ("surrogate-rerank", "/rerank", raw({"model": COLBERT, "query": QUERY, "documents": [DOCS[0], "x\udfff"]}), 400,
     "documents[1] is not valid Unicode text", "documents"),
    ("surrogate-pooling", "/pooling", raw({"model": COLBERT, "input": ["\ud83d"]}), 400, "input[0] is not valid",
     "input"),
    ("surrogate-embeddings", "/v1/embeddings", raw({"model": DEFAULT, "input": "a\ud800"}), 400,
     "input is not valid Unicode text: a lone surrogate U+D800 at character 1", "input"),
    ("surrogate-tokenize", "/tokenize", raw({"model": DEFAULT, "prompt": "\udc00"}), 400, "prompt is not valid",
     "prompt"),
    ("surrogate-v2-embed", "/v2/embed", raw({"model": DEFAULT, "texts": ["\ud800"]}), 400, "texts[0] is not valid",
     "texts"),
    ("surrogate-request-id", "/score", raw({"model": COLBERT, "text_1": QUERY, "text_2": DOCS, "request_id": "\ud800"}),
     400, "request_id is not valid", "request_id"),
    ("surrogate-model", "/pooling", raw({"model": "\ud800", "input": QUERY}), 400, "model is not valid", "model"),
    # vLLM refuses `dimensions` on a model that is not matryoshka even at the model's own size.
    ("embeddings-dimensions-own-size", "/v1/embeddings", {"model": DEFAULT, "input": QUERY, "dimensions": 384}, 400,
     "does not support matryoshka representation", None),
    ("pooling-dimensions-own-size", "/pooling", {"model": COLBERT, "input": QUERY, "dimensions": 16}, 400,
     "does not support matryoshka representation", None),
    ("embedding-mode-without-conventions", "/pooling", {"model": DEFAULT, "input": QUERY, "embedding_mode": "query"},
     400, "embedding_mode is only available for ColBERT checkpoints", "embedding_mode"),
    ("embedding-mode-unknown", "/pooling", {"model": COLBERT, "input": QUERY, "embedding_mode": "passage"}, 400,
     "embedding_mode", None),
    ("v2-embed-nothing", "/v2/embed", {"model": DEFAULT}, 400, "One of texts, images, or inputs must be provided",
     "texts"),
    ("v2-embed-images", "/v2/embed", {"model": DEFAULT, "images": ["data:image/png;base64,iVBORw0KGgo="]}, 400,
     "images are not supported by trilate yet", "images"),
    ("v2-embed-image-part", "/v2/embed", {"model": DEFAULT, "inputs": [{"content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}, 400,
     "inputs[0] has an image_url part", "inputs"),
    ("v2-embed-two-text-parts", "/v2/embed", {"model": DEFAULT, "inputs": [{"content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, 400, "inputs[0] has 2 text parts", "inputs"),
    ("v2-embed-int8", "/v2/embed", {"model": DEFAULT, "texts": [QUERY], "embedding_types": ["float", "int8"]}, 400,
     "embedding_types ['int8'] are not supported", "embedding_types"),
    ("v2-embed-type-unknown", "/v2/embed", {"model": DEFAULT, "texts": [QUERY], "embedding_types": ["int4"]}, 400,
     "embedding_types", None),
    ("v2-embed-input-type-without-prompts", "/v2/embed", {"model": BGE_M3, "texts": [QUERY],
                                                          "input_type": "search_query"}, 400,
     "Unsupported input_type 'search_query'. This model does not define any input_type prompt prefixes.",
     "input_type"),
    ("v2-embed-input-type-unknown", "/v2/embed", {"model": DEFAULT, "texts": [QUERY], "input_type": "clustering"},
     400, "Unsupported input_type 'clustering'. Supported values: search_document, search_query", "input_type"),
    ("v2-embed-output-dimension", "/v2/embed", {"model": DEFAULT, "texts": [QUERY], "output_dimension": 128}, 400,
     "does not support matryoshka representation", None),
    ("v2-embed-truncate-none", "/v2/embed", {"model": DEFAULT, "texts": [QUERY], "truncate": "NONE", "max_tokens": 3},
     400, "Input of 7 tokens exceeds max_tokens=3 with truncate=NONE", "max_tokens"),
    ("v2-embed-too-many", "/v2/embed", {"model": DEFAULT, "texts": ["d"] * (MAX_ITEMS + 1)}, 400,
     "at most 64 per request", "texts"),
]


@pytest.mark.parametrize("route, body, status, words, param", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_a_4xx_in_vllm_envelope_and_the_server_keeps_serving(http, lib, route, body, status,
                                                                              words, param):
    if isinstance(body, bytes):
        resp = http.post(route, content=body, headers={"Content-Type": "application/json"})
    else:
        resp = post(http, route, body)
    error = assert_envelope(resp, status, words, param)
    if status == 400 and error["type"] not in ("Bad Request",):
        assert error["type"] == "BadRequestError"
    good = post(http, "/score", {"model": COLBERT, "text_1": QUERY, "text_2": DOCS[0]})
    assert good.status_code == 200
    assert good.json()["data"][0]["score"] == pytest.approx(lib.score(COLBERT, QUERY, DOCS[0]).scores[0], rel=SCORE_RTOL, abs=SCORE_ATOL)


def test_chunked_body_over_the_limit_is_refused_too(http):
    def chunks():
        yield b'{"model": "%s", "input": "' % COLBERT.encode()
        for _ in range(MAX_BYTES // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    resp = http.post("/pooling", content=chunks(), headers={"Content-Type": "application/json"})
    assert_envelope(resp, 413, f"accepts at most {MAX_BYTES} bytes")


def test_routes_a_model_cannot_serve_answer_as_vllm_does(http):
    # vLLM registers /v1/embeddings and /v2/embed only for models that pool one vector: a ColBERT server has
    # no such route.
    resp = post(http, "/v1/embeddings", {"model": COLBERT, "input": QUERY})
    assert resp.status_code == 404 and resp.json() == {"detail": "Not Found"}
    resp = post(http, "/v2/embed", {"model": COLBERT, "texts": [QUERY]})
    assert resp.status_code == 404 and resp.json() == {"detail": "Not Found"}
    resp = http.post("/v1/chat/completions", json={"model": COLBERT})
    assert resp.status_code == 404 and resp.json() == {"detail": "Not Found"}
    assert http.get("/score").status_code == 405


def test_bge_m3_dense_embeddings_and_its_score_modes(http, lib):
    texts = ["What is BGE M3?", "Definition of BM25"]
    got = post(http, "/v1/embeddings", {"model": BGE_M3, "input": texts}).json()
    np.testing.assert_allclose([d["embedding"] for d in got["data"]], lib.embed(BGE_M3, texts).matrix(), atol=VECTOR_ATOL)
    # vLLM's default: cosine of the dense vectors; trilate's extension: FlagEmbedding's other scores.
    for extra in ({}, {"score_mode": "sparse"}, {"score_mode": "colbert+sparse+dense", "score_weights": [0.4, 0.2, 0.4]}):
        ranked = post(http, "/rerank", {"model": BGE_M3, "query": texts[0], "documents": DOCS} | extra).json()
        expected = lib.rerank(BGE_M3, texts[0], DOCS, **extra)
        scores = [r["relevance_score"] for r in ranked["results"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == len(DOCS)
        assert {r["index"]: r["relevance_score"] for r in ranked["results"]} == pytest.approx(
            {r.index: r.relevance_score for r in expected.results}, rel=SCORE_RTOL, abs=SCORE_ATOL)
    both = post(http, "/pooling", {"model": BGE_M3, "input": texts, "task": "embed&token_classify"}).json()
    dense = lib.embed(BGE_M3, texts).matrix()
    assert np.asarray(both["data"][0]["data"]).shape == (dense.shape[1] + lib.tokenize(BGE_M3, texts[0]).count - 2,)
