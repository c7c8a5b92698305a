"""Through a real tritonserver, over HTTP and gRPC (the ``client`` fixture runs each test on both)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import references
from server_support import (
    BGE_M3, COLBERTS, COLQWEN3, COLQWEN3_NVIDIA, COLQWEN3_OPS, COLQWEN35, DEFAULT, JINA, NEMOTRON_EMBED, NEMOTRON_RERANK, ODD,
    PROBE, PYLATE, PYLATE_VLLM, STANFORD,
)
from tolerances import SCORE_ATOL, SCORE_RTOL
from trilate import InvalidInputError, ModelNotFoundError, UnsupportedTaskError

pytestmark = pytest.mark.server

QUERY = "What is machine learning?"
DOCS = [
    "Machine learning is a subset of artificial intelligence.",
    "Python is a programming language.",
    "Deep learning uses neural networks, which learn from data!",
    "The cat sat on the mat.",
]


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q @ d.T).max(axis=1).sum())


# -- models and the default model -----------------------------------------------------------------

def test_server_lists_every_served_model_with_its_tasks(client):
    cards = {c.served_name: c for c in client.models()}
    images = {COLQWEN3, COLQWEN3_OPS, COLQWEN3_NVIDIA, COLQWEN35, NEMOTRON_EMBED, NEMOTRON_RERANK}
    assert set(cards) == {DEFAULT, PYLATE, BGE_M3, ODD, *COLBERTS, *images}
    assert all(cards[m].multimodal for m in images) and not any(cards[m].multimodal for m in set(cards) - images)
    assert [m for m in cards if cards[m].cross_encoder] == [NEMOTRON_RERANK]
    for served, (_, _, architecture) in COLBERTS.items():
        assert cards[served].architecture == architecture and cards[served].score_type == "late-interaction"
    assert cards[DEFAULT].tasks == ("embed", "token_embed") and cards[DEFAULT].score_type == "bi-encoder"
    assert cards[STANFORD].tasks == ("token_embed",) and cards[STANFORD].score_type == "late-interaction"
    assert cards[DEFAULT].dim == 384 and cards[STANFORD].dim == 16


def test_default_model_through_server_equals_sentence_transformers(client, minilm_path):
    texts = ["What is machine learning?", "Machine learning is a field of AI.", "The cat sat on the mat.",
             "Ünïcödé text, with punctuation!?"]
    ours = client.embed(DEFAULT, texts).matrix()
    ref = references.st_mean_pooled(minilm_path, texts)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999
    known = [-0.0199545, 0.0098780, 0.0102496, 0.0295537, 0.0271864]
    np.testing.assert_allclose(ours[0, :5], known, atol=1e-6)
    tok = client.tokenize(DEFAULT, "What is machine learning?")
    assert tok.tokens == [101, 2054, 2003, 3698, 4083, 1029, 102] and tok.count == 7


def test_default_model_scores_are_cosines_of_embeddings(client):
    emb = client.embed(DEFAULT, [QUERY] + DOCS).matrix()
    scores = client.score(DEFAULT, QUERY, DOCS).scores
    np.testing.assert_allclose(scores, emb[1:] @ emb[0], atol=1e-5)
    token = client.pooling(DEFAULT, QUERY, task="token_embed").data[0].data
    np.testing.assert_allclose(np.linalg.norm(token, axis=1), 1.0, atol=1e-5)


# -- ColBERT token embeddings and MaxSim ----------------------------------------------------------

@pytest.mark.parametrize("served", list(COLBERTS))
def test_token_embeddings_have_every_token_and_unit_norm(client, served):
    result = client.pooling(served, [QUERY, DOCS[0]], task="token_embed")
    for item, text in zip(result.data, [QUERY, DOCS[0]]):
        n = client.tokenize(served, text).count
        assert item.data.shape == (n, 16)
        np.testing.assert_allclose(np.linalg.norm(item.data, axis=1), 1.0, atol=1e-5)
    assert result.usage.prompt_tokens == sum(client.tokenize(served, t).count for t in [QUERY, DOCS[0]])


@pytest.mark.parametrize("served", list(COLBERTS))
def test_token_embeddings_equal_hf_backbone_plus_projection(client, served, request):
    path = request.getfixturevalue(COLBERTS[served][0])
    ours = client.token_embed(served, DOCS)
    ref = references.hf_backbone_colbert_token_embeddings(path, DOCS)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("served", list(COLBERTS))
def test_scores_one_to_one_one_to_many_and_n_to_n_equal_maxsim_of_token_embeddings(client, served):
    q_vecs = client.token_embed(served, [QUERY, DOCS[1]])
    d_vecs = client.token_embed(served, DOCS)
    one = client.score(served, QUERY, DOCS[0]).scores
    assert one == pytest.approx([maxsim(q_vecs[0], d_vecs[0])], rel=1e-4)
    many = client.score(served, QUERY, DOCS).scores
    assert many == pytest.approx([maxsim(q_vecs[0], d) for d in d_vecs], rel=1e-4)
    zipped = client.score(served, [QUERY, DOCS[1]], DOCS[:2]).scores
    assert zipped == pytest.approx([maxsim(q_vecs[0], d_vecs[0]), maxsim(q_vecs[1], d_vecs[1])], rel=1e-4)


def test_matryoshka_dimensions_on_jina_slice_then_normalise(client):
    full = client.token_embed(JINA, DOCS[:2], use_activation=False)
    small = client.token_embed(JINA, DOCS[:2], dimensions=8)
    for f, s in zip(full, small):
        assert s.shape == (f.shape[0], 8)
        np.testing.assert_allclose(s, f[:, :8] / np.linalg.norm(f[:, :8], axis=1, keepdims=True), atol=1e-6)
    q8 = client.token_embed(JINA, QUERY, dimensions=8)[0]
    assert client.score(JINA, QUERY, DOCS[:2], dimensions=8).scores == pytest.approx(
        [maxsim(q8, d) for d in small], rel=1e-4)
    with pytest.raises(InvalidInputError, match=r"only supports \[16, 8\]"):
        client.token_embed(JINA, QUERY, dimensions=12)
    with pytest.raises(InvalidInputError, match="does not support matryoshka"):
        client.token_embed(STANFORD, QUERY, dimensions=8)


def test_dimensions_on_a_model_that_is_not_matryoshka_is_refused_even_at_its_own_size(client):
    """vLLM refuses any `dimensions` on such a model ("does not support matryoshka representation")."""
    for model, size in ((STANFORD, 16), (DEFAULT, 384)):
        with pytest.raises(InvalidInputError, match="does not support matryoshka representation"):
            client.pooling(model, QUERY, dimensions=size)
    with pytest.raises(InvalidInputError, match="does not support matryoshka representation"):
        client.embed(DEFAULT, QUERY, dimensions=384)
    assert client.token_embed(JINA, QUERY, dimensions=16)[0].shape[1] == 16  # matryoshka: its own size is fine


def test_a_served_name_with_double_underscores_is_served(client, pylate_colbert_prefix_not_a_token):
    """Triton names are one-to-one with served names, so "__" in a served name cannot pass for a stage."""
    card = client.model(ODD)
    assert "__" not in card.triton_name and card.served_name == ODD
    vectors = client.token_embed(ODD, DOCS[:2])
    reference = references.hf_colbert_token_embeddings(pylate_colbert_prefix_not_a_token, DOCS[:2])
    for ours, ref in zip(vectors, reference):
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    query = client.token_embed(ODD, QUERY)[0]
    assert client.score(ODD, QUERY, DOCS[:2]).scores == pytest.approx([maxsim(query, v) for v in vectors], rel=1e-4)


def test_a_colbert_prefix_that_is_not_a_token_disables_only_embedding_mode(client):
    """vLLM serves such a checkpoint (its encoding never uses the prefix); PyLate's modes answer why not."""
    assert client.token_embed(ODD, QUERY)[0].shape[1] == 16
    for mode in ("query", "document"):
        with pytest.raises(InvalidInputError, match=r"embedding_mode .* not available .*'\[QX\] ' is not a token"):
            client.pooling(ODD, QUERY, embedding_mode=mode)


def test_a_row_without_live_tokens_gets_its_own_invalid_arg_and_the_encoder_keeps_serving(triton_server):
    """Sent straight to the encoder (as any tritonclient user may), beside a good request of the same batch."""
    import tritonclient.http as http
    from python_backend_models import contract as C

    from tritonclient.utils import InferenceServerException

    triton = http.InferenceServerClient(triton_server.http_url, concurrency=2)
    name = C.stage_name(C.triton_name(STANFORD), "encoder")

    def request(ids, attention, output):
        tensors = []
        for tensor_name, array in ((C.INPUT_IDS, ids), (C.ATTENTION_MASK, attention), (C.OUTPUT_MASK, output)):
            tensor = http.InferInput(tensor_name, list(array.shape), "BOOL" if array.dtype == bool else "INT64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return triton.async_infer(name, tensors, outputs=[http.InferRequestedOutput(C.TOKEN_EMBEDDINGS)])

    good_ids = np.array([[101, 2054, 2003, 102]], dtype=np.int64)
    ones = np.ones_like(good_ids)
    dead = np.zeros_like(good_ids)
    # Both in flight at once: with the test server's queue delay they meet in one dynamic batch.
    bad = request(good_ids, dead, dead.astype(bool))
    good = request(good_ids, ones, ones.astype(bool))
    vectors = good.get_result().as_numpy(C.TOKEN_EMBEDDINGS)
    assert vectors.shape == (1, 4, 16) and np.isfinite(vectors).all()
    with pytest.raises(InferenceServerException) as info:
        bad.get_result()
    assert info.value.status() == "400" and "no token to encode" in info.value.message()


def test_fake_pb_utils_matches_the_real_stub(triton_server):
    """The adapter tests run on ``fake_pb_utils``; its error codes must be those of the stub tritonserver runs."""
    import json

    import fake_pb_utils
    import tritonclient.http as http

    triton = http.InferenceServerClient(triton_server.http_url)
    x = http.InferInput("x", [1], "INT32")
    x.set_data_from_numpy(np.zeros(1, np.int32))
    report = json.loads(triton.infer(PROBE, [x]).as_numpy("report")[0])
    with fake_pb_utils.installed() as fake:
        fake_codes = {name: getattr(fake.TritonError, name) for name in report["codes"]}
        fake_error = fake.TritonError("probe", fake.TritonError.INVALID_ARG)
        assert [fake_error.message(), fake_error.code()] == report["error"]
    assert len(report["codes"]) == 8 and fake_codes == report["codes"]


def test_one_to_many_equals_separate_one_to_one_calls(client):
    many = client.score(STANFORD, QUERY, DOCS).scores
    singles = [client.score(STANFORD, QUERY, d).scores[0] for d in DOCS]
    assert many == pytest.approx(singles, rel=SCORE_RTOL, abs=SCORE_ATOL)


def test_item_alone_equals_item_inside_a_batch(client):
    alone = client.token_embed(STANFORD, DOCS[2])[0]
    batch = client.token_embed(STANFORD, [DOCS[3], "x " * 50, DOCS[2], DOCS[0]])[2]
    assert alone.shape == batch.shape
    assert np.abs(alone - batch).max() <= 1e-5


@pytest.mark.parametrize("served", list(COLBERTS))
def test_rerank_is_score_order_and_honours_top_n(client, served):
    scores = client.score(served, QUERY, DOCS).scores
    ranked = client.rerank(served, QUERY, DOCS)
    assert [r.index for r in ranked.results] == sorted(range(len(DOCS)), key=lambda i: -scores[i])
    assert [r.document.text for r in ranked.results] == [DOCS[r.index] for r in ranked.results]
    top = client.rerank(served, QUERY, DOCS, top_n=2)
    assert [r.index for r in top.results] == [r.index for r in ranked.results[:2]]
    assert top.usage == ranked.usage
    assert len(client.rerank(served, QUERY, DOCS, top_n=0).results) == len(DOCS)


def test_score_usage_counts_query_pad_and_document_per_pair(client):
    q = client.tokenize(STANFORD, QUERY).count
    d = [client.tokenize(STANFORD, x).count for x in DOCS[:2]]
    usage = client.score(STANFORD, QUERY, DOCS[:2]).usage
    assert usage.prompt_tokens == usage.total_tokens == sum(q + 1 + n for n in d)


def test_more_documents_than_one_triton_batch_are_scored_in_order(client):
    docs = [f"document number {i} about learning" for i in range(300)]
    scores = client.score(STANFORD, QUERY, docs).scores
    assert len(scores) == 300
    assert scores[299] == pytest.approx(client.score(STANFORD, QUERY, docs[299]).scores[0], rel=SCORE_RTOL,
                                        abs=SCORE_ATOL)


# -- query/document modes (PyLate conventions) -----------------------------------------------------

@pytest.mark.parametrize("served", list(COLBERTS))
def test_query_and_document_modes_equal_pylate(client, served, request):
    reference = request.getfixturevalue(COLBERTS[served][1])
    for is_query, mode, texts in ((True, "query", [QUERY, "hello"]), (False, "document", DOCS)):
        ours = client.token_embed(served, texts, embedding_mode=mode)
        ref = references.pylate_encode(reference, texts, is_query=is_query)
        for a, b in zip(ours, ref):
            assert a.shape == b.shape
            assert np.abs(a - b).max() <= 1e-5


def test_colbert_score_modes_encode_queries_and_documents_as_pylate_does(client, pylate_colbert):
    q = references.pylate_encode(pylate_colbert, [QUERY], is_query=True)[0]
    d = references.pylate_encode(pylate_colbert, DOCS, is_query=False)
    expected = [maxsim(q, x) for x in d]
    assert client.score(PYLATE, QUERY, DOCS).scores == pytest.approx(expected, rel=1e-4)
    # The same checkpoint served without the option keeps vLLM's symmetric encoding.
    vllm = client.score(PYLATE_VLLM, QUERY, DOCS).scores
    assert vllm != pytest.approx(expected, rel=1e-3)


# -- concurrency -----------------------------------------------------------------------------------

def test_concurrent_requests_from_many_threads_each_get_their_own_result(triton_server, client):
    texts = [f"request {i}: " + " ".join(["learning"] * (i % 7 + 1)) for i in range(48)]
    expected = {t: client.token_embed(STANFORD, t)[0] for t in texts}

    def call(text):
        return text, client.token_embed(STANFORD, text)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, texts * 2))
    for text, got in results:
        assert got.shape == expected[text].shape
        assert np.abs(got - expected[text]).max() <= 1e-5


# -- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, words", [
    (lambda c: c.score(STANFORD, QUERY, []), InvalidInputError, "text_pair"),
    (lambda c: c.rerank(STANFORD, QUERY, []), InvalidInputError, "text_pair"),
    (lambda c: c.score(STANFORD, "", DOCS), InvalidInputError, "empty string"),
    (lambda c: c.pooling(STANFORD, ["fine", ""]), InvalidInputError, "empty string"),
    (lambda c: c.score("no/such-model", QUERY, DOCS), ModelNotFoundError, "does not exist"),
    (lambda c: c.score(STANFORD, [QUERY, QUERY], DOCS[:3]), InvalidInputError, "1:1, 1:N or N:N"),
    (lambda c: c.embed(STANFORD, QUERY), UnsupportedTaskError, "Unsupported task: 'embed'"),
    (lambda c: c.pooling(STANFORD, QUERY, task="classify"), UnsupportedTaskError, "Unsupported task"),
    (lambda c: c.pooling(STANFORD, "word " * 600), InvalidInputError, "maximum context length is 512 tokens"),
    (lambda c: c.pooling(DEFAULT, QUERY, embedding_mode="query"), InvalidInputError, "embedding_mode"),
    (lambda c: c.pooling(PYLATE, QUERY, embedding_mode="both"), InvalidInputError, "embedding_mode"),
    (lambda c: c.pooling(STANFORD, QUERY, truncate_prompt_tokens=10_000), InvalidInputError, "max_model_len"),
])
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, call, error, words):
    with pytest.raises(error) as info:
        call(client)
    assert words in str(info.value)
    assert client.score(STANFORD, QUERY, DOCS[0]).scores[0] > -1e9


def test_bad_input_checked_by_the_server_itself(triton_server, client):
    """Bypass the client's own checks: the stages refuse bad tensors with INVALID_ARG (HTTP 400)."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    raw = http.InferenceServerClient(triton_server.http_url)
    for texts in ([b""], [b"\xff\xfe"]):
        arr = np.array([[t] for t in texts], dtype=object)
        inp = http.InferInput("text", list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        with pytest.raises(InferenceServerException) as info:
            raw.infer(STANFORD.replace("/", "--"), [inp])
        assert info.value.status() == "400"


def test_one_bad_request_in_a_dynamic_batch_does_not_fail_the_others(triton_server):
    """Six requests, one of them an empty string, sent at once; repeated until the server's statistics
    show they shared a dynamic batch (on a busy machine a round may arrive spread out)."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    name = STANFORD.replace("/", "--")
    raw = http.InferenceServerClient(triton_server.http_url, concurrency=6)

    def counts():
        stats = raw.get_inference_statistics(name + "__preprocess")["model_stats"][0]
        return stats["execution_count"], stats["inference_count"] + stats["inference_stats"]["fail"]["count"]

    shared = False
    for _round in range(5):
        before = counts()
        pending = []
        for i in range(6):
            arr = np.array([[b"" if i == 3 else f"good request {i}".encode()]], dtype=object)
            inp = http.InferInput("text", [1, 1], "BYTES")
            inp.set_data_from_numpy(arr)
            pending.append(raw.async_infer(name, [inp]))
        for i, request in enumerate(pending):
            if i == 3:
                with pytest.raises(InferenceServerException, match="empty string"):
                    request.get_result()
            else:
                assert request.get_result().as_numpy("num_tokens")[0, 0] == 5  # [CLS] good request i [SEP]
        after = counts()
        if after[0] - before[0] < after[1] - before[1]:
            shared = True
            break
    assert shared, "the six requests never shared a dynamic batch"
