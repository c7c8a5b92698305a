"""Vectors from our preprocess + encoder cores against independent references, fp32 on the CPU.

* vLLM's mode vs vLLM's own test method (HF ``BertModel`` + projection + per-token L2);
* ColBERT query / document modes vs PyLate's semantics (sentence-transformers 6.2 ``MultiVectorEncoder``);
* the real all-MiniLM-L6-v2 vs sentence-transformers and the known answer of DESIGN.md fact 3;
* batch invariance of the packed encoder, and what ``describe()`` reads from a checkpoint.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import references
import tiny_checkpoints
from python_backend_models.checkpoint import CheckpointError, open_checkpoint
from python_backend_models.families import load_encoder
from python_backend_models.registry import ARCHITECTURES, describe, safetensors_shapes
from python_backend_models.scoring import maxsim, maxsim_batch
from python_backend_models.tokenization import TextPreprocessor

ATOL = 1e-5
COLBERT_OVERRIDES = {"architectures": ["HF_ColBERT"]}  # a PyLate folder's config.json says BertModel
COLBERT_CHECKPOINTS = ["stanford_colbert", "pylate_colbert", "pylate_colbert_no_expansion", "pylate_colbert_attend"]

TEXTS = [
    "hello",
    "What is late interaction?",
    "The cat sat on the mat.",
    "Hello, world! (Punctuation: $5.00; 100%...) [x] {y} -- isn't it?",
    "Ünïcödé café — naïve 日本語 😀!",
    " ".join(f"word{i}" for i in range(70)),  # long: past query_length, within document_length
    " ".join(f"document token{i}." for i in range(60)),  # past document_length
]
QUERIES = ["What is late interaction?", "cats on mats", " ".join(f"query word{i}" for i in range(40))]
DOCUMENTS = TEXTS[1:]

# sentence-transformers on all-MiniLM-L6-v2, "What is machine learning?" (DESIGN.md fact 3, oracles.md section 4).
MINILM_KNOWN_FIRST5 = [-0.01995452307164669, 0.009878049604594707, 0.010249604471027851, 0.02955368161201477,
                       0.0271864403039217]
MINILM_KNOWN_IDS = [101, 2054, 2003, 3698, 4083, 1029, 102]


class Stack:
    """describe() + TextPreprocessor + encoder for one checkpoint, as the serving stages build them."""

    def __init__(self, path: Path, overrides: dict | None, backend: str = "torch"):
        self.info = describe(open_checkpoint(path, overrides), path.name, hf_overrides=overrides)
        self.preprocessor = TextPreprocessor(
            path, self.info.max_model_len, do_lower_case=self.info.do_lower_case, colbert=self.info.family == "colbert"
        )
        self.encoder = load_encoder(self.info)
        # The served default on CPU for BERT backbones is ONNX Runtime (``auto``); tests name the backend.
        assert self.encoder.use_backend(backend) == backend

    def items(self, texts, mode=None):
        enc = self.preprocessor.encode(texts, mode=mode)
        return [(enc.input_ids[i], enc.attention_mask[i], enc.output_mask[i]) for i in range(len(texts))]

    def token_embeddings(self, texts, mode=None) -> list[np.ndarray]:
        return [out.token_embeddings for out in self.encoder.encode(self.items(texts, mode))]


@functools.cache
def _stack(path: str, overrides_key: tuple, backend: str) -> Stack:
    return Stack(Path(path), dict(overrides_key) if overrides_key else None, backend)


def stack_for(request, checkpoint: str, backend: str = "torch") -> Stack:
    path = request.getfixturevalue(checkpoint)
    overrides = COLBERT_OVERRIDES if checkpoint.startswith("pylate") else None
    return _stack(str(path), tuple(sorted((k, tuple(v)) for k, v in (overrides or {}).items())), backend)


# Both backbone runtimes of a BERT checkpoint (families.onnx_backbone): each against the same references.
BACKENDS = pytest.mark.parametrize("backend", ["torch", "onnx"])


def assert_vectors_equal(ours: list[np.ndarray], reference: list[np.ndarray], atol: float = ATOL) -> None:
    assert len(ours) == len(reference)
    for i, (a, b) in enumerate(zip(ours, reference)):
        assert a.dtype == np.float32
        assert a.shape == b.shape, f"item {i}: {a.shape} vectors, reference {b.shape}"
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        assert diff <= atol, f"item {i}: max abs diff {diff:.3g}"


def reference_maxsim(q: np.ndarray, d: np.ndarray) -> float:
    """sum over query tokens of the best document token (float64, independent of scoring.py)."""
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum())


# --------------------------------------------------------------------------------------------------
# (a) vLLM's mode vs HF_ColBERT (vLLM's own test method)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["stanford_colbert", "pylate_colbert"])
@BACKENDS
def test_vllm_mode_token_embeddings_equal_hf_colbert_reference(request, checkpoint, backend):
    stack = stack_for(request, checkpoint, backend)
    ours = stack.token_embeddings(TEXTS)
    reference = references.hf_colbert_token_embeddings(request.getfixturevalue(checkpoint), TEXTS)
    assert_vectors_equal(ours, reference)


def test_stanford_and_pylate_layouts_hold_different_weights(request):
    # Guards the parity tests against comparing a layout with itself.
    a = stack_for(request, "stanford_colbert").token_embeddings(["hello"])[0]
    b = stack_for(request, "pylate_colbert").token_embeddings(["hello"])[0]
    assert a.shape == b.shape and np.abs(a - b).max() > 0.1


# --------------------------------------------------------------------------------------------------
# (b) query / document modes vs PyLate
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", COLBERT_CHECKPOINTS)
@BACKENDS
def test_query_mode_equals_pylate_per_token(request, checkpoint, backend):
    stack = stack_for(request, checkpoint, backend)
    path = request.getfixturevalue(checkpoint)
    assert_vectors_equal(stack.token_embeddings(TEXTS, "query"), references.pylate_encode(path, TEXTS, is_query=True))


@pytest.mark.parametrize("checkpoint", COLBERT_CHECKPOINTS)
@BACKENDS
def test_document_mode_equals_pylate_per_token(request, checkpoint, backend):
    stack = stack_for(request, checkpoint, backend)
    path = request.getfixturevalue(checkpoint)
    assert_vectors_equal(
        stack.token_embeddings(TEXTS, "document"), references.pylate_encode(path, TEXTS, is_query=False)
    )


def test_expansion_vectors_differ_when_expansion_tokens_are_attended(request):
    # attend_to_expansion_tokens changes the real tokens' context too, so the two variants must disagree.
    default = stack_for(request, "pylate_colbert").token_embeddings(["hello"], "query")[0]
    attend = stack_for(request, "pylate_colbert_attend").token_embeddings(["hello"], "query")[0]
    assert default.shape == attend.shape == (32, 16)
    assert np.abs(default - attend).max() > 1e-3


# --------------------------------------------------------------------------------------------------
# (c) MaxSim from our vectors vs the same formula over the reference vectors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", COLBERT_CHECKPOINTS)
def test_maxsim_per_pair_equals_maxsim_over_pylate_vectors(request, checkpoint):
    stack = stack_for(request, checkpoint)
    path = request.getfixturevalue(checkpoint)
    q_ours = stack.token_embeddings(QUERIES, "query")
    d_ours = stack.token_embeddings(DOCUMENTS, "document")
    q_ref = references.pylate_encode(path, QUERIES, is_query=True)
    d_ref = references.pylate_encode(path, DOCUMENTS, is_query=False)
    for i in range(len(QUERIES)):
        for j in range(len(DOCUMENTS)):
            expected = reference_maxsim(q_ref[i], d_ref[j])
            assert maxsim(q_ours[i], d_ours[j]) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("checkpoint", ["stanford_colbert", "pylate_colbert"])
def test_maxsim_per_pair_equals_maxsim_over_hf_colbert_vectors(request, checkpoint):
    stack = stack_for(request, checkpoint)
    path = request.getfixturevalue(checkpoint)
    q_ours, d_ours = stack.token_embeddings(QUERIES), stack.token_embeddings(DOCUMENTS)
    q_ref = references.hf_colbert_token_embeddings(path, QUERIES)
    d_ref = references.hf_colbert_token_embeddings(path, DOCUMENTS)
    for i in range(len(QUERIES)):
        for j in range(len(DOCUMENTS)):
            assert maxsim(q_ours[i], d_ours[j]) == pytest.approx(reference_maxsim(q_ref[i], d_ref[j]), rel=1e-4)


def pad(vectors: list[np.ndarray], fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    width = max(v.shape[0] for v in vectors)
    out = np.full((len(vectors), width, vectors[0].shape[1]), fill, dtype=np.float32)
    for i, v in enumerate(vectors):
        out[i, : v.shape[0]] = v
    return out, np.array([[v.shape[0]] for v in vectors], dtype=np.int32)


def test_padded_maxsim_batch_equals_per_pair_maxsim_one_to_n_and_n_to_n(request):
    stack = stack_for(request, "pylate_colbert")
    queries = stack.token_embeddings(QUERIES, "query")
    documents = stack.token_embeddings(DOCUMENTS[:3], "document")
    d_emb, d_n = pad(documents, fill=np.nan)  # padding must never be read
    q_emb, q_n = pad(queries[:1], fill=np.nan)
    one_to_n = maxsim_batch(q_emb, q_n, d_emb, d_n)
    assert one_to_n.dtype == np.float32
    np.testing.assert_allclose(one_to_n, [reference_maxsim(queries[0], d) for d in documents], rtol=1e-5)
    q_emb, q_n = pad(queries, fill=np.nan)
    n_to_n = maxsim_batch(q_emb, q_n, d_emb, d_n)
    np.testing.assert_allclose(n_to_n, [reference_maxsim(q, d) for q, d in zip(queries, documents)], rtol=1e-5)


def test_maxsim_is_not_raised_by_zero_padding_when_all_similarities_are_negative():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    d = np.array([[-1.0, 0.0], [-0.5, 0.0]], dtype=np.float32)
    d_emb = np.zeros((1, 5, 2), dtype=np.float32)
    d_emb[0, :2] = d
    score = maxsim_batch(q[None], np.array([[1]]), d_emb, np.array([[2]]))
    assert score.tolist() == [-0.5]


# --------------------------------------------------------------------------------------------------
# (d) the real all-MiniLM-L6-v2
# --------------------------------------------------------------------------------------------------

MINILM_TEXTS = ["What is machine learning?", "Machine learning is a field of AI.", "The cat sat on the mat.",
                "Ünïcödé café — naïve 日本語 😀!", " ".join(["word"] * 200)]


@BACKENDS
def test_minilm_pooled_embeddings_equal_sentence_transformers(request, minilm_path, backend):
    stack = stack_for(request, "minilm_path", backend)
    outputs = stack.encoder.encode(stack.items(MINILM_TEXTS), want_tokens=False, want_pooled=True)
    ours = np.stack([out.embedding for out in outputs])
    reference = references.st_mean_pooled(minilm_path, MINILM_TEXTS)
    assert ours.shape == reference.shape == (len(MINILM_TEXTS), 384)
    cosines = (ours * reference).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosines.min() >= 0.99999
    np.testing.assert_allclose(ours, reference, atol=ATOL)


@BACKENDS
def test_minilm_known_answer(request, backend):
    stack = stack_for(request, "minilm_path", backend)
    encoded = stack.preprocessor.encode(["What is machine learning?"])
    assert encoded.input_ids[0, : encoded.prompt_tokens[0]].tolist() == MINILM_KNOWN_IDS
    (out,) = stack.encoder.encode(stack.items(["What is machine learning?"]), want_pooled=True)
    assert out.embedding.shape == (384,)
    assert np.linalg.norm(out.embedding) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out.embedding[:5], MINILM_KNOWN_FIRST5, atol=1e-6)


def test_minilm_token_embeddings_are_unit_norm_one_per_token(request):
    stack = stack_for(request, "minilm_path")
    outputs = stack.encoder.encode(stack.items(MINILM_TEXTS), want_tokens=True, want_pooled=False)
    for text, out in zip(MINILM_TEXTS, outputs):
        n_tokens = len(stack.preprocessor.encode([text]).tokens[0])
        assert out.token_embeddings.shape == (n_tokens, 384)
        np.testing.assert_allclose(np.linalg.norm(out.token_embeddings, axis=1), 1.0, atol=1e-5)
        assert out.embedding is None


def test_minilm_unnormalised_pooled_vector_is_the_masked_mean(request, minilm_path):
    stack = stack_for(request, "minilm_path")
    (out,) = stack.encoder.encode(stack.items(["What is machine learning?"]), want_pooled=True, normalize=[False])
    reference = references.st_mean_pooled(minilm_path, ["What is machine learning?"])[0]
    assert np.linalg.norm(out.embedding) != pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(out.embedding / np.linalg.norm(out.embedding), reference, atol=ATOL)


# --------------------------------------------------------------------------------------------------
# (e) batch invariance
# --------------------------------------------------------------------------------------------------


def mixed_items(stack: Stack) -> list:
    """Items of very different lengths and all three modes (queries carry attention-0 expansion tokens)."""
    return (
        stack.items(TEXTS[:3] + TEXTS[5:])
        + stack.items(["hello", TEXTS[5]], "query")
        + stack.items([TEXTS[3], TEXTS[6]], "document")
    )


@pytest.mark.parametrize("checkpoint", ["stanford_colbert", "pylate_colbert", "pylate_colbert_attend"])
@pytest.mark.parametrize("max_batch_tokens", [16384, 200], ids=["one_pack", "several_packs"])
@BACKENDS
def test_item_encoded_alone_equals_item_inside_a_mixed_length_batch(request, monkeypatch, checkpoint,
                                                                    max_batch_tokens, backend):
    stack = stack_for(request, checkpoint, backend)
    items = mixed_items(stack)
    alone = [stack.encoder.encode([item])[0].token_embeddings for item in items]
    monkeypatch.setattr(stack.encoder, "max_batch_tokens", max_batch_tokens)
    if max_batch_tokens == 16384:  # a pass so costly that packing puts every length in one padded pack
        monkeypatch.setattr(stack.encoder, "pass_cost_tokens", 10**9)
    before = stack.encoder.forward_passes
    batched = [out.token_embeddings for out in stack.encoder.encode(items)]
    passes = stack.encoder.forward_passes - before
    if max_batch_tokens == 16384:
        assert passes == 1
    else:
        assert 1 < passes < len(items)
    assert_vectors_equal(batched, alone)


@pytest.mark.parametrize("max_batch_tokens", [16384, 24], ids=["one_pack", "several_packs"])
@BACKENDS
def test_minilm_pooled_alone_equals_pooled_inside_a_batch(request, monkeypatch, max_batch_tokens, backend):
    stack = stack_for(request, "minilm_path", backend)
    items = stack.items(MINILM_TEXTS)
    alone = [stack.encoder.encode([item], want_pooled=True)[0] for item in items]
    monkeypatch.setattr(stack.encoder, "max_batch_tokens", max_batch_tokens)
    if max_batch_tokens == 16384:  # a pass so costly that packing puts every length in one padded pack
        monkeypatch.setattr(stack.encoder, "pass_cost_tokens", 10**9)
    before = stack.encoder.forward_passes
    batched = stack.encoder.encode(items, want_pooled=True)
    assert (stack.encoder.forward_passes - before > 1) == (max_batch_tokens == 24)
    assert_vectors_equal([b.embedding for b in batched], [a.embedding for a in alone])
    assert_vectors_equal([b.token_embeddings for b in batched], [a.token_embeddings for a in alone])


def test_batch_results_come_back_in_input_order(request):
    stack = stack_for(request, "stanford_colbert")
    items = stack.items(["a b c d e f g h", "a", "a b c"])
    lengths = [out.token_embeddings.shape[0] for out in stack.encoder.encode(items)]
    assert lengths == [10, 3, 5]


# --------------------------------------------------------------------------------------------------
# (f) describe()
# --------------------------------------------------------------------------------------------------


def clone_checkpoint(source: Path, target: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """``target`` with symlinks to every top-level entry of ``source`` except ``skip`` (to be replaced)."""
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name not in skip:
            os.symlink(entry, target / entry.name)
    return target


def test_colbert_dim_is_read_from_the_projection_weight_shape(tmp_path, stanford_colbert, pylate_colbert):
    path = tiny_checkpoints.write_stanford_colbert(tmp_path / "dim8", dim=8)
    assert describe(open_checkpoint(path), "x").dim == 8
    assert safetensors_shapes(stanford_colbert / "model.safetensors")["linear.weight"] == [16, 32]
    info = describe(open_checkpoint(stanford_colbert), "x")
    assert (info.dim, info.hidden_size, info.projection[0].weight_key) == (16, 32, "linear.weight")
    info = describe(open_checkpoint(pylate_colbert, COLBERT_OVERRIDES), "x", hf_overrides=COLBERT_OVERRIDES)
    assert (info.dim, info.projection[0].file) == (16, "1_Dense/model.safetensors")


def test_bi_encoder_dim_is_the_hidden_size_without_dense_modules(minilm_path):
    info = describe(open_checkpoint(minilm_path), "m")
    assert (info.dim, info.pooled, info.pooling, info.max_model_len) == (384, True, "mean", 256)


def test_pylate_layout_is_colbert_only_with_the_architectures_override(pylate_colbert):
    plain = describe(open_checkpoint(pylate_colbert), "p")
    assert (plain.architecture, plain.family) == ("BertModel", "bi_encoder")
    colbert = describe(open_checkpoint(pylate_colbert, COLBERT_OVERRIDES), "p", hf_overrides=COLBERT_OVERRIDES)
    assert (colbert.architecture, colbert.family, colbert.embedding_modes) == ("HF_ColBERT", "colbert", True)


@pytest.mark.parametrize("field", ["colbert_dim", "dim", "projection_dim"])
def test_colbert_dim_mismatch_error_names_the_hf_overrides_fix(tmp_path, stanford_colbert, field):
    import json

    path = clone_checkpoint(stanford_colbert, tmp_path / "ckpt", skip=("config.json",))
    config = json.loads((stanford_colbert / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, field: 8}))
    with pytest.raises(CheckpointError) as excinfo:
        describe(open_checkpoint(path), "x")
    message = str(excinfo.value)
    assert "8" in message and "16" in message
    assert """--hf-overrides '{"colbert_dim": 16}'""" in message
    if field == "colbert_dim":  # the suggested fix works
        assert describe(open_checkpoint(path, {"colbert_dim": 16}), "x").dim == 16


def test_unknown_architecture_error_lists_the_known_ones(stanford_colbert):
    with pytest.raises(CheckpointError) as excinfo:
        describe(open_checkpoint(stanford_colbert, {"architectures": ["FancyColBERT"]}), "x")
    message = str(excinfo.value)
    assert "'FancyColBERT'" in message and "--hf-overrides" in message
    for name in ARCHITECTURES:
        assert name in message


def write_bin_only(source: Path, target: Path) -> Path:
    """``source`` with ``model.safetensors`` replaced by a pickled ``pytorch_model.bin`` of the same tensors."""
    from safetensors.torch import load_file

    clone_checkpoint(source, target, skip=("model.safetensors",))
    torch.save(load_file(str(source / "model.safetensors")), target / "pytorch_model.bin")
    return target


def test_bin_only_bi_encoder_weights_are_refused_naming_safetensors(tmp_path, minilm_path):
    path = write_bin_only(minilm_path, tmp_path / "bin_only")
    with pytest.raises(CheckpointError) as excinfo:
        load_encoder(describe(open_checkpoint(path), "m"))
    assert ".bin" in str(excinfo.value) and "safetensors" in str(excinfo.value)


def test_bin_only_colbert_weights_are_refused_naming_the_bin_file(tmp_path, stanford_colbert):
    path = write_bin_only(stanford_colbert, tmp_path / "bin_only")
    with pytest.raises(CheckpointError, match=r"\.bin"):
        load_encoder(describe(open_checkpoint(path), "s"))


def test_max_model_len_defaults_to_sentence_transformers_and_stops_at_the_position_table(minilm_path):
    assert describe(open_checkpoint(minilm_path), "m").max_model_len == 256  # max_seq_length
    assert describe(open_checkpoint(minilm_path), "m", max_model_len=128).max_model_len == 128
    assert describe(open_checkpoint(minilm_path), "m", max_model_len=512).max_model_len == 512
    with pytest.raises(CheckpointError, match="512"):
        describe(open_checkpoint(minilm_path), "m", max_model_len=513)
