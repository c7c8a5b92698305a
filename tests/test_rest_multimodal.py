"""The REST front end's multimodal requests, over real HTTP (uvicorn + httpx / curl), down to the Triton inputs:
the seed document's multimodal curl commands verbatim (with generated PNGs), content lists on /score and /rerank,
chat ``messages`` on /pooling and /v1/embeddings, Cohere /v2/embed images, and the 400s naming the part.

The app runs over ``RecordingClient`` (tests/multimodal_support.py): what it would send to Triton is recorded
and answered by the wire contract's rules; through a real tritonserver these run once the image models are
served (the lead's integration)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from multimodal_support import COLBERT, COLQWEN, IMAGE_TOKENS, NEMOTRON_EMBED, NEMOTRON_RERANK, TEXT_TOKENS
from multimodal_support import RecordingClient, card, data_url, image_part, png, rows, text_part
from python_backend_models import contract as C
from python_backend_models.media import MediaPolicy

from trilate import multimodal as MM
from trilate.frontend import FrontEnd, create_app
from trilate.launch import free_ports

IMAGES = [png(color=(255, 0, 0)), png(16, 9, color=(0, 128, 0)), png(5, 5, color=(0, 0, 255))]


class App:
    def __init__(self, **kwargs):
        self.client = RecordingClient(**kwargs)
        (self.port,) = free_ports(1)
        self.front = FrontEnd(create_app(client=self.client), "127.0.0.1", self.port, log_level="warning").start()
        self.http = httpx.Client(base_url=self.front.url, timeout=30)

    def post(self, route: str, body) -> httpx.Response:
        self.client.calls.clear()
        return self.http.post(route, json=body)

    def close(self):
        self.http.close()
        self.front.stop(timeout=10)


@pytest.fixture(scope="module")
def app():
    served = App()
    yield served
    served.close()


def error_of(resp: httpx.Response, status: int = 400) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]


# -- the seed's multimodal curl commands, verbatim -------------------------------------------------------------

SEED_DATA = Path(__file__).resolve().parent / "data" / "seed_commands.json"
MULTIMODAL_SEED = [(c["key"], c["command"], c["route"], c["body"], c["multimodal"])
                   for c in json.loads(SEED_DATA.read_text(encoding="utf-8"))["curl_commands"] if c["multimodal"]]


def test_the_seed_document_has_six_multimodal_curl_commands():
    assert {(route, body["model"]) for _k, _c, route, body, _m in MULTIMODAL_SEED} == {
        ("/score", COLQWEN), ("/rerank", COLQWEN), ("/pooling", COLQWEN), ("/v1/embeddings", NEMOTRON_EMBED),
        ("/score", NEMOTRON_RERANK), ("/rerank", NEMOTRON_RERANK)}


@pytest.mark.parametrize("key, command, route, body, multimodal", MULTIMODAL_SEED, ids=[c[0] for c in MULTIMODAL_SEED])
def test_seed_multimodal_curl_command_verbatim(app, key, command, route, body, multimodal):
    # The command as the document writes it; the port is this test's and <BASE64...> are generated PNGs.
    encoded = [base64.b64encode(image).decode("ascii") for image in IMAGES]

    def images_in(text: str) -> str:
        return text.replace("<BASE64>", encoded[0]).replace("<BASE64_1>", encoded[1]).replace("<BASE64_2>", encoded[2])

    command = images_in(command.replace("localhost:8000", f"localhost:{app.port}"))
    body = json.loads(images_in(json.dumps(body)))
    app.client.calls.clear()
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert "error" not in got, got
    (call,) = app.client.calls
    sent = body["documents"] if route == "/rerank" else body.get("data_2", body.get("messages"))
    n_images = sum(1 for item in sent for part in item["content"] if part["type"] == "image_url")
    expected_images = [IMAGES[0]] if n_images == 1 else IMAGES[1:]
    if route in ("/score", "/rerank"):
        cross = body["model"] == NEMOTRON_RERANK
        assert call["model"].endswith("__score") and call["params"][MM.PARAM_PROMPT_FORMAT] == "json"
        assert call["inputs"][MM.DOCUMENT_IMAGES].tolist() == [[image] for image in expected_images]
        docs = rows(call["inputs"][C.DOCUMENTS])
        assert docs == [{"content": [{"type": "image"} if p["type"] == "image_url" else p for p in item["content"]]}
                        for item in sent]
        query = body.get("data_1", body.get("query"))
        assert rows(call["inputs"][C.QUERIES]) == [{"text": query}] * (len(docs) if cross else 1)
        pair_tokens = (2 * TEXT_TOKENS + IMAGE_TOKENS) if cross else (TEXT_TOKENS + 1 + TEXT_TOKENS + IMAGE_TOKENS)
        assert got["usage"]["prompt_tokens"] == len(docs) * pair_tokens
        if route == "/rerank":
            assert len(got["results"]) == 2  # top_n 2
            for result in got["results"]:
                assert result["document"] == {"text": None, "multi_modal": sent[result["index"]]["content"]}
            scores = [r["relevance_score"] for r in got["results"]]
            assert scores == sorted(scores, reverse=True)
        else:
            assert [d["index"] for d in got["data"]] == list(range(len(docs)))
    else:
        assert call["params"][C.PARAM_ADD_SPECIAL_TOKENS] is False  # vLLM's chat form default
        assert rows(call["inputs"][C.TEXT]) == [{"messages": [
            {"role": m["role"], "content": [{"type": "image"} if p["type"] == "image_url" else p
                                            for p in m["content"]]} for m in body["messages"]]}]
        assert call["inputs"][MM.IMAGES].tolist() == [[IMAGES[0]]]
        assert len(got["data"]) == 1 and got["usage"]["prompt_tokens"] == TEXT_TOKENS + IMAGE_TOKENS
        assert call["outputs"][0] == (C.EMBEDDINGS if route == "/v1/embeddings" else C.TOKEN_EMBEDDINGS)


# -- the other request shapes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("first, second", [("text_1", "text_2"), ("queries", "documents"), ("queries", "items"),
                                           ("data_1", "data_2")])
def test_score_takes_content_lists_under_every_field_pair(app, first, second):
    body = {"model": COLQWEN, first: [{"content": [image_part(IMAGES[0]), text_part("q")]}, "q2"],
            second: ["d1", {"content": [image_part(IMAGES[1])]}]}
    resp = app.post("/score", body)
    assert resp.status_code == 200, resp.text
    (call,) = app.client.calls
    assert call["inputs"][MM.QUERY_IMAGES].tolist() == [[IMAGES[0]], [b""]]
    assert call["inputs"][MM.DOCUMENT_IMAGES].tolist() == [[b""], [IMAGES[1]]]
    assert rows(call["inputs"][C.QUERIES])[1] == {"text": "q2"}


def test_a_single_content_document_is_one_document(app):
    resp = app.post("/rerank", {"model": COLQWEN, "query": "q", "documents": {"content": [image_part(IMAGES[2])]}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"][0]["document"]["multi_modal"] == [image_part(IMAGES[2])]


def test_text_requests_to_an_image_model_send_plain_rows(app):
    assert app.post("/score", {"model": COLQWEN, "text_1": "q", "text_2": ["a", "b"]}).status_code == 200
    (call,) = app.client.calls
    assert MM.PARAM_PROMPT_FORMAT not in call["params"] and rows(call["inputs"][C.DOCUMENTS]) == ["a", "b"]
    assert set(call["inputs"]) == {C.QUERIES, C.DOCUMENTS}


def test_cross_encoder_score_n_to_n_and_one_to_one(app):
    resp = app.post("/score", {"model": NEMOTRON_RERANK, "text_1": ["q1", "q2"], "text_2": ["d1", "d2"]})
    assert resp.status_code == 200 and len(resp.json()["data"]) == 2
    assert rows(app.client.calls[0]["inputs"][C.QUERIES]) == ["q1", "q2"]
    assert resp.json()["usage"]["prompt_tokens"] == 2 * 2 * TEXT_TOKENS
    one = app.post("/score", {"model": NEMOTRON_RERANK, "text_1": "q", "text_2": "d"})
    assert one.status_code == 200 and len(one.json()["data"]) == 1


def test_pooling_messages_with_roles_and_explicit_add_special_tokens(app):
    messages = [{"role": "query", "content": "what is shown?"}]
    resp = app.post("/pooling", {"model": NEMOTRON_EMBED, "messages": messages, "task": "embed",
                                 "add_special_tokens": True})
    assert resp.status_code == 200, resp.text
    (call,) = app.client.calls
    assert rows(call["inputs"][C.TEXT]) == [{"messages": messages}]
    assert call["params"][C.PARAM_ADD_SPECIAL_TOKENS] is True


def test_cohere_embed_images_and_image_parts_for_an_image_model(app):
    resp = app.post("/v2/embed", {"model": NEMOTRON_EMBED, "images": [data_url(IMAGES[0]), data_url(IMAGES[1])],
                                  "embedding_types": ["float"]})
    assert resp.status_code == 200, resp.text
    (call,) = app.client.calls
    assert rows(call["inputs"][C.TEXT]) == [{"messages": [{"role": "user", "content": [{"type": "image"}]}]}] * 2
    assert call["inputs"][MM.IMAGES].tolist() == [[IMAGES[0]], [IMAGES[1]]]
    assert len(resp.json()["embeddings"]["float"]) == 2
    assert resp.json()["meta"]["tokens"]["input_tokens"] == 2 * (TEXT_TOKENS + IMAGE_TOKENS)
    # input_type's prefix goes first as a system message (vLLM's PR #41782)
    resp = app.post("/v2/embed", {"model": NEMOTRON_EMBED, "input_type": "search_document", "inputs": [
        {"content": [text_part("a page"), image_part(IMAGES[2])]}, {"content": [text_part("text only")]}]})
    assert resp.status_code == 200, resp.text
    (call,) = app.client.calls
    assert rows(call["inputs"][C.TEXT]) == [
        {"messages": [{"role": "system", "content": "passage: "},
                      {"role": "user", "content": [{"type": "text", "text": "a page"}, {"type": "image"}]}]},
        {"messages": [{"role": "system", "content": "passage: "},
                      {"role": "user", "content": [{"type": "text", "text": "text only"}]}]}]
    assert call["inputs"][MM.IMAGES].tolist() == [[IMAGES[2]], [b""]]
    # texts stay plain text rows, prefixed, as for text models
    assert app.post("/v2/embed", {"model": NEMOTRON_EMBED, "input_type": "search_query", "texts": ["t"]}).status_code == 200
    assert rows(app.client.calls[0]["inputs"][C.TEXT]) == ["query: t"]


# -- refusals --------------------------------------------------------------------------------------------------

BAD = "data:image/png;base64,not*base64"


@pytest.mark.parametrize("route, body, words, param", [
    ("/score", {"model": COLQWEN, "data_1": "q", "data_2": [{"content": [text_part("x"), {"type": "image_url",
                                                                         "image_url": {"url": BAD}}]}]},
     "data_2[0].content[1]: the image's base64 data is not valid base64", "data_2"),
    ("/score", {"model": COLQWEN, "data_1": {"content": [{"type": "image_url", "image_url": {
        "url": "http://example.com/a.png"}}]}, "data_2": "d"},
     "data_1.content[0]: http(s) image URLs are not allowed", "data_1"),
    ("/rerank", {"model": COLQWEN, "query": "q", "documents": ["d", {"content": [{"type": "video_url"}]}]},
     "documents[1].content[0] has the unsupported content type 'video_url'", "documents"),
    ("/pooling", {"model": COLQWEN, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "file:///etc/hostname"}}]}]}, "messages[0].content[0]: file: image URLs are not allowed", "messages"),
    ("/v1/embeddings", {"model": NEMOTRON_EMBED, "input": "x", "chat_template_kwargs": {"x": 1}},
     "chat_template_kwargs goes with `messages`", "chat_template_kwargs"),
    ("/v2/embed", {"model": NEMOTRON_EMBED, "images": [BAD]}, "images[0].messages[0].content[0]", "images"),
    ("/v2/embed", {"model": NEMOTRON_EMBED, "images": [data_url(IMAGES[0])], "texts": ["t"]},
     "give one of texts, images or inputs", "images"),
    ("/pooling", {"model": NEMOTRON_RERANK, "input": "x"}, "is a cross-encoder", "model"),
    ("/v1/embeddings", {"model": NEMOTRON_RERANK, "input": "x"}, "is a cross-encoder", "model"),
    ("/score", {"model": COLBERT, "data_1": "q", "data_2": [{"content": [image_part(IMAGES[0])]}]},
     "MultiModalParam is not supported for HF_ColBERT", None),
    ("/rerank", {"model": COLBERT, "query": "q", "documents": [{"content": [text_part("x")]}]},
     "MultiModalParam is not supported for HF_ColBERT", None),
    ("/pooling", {"model": COLBERT, "messages": [{"role": "user", "content": "x"}]},
     "chat-style `messages` are not supported", "messages"),
    ("/v2/embed", {"model": COLBERT, "images": [data_url(IMAGES[0])]}, "", None),  # no /v2/embed: 404 below
])
def test_bad_multimodal_requests_are_400s_naming_the_part_and_nothing_is_sent(app, route, body, words, param):
    resp = app.post(route, body)
    if route == "/v2/embed" and body["model"] == COLBERT:  # a token-embedding model has no /v2/embed (vLLM)
        assert resp.status_code == 404
        return
    error = error_of(resp)
    assert words in error["message"] and error["param"] == param and error["type"] == "BadRequestError"
    assert app.client.calls == []


def test_cohere_images_to_a_text_embedding_model_stay_a_400():
    text_embedder = card("text/embedder", "embedder", "BertModel", "bi-encoder", ("embed",), 8)
    served = App(cards=[text_embedder])
    try:
        error = error_of(served.post("/v2/embed", {"model": "text/embedder", "images": [data_url(IMAGES[0])]}))
        assert "images are not supported" in error["message"] and error["param"] == "images"
        error = error_of(served.post("/v2/embed", {"model": "text/embedder", "inputs": [
            {"content": [image_part(IMAGES[0])]}]}))
        assert "inputs[0] has an image_url part" in error["message"]
    finally:
        served.close()


def test_the_media_flags_reach_the_front_end(tmp_path):
    (tmp_path / "page.png").write_bytes(IMAGES[1])
    served = App(media=MM.MediaResolver(MediaPolicy(allowed_local_media_path=tmp_path)))
    try:
        url = (tmp_path / "page.png").as_uri()
        resp = served.post("/score", {"model": COLQWEN, "data_1": "q", "data_2": [
            {"content": [{"type": "image_url", "image_url": {"url": url}}]}]})
        assert resp.status_code == 200, resp.text
        assert served.client.calls[0]["inputs"][MM.DOCUMENT_IMAGES].tolist() == [[IMAGES[1]]]
    finally:
        served.close()


# -- trilate serve's vLLM flags --------------------------------------------------------------------------------

def _serve_args(*argv: str):
    import argparse

    from trilate.cli import _model_arguments

    parser = argparse.ArgumentParser()
    _model_arguments(parser)
    return parser.parse_args(list(argv))


def test_runner_pooling_is_accepted_and_other_runners_refused(tmp_path):
    from trilate.cli import _specs

    assert len(_specs(_serve_args(str(tmp_path), "--runner", "pooling"))) == 1
    with pytest.raises(SystemExit, match="--runner generate is not supported: trilate serves pooling models only"):
        _specs(_serve_args(str(tmp_path), "--runner", "generate"))


def test_chat_template_goes_to_the_repository_builder_per_model(tmp_path):
    from trilate.cli import _specs

    template = tmp_path / "t.jinja"
    template.write_text("{{ messages[0]['content'] }}")
    with pytest.raises(SystemExit, match="is not a file"):
        _specs(_serve_args(str(tmp_path), "--chat-template", str(tmp_path / "missing.jinja")))
    with pytest.raises(SystemExit, match="once for all models or once per model"):
        _specs(_serve_args("a", "b", "c", "--chat-template", str(template), "--chat-template", str(template)))
    (spec,) = _specs(_serve_args(str(tmp_path), "--chat-template", str(template)))
    assert spec.chat_template == str(template.resolve())
    a, b = _specs(_serve_args("a", "b", "--chat-template", "", "--chat-template", str(template)))
    assert (a.chat_template, b.chat_template) == (None, str(template.resolve()))  # '' keeps a model's default
    (plain,) = _specs(_serve_args(str(tmp_path), "--trust-remote-code"))
    assert plain.chat_template is None


def test_chat_template_kwargs_reach_the_template_as_a_json_request_parameter(app):
    app.client.calls.clear()
    body = {"model": NEMOTRON_EMBED, "messages": [{"role": "query", "content": "x"}],
            "chat_template_kwargs": {"enable_thinking": False, "name": "a"}}
    assert app.post("/v1/embeddings", body).status_code == 200
    (call,) = app.client.calls
    assert json.loads(call["params"]["chat_template_kwargs"]) == {"enable_thinking": False, "name": "a"}
