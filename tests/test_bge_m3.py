"""BGE-M3: dense, sparse and multi-vector outputs from one deployment, against FlagEmbedding
(``BGEM3FlagModel(path, use_fp16=False, devices="cpu")``) and vLLM's own pairing procedure."""

from __future__ import annotations

import numpy as np
import pytest
import references
from server_support import BGE_M3

from python_backend_models import contract as C

pytestmark = pytest.mark.server

TEXTS = ["What is BGE M3?", "Definition of BM25", "hello world, the cat sat on the mat.", "the cat is on the mat"]
PAIRS = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3]), (TEXTS[3], TEXTS[0])]


@pytest.fixture(scope="module")
def flag(bge_m3):
    return references.flag_m3_encode(bge_m3, TEXTS)


def test_dense_vectors_equal_flagembedding(client, flag):
    ours = client.embed(BGE_M3, TEXTS).matrix()
    assert np.abs(ours - flag["dense"]).max() <= 1e-5
    pooled = np.stack([i.data for i in client.pooling(BGE_M3, TEXTS, task="embed").data])
    assert np.abs(pooled - flag["dense"]).max() <= 1e-5


def test_multi_vectors_equal_flagembedding_without_the_bos_row(client, flag):
    ours = client.token_embed(BGE_M3, TEXTS)
    for text, a, b in zip(TEXTS, ours, flag["colbert"]):
        assert a.shape == b.shape == (client.tokenize(BGE_M3, text).count - 1, 16)
        assert np.abs(a - b).max() <= 1e-5


def test_lexical_weights_equal_flagembedding_with_token_strings(client, flag):
    ours = client.lexical_weights(BGE_M3, TEXTS)
    for text, sparse, expected in zip(TEXTS, ours, flag["lexical"]):
        got = sparse.as_dict()
        assert expected, "the fixture should give informative (non-empty) lexical weights"
        assert set(got) == set(expected)
        assert max(abs(got[k] - expected[k]) for k in expected) <= 1e-5
        tok = client.tokenize(BGE_M3, text, return_token_strs=True)
        strings = dict(zip(tok.tokens, tok.token_strs))
        assert sparse.tokens == [strings[t] for t in sparse.token_ids]


def test_vllms_pairing_procedure_on_token_classify_reproduces_the_aggregated_weights(client):
    """vLLM's test: /tokenize, /pooling token_classify, drop a leading BOS id, zip, max per id."""
    raw = client.pooling(BGE_M3, TEXTS, task="token_classify").data
    ours = client.lexical_weights(BGE_M3, TEXTS)
    for text, item, aggregated in zip(TEXTS, raw, ours):
        ids = client.tokenize(BGE_M3, text).tokens
        assert item.data.shape == (len(ids) - 2,)  # BOS and EOS positions dropped
        if ids[0] == 0:
            ids = ids[1:]
        paired: dict[int, float] = {}
        for tid, w in zip(ids, item.data):
            paired[tid] = max(paired.get(tid, 0.0), float(w))
        # vLLM's procedure keeps zeros and specials; FlagEmbedding's rule drops them.
        paired = {t: w for t, w in paired.items() if w > 0 and t not in (0, 1, 2, 3)}
        assert paired == pytest.approx(aggregated.as_dict(), abs=1e-6)


def test_embed_and_token_classify_is_dense_then_sparse(client):
    both = client.pooling(BGE_M3, TEXTS[:2], task="embed&token_classify").data
    dense = client.embed(BGE_M3, TEXTS[:2]).matrix()
    sparse = client.pooling(BGE_M3, TEXTS[:2], task="token_classify").data
    for i in range(2):
        np.testing.assert_allclose(both[i].data, np.concatenate([dense[i], sparse[i].data]), atol=1e-6)


@pytest.mark.parametrize("mode", ["dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"])
def test_scores_equal_flagembedding_compute_score(client, bge_m3, mode):
    weights = (0.4, 0.2, 0.4)
    expected = references.flag_m3_scores(bge_m3, PAIRS, weights=weights)[mode]
    got = client.score(BGE_M3, [q for q, _ in PAIRS], [p for _, p in PAIRS], score_mode=mode,
                       score_weights=weights).scores
    assert got == pytest.approx(expected, abs=1e-5)


def test_default_score_is_the_cosine_of_dense_vectors_as_in_vllm(client, flag):
    got = client.score(BGE_M3, TEXTS[0], TEXTS[1:]).scores
    dense = flag["dense"]
    assert got == pytest.approx(list(dense[1:] @ dense[0]), abs=1e-5)
    ranked = client.rerank(BGE_M3, TEXTS[0], TEXTS[1:], score_mode="colbert")
    colbert = client.score(BGE_M3, TEXTS[0], TEXTS[1:], score_mode="colbert").scores
    assert [r.index for r in ranked.results] == sorted(range(3), key=lambda i: -colbert[i])


def test_all_three_heads_cost_one_backbone_forward_pass(triton_server):
    import tritonclient.grpc as grpc

    raw = grpc.InferenceServerClient(triton_server.grpc_url)
    encoder = BGE_M3.replace("/", "--") + "__encoder"

    def count():
        stats = raw.get_inference_statistics(encoder, as_json=True)["model_stats"][0]
        return int(stats.get("execution_count", 0)), int(stats.get("inference_count", 0))

    before = count()
    arr = np.array([[t.encode()] for t in TEXTS], dtype=object)
    inp = grpc.InferInput(C.TEXT, list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    names = [C.EMBEDDINGS, C.TOKEN_EMBEDDINGS, C.NUM_TOKENS, C.SPARSE_WEIGHTS, C.LEXICAL_IDS, C.LEXICAL_WEIGHTS]
    result = raw.infer(BGE_M3.replace("/", "--"), [inp], outputs=[grpc.InferRequestedOutput(n) for n in names])
    after = count()
    assert all(result.as_numpy(n) is not None for n in names)
    assert after[0] - before[0] == 1, "the encoder ran more than once for one request"
    assert after[1] - before[1] == len(TEXTS)


def test_bad_score_mode_and_weights_are_refused(client):
    from trilate import InvalidInputError

    with pytest.raises(InvalidInputError, match="score_mode"):
        client.score(BGE_M3, TEXTS[0], TEXTS[1], score_mode="bm25")
    with pytest.raises(InvalidInputError, match="score_weights"):
        client.score(BGE_M3, TEXTS[0], TEXTS[1], score_mode="sparse+dense", score_weights=(1, 2))
    with pytest.raises(InvalidInputError, match="BGE-M3"):
        client.score("tiny/stanford-colbert", TEXTS[0], TEXTS[1], score_mode="sparse")
