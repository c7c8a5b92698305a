"""ColBERT on ModernBERT, Jina XLM-RoBERTa and LFM2: the cores against independent references, long
inputs, and the registry's coverage of the seed document."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import references

from python_backend_models.checkpoint import CheckpointError, open_checkpoint
from python_backend_models.families import load_encoder
from python_backend_models.registry import ARCHITECTURES, describe
from python_backend_models.tokenization import InputError, TextPreprocessor

TEXTS = ["What is machine learning?", "hello", "Machine learning is a field of AI, which learns from data!",
         "The cat sat on the mat."]

# checkpoint fixture, architecture override, fixture holding the same weights in a layout the oracles load
BACKBONES = {
    "modernbert": ("modernbert_colbert", "ColBERTModernBertModel", "modernbert_colbert"),
    "jina": ("jina_colbert", "ColBERTJinaRobertaModel", "jina_colbert_twin"),
    "lfm2": ("lfm2_colbert", "ColBERTLfm2Model", "lfm2_colbert"),
}


def _load(path: Path, architecture: str, max_model_len: int | None = None, **overrides):
    hf = {"architectures": [architecture], **overrides}
    info = describe(open_checkpoint(path, hf), "m", hf_overrides=hf, max_model_len=max_model_len)
    return info, TextPreprocessor(path, info.max_model_len, do_lower_case=info.do_lower_case, colbert=True), load_encoder(info)


@pytest.fixture(scope="module")
def loaded(request):
    cache = {}

    def get(name):
        if name not in cache:
            fixture, architecture, twin = BACKBONES[name]
            path = request.getfixturevalue(fixture)
            cache[name] = (path, request.getfixturevalue(twin), *_load(path, architecture))
        return cache[name]

    return get


def _encode(pre, enc, texts, mode=None, **kwargs):
    e = pre.encode(texts, mode=mode)
    items = [(e.input_ids[i], e.attention_mask[i], e.output_mask[i]) for i in range(len(texts))]
    return [o.token_embeddings for o in enc.encode(items, **kwargs)]


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_token_embeddings_equal_hf_backbone_plus_projection(loaded, backbone):
    path, _, info, pre, enc = loaded(backbone)
    ours = _encode(pre, enc, TEXTS)
    ref = references.hf_backbone_colbert_token_embeddings(path, TEXTS)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5


def test_jina_backbone_equals_an_independent_reimplementation_of_its_math(loaded):
    """Our rotary XLM-R (fp32) against the float64 reference written from the checkpoint spec."""
    path, _, info, pre, enc = loaded("jina")
    e = pre.encode(TEXTS)
    import torch

    hidden = references.jina_xlmr_reference_hidden(path, TEXTS)
    for i, h in enumerate(hidden):
        n = int(e.prompt_tokens[i])
        ids = torch.from_numpy(e.input_ids[i : i + 1, :n])
        ours = enc.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        assert np.abs(ours.detach().numpy() - np.asarray(h, dtype=np.float32)).max() <= 1e-4


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("mode", ["query", "document"])
def test_query_and_document_modes_equal_pylate(loaded, backbone, mode):
    path, twin, info, pre, enc = loaded(backbone)
    ours = _encode(pre, enc, TEXTS, mode=mode)
    ref = references.pylate_encode(twin, TEXTS, is_query=mode == "query")
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_an_item_alone_equals_the_item_in_a_padded_batch(loaded, backbone):
    path, _, info, pre, enc = loaded(backbone)
    batch = _encode(pre, enc, TEXTS)
    for text, expected in zip(TEXTS, batch):
        alone = _encode(pre, enc, [text])[0]
        assert np.abs(alone - expected).max() <= 1e-5


@pytest.mark.parametrize("backbone", ["jina", "modernbert"])
def test_a_4000_token_document_encodes_and_equals_the_reference(request, backbone):
    """GTE-ModernColBERT's sentence-transformers limit is 299 tokens; --max-model-len lifts it up to the
    position table (8192), as for jina-colbert-v2 by default."""
    fixture, architecture, _ = BACKBONES[backbone]
    path = request.getfixturevalue(fixture)
    info, pre, enc = _load(path, architecture, max_model_len=8192)
    text = " ".join(["the"] * 3998)
    ours = _encode(pre, enc, [text])[0]
    assert ours.shape[0] >= 4000
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    ref = references.hf_backbone_colbert_token_embeddings(path, [text])[0]
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_inputs_past_the_model_limit_get_vllms_context_length_error(loaded, backbone):
    path, _, info, pre, enc = loaded(backbone)
    with pytest.raises(InputError, match=f"maximum context length is {info.max_model_len} tokens"):
        pre.encode([" ".join(["the"] * (info.max_model_len + 5))])


def test_jina_limits_follow_vllm(loaded):
    path, _, info, pre, enc = loaded("jina")
    assert info.max_model_len == 8192 and info.dim == 16


def test_matryoshka_dimensions_slice_then_normalise(jina_colbert):
    info, pre, enc = _load(jina_colbert, "ColBERTJinaRobertaModel", matryoshka_dimensions=[16, 8])
    assert info.matryoshka_dimensions == (16, 8)
    full = _encode(pre, enc, TEXTS[:2], normalize=[False, False])
    small = _encode(pre, enc, TEXTS[:2], dimensions=[8, 8])
    for f, s in zip(full, small):
        expected = f[:, :8] / np.linalg.norm(f[:, :8], axis=1, keepdims=True)
        assert np.abs(s - expected).max() <= 1e-6


def test_jina_checkpoint_without_the_override_names_the_fix(jina_colbert):
    with pytest.raises(CheckpointError, match="ColBERTJinaRobertaModel"):
        describe(open_checkpoint(jina_colbert), "m")


def test_unknown_architecture_is_refused_with_the_known_list(jina_colbert):
    with pytest.raises(CheckpointError) as info:
        describe(open_checkpoint(jina_colbert, {"architectures": ["ColBERTNoSuchModel"]}), "m")
    for name in ARCHITECTURES:
        assert name in str(info.value)


# The seed document's architectures, kept as test data (tests/data/make_seed_data.py regenerates it).
SEED_DATA = Path(__file__).resolve().parent / "data" / "seed_commands.json"


def seed_architectures() -> set[str]:
    """Fails (FileNotFoundError) when the test data is missing: these tests never skip."""
    return set(json.loads(SEED_DATA.read_text(encoding="utf-8"))["architectures"])


def test_every_seed_architecture_is_registered():
    names = seed_architectures()
    assert {"HF_ColBERT", "ColBERTModernBertModel", "ColBERTJinaRobertaModel", "ColBERTLfm2Model",
            "BgeM3EmbeddingModel", "ColQwen3", "ColQwen3_5", "LlamaNemotronVLModel"} <= names
    assert names - set(ARCHITECTURES) == set()


@pytest.mark.server
def test_every_registered_seed_architecture_has_a_fixture_served_by_the_test_server(client):
    served = {card.architecture for card in client.models()}
    missing = seed_architectures() - served
    assert not missing, f"no tiny fixture / server test for {sorted(missing)}"


def test_matryoshka_sizes_come_from_the_checkpoint_config_not_the_architecture(jina_colbert):
    jina = {"architectures": ["ColBERTJinaRobertaModel"]}
    # The tiny checkpoint's config.json says "matryoshka_dimensions": null, as XLMRobertaFlashConfig writes it.
    assert describe(open_checkpoint(jina_colbert, jina), "m").matryoshka_dimensions == ()
    declared = describe(open_checkpoint(jina_colbert, {**jina, "matryoshka_dimensions": [12, 16, 4]}), "m")
    assert declared.matryoshka_dimensions == (12, 16, 4)
    with pytest.raises(CheckpointError, match=r"matryoshka_dimensions \[32\] are outside 1..16"):
        describe(open_checkpoint(jina_colbert, {**jina, "matryoshka_dimensions": [16, 32]}), "m")


def test_colbert_model_is_vllms_newer_name_for_hf_colbert_and_dim_comes_from_the_overrides(stanford_colbert):
    """vLLM's example: --hf-overrides '{"architectures": ["ColBERTModel"], "dim": 96}' (the tiny one has 16)."""
    newer = describe(open_checkpoint(stanford_colbert, {"architectures": ["ColBERTModel"], "dim": 16}), "m")
    older = describe(open_checkpoint(stanford_colbert), "m")
    assert (newer.family, newer.backbone, newer.score_type, newer.tasks, newer.dim) == (
        older.family, older.backbone, older.score_type, older.tasks, 16)
    with pytest.raises(CheckpointError, match="config says the ColBERT dimension is 8"):
        describe(open_checkpoint(stanford_colbert, {"architectures": ["ColBERTModel"], "dim": 8}), "m")


def test_input_type_prompts_come_from_task_instructions_then_sentence_transformers(pylate_colbert, minilm_path):
    assert describe(open_checkpoint(minilm_path), "m").prompts == {}  # its ST config has no prompts
    overridden = {"task_instructions": {"search_query": "query: ", "bad": 3}}
    assert describe(open_checkpoint(minilm_path, overridden), "m").prompts == {"search_query": "query: "}
    written = json.loads((pylate_colbert / "config_sentence_transformers.json").read_text(encoding="utf-8"))["prompts"]
    assert set(written) == {"query", "document"}
    assert describe(open_checkpoint(pylate_colbert, {"architectures": ["HF_ColBERT"]}), "m").prompts == written
