"""The client library's side of the multimodal wire contract (vl_wire.md): structured prompts become
``prompt_format=json`` rows plus ``images`` BYTES tensors, cross-encoder pairs are expanded, image URLs obey the
media policy.  No server: ``RecordingClient`` (tests/multimodal_support.py) records the Triton requests."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from multimodal_support import (
    COLBERT,
    COLQWEN,
    IMAGE_TOKENS,
    NEMOTRON_EMBED,
    NEMOTRON_RERANK,
    TEXT_TOKENS,
    RecordingClient,
    data_url,
    image_part,
    png,
    rows,
    text_part,
)
from python_backend_models import contract as C
from python_backend_models.media import MediaLimits, MediaPolicy

from trilate import InvalidInputError, UnsupportedTaskError
from trilate import multimodal as MM
from trilate.types import ModelCard

RED, BLUE = png(color=(255, 0, 0)), png(12, 4, color=(0, 0, 255))


@pytest.fixture
def client():
    return RecordingClient()


# -- model cards ------------------------------------------------------------------------------------------------

def test_model_card_reads_multimodal_and_cross_encoder_and_defaults_them_to_false():
    """``cross_encoder`` is the card's score_type "cross-encoder"; ``multimodal`` a field that older cards lack."""
    base = {"served_name": "m", "architecture": "A", "score_type": "bi-encoder", "tasks": ["embed"], "dim": 4,
            "max_model_len": 8}
    old = ModelCard.from_parameter("m", json.dumps(base))
    assert (old.multimodal, old.cross_encoder) == (False, False)
    new = ModelCard.from_parameter("m", json.dumps({**base, "multimodal": True, "score_type": "cross-encoder",
                                                    "image_placeholder": "<image>"}))
    assert (new.multimodal, new.cross_encoder) == (True, True)


# -- pooling: rows and images ------------------------------------------------------------------------------------

def test_text_prompts_to_an_image_model_go_as_plain_rows_without_prompt_format(client):
    result = client.pooling(COLQWEN, ["a cat", "a dog"])
    (call,) = client.calls
    assert call["model"] == "colqwen" and set(call["inputs"]) == {C.TEXT}
    assert rows(call["inputs"][C.TEXT]) == ["a cat", "a dog"]
    assert MM.PARAM_PROMPT_FORMAT not in call["params"]
    assert result.usage.prompt_tokens == 2 * TEXT_TOKENS


def test_content_prompts_become_json_rows_and_an_images_tensor_padded_with_empty_bytes(client):
    prompts = [{"content": [image_part(RED), text_part("Describe the image."), image_part(BLUE)]},
               "plain text",
               {"content": [text_part("only text")]},
               {"content": [image_part(BLUE)]}]
    result = client.pooling(COLQWEN, prompts)
    (call,) = client.calls
    assert call["params"][MM.PARAM_PROMPT_FORMAT] == "json"
    assert rows(call["inputs"][C.TEXT]) == [
        {"content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}, {"type": "image"}]},
        {"text": "plain text"},
        {"content": [{"type": "text", "text": "only text"}]},
        {"content": [{"type": "image"}]},
    ]
    images = call["inputs"][MM.IMAGES]
    assert images.dtype == object and images.shape == (4, 2)  # k = most images of any row
    assert images.tolist() == [[RED, BLUE], [b"", b""], [b"", b""], [BLUE, b""]]  # the decoded data: URL bytes
    # usage is what the server counts, image tokens included
    assert result.usage.prompt_tokens == 4 * TEXT_TOKENS + 3 * IMAGE_TOKENS
    assert [item.prompt_tokens for item in result.data] == [TEXT_TOKENS + 2 * IMAGE_TOKENS, TEXT_TOKENS,
                                                            TEXT_TOKENS, TEXT_TOKENS + IMAGE_TOKENS]


def test_json_rows_without_any_image_send_no_images_tensor(client):
    client.pooling(COLQWEN, [{"content": [text_part("t")]}])
    (call,) = client.calls
    assert set(call["inputs"]) == {C.TEXT} and call["params"][MM.PARAM_PROMPT_FORMAT] == "json"


def test_a_bare_image_url_string_is_accepted_as_openai_allows(client):
    client.pooling(COLQWEN, {"content": [{"type": "image_url", "image_url": data_url(RED)}]})
    assert client.calls[0]["inputs"][MM.IMAGES].tolist() == [[RED]]


def test_messages_are_one_conversation_with_free_roles_and_add_special_tokens_false(client):
    messages = [{"role": "document", "content": [image_part(RED), text_part("Describe the image.")]}]
    result = client.embed(NEMOTRON_EMBED, messages=messages)
    (call,) = client.calls
    assert rows(call["inputs"][C.TEXT]) == [
        {"messages": [{"role": "document", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]}]
    assert call["inputs"][MM.IMAGES].tolist() == [[RED]]
    assert call["params"][C.PARAM_ADD_SPECIAL_TOKENS] is False
    assert call["outputs"] == [C.EMBEDDINGS, C.PROMPT_TOKENS] and len(result.data) == 1
    client.pooling(NEMOTRON_EMBED, messages=[{"role": "query", "content": "what?"}], task="embed",
                   add_special_tokens=True)
    assert rows(client.calls[1]["inputs"][C.TEXT]) == [{"messages": [{"role": "query", "content": "what?"}]}]
    assert client.calls[1]["params"][C.PARAM_ADD_SPECIAL_TOKENS] is True
    assert MM.IMAGES not in client.calls[1]["inputs"]


def test_several_conversations_in_input_give_one_output_each(client):
    convs = [{"messages": [{"role": "query", "content": "q"}]},
             {"messages": [{"role": "document", "content": [image_part(BLUE)]}]}]
    result = client.embed(NEMOTRON_EMBED, convs)
    assert len(result.data) == 2 and client.calls[0]["inputs"][MM.IMAGES].tolist() == [[b""], [BLUE]]


def test_conversations_mixed_with_other_prompts_are_refused(client):
    with pytest.raises(InvalidInputError, match="mixes chat conversations"):
        client.pooling(NEMOTRON_EMBED, ["text", {"messages": [{"role": "user", "content": "x"}]}])
    assert client.calls == []


def test_rows_are_split_into_requests_by_image_bytes_and_stay_whole(client, monkeypatch):
    monkeypatch.setattr(MM, "MAX_REQUEST_IMAGE_BYTES", len(RED) * 2)
    prompts = [{"content": [image_part(RED)]} for _ in range(5)]
    result = client.pooling(COLQWEN, prompts)
    assert [c["inputs"][C.TEXT].shape[0] for c in client.calls] == [2, 2, 1]
    assert [item.index for item in result.data] == [0, 1, 2, 3, 4]


# -- refusals --------------------------------------------------------------------------------------------------

def test_a_text_model_refuses_content_and_messages_with_vllms_words_and_sends_nothing(client):
    with pytest.raises(InvalidInputError, match="MultiModalParam is not supported for HF_ColBERT"):
        client.score(COLBERT, "q", [{"content": [text_part("x")]}])
    with pytest.raises(InvalidInputError, match="chat-style `messages` are not supported") as info:
        client.pooling(COLBERT, messages=[{"role": "user", "content": "hi"}])
    assert info.value.param == "messages"
    assert client.calls == []


@pytest.mark.parametrize("part, words", [
    ({"type": "video_url", "video_url": {"url": "x"}}, "unsupported content type 'video_url'"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,***"}}, "not valid base64"),
    ({"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}, "not an image type"),
    ({"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}, "http(s) image URLs are not allowed"),
    ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, "file: image URLs are not allowed"),
    ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, "URL scheme 'ftp' is not allowed"),
    ({"type": "image_url", "image_url": {}}, "without a string url"),
    ({"type": "text"}, "text part without a string 'text'"),
])
def test_a_bad_part_is_a_400_naming_the_part_and_nothing_is_sent(client, part, words):
    with pytest.raises(InvalidInputError) as info:
        client.score(COLQWEN, "q", [{"content": [text_part("fine")]}, {"content": [text_part("fine"), part]}],
                     fields=("data_1", "data_2"))
    assert info.value.message.startswith("data_2[1].content[1]") and words in info.value.message
    assert info.value.param == "data_2" and info.value.status == 400
    assert client.calls == []


def test_an_image_over_the_byte_limit_is_refused_before_anything_is_sent():
    client = RecordingClient(media=MM.MediaResolver(limits=MediaLimits(max_encoded_bytes=len(RED) - 1)))
    with pytest.raises(InvalidInputError, match=r"input\[0\].content\[0\]: the image .*too large"):
        client.pooling(COLQWEN, [{"content": [image_part(RED)]}])
    assert client.calls == []


def test_a_message_part_is_named_by_its_path(client):
    with pytest.raises(InvalidInputError, match=r"^messages\[1\].content\[0\] has the unsupported content type"):
        client.embed(NEMOTRON_EMBED, messages=[{"role": "query", "content": "q"},
                                               {"role": "document", "content": [{"type": "audio_url"}]}])


# -- score and rerank ------------------------------------------------------------------------------------------

def test_late_interaction_score_1_to_n_sends_the_query_once_and_the_document_images(client):
    docs = [{"content": [image_part(RED), text_part("Describe the image.")]}, "a text document"]
    result = client.score(COLQWEN, "Retrieve the city of Beijing", docs)
    (call,) = client.calls
    assert call["model"] == "colqwen__score" and call["params"][MM.PARAM_PROMPT_FORMAT] == "json"
    assert rows(call["inputs"][C.QUERIES]) == [{"text": "Retrieve the city of Beijing"}]
    assert rows(call["inputs"][C.DOCUMENTS])[1] == {"text": "a text document"}
    assert call["inputs"][MM.DOCUMENT_IMAGES].tolist() == [[RED], [b""]]
    assert MM.QUERY_IMAGES not in call["inputs"]
    assert len(result.data) == 2
    # vLLM's late-interaction usage: query + pad + document per pair
    assert result.usage.prompt_tokens == 2 * (TEXT_TOKENS + 1) + 2 * TEXT_TOKENS + IMAGE_TOKENS


def test_score_n_to_n_with_query_images_sends_both_image_tensors(client):
    queries = [{"content": [image_part(BLUE), text_part("q1")]}, "q2"]
    client.score(COLQWEN, queries, ["d1", {"content": [image_part(RED)]}])
    (call,) = client.calls
    assert call["inputs"][MM.QUERY_IMAGES].tolist() == [[BLUE], [b""]]
    assert call["inputs"][MM.DOCUMENT_IMAGES].tolist() == [[b""], [RED]]


@pytest.mark.parametrize("queries, n_docs", [("q", 1), ("q", 3), (["q1", "q2", "q3"], 3)])
def test_cross_encoder_pairs_are_expanded_to_equal_lengths_with_one_score_each(client, queries, n_docs):
    docs = [{"content": [image_part(RED), text_part(f"doc {i}")]} for i in range(n_docs)]
    result = client.score(NEMOTRON_RERANK, queries, docs)
    (call,) = client.calls
    q_rows = rows(call["inputs"][C.QUERIES])
    assert len(q_rows) == n_docs == call["inputs"][C.DOCUMENTS].shape[0]
    expected_q = [{"text": q} for q in (queries if isinstance(queries, list) else [queries] * n_docs)]
    assert q_rows == expected_q
    assert call["inputs"][MM.DOCUMENT_IMAGES].tolist() == [[RED]] * n_docs
    assert len(result.data) == n_docs
    # usage = sum over pair prompts (no pad token), image tokens included
    assert result.usage.prompt_tokens == n_docs * (2 * TEXT_TOKENS + IMAGE_TOKENS)


def test_cross_encoder_refuses_pooling_and_embed(client):
    for call in (lambda: client.pooling(NEMOTRON_RERANK, "x"), lambda: client.embed(NEMOTRON_RERANK, "x")):
        with pytest.raises(UnsupportedTaskError, match="is a cross-encoder"):
            call()
    assert client.calls == []


def test_rerank_echoes_content_documents_as_multi_modal_parts_as_sent(client):
    docs = [{"content": [image_part(RED), text_part("Describe the image.")]},
            "short",
            {"content": [image_part(BLUE), text_part("Describe the image, at more length.")]}]
    result = client.rerank(COLQWEN, "Retrieve the city of Beijing", docs, top_n=2)
    # the fake's score is the document row's length: the longest JSON row first
    assert [item.index for item in result.results] == [2, 0]
    assert result.results[0].document.text is None
    assert result.results[0].document.multi_modal == docs[2]["content"]  # data: URL and all, as sent
    full = client.rerank(COLQWEN, "q", docs)
    assert full.results[2].document.text == "short" and full.results[2].document.multi_modal is None


def test_rerank_takes_a_content_query(client):
    client.rerank(COLQWEN, {"content": [image_part(BLUE)]}, ["d"])
    assert client.calls[0]["inputs"][MM.QUERY_IMAGES].tolist() == [[BLUE]]


# -- the media policy ------------------------------------------------------------------------------------------

class _Counting(SimpleHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).hits.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def image_site(tmp_path):
    (tmp_path / "red.png").write_bytes(RED)
    _Counting.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Counting, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_an_allowed_domain_is_fetched_and_a_disallowed_one_never_contacted(image_site, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    client = RecordingClient(media=MM.MediaResolver(MediaPolicy(allowed_media_domains=("127.0.0.1",))))
    client.pooling(COLQWEN, {"content": [{"type": "image_url", "image_url": {"url": f"http://127.0.0.1:{image_site}/red.png"}}]})
    assert client.calls[0]["inputs"][MM.IMAGES].tolist() == [[RED]] and _Counting.hits == ["/red.png"]
    # `localhost` is the same machine but not the listed host name: refused before any connection
    with pytest.raises(InvalidInputError, match="not in --allowed-media-domains"):
        client.pooling(COLQWEN, {"content": [{"type": "image_url",
                                              "image_url": {"url": f"http://localhost:{image_site}/red.png"}}]})
    # and with no domain listed (the default), nothing is fetched at all
    with pytest.raises(InvalidInputError, match="http\\(s\\) image URLs are not allowed"):
        RecordingClient().pooling(COLQWEN, {"content": [{"type": "image_url", "image_url": {
            "url": f"http://127.0.0.1:{image_site}/red.png"}}]})
    assert _Counting.hits == ["/red.png"] and len(client.calls) == 1


def test_file_urls_load_only_under_the_allowed_directory(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "red.png").write_bytes(RED)
    (tmp_path / "outside.png").write_bytes(BLUE)
    (allowed / "link.png").symlink_to(tmp_path / "outside.png")
    client = RecordingClient(media=MM.MediaResolver(MediaPolicy(allowed_local_media_path=allowed)))

    def send(path: Path):
        return client.pooling(COLQWEN, {"content": [{"type": "image_url", "image_url": {"url": path.as_uri()}}]})

    send(allowed / "red.png")
    assert client.calls[0]["inputs"][MM.IMAGES].tolist() == [[RED]]
    for path in (tmp_path / "outside.png", allowed / ".." / "outside.png", allowed / "link.png"):
        with pytest.raises(InvalidInputError, match="is not under --allowed-local-media-path"):
            send(path)
    assert len(client.calls) == 1


def test_media_flags_make_the_resolver(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    MM.add_media_arguments(parser)
    default = MM.media_from_args(parser.parse_args([]))
    assert default.policy == MediaPolicy()
    resolver = MM.media_from_args(parser.parse_args(["--allowed-media-domains", "Images.Example.com", "cdn.test",
                                                     "--allowed-local-media-path", str(tmp_path)]))
    assert resolver.policy.allowed_media_domains == ("images.example.com", "cdn.test")
    assert resolver.policy.allowed_local_media_path == tmp_path.resolve()
    with pytest.raises(SystemExit, match="is not a directory"):
        MM.media_from_args(parser.parse_args(["--allowed-local-media-path", str(tmp_path / "missing")]))


def test_image_tensor_shapes_and_dtypes():
    side = MM.wire_side(["a", {"content": [image_part(RED), image_part(BLUE), image_part(RED)]}], ["x[0]", "x[1]"],
                        MM.MediaResolver())
    assert side.text_tensor(True).shape == (2, 1) and side.text_tensor(True).dtype == object
    images = side.image_tensor()
    assert images.shape == (2, 3) and images[0].tolist() == [b"", b"", b""]
    assert side.image_tensor(0, 1) is None
    np.testing.assert_array_equal(side.image_tensor(1, 2), np.array([[RED, BLUE, RED]], dtype=object))


# -- the same tensors through a real tritonserver ---------------------------------------------------------------
# Two Python-backend models stand in for an image model's public ensembles: they declare the wire contract's
# inputs (images optional), write what reached them (rows, image bytes, request parameters) to a folder, and
# answer by the same rules as RecordingClient.  This proves the tensors survive tritonclient HTTP and gRPC and
# Triton's own checks (BYTES [n, k] with b"" padding, optional inputs, string parameters); the real image
# models' reading of them is the server side's test.

ECHO_MODEL = '''
import base64
import json
import os
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

IMAGE_TOKENS, TEXT_TOKENS = %d, %d


def tensor(request, name):
    found = pb_utils.get_input_tensor_by_name(request, name)
    return None if found is None else found.as_numpy()


def tokens(texts, images):
    counts = np.full((texts.shape[0], 1), TEXT_TOKENS, dtype=np.int32)
    if images is not None:
        counts[:, 0] += IMAGE_TOKENS * np.array([[len(x) > 0 for x in row] for row in images]).sum(axis=1)
    return counts


class TritonPythonModel:
    def initialize(self, args):
        self.name = json.loads(args["model_config"])["name"]
        self.folder = json.loads(args["model_config"])["parameters"]["echo_folder"]["string_value"]

    def execute(self, requests):
        responses = []
        for request in requests:
            seen = {"model": self.name, "parameters": json.loads(request.parameters() or "{}"), "inputs": {}}
            names = ("queries", "documents", "query_images", "document_images") if self.name.endswith("__score") \\
                else ("text", "images")
            arrays = {n: tensor(request, n) for n in names}
            for n, a in arrays.items():
                if a is not None:
                    seen["inputs"][n] = {"shape": list(a.shape),
                                         "rows": [[base64.b64encode(x).decode() for x in row] for row in a]}
            with open(os.path.join(self.folder, uuid.uuid4().hex + ".json"), "w") as fh:
                json.dump(seen, fh)
            if self.name.endswith("__score"):
                n = arrays["documents"].shape[0]
                out = [pb_utils.Tensor("scores", np.arange(n, dtype=np.float32)),
                       pb_utils.Tensor("query_prompt_tokens", tokens(arrays["queries"], arrays["query_images"])),
                       pb_utils.Tensor("document_prompt_tokens",
                                       tokens(arrays["documents"], arrays["document_images"]))]
            else:
                n = arrays["text"].shape[0]
                out = [pb_utils.Tensor("embeddings", np.ones((n, 4), dtype=np.float32)),
                       pb_utils.Tensor("prompt_tokens", tokens(arrays["text"], arrays["images"]))]
            responses.append(pb_utils.InferenceResponse(out))
        return responses
''' % (IMAGE_TOKENS, TEXT_TOKENS)


def _echo_config(name: str, folder: Path, batch: int, inputs: list[tuple[str, str, bool]],
                 outputs: list[tuple[str, str, str]], card: dict | None) -> str:
    """Like the public ensembles: ``<m>`` batches (dims exclude the batch), ``<m>__score`` does not (max_batch_size 0,
    its two sides have their own lengths)."""
    lines = [f'name: "{name}"', 'backend: "python"', f"max_batch_size: {batch}"]
    for tensor, dims, optional in inputs:
        lines.append(f'input {{ name: "{tensor}" data_type: TYPE_STRING dims: [ {dims} ]'
                     + (" optional: true" if optional else "") + " }")
    for tensor, dtype, dims in outputs:
        lines.append(f'output {{ name: "{tensor}" data_type: {dtype} dims: [ {dims} ] }}')
    lines.append(f'parameters {{ key: "echo_folder" value {{ string_value: "{folder}" }} }}')
    if card is not None:
        lines.append(f"parameters {{ key: \"{C.MODEL_CARD_PARAMETER}\" value {{ string_value: {json.dumps(json.dumps(card))} }} }}")
    lines.append("instance_group { kind: KIND_CPU count: 1 }")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    from python_backend_models.server import ServerConfig, TritonServer

    from trilate.launch import free_ports

    root = tmp_path_factory.mktemp("echo")
    seen = root / "seen"
    seen.mkdir()
    card = {"served_name": "tiny/vl-echo", "architecture": "Echo", "score_type": "bi-encoder",
            "tasks": ["embed"], "dim": 4, "max_model_len": 64, "multimodal": True}
    models = {
        "vl_echo": (128, [(C.TEXT, "1", False), (MM.IMAGES, "-1", True)],
                    [(C.EMBEDDINGS, "TYPE_FP32", "4"), (C.PROMPT_TOKENS, "TYPE_INT32", "1")], card),
        "vl_echo__score": (0, [(C.QUERIES, "-1, 1", False), (C.DOCUMENTS, "-1, 1", False),
                               (MM.QUERY_IMAGES, "-1, -1", True), (MM.DOCUMENT_IMAGES, "-1, -1", True)],
                           [(C.SCORES, "TYPE_FP32", "-1"), (C.QUERY_PROMPT_TOKENS, "TYPE_INT32", "-1, 1"),
                            (C.DOCUMENT_PROMPT_TOKENS, "TYPE_INT32", "-1, 1")], None),
    }
    for name, (batch, inputs, outputs, model_card) in models.items():
        (root / "repo" / name / "1").mkdir(parents=True)
        (root / "repo" / name / "config.pbtxt").write_text(_echo_config(name, seen, batch, inputs, outputs,
                                                                        model_card))
        (root / "repo" / name / "1" / "model.py").write_text(ECHO_MODEL)
    http, grpc, metrics = free_ports(3)
    server = TritonServer(ServerConfig(model_repository=root / "repo", http_port=http, grpc_port=grpc,
                                       metrics_port=metrics), log_file=root / "tritonserver.log")
    server.start(timeout=120)
    yield server, seen
    server.stop()


def _seen(folder: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    for p in folder.glob("*.json"):
        p.unlink()
    return found


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_wire_tensors_reach_a_real_python_backend_model_intact(echo_server, protocol):
    import base64

    from trilate import TrilateClient

    server, folder = echo_server
    _seen(folder)
    client = TrilateClient(server.http_url if protocol == "http" else server.grpc_url, protocol=protocol)
    prompts = [{"content": [image_part(RED), text_part("Describe the image."), image_part(BLUE)]}, "plain",
               {"messages": [{"role": "document", "content": [image_part(BLUE)]}]}]
    with pytest.raises(InvalidInputError, match="mixes chat conversations"):
        client.embed("tiny/vl-echo", prompts)
    result = client.embed("tiny/vl-echo", prompts[:2])
    assert result.usage.prompt_tokens == 2 * TEXT_TOKENS + 2 * IMAGE_TOKENS
    (seen,) = _seen(folder)
    assert seen["parameters"][MM.PARAM_PROMPT_FORMAT] == "json"
    assert seen["inputs"][C.TEXT]["shape"] == [2, 1] and seen["inputs"][MM.IMAGES]["shape"] == [2, 2]
    texts = [[base64.b64decode(x).decode() for x in row] for row in seen["inputs"][C.TEXT]["rows"]]
    assert [json.loads(row[0]) for row in texts] == [
        {"content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}, {"type": "image"}]},
        {"text": "plain"}]
    images = [[base64.b64decode(x) for x in row] for row in seen["inputs"][MM.IMAGES]["rows"]]
    assert images == [[RED, BLUE], [b"", b""]]
    # plain text: no images input, no prompt_format
    client.embed("tiny/vl-echo", ["just text"])
    (seen,) = _seen(folder)
    assert set(seen["inputs"]) == {C.TEXT} and MM.PARAM_PROMPT_FORMAT not in seen["parameters"]
    # score 1:N with document images only
    score = client.score("tiny/vl-echo", "q", [{"content": [image_part(RED)]}, "d", {"content": [image_part(BLUE)]}])
    assert score.scores == [0.0, 1.0, 2.0]
    (seen,) = _seen(folder)
    assert seen["inputs"][C.QUERIES]["shape"] == [1, 1] and MM.QUERY_IMAGES not in seen["inputs"]
    assert [[base64.b64decode(x) for x in row] for row in seen["inputs"][MM.DOCUMENT_IMAGES]["rows"]] == [
        [RED], [b""], [BLUE]]
    # N:N with images on both sides
    client.score("tiny/vl-echo", [{"content": [image_part(BLUE)]}, "q2"], ["d1", {"content": [image_part(RED)]}])
    (seen,) = _seen(folder)
    assert [[base64.b64decode(x) for x in row] for row in seen["inputs"][MM.QUERY_IMAGES]["rows"]] == [[BLUE], [b""]]
    assert [[base64.b64decode(x) for x in row] for row in seen["inputs"][MM.DOCUMENT_IMAGES]["rows"]] == [[b""], [RED]]
