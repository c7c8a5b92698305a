"""The image families through a real tritonserver, over tritonclient HTTP and gRPC (the ``client`` fixture).

The session server (``server_support.py``) serves the tiny ColQwen3 checkpoints in the TomoroAI, OpenSearch-AI and
NVIDIA layouts, the tiny ColQwen3.5 one (bidirectional contract) and the tiny Llama Nemotron VL embed and rerank
ones.  Every number is checked against ``references.colqwen_token_
embeddings``: transformers' own Qwen3-VL / Qwen3.5 model on the same weights, transformers' PIL image processor,
the checkpoint's tokenizer, the placeholder expanded in the test — nothing of trilate's.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import references
from server_support import COLQWEN3, COLQWEN3_NVIDIA, COLQWEN3_OPS, COLQWEN35, NEMOTRON_EMBED, NEMOTRON_RERANK
from tolerances import SCORE_ATOL, SCORE_RTOL, VECTOR_ATOL
from trilate.errors import InvalidInputError

pytestmark = pytest.mark.server

ONE_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# Which fixture each served name is, and whether its attention is bidirectional.
MODELS = {COLQWEN3: ("colqwen3_tomoro", False), COLQWEN3_OPS: ("colqwen3_opensearch", False),
          COLQWEN3_NVIDIA: ("colqwen3_nvidia", False), COLQWEN35: ("colqwen35", True)}


def page(width: int, height: int, seed: int) -> Image.Image:
    """A generated 'page': gradients plus noise, so every patch differs."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x * y) % 256], axis=-1)
    return Image.fromarray(np.clip(rgb + rng.randint(0, 40, (height, width, 3)), 0, 255).astype(np.uint8))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def image_doc(image: Image.Image, text: str = "Describe the image.") -> dict:
    return {"content": [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": text}]}


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q @ d.T).max(axis=1).sum())


@pytest.fixture(params=list(MODELS))
def served(request):
    fixture, bidirectional = MODELS[request.param]
    return request.param, request.getfixturevalue(fixture), bidirectional


PAGES = [page(70, 50, 1), page(33, 120, 2), page(128, 96, 3)]


def test_an_image_document_scores_as_maxsim_of_transformers_vectors(client, served):
    name, path, bidi = served
    query = "Retrieve the city of Beijing"
    q = references.colqwen_token_embeddings(path, query, bidirectional=bidi)
    docs = [image_doc(p) for p in PAGES[:2]] + ["The capital of France is Paris."]
    expected = [maxsim(q, references.colqwen_token_embeddings(path, ONE_IMAGE + "Describe the image.", [p],
                                                              bidirectional=bidi)) for p in PAGES[:2]]
    expected.append(maxsim(q, references.colqwen_token_embeddings(path, docs[2], bidirectional=bidi)))
    result = client.score(name, query, docs)
    assert [item.score for item in result.data] == pytest.approx(expected, rel=SCORE_RTOL, abs=SCORE_ATOL)


def test_chat_messages_with_an_image_give_transformers_token_vectors(client, served):
    name, path, bidi = served
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(PAGES[0])}},
                                              {"type": "text", "text": "Describe the image."}]}]
    out = client.pooling(name, messages=messages)
    prompt = f"<|im_start|>user\n{ONE_IMAGE}Describe the image.<|im_end|>\n"  # Qwen3-VL's template, rendered
    ref = references.colqwen_token_embeddings(path, prompt, [PAGES[0]], bidirectional=bidi)
    (got,) = out.data
    vectors = np.asarray(got.data, dtype=np.float32)
    assert vectors.shape == ref.shape
    np.testing.assert_allclose(vectors, ref, atol=VECTOR_ATOL)
    assert out.usage.prompt_tokens == ref.shape[0]  # the image's tokens are counted


def test_usage_counts_the_expanded_image_tokens(client):
    result = client.score(COLQWEN3, "a query", [image_doc(PAGES[2], "x")])
    image_tokens = (96 // 32) * (128 // 32)  # 128x96 is already a multiple of 32: one token per 32x32 block
    q = client.tokenize(COLQWEN3, "a query").count
    text = client.tokenize(COLQWEN3, "<|vision_start|><|vision_end|>x").count
    assert result.usage.prompt_tokens == q + 1 + text + image_tokens  # + the pad token vLLM counts per pair


def test_an_image_document_alone_equals_the_same_document_inside_a_batch(client):
    docs = [image_doc(PAGES[0]), "a text", image_doc(PAGES[1]), image_doc(PAGES[2], "third")]
    batched = [item.score for item in client.score(COLQWEN35, "find the chart", docs).data]
    alone = [client.score(COLQWEN35, "find the chart", [doc]).data[0].score for doc in docs]
    assert batched == pytest.approx(alone, rel=SCORE_RTOL, abs=SCORE_ATOL)


def test_text_and_image_requests_interleaved_on_one_server_equal_fresh_requests(client):
    calls = [(COLQWEN3, "q one", [image_doc(PAGES[0])]), (COLQWEN3, "q two", ["plain words"]),
             (COLQWEN35, "q three", [image_doc(PAGES[1]), "more words"]), (COLQWEN35, "q four", ["text only"])]
    fresh = [[i.score for i in client.score(*call).data] for call in calls]
    with ThreadPoolExecutor(max_workers=8) as pool:
        rounds = list(pool.map(lambda call: [i.score for i in client.score(*call).data], calls * 4))
    for k, got in enumerate(rounds):
        assert got == pytest.approx(fresh[k % len(calls)], rel=SCORE_RTOL, abs=SCORE_ATOL)


def _truncated_png() -> str:
    raw = png(PAGES[2])
    return "data:image/png;base64," + base64.b64encode(raw[: len(raw) // 2]).decode()


BAD_IMAGES = {
    "truncated_png": (_truncated_png(), "truncated"),
    "not_an_image": ("data:image/png;base64," + base64.b64encode(b"hello, not a picture").decode(), "not an image"),
    "http_not_allowed": ("http://127.0.0.1:9/page.png", "allowed"),
    "file_not_allowed": ("file:///etc/passwd", "allowed"),
}


@pytest.mark.parametrize("url, words", list(BAD_IMAGES.values()), ids=list(BAD_IMAGES))
def test_a_bad_image_is_a_clear_400_and_the_server_keeps_serving(client, url, words):
    doc = {"content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}]}
    with pytest.raises(InvalidInputError) as info:
        client.score(COLQWEN3, "q", ["fine", doc])
    assert words in str(info.value).lower(), str(info.value)
    assert len(client.score(COLQWEN3, "q", [image_doc(PAGES[0])]).data) == 1


def test_huge_image_dimensions_are_refused_before_decoding(client):
    # A PNG header that claims 50000 x 50000 pixels (2.5 GP): refused from the header alone.
    huge = Image.new("L", (50_000, 1))
    raw = png(huge)
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    forged = raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]
    doc = {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                  + base64.b64encode(forged).decode()}}]}
    with pytest.raises(InvalidInputError, match="pixels"):
        client.score(COLQWEN3, "q", [doc])
    assert len(client.score(COLQWEN3, "q", ["still serving"]).data) == 1


def test_images_on_a_text_model_are_refused_with_vllms_message(client):
    with pytest.raises(InvalidInputError, match="MultiModalParam is not supported"):
        client.score("tiny/stanford-colbert", "q", [image_doc(PAGES[0])])


# -- Llama Nemotron VL: embeddings (bi-encoder) and the cross-encoder reranker -----------------------------------
# References: references.NemotronReference (transformers' SiglipVisionModel + LlamaModel with a padding-only mask,
# NVIDIA's pixel shuffle and mlp1 written out) on the prompts the seed document and vllm_semantics §7 spell out.


@pytest.fixture(scope="module")
def embed_ref(nemotron_embed):
    return references.NemotronReference(nemotron_embed)


@pytest.fixture(scope="module")
def rerank_ref(nemotron_rerank):
    return references.NemotronReference(nemotron_rerank)


def nemotron_embedding(path, ref, prompt: str, images=()) -> tuple[np.ndarray, int]:
    """(L2-normalised pooled vector, prompt tokens) of one rendered prompt."""
    ids, mask, pixels = references.nemotron_inputs(path, [prompt], [list(images)], add_special_tokens=False)
    v = ref.pooled(ids, mask, pixels)[0]
    return (v / v.norm()).numpy(), int(mask.sum())


def test_nemotron_embeddings_of_query_and_image_document_messages(client, nemotron_embed, embed_ref):
    query = [{"role": "query", "content": [{"type": "text", "text": "What is machine learning?"}]}]
    document = [{"role": "document", "content": [{"type": "image_url", "image_url": {"url": data_url(PAGES[0])}},
                                                  {"type": "text", "text": "Describe the image."}]}]
    got_q = client.embed(NEMOTRON_EMBED, messages=query)
    got_d = client.embed(NEMOTRON_EMBED, messages=document)
    want_q, n_q = nemotron_embedding(nemotron_embed, embed_ref, "<|begin_of_text|>query: What is machine learning?")
    want_d, n_d = nemotron_embedding(nemotron_embed, embed_ref,
                                     "<|begin_of_text|>passage: <image> Describe the image.", [PAGES[0]])
    np.testing.assert_allclose(got_q.data[0].embedding, want_q, atol=VECTOR_ATOL)
    np.testing.assert_allclose(got_d.data[0].embedding, want_d, atol=VECTOR_ATOL)
    assert (got_q.usage.prompt_tokens, got_d.usage.prompt_tokens) == (n_q, n_d)  # the image's tokens counted


def test_nemotron_embed_template_refuses_two_messages_with_its_own_message(client):
    two = [{"role": "query", "content": "a"}, {"role": "document", "content": "b"}]
    with pytest.raises(InvalidInputError, match="one message at a time"):
        client.embed(NEMOTRON_EMBED, messages=two)


def test_nemotron_rerank_scores_are_sigmoids_of_the_reference_logits(client, nemotron_rerank, rerank_ref):
    q = "Find diagrams about autonomous robots"
    docs = [image_doc(PAGES[1], "Robotics workflow diagram."), "General skyline photo.",
            {"content": [{"type": "image_url", "image_url": {"url": data_url(PAGES[2])}}]}]
    prompts = [(f"<image> question:{q} \n \n passage:Robotics workflow diagram.", [PAGES[1]]),
               (f"question:{q} \n \n passage:General skyline photo.", []),
               (f"<image> question:{q} \n \n passage:", [PAGES[2]])]
    ids, mask, pixels = references.nemotron_inputs(nemotron_rerank, [p for p, _ in prompts], [i for _, i in prompts],
                                                   add_special_tokens=True)
    logits = rerank_ref.logits(ids, mask, pixels).numpy()
    got = client.score(NEMOTRON_RERANK, q, docs)
    assert [d.score for d in got.data] == pytest.approx(list(1 / (1 + np.exp(-logits))), rel=SCORE_RTOL, abs=SCORE_ATOL)
    raw = client.score(NEMOTRON_RERANK, q, docs, use_activation=False)
    assert [d.score for d in raw.data] == pytest.approx(list(logits), rel=SCORE_RTOL, abs=SCORE_ATOL)
    assert got.usage.prompt_tokens == int(mask.sum())  # the sum over pair prompts, image tokens included
    ranked = client.rerank(NEMOTRON_RERANK, q, docs, top_n=2)
    order = list(np.argsort(-logits, kind="stable")[:2])
    assert [r.index for r in ranked.results] == order
    assert ranked.results[0].document.multi_modal == (docs[order[0]]["content"] if order[0] != 1 else None)


def test_nemotron_rerank_pairs_n_to_n_and_alone_equal_in_a_batch(client):
    queries, docs = ["first question", "second question"], ["one passage", image_doc(PAGES[0], "two")]
    pairs = [d.score for d in client.score(NEMOTRON_RERANK, queries, docs).data]
    alone = [client.score(NEMOTRON_RERANK, q, [d]).data[0].score for q, d in zip(queries, docs)]
    assert pairs == pytest.approx(alone, rel=SCORE_RTOL, abs=SCORE_ATOL)


def test_nemotron_rerank_refuses_an_image_in_the_query_and_pooling(client):
    with pytest.raises(InvalidInputError, match="query holds an image"):
        client.score(NEMOTRON_RERANK, image_doc(PAGES[0]), ["a passage"])
    with pytest.raises(InvalidInputError, match="cross-encoder"):
        client.pooling(NEMOTRON_RERANK, "some text")
    assert len(client.score(NEMOTRON_RERANK, "q", ["still serving"]).data) == 1


def test_nemotron_embed_scores_texts_by_cosine_of_reference_embeddings(client, nemotron_embed, embed_ref):
    q, docs = "query: what is a robot", ["passage: a machine that acts", "passage: a kind of soup"]
    ids, mask, _ = references.nemotron_inputs(nemotron_embed, [q, *docs], [[], [], []], add_special_tokens=True)
    v = embed_ref.pooled(ids, mask)
    v = (v / v.norm(dim=-1, keepdim=True)).numpy()
    got = client.score(NEMOTRON_EMBED, q, docs)
    assert [d.score for d in got.data] == pytest.approx([float(v[0] @ v[1]), float(v[0] @ v[2])],
                                                        rel=SCORE_RTOL, abs=SCORE_ATOL)


# -- beyond vLLM: colpali-engine's query / document conventions (embedding_mode) ---------------------------------
# The prompts as colpali-engine 0.3.18's ColQwen3 processor writes them (test_colpali_modes.py checks our module
# against its source); the vectors from transformers, as above.


def test_colqwen_embedding_modes_are_colpali_engines_prompts(client, colqwen3_tomoro):
    query = client.pooling(COLQWEN3, "where is the chart", embedding_mode="query").data[0].data
    want = references.colqwen_token_embeddings(colqwen3_tomoro, "where is the chart" + "<|endoftext|>" * 10)
    np.testing.assert_allclose(query, want, atol=VECTOR_ATOL)
    page_doc = {"content": [{"type": "image_url", "image_url": {"url": data_url(PAGES[1])}}]}
    doc = client.pooling(COLQWEN3, page_doc, embedding_mode="document").data[0].data
    prompt = f"<|im_start|>user\n{ONE_IMAGE}Describe the image.<|im_end|><|endoftext|>"
    np.testing.assert_allclose(doc, references.colqwen_token_embeddings(colqwen3_tomoro, prompt, [PAGES[1]]),
                               atol=VECTOR_ATOL)
    with pytest.raises(InvalidInputError, match="a query .* is text"):
        client.pooling(COLQWEN3, page_doc, embedding_mode="query")
    with pytest.raises(InvalidInputError, match="embedding_mode"):
        client.pooling(NEMOTRON_EMBED, "x", embedding_mode="query")


def test_json_rows_with_a_lone_surrogate_are_refused_by_the_stage_itself(triton_server):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(triton_server.http_url)
    text = httpclient.InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b'{"text": "bad \\ud800 text"}']], dtype=object))
    with pytest.raises(Exception, match="lone surrogate"):
        c.infer("tiny--colqwen3.5", [text], parameters={"prompt_format": "json"})
    ok = httpclient.InferInput("text", [1, 1], "BYTES")
    ok.set_data_from_numpy(np.array([[b'{"text": "fine"}']], dtype=object))
    assert c.infer("tiny--colqwen3.5", [ok], parameters={"prompt_format": "json"}).as_numpy("num_tokens")[0, 0] > 0
