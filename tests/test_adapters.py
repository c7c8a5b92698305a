"""The Triton Python-backend adapters, driven through a strict fake ``pb_utils`` (``fake_pb_utils``).

Each adapter is loaded the way the stub loads it -- the generated ``<model>/1/model.py`` shim, by path --
and initialised with the ``args`` Triton passes (the model config as JSON).  One ``execute`` call carries
several requests, one of them bad: every request gets exactly one response, in order; the bad one an
INVALID_ARG error naming the problem; the others exactly what the pure cores compute.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

import fake_pb_utils
from python_backend_models import contract as C
from python_backend_models.config import parse_pbtxt
from python_backend_models.repository import ServeSpec, build_repository
from python_backend_models.scoring import cosine_batch, maxsim
from python_backend_models.tokenization import TextPreprocessor

COLBERT_OVERRIDES = {"architectures": ["HF_ColBERT"]}
STANFORD = "tiny--stanford-colbert"
PYLATE = "tiny--pylate-colbert"
MINILM = "sentence-transformers--all-MiniLM-L6-v2"
PREPROCESS_OUTPUTS = [C.INPUT_IDS, C.ATTENTION_MASK, C.OUTPUT_MASK, C.PROMPT_TOKENS]


@pytest.fixture(scope="module")
def pb():
    """``triton_python_backend_utils`` replaced by the fake while this module's adapters are imported and run."""
    with fake_pb_utils.installed() as module:
        yield module


@pytest.fixture(scope="module")
def repository(tmp_path_factory, stanford_colbert, pylate_colbert) -> Path:
    root = tmp_path_factory.mktemp("adapter_repository")
    build_repository([
        ServeSpec(),
        ServeSpec(model=str(stanford_colbert), served_name="tiny/stanford-colbert", colbert_score_modes=True),
        ServeSpec(model=str(pylate_colbert), served_name="tiny/pylate-colbert", hf_overrides=COLBERT_OVERRIDES),
    ], root)
    return root


def triton_args(repository: Path, name: str, config=None) -> dict[str, str]:
    """What Triton hands ``initialize``: the model config as JSON (proto field names) and the instance."""
    config = config or parse_pbtxt((repository / name / "config.pbtxt").read_text(encoding="utf-8"))
    return {
        "model_name": name,
        "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
        "model_instance_kind": "CPU",
        "model_instance_name": f"{name}_0",
        "model_instance_device_id": "0",
        "model_repository": str(repository / name),
        "model_version": "1",
    }


def load_adapter(pb, repository: Path, name: str):
    shim = repository / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"model_{name.replace('-', '_')}", shim)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(triton_args(repository, name))
    return model


@pytest.fixture(scope="module")
def adapters(pb, repository):
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_adapter(pb, repository, name)
        return cache[name]

    return get


def text_request(pb, texts, parameters=None, outputs=PREPROCESS_OUTPUTS):
    array = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
    return pb.InferenceRequest([pb.Tensor(C.TEXT, array)], requested_output_names=list(outputs),
                               parameters=parameters or {})


def encoder_request(pb, encoded, parameters=None, outputs=(C.TOKEN_EMBEDDINGS, C.NUM_TOKENS)):
    """An encoder request from a preprocess response or an ``Encoded`` batch."""
    if hasattr(encoded, "output_tensors"):
        tensors = {name: pb.get_output_tensor_by_name(encoded, name).as_numpy()
                   for name in (C.INPUT_IDS, C.ATTENTION_MASK, C.OUTPUT_MASK)}
    else:
        tensors = {C.INPUT_IDS: encoded.input_ids, C.ATTENTION_MASK: encoded.attention_mask,
                   C.OUTPUT_MASK: encoded.output_mask}
    return pb.InferenceRequest([pb.Tensor(k, v) for k, v in tensors.items()], requested_output_names=list(outputs),
                               parameters=parameters or {})


def output(pb, response, name: str) -> np.ndarray:
    tensor = pb.get_output_tensor_by_name(response, name)
    assert tensor is not None, f"response lacks {name!r}"
    return tensor.as_numpy()


def assert_ok(response) -> None:
    assert not response.has_error(), response.error().message()


def assert_invalid_arg(pb, response, phrase: str) -> None:
    assert response.has_error(), "the bad request must fail"
    assert response.error().code() == pb.TritonError.INVALID_ARG == 3
    assert phrase in response.error().message()
    assert response.output_tensors() == []


def core_preprocessor(adapter) -> TextPreprocessor:
    info = adapter.info
    return TextPreprocessor(Path(info.path), info.max_model_len, do_lower_case=info.do_lower_case,
                            colbert=info.family == "colbert")


def assert_preprocess_equals_core(pb, response, encoded) -> None:
    assert_ok(response)
    ids = output(pb, response, C.INPUT_IDS)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, encoded.input_ids)
    np.testing.assert_array_equal(output(pb, response, C.ATTENTION_MASK), encoded.attention_mask)
    mask = output(pb, response, C.OUTPUT_MASK)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, encoded.output_mask)
    prompt = output(pb, response, C.PROMPT_TOKENS)
    assert prompt.dtype == np.int32 and prompt.shape == (len(encoded.prompt_tokens), 1)
    np.testing.assert_array_equal(prompt[:, 0], encoded.prompt_tokens)


# --------------------------------------------------------------------------------------------------
# the fake itself
# --------------------------------------------------------------------------------------------------


def test_fake_refuses_what_triton_refuses(pb):
    with pytest.raises(TypeError):
        pb.Tensor("x", [1, 2, 3])  # not a numpy array
    with pytest.raises(TypeError):
        pb.Tensor("x", np.array(["unicode"]))  # numpy "<U" has no Triton type; strings travel as object/bytes_
    with pytest.raises(TypeError):
        pb.Tensor("x", np.zeros(2, np.complex64))
    with pytest.raises(TypeError):
        pb.InferenceResponse(output_tensors=[np.zeros(2)])
    with pytest.raises(TypeError):
        pb.InferenceRequest([], parameters={"nested": {"a": 1}})
    request = pb.InferenceRequest([pb.Tensor("x", np.zeros(2, np.float32))], parameters={"k": 1})
    assert json.loads(request.parameters()) == {"k": 1}
    assert pb.get_input_tensor_by_name(request, "missing") is None


# --------------------------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------------------------

BAD_PREPROCESS = {
    "empty_string": (["fine", ""], {}, "input 1 is an empty string"),
    "truncate_not_int": (["fine"], {C.PARAM_TRUNCATE_PROMPT_TOKENS: "abc"},
                         "truncate_prompt_tokens must be an integer"),
    "truncate_zero": (["fine"], {C.PARAM_TRUNCATE_PROMPT_TOKENS: 0}, "truncate_prompt_tokens must be -1 or at least 1"),
    "unknown_mode": (["fine"], {C.PARAM_EMBEDDING_MODE: "passage"}, "embedding_mode must be one of"),
    "truncation_side": (["fine"], {C.PARAM_TRUNCATION_SIDE: "middle"}, "truncation_side must be 'left' or 'right'"),
    "special_tokens_not_bool": (["fine"], {C.PARAM_ADD_SPECIAL_TOKENS: "maybe"},
                                "add_special_tokens must be a boolean"),
    "too_long": ([" ".join(["word"] * 600)], {}, "This model's maximum context length is 512 tokens"),
}


@pytest.mark.parametrize("bad", list(BAD_PREPROCESS), ids=list(BAD_PREPROCESS))
def test_preprocess_answers_every_request_and_fails_only_the_bad_one(pb, adapters, bad):
    adapter = adapters(STANFORD + "__preprocess")
    core = core_preprocessor(adapter)
    bad_texts, bad_params, phrase = BAD_PREPROCESS[bad]
    good_first = ["What is late interaction?", "hello"]
    good_last = ["The cat sat on the mat.", "Ünïcödé café"]
    requests = [
        text_request(pb, good_first),
        text_request(pb, bad_texts, bad_params),
        text_request(pb, good_last, {C.PARAM_EMBEDDING_MODE: "document"}),
    ]
    responses = adapter.execute(requests)
    assert len(responses) == len(requests)
    assert_preprocess_equals_core(pb, responses[0], core.encode(good_first))
    assert_invalid_arg(pb, responses[1], phrase)
    assert_preprocess_equals_core(pb, responses[2], core.encode(good_last, mode="document"))


def test_preprocess_applies_each_requests_own_parameters(pb, adapters):
    adapter = adapters(STANFORD + "__preprocess")
    core = core_preprocessor(adapter)
    text = " ".join(f"w{i}" for i in range(30))
    params = [{}, {C.PARAM_EMBEDDING_MODE: "query"}, {C.PARAM_TRUNCATE_PROMPT_TOKENS: 5},
              {C.PARAM_TRUNCATE_PROMPT_TOKENS: "4", C.PARAM_TRUNCATION_SIDE: "left"},
              {C.PARAM_ADD_SPECIAL_TOKENS: False}]
    responses = adapter.execute([text_request(pb, [text], p) for p in params])
    expected = [core.encode([text]), core.encode([text], mode="query"), core.encode([text], truncate_prompt_tokens=5),
                core.encode([text], truncate_prompt_tokens=4, truncation_side="left"),
                core.encode([text], add_special_tokens=False)]
    assert len(responses) == len(expected)
    for response, encoded in zip(responses, expected):
        assert_preprocess_equals_core(pb, response, encoded)


def test_preprocess_stage_with_a_fixed_mode_encodes_that_mode(pb, adapters):
    adapter = adapters(STANFORD + "__preprocess_query")
    core = core_preprocessor(adapter)
    (response,) = adapter.execute([text_request(pb, ["hello", "cats"])])
    assert_preprocess_equals_core(pb, response, core.encode(["hello", "cats"], mode="query"))


def test_preprocess_returns_token_strings_only_when_asked(pb, adapters):
    adapter = adapters(MINILM + "__preprocess")
    plain, with_strs = adapter.execute([
        text_request(pb, ["hello world", "a"]),
        text_request(pb, ["hello world", "a"], outputs=PREPROCESS_OUTPUTS + [C.TOKEN_STRS]),
    ])
    assert pb.get_output_tensor_by_name(plain, C.TOKEN_STRS) is None
    strs = output(pb, with_strs, C.TOKEN_STRS)
    assert strs.tolist() == [[b"[CLS]", b"hello", b"world", b"[SEP]"], [b"[CLS]", b"a", b"[SEP]", b""]]


# --------------------------------------------------------------------------------------------------
# encoder
# --------------------------------------------------------------------------------------------------


def core_token_embeddings(adapter, encoded, normalize=True) -> list[np.ndarray]:
    items = [(encoded.input_ids[i], encoded.attention_mask[i], encoded.output_mask[i])
             for i in range(len(encoded.prompt_tokens))]
    outs = adapter.encoder.encode(items, normalize=[normalize] * len(items))
    return [o.token_embeddings for o in outs]


def assert_encoder_equals_core(pb, response, expected: list[np.ndarray], dim: int) -> None:
    assert_ok(response)
    emb = output(pb, response, C.TOKEN_EMBEDDINGS)
    counts = output(pb, response, C.NUM_TOKENS)
    assert emb.dtype == np.float32 and counts.dtype == np.int32
    assert emb.shape == (len(expected), max(e.shape[0] for e in expected), dim)
    assert counts[:, 0].tolist() == [e.shape[0] for e in expected]
    for i, vectors in enumerate(expected):
        np.testing.assert_allclose(emb[i, : vectors.shape[0]], vectors, atol=1e-5)
        assert not emb[i, vectors.shape[0]:].any(), "rows past num_tokens are zero"


def _short_output_mask(tensors):
    tensors[C.OUTPUT_MASK] = tensors[C.OUTPUT_MASK][:, :-1]


def _no_live_tokens(tensors):
    """A row the encoder would have to run with nothing attended (as a hand-written request may send)."""
    tensors[C.ATTENTION_MASK] = np.zeros_like(tensors[C.ATTENTION_MASK])
    tensors[C.OUTPUT_MASK] = np.zeros_like(tensors[C.OUTPUT_MASK])


BAD_ENCODER = {
    "use_activation_not_bool": ({C.PARAM_USE_ACTIVATION: "maybe"}, None, "use_activation must be a boolean"),
    "shape_mismatch": ({}, _short_output_mask, "must have the same 2-D shape"),
    "no_live_tokens": ({}, _no_live_tokens, "row 0 has no token to encode"),
}


@pytest.mark.parametrize("bad", list(BAD_ENCODER), ids=list(BAD_ENCODER))
def test_encoder_encodes_a_batch_of_requests_in_one_forward_pass_and_fails_only_the_bad_one(pb, adapters, bad):
    preprocess = adapters(STANFORD + "__preprocess")
    encoder = adapters(STANFORD + "__encoder")
    first, second = preprocess.execute([
        text_request(pb, ["What is late interaction?", "hello"]),
        text_request(pb, ["The cat sat on the mat.", "a b c", "Ünïcödé café"], {C.PARAM_EMBEDDING_MODE: "query"}),
    ])
    core = core_preprocessor(preprocess)
    bad_params, breaker, phrase = BAD_ENCODER[bad]
    bad_request = encoder_request(pb, core.encode(["bad request"]), bad_params)
    if breaker is not None:
        tensors = {t.name(): t.as_numpy().copy() for t in bad_request.inputs()}
        breaker(tensors)
        bad_request = pb.InferenceRequest([pb.Tensor(k, v) for k, v in tensors.items()])
    requests = [encoder_request(pb, first), bad_request, encoder_request(pb, second)]
    before = encoder.encoder.forward_passes
    responses = encoder.execute(requests)
    assert encoder.encoder.forward_passes - before == 1, "the good requests share one forward pass"
    assert len(responses) == len(requests)
    assert_invalid_arg(pb, responses[1], phrase)
    dim = encoder.info.dim
    assert_encoder_equals_core(pb, responses[0], core_token_embeddings(encoder, core.encode(
        ["What is late interaction?", "hello"])), dim)
    assert_encoder_equals_core(pb, responses[2], core_token_embeddings(encoder, core.encode(
        ["The cat sat on the mat.", "a b c", "Ünïcödé café"], mode="query")), dim)


def test_encoder_missing_input_fails_only_that_request(pb, adapters):
    encoder = adapters(STANFORD + "__encoder")
    core = core_preprocessor(adapters(STANFORD + "__preprocess"))
    good = encoder_request(pb, core.encode(["hello"]))
    missing = pb.InferenceRequest([t for t in good.inputs() if t.name() != C.OUTPUT_MASK])
    responses = encoder.execute([missing, good])
    assert_invalid_arg(pb, responses[0], "missing input tensor 'output_mask'")
    assert_encoder_equals_core(pb, responses[1], core_token_embeddings(encoder, core.encode(["hello"])),
                               encoder.info.dim)


def test_encoder_normalises_per_request_inside_one_batch(pb, adapters):
    encoder = adapters(PYLATE + "__encoder")
    core = core_preprocessor(adapters(PYLATE + "__preprocess"))
    encoded = core.encode(["hello there", "general kenobi"])
    normalised, raw = encoder.execute([
        encoder_request(pb, encoded),
        encoder_request(pb, encoded, {C.PARAM_USE_ACTIVATION: False}),
    ])
    assert_encoder_equals_core(pb, normalised, core_token_embeddings(encoder, encoded), encoder.info.dim)
    assert_encoder_equals_core(pb, raw, core_token_embeddings(encoder, encoded, normalize=False), encoder.info.dim)
    norms = np.linalg.norm(output(pb, raw, C.TOKEN_EMBEDDINGS)[0, :4], axis=1)
    assert not np.allclose(norms, 1.0)


def test_bi_encoder_returns_pooled_embeddings_equal_to_the_core(pb, adapters):
    encoder = adapters(MINILM + "__encoder")
    core = core_preprocessor(adapters(MINILM + "__preprocess"))
    texts = ["What is machine learning?", "Machine learning is a field of AI.", "The cat sat on the mat."]
    encoded = core.encode(texts)
    (response,) = encoder.execute([encoder_request(pb, encoded, outputs=(C.TOKEN_EMBEDDINGS, C.NUM_TOKENS,
                                                                          C.EMBEDDINGS))])
    assert_ok(response)
    pooled = output(pb, response, C.EMBEDDINGS)
    items = [(encoded.input_ids[i], encoded.attention_mask[i], encoded.output_mask[i]) for i in range(len(texts))]
    expected = np.stack([o.embedding for o in encoder.encoder.encode(items, want_pooled=True)])
    assert pooled.dtype == np.float32 and pooled.shape == (3, 384)
    np.testing.assert_allclose(pooled, expected, atol=1e-6)
    assert_encoder_equals_core(pb, response, core_token_embeddings(encoder, encoded), 384)


def test_encoder_runs_only_the_heads_a_request_reads(pb, adapters, monkeypatch):
    """The embed ensemble maps every encoder output; the ``outputs`` parameter says what the caller reads."""
    encoder = adapters(MINILM + "__encoder")
    core = core_preprocessor(adapters(MINILM + "__preprocess"))
    encoded = core.encode(["What is machine learning?", "The cat sat on the mat."])
    seen = []
    heads = encoder.encoder.heads
    monkeypatch.setattr(encoder.encoder, "heads", lambda pack, wanted: seen.append(wanted) or heads(pack, wanted))
    mapped = (C.TOKEN_EMBEDDINGS, C.NUM_TOKENS, C.EMBEDDINGS)
    dense = encoder_request(pb, encoded, {C.PARAM_OUTPUTS: f"{C.EMBEDDINGS},{C.PROMPT_TOKENS}"}, outputs=mapped)
    (response,) = encoder.execute([dense])
    assert_ok(response)
    assert [(w.tokens, w.pooled) for w in seen] == [(False, True)], "a dense request computes no token vectors"
    assert output(pb, response, C.TOKEN_EMBEDDINGS).shape == (2, 0, 384)
    items = [(encoded.input_ids[i], encoded.attention_mask[i], encoded.output_mask[i]) for i in range(2)]
    expected = np.stack([o.embedding for o in encoder.encoder.encode(items, want_tokens=False, want_pooled=True)])
    np.testing.assert_allclose(output(pb, response, C.EMBEDDINGS), expected, atol=1e-6)
    # In one dynamic batch with a token request, each request still gets only what it reads.
    tokens = encoder_request(pb, encoded, {C.PARAM_OUTPUTS: f"{C.TOKEN_EMBEDDINGS},{C.NUM_TOKENS}"}, outputs=mapped)
    first, second = encoder.execute([dense, tokens])
    assert output(pb, first, C.TOKEN_EMBEDDINGS).shape == (2, 0, 384)
    assert not output(pb, second, C.EMBEDDINGS).any()
    assert_encoder_equals_core(pb, second, core_token_embeddings(encoder, encoded), 384)


def test_encoder_out_of_vocabulary_ids_fail_only_their_request(pb, adapters):
    encoder = adapters(STANFORD + "__encoder")
    core = core_preprocessor(adapters(STANFORD + "__preprocess"))
    good = core.encode(["hello"])
    bad = core.encode(["hello"])
    bad.input_ids[0, 1] = 10**6
    responses = encoder.execute([encoder_request(pb, good), encoder_request(pb, bad)])
    assert_encoder_equals_core(pb, responses[0], core_token_embeddings(encoder, good), encoder.info.dim)
    assert_invalid_arg(pb, responses[1], "token id")


def test_initialize_failure_raises_triton_model_exception_naming_the_model(pb, repository, tmp_path):
    name = STANFORD + "__encoder"
    config = parse_pbtxt((repository / name / "config.pbtxt").read_text(encoding="utf-8"))
    card = json.loads(config.parameters["model_card"].string_value)
    card["path"] = str(tmp_path / "missing")
    config.parameters["model_card"].string_value = json.dumps(card)
    from python_backend_models.triton.encoder import EncoderModel  # bound to the fake by the pb fixture

    with pytest.raises(pb.TritonModelException, match=name):
        EncoderModel().initialize(triton_args(repository, name, config))


def test_a_repository_moved_with_its_checkpoints_still_loads(pb, tmp_path, stanford_colbert):
    """The configs hold checkpoint paths relative to the repository (a container image moves both)."""
    import shutil

    built = tmp_path / "built"
    shutil.copytree(stanford_colbert, built / "checkpoints" / "colbert")
    build_repository([ServeSpec(model=str(built / "checkpoints" / "colbert"), served_name="tiny/stanford-colbert")],
                     built / "repo")
    for config in (built / "repo").glob("*/config.pbtxt"):
        text = config.read_text(encoding="utf-8")
        assert str(tmp_path) not in text and str(stanford_colbert) not in text, config
    moved = tmp_path / "elsewhere" / "deeper"
    moved.parent.mkdir()
    shutil.move(str(built), str(moved))
    preprocess = load_adapter(pb, moved / "repo", STANFORD + "__preprocess")
    encoder = load_adapter(pb, moved / "repo", STANFORD + "__encoder")
    assert Path(encoder.info.path) == (moved / "checkpoints" / "colbert").resolve()
    (encoded,) = preprocess.execute([text_request(pb, ["hello there"])])
    (response,) = encoder.execute([encoder_request(pb, encoded)])
    assert_encoder_equals_core(pb, response, core_token_embeddings(encoder, core_preprocessor(preprocess).encode(
        ["hello there"])), encoder.info.dim)


# --------------------------------------------------------------------------------------------------
# MaxSim / cosine
# --------------------------------------------------------------------------------------------------


def padded(vectors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(v.shape[0] for v in vectors)
    out = np.zeros((len(vectors), width, vectors[0].shape[1]), dtype=np.float32)
    for i, v in enumerate(vectors):
        out[i, : v.shape[0]] = v
    return out, np.array([[v.shape[0]] for v in vectors], dtype=np.int32)


def maxsim_request(pb, queries: list[np.ndarray], documents: list[np.ndarray]):
    q, qn = padded(queries)
    d, dn = padded(documents)
    return pb.InferenceRequest([pb.Tensor(C.QUERY_TOKEN_EMBEDDINGS, q), pb.Tensor(C.QUERY_NUM_TOKENS, qn),
                                pb.Tensor(C.DOCUMENT_TOKEN_EMBEDDINGS, d), pb.Tensor(C.DOCUMENT_NUM_TOKENS, dn)],
                               requested_output_names=[C.SCORES])


@pytest.fixture(scope="module")
def colbert_vectors(pb, adapters):
    """Token vectors of 3 queries and 3 documents from the preprocess + encoder adapters (PyLate modes)."""
    preprocess = adapters(PYLATE + "__preprocess")
    encoder = adapters(PYLATE + "__encoder")
    sides = {}
    for mode, texts in (("query", ["late interaction", "cats", "what is maxsim?"]),
                        ("document", ["The cat sat on the mat.", "Late interaction scores tokens.", "Unrelated."])):
        (pre,) = preprocess.execute([text_request(pb, texts, {C.PARAM_EMBEDDING_MODE: mode})])
        (enc,) = encoder.execute([encoder_request(pb, pre)])
        emb, counts = output(pb, enc, C.TOKEN_EMBEDDINGS), output(pb, enc, C.NUM_TOKENS)[:, 0]
        sides[mode] = [emb[i, :n] for i, n in enumerate(counts)]
    return sides["query"], sides["document"]


def test_maxsim_one_query_against_n_documents(pb, adapters, colbert_vectors):
    queries, documents = colbert_vectors
    (response,) = adapters(C.MAXSIM_MODEL).execute([maxsim_request(pb, queries[:1], documents)])
    assert_ok(response)
    scores = output(pb, response, C.SCORES)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, [maxsim(queries[0], d) for d in documents], rtol=1e-6)


def test_maxsim_n_queries_zipped_with_n_documents(pb, adapters, colbert_vectors):
    queries, documents = colbert_vectors
    (response,) = adapters(C.MAXSIM_MODEL).execute([maxsim_request(pb, queries, documents)])
    assert_ok(response)
    np.testing.assert_allclose(output(pb, response, C.SCORES), [maxsim(q, d) for q, d in zip(queries, documents)],
                               rtol=1e-6)


def test_maxsim_one_to_n_equals_n_separate_one_to_one_calls(pb, adapters, colbert_vectors):
    queries, documents = colbert_vectors
    maxsim_model = adapters(C.MAXSIM_MODEL)
    (together,) = maxsim_model.execute([maxsim_request(pb, queries[:1], documents)])
    alone = maxsim_model.execute([maxsim_request(pb, queries[:1], [d]) for d in documents])
    np.testing.assert_array_equal(output(pb, together, C.SCORES), [output(pb, r, C.SCORES)[0] for r in alone])


def test_maxsim_pairing_error_fails_only_its_request(pb, adapters, colbert_vectors):
    queries, documents = colbert_vectors
    responses = adapters(C.MAXSIM_MODEL).execute([
        maxsim_request(pb, queries[:1], documents),
        maxsim_request(pb, queries[:2], documents),  # 2 queries, 3 documents
        maxsim_request(pb, queries, documents),
    ])
    assert len(responses) == 3
    assert_ok(responses[0])
    assert_invalid_arg(pb, responses[1], "Input lengths must be either 1:1, 1:N or N:N")
    np.testing.assert_allclose(output(pb, responses[2], C.SCORES),
                               [maxsim(q, d) for q, d in zip(queries, documents)], rtol=1e-6)


def test_maxsim_without_documents_names_the_missing_side(pb, adapters, colbert_vectors):
    queries, _ = colbert_vectors
    q, qn = padded(queries[:1])
    request = pb.InferenceRequest([pb.Tensor(C.QUERY_TOKEN_EMBEDDINGS, q), pb.Tensor(C.QUERY_NUM_TOKENS, qn),
                                   pb.Tensor(C.DOCUMENT_TOKEN_EMBEDDINGS, np.zeros((0, 0, 16), np.float32)),
                                   pb.Tensor(C.DOCUMENT_NUM_TOKENS, np.zeros((0, 1), np.int32))])
    (response,) = adapters(C.MAXSIM_MODEL).execute([request])
    assert_invalid_arg(pb, response, "At least one text_pair element must be given")


def test_cosine_one_to_n_equals_cosine_of_the_embeddings(pb, adapters):
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(1, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    request = pb.InferenceRequest([pb.Tensor(C.QUERY_EMBEDDINGS, q), pb.Tensor(C.DOCUMENT_EMBEDDINGS, d)])
    (response,) = adapters(C.COSINE_MODEL).execute([request])
    expected = (d @ q[0]) / (np.linalg.norm(d, axis=1) * np.linalg.norm(q[0]))
    np.testing.assert_allclose(output(pb, response, C.SCORES), expected, rtol=1e-5)
    np.testing.assert_allclose(cosine_batch(q, d), expected, rtol=1e-5)
