"""Llama Nemotron VL (embed + cross-encoder rerank) in torch, piece by piece against references that run here.

No library on this machine runs the whole model (its HF code is remote code on the Hub), so each piece is checked
against transformers itself, loaded independently from the tiny checkpoints' safetensors (tests/tiny_nemotron_vl.py):

* the Llama backbone with causal masking off == transformers ``LlamaModel`` (eager attention) given an explicit
  padding-only 4D mask; and the first token's state moves when a later token changes (a causal model's would not);
* the vision tower == transformers ``SiglipVisionModel`` (eager); the vision features == that + NVIDIA's
  ``view/permute`` pixel shuffle (written out below, independent of pixel_shuffle.py) + mlp1 in ``torch.nn.functional``;
* end to end, prompts built with the shipped chat templates and ``nemotron_vl_images``: embeddings and rerank logits
  == the reference assembled from those pieces (<= 1e-5, float32); a padded batch == each row alone;
* configuration errors (num_labels != 1, unsupported pooling / select_layer, a wrong img_context_token_id).

The golden tests at the end compare with the checkpoints' own HF implementation; they run only where
TRILATE_NEMOTRON_EMBED_VL / TRILATE_NEMOTRON_RERANK_VL name real checkpoint folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer

import tiny_nemotron_vl
from references import NemotronReference as Reference, nemotron_inputs as encode
from python_backend_models import chat_templates as ct
from python_backend_models.checkpoint import CheckpointError
from python_backend_models.errors import InputError
from python_backend_models.families.nemotron_vl import NemotronVLEmbed, NemotronVLRerank, load_nemotron_vl
from python_backend_models.nemotron_card import read_nemotron_vl, tiling_params
from python_backend_models.nemotron_vl_images import preprocess_images

ATOL = 1e-5


# ------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_path(nemotron_embed) -> Path:
    return nemotron_embed  # conftest's session fixture (the server tests serve the same folder)


@pytest.fixture(scope="module")
def rerank_path(nemotron_rerank) -> Path:
    return nemotron_rerank


@pytest.fixture(scope="module")
def variant_path(tmp_path_factory) -> Path:
    """The other plausible layout: flat vision keys (vision_model.encoder.*), no SigLIP head, no ps_version in
    config.json, no pad token."""
    return tiny_nemotron_vl.write_nemotron_vl_embed(
        tmp_path_factory.mktemp("nemotron_embed_variant"), seed=21, ps_version=None, vision_head=False,
        vision_keys="flat", pad_token=None,
    )


@pytest.fixture(scope="module")
def embed_model(embed_path) -> NemotronVLEmbed:
    return load_nemotron_vl(embed_path)


@pytest.fixture(scope="module")
def rerank_model(rerank_path) -> NemotronVLRerank:
    return load_nemotron_vl(rerank_path)


def wide_image() -> Image.Image:
    """48x24, aspect 2: a (2, 1) grid + thumbnail = 3 tiles of 32 px."""
    y, x = np.mgrid[0:24, 0:48]
    rgb = np.stack([x * 5, y * 10, (x + y) * 3], axis=-1) % 256
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def square_image() -> Image.Image:
    """20x20: one tile."""
    y, x = np.mgrid[0:20, 0:20]
    rgb = np.stack([x * 12, 255 - y * 12, (x * y) % 256], axis=-1) % 256
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------------------------------
# References from transformers, loaded independently of the code under test
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_ref(embed_path) -> Reference:
    return Reference(embed_path)


@pytest.fixture(scope="module")
def rerank_ref(rerank_path) -> Reference:
    return Reference(rerank_path)


# ------------------------------------------------------------------------------------------------------------
# Prompts: the shipped templates + placeholder expansion + the checkpoint's tokenizer
# ------------------------------------------------------------------------------------------------------------


def embed_prompt(card: dict, message: dict) -> tuple[str, int]:
    template = ct.bundled(card["chat_template"])
    shaped, images = ct.template_messages([message], template.content_format, image_placeholder="<image>")
    return template.render(shaped, bos_token=card["bos_token"]), images


def rerank_prompt(card: dict, query: str, document) -> tuple[str, int]:
    template = ct.bundled(card["chat_template"])
    messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
    shaped, images = ct.template_messages(messages, template.content_format, image_placeholder="<image>",
                                          placeholder_separator="")
    return template.render(shaped), images


IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def embed_inputs(path: Path):
    """A text query and an image+text document, as /v1/embeddings ``messages`` would send them."""
    card = read_nemotron_vl(path)
    query, _ = embed_prompt(card, {"role": "query", "content": "What is machine learning?"})
    document, n = embed_prompt(card, {"role": "document",
                                      "content": [{"type": "text", "text": "Describe the image."}, IMAGE_PART]})
    assert query == "<|begin_of_text|>query: What is machine learning?"
    assert document == "<|begin_of_text|>passage: <image> Describe the image." and n == 1
    return encode(path, [query, document], [[], [wide_image()]], add_special_tokens=card["add_special_tokens"])


def rerank_inputs(path: Path):
    """Three pairs: a text document, an image-only document, an image + text document."""
    card = read_nemotron_vl(path)
    q = "what does the chart show"
    pairs = [
        rerank_prompt(card, q, "the chart shows sales by year"),
        rerank_prompt(card, q, [IMAGE_PART]),
        rerank_prompt(card, q, [IMAGE_PART, {"type": "text", "text": "sales by year"}]),
    ]
    assert pairs[0] == (f"question:{q} \n \n passage:the chart shows sales by year", 0)
    assert pairs[1] == (f"<image> question:{q} \n \n passage:", 1)
    assert pairs[2] == (f"<image> question:{q} \n \n passage:sales by year", 1)
    return encode(path, [p for p, _ in pairs], [[], [square_image()], [wide_image()]],
                  add_special_tokens=card["add_special_tokens"])


# ------------------------------------------------------------------------------------------------------------
# The card
# ------------------------------------------------------------------------------------------------------------


def test_the_card_reads_both_layouts_as_data(embed_path, rerank_path):
    embed, rerank = read_nemotron_vl(embed_path), read_nemotron_vl(rerank_path)
    tokenizer = Tokenizer.from_file(str(embed_path / "tokenizer.json"))
    assert (embed["kind"], embed["weights_prefix"], embed["num_labels"]) == ("embed", "", None)
    assert (rerank["kind"], rerank["weights_prefix"], rerank["num_labels"]) == ("rerank", "model.", 1)
    for card in (embed, rerank):
        assert card["hidden_size"] == 32 and card["vision"] == {"hidden_size": 32, "image_size": 32, "patch_size": 8,
                                                                 "num_hidden_layers": 2}
        assert (card["force_image_size"], card["downsample_ratio"], card["ps_version"]) == (32, 0.5, "v2")
        assert card["pooling"] == "mean" and card["select_layer"] == -1
        assert card["tokens_per_tile"] == 4  # (32 / 8)^2 * 0.5^2
        assert card["img_context_token_id"] == tokenizer.token_to_id("<IMG_CONTEXT>")
        assert card["img_start_token_id"] == tokenizer.token_to_id("<img>")
        assert card["bos_token"] == "<|begin_of_text|>" and card["pad_token"] == tiny_nemotron_vl.PAD
        assert card["tiling"]["max_tiles"] == 4 and card["max_model_len"] == 131072
        json.dumps(card)  # plain data
    assert (embed["chat_template"], embed["add_special_tokens"]) == (ct.NEMOTRON_EMBED, False)
    assert (rerank["chat_template"], rerank["add_special_tokens"]) == (ct.NEMOTRON_RERANK, True)
    assert rerank["temperature"] == 1.0


def test_the_card_needs_no_torch():
    """The repository builder and the preprocess stage read cards without importing torch."""
    import subprocess
    import sys

    program = ("import sys, python_backend_models.nemotron_card; "
               "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("value, pooled", [("avg", "mean"), ("cls", "cls"), ("last", "last")])
def test_the_pooling_setting_maps_as_vllm_maps_it(embed_path, value, pooled):
    assert read_nemotron_vl(embed_path, overrides={"pooling": value})["pooling"] == pooled


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pooling": "weighted_avg"}, "pooling 'weighted_avg' is not supported"),
        ({"select_layer": -2}, "only -1"),
        ({"img_context_token_id": 5}, "differs from the tokenizer's <IMG_CONTEXT> id"),
        ({"ps_version": "v3"}, "ps_version"),
        ({"force_image_size": 64}, "differs from vision_config.image_size"),
        ({"model_type": "llama"}, "model_type 'llama'"),
    ],
)
def test_configuration_errors_name_the_fix(embed_path, overrides, message):
    with pytest.raises(CheckpointError, match=message):
        read_nemotron_vl(embed_path, overrides=overrides)


def test_a_reranker_with_two_labels_is_refused_at_read_and_load(tmp_path):
    path = tiny_nemotron_vl.write_nemotron_vl_rerank(tmp_path, num_labels=2)
    for load in (read_nemotron_vl, load_nemotron_vl):
        with pytest.raises(CheckpointError, match=r"exactly one label \(num_labels == 1"):
            load(path)


# ------------------------------------------------------------------------------------------------------------
# The pieces
# ------------------------------------------------------------------------------------------------------------


def test_the_llama_backbone_is_llama_model_with_a_padding_only_mask(embed_path, embed_model, embed_ref):
    ids, mask, _ = embed_inputs(embed_path)
    ids, mask = ids[:1], mask[:1]  # the text row
    width = ids.shape[1]
    padded_ids = torch.cat([ids, torch.cat([ids[:, :3], torch.zeros(1, width - 3, dtype=ids.dtype)], dim=1)])
    padded_mask = torch.cat([mask, torch.tensor([[1, 1, 1] + [0] * (width - 3)])])
    ours = embed_model.hidden(padded_ids, padded_mask)
    ref = embed_ref.hidden(padded_ids, padded_mask)
    assert ours.dtype == torch.float32 and ours.shape == (2, width, 32)
    torch.testing.assert_close(ours[0], ref[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours[1, :3], ref[1, :3], atol=ATOL, rtol=0)


def test_the_first_token_sees_a_later_token(embed_model, embed_ref):
    ids = torch.tensor([[768, 350, 484, 25, 408, 276]])
    changed = ids.clone()
    changed[0, -1] = 303
    mask = torch.ones_like(ids)
    moved = (embed_model.hidden(ids, mask)[0, 0] - embed_model.hidden(changed, mask)[0, 0]).abs().max()
    assert moved > 1e-3
    # the same weights with a causal mask keep the first token fixed: the check can tell the two apart
    causal = [embed_ref.llama(input_ids=x, attention_mask=mask).last_hidden_state[0, 0] for x in (ids, changed)]
    torch.testing.assert_close(causal[0], causal[1], atol=1e-6, rtol=0)


def test_the_vision_tower_is_siglip_vision_model(embed_model, embed_ref):
    pixels, counts = preprocess_images([wide_image(), square_image()], tiling_params(embed_model.card))
    assert counts.tolist() == [3, 1]
    pixel_values = torch.from_numpy(pixels)
    with torch.no_grad():
        ours = embed_model.vision_model(pixel_values=pixel_values).last_hidden_state
    torch.testing.assert_close(ours, embed_ref.vision_tokens(pixel_values), atol=ATOL, rtol=0)
    features = embed_model.image_features(pixel_values)
    assert features.shape == (4, 4, 32)  # tiles, tokens per tile, llm hidden
    torch.testing.assert_close(features, embed_ref.image_features(pixel_values), atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# End to end on the tiny checkpoints
# ------------------------------------------------------------------------------------------------------------


def test_embeddings_equal_the_reference_for_text_and_image_prompts(embed_path, embed_model, embed_ref):
    ids, mask, pixel_values = embed_inputs(embed_path)
    assert int((ids == embed_model.img_context_token_id).sum()) == 3 * 4
    ours = embed_model(ids, mask, pixel_values)
    assert ours.dtype == torch.float32 and ours.shape == (2, 32)
    torch.testing.assert_close(ours, embed_ref.pooled(ids, mask, pixel_values), atol=ATOL, rtol=0)
    tokens = embed_model.hidden(ids, mask, pixel_values)
    torch.testing.assert_close(tokens[1], embed_ref.hidden(ids, mask, pixel_values)[1], atol=ATOL, rtol=0)


def test_the_other_layout_loads_to_the_same_model(variant_path):
    model, ref = load_nemotron_vl(variant_path), Reference(variant_path)
    assert model.card["ps_version"] == "v2" and model.card["pad_token_id"] is None
    ids, mask, pixel_values = embed_inputs(variant_path)
    torch.testing.assert_close(model(ids, mask, pixel_values), ref.pooled(ids, mask, pixel_values), atol=ATOL, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "last"])
def test_cls_and_last_pooling(embed_path, embed_ref, pooling):
    model = load_nemotron_vl(embed_path, overrides={"pooling": pooling})
    ids, mask, pixel_values = embed_inputs(embed_path)
    torch.testing.assert_close(model(ids, mask, pixel_values), embed_ref.pooled(ids, mask, pixel_values, pooling),
                               atol=ATOL, rtol=0)


def test_rerank_logits_equal_the_reference(rerank_path, rerank_model, rerank_ref):
    ids, mask, pixel_values = rerank_inputs(rerank_path)
    assert (ids[:, 0] == read_nemotron_vl(rerank_path)["bos_token_id"]).all()  # the tokenizer's BOS, once
    ours = rerank_model(ids, mask, pixel_values)
    assert ours.dtype == torch.float32 and ours.shape == (3,)
    torch.testing.assert_close(ours, rerank_ref.logits(ids, mask, pixel_values), atol=ATOL, rtol=0)
    assert rerank_model.score.weight.dtype == torch.float32


@pytest.mark.parametrize("which", ["embed", "rerank"])
def test_a_padded_batch_equals_each_row_alone(which, embed_path, rerank_path, embed_model, rerank_model):
    path, model, make = ((embed_path, embed_model, embed_inputs) if which == "embed"
                         else (rerank_path, rerank_model, rerank_inputs))
    ids, mask, pixel_values = make(path)
    batch = model(ids, mask, pixel_values)
    tiles_per_row = (ids == model.img_context_token_id).sum(dim=1) // model.tokens_per_tile
    start = 0
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        k = int(tiles_per_row[row])
        alone = model(ids[row:row + 1, :n], mask[row:row + 1, :n],
                      pixel_values[start:start + k] if k else None)
        start += k
        torch.testing.assert_close(batch[row:row + 1], alone, atol=ATOL, rtol=0)


def test_image_tokens_without_their_tiles_are_an_input_error(embed_path, embed_model):
    ids, mask, pixel_values = embed_inputs(embed_path)
    with pytest.raises(InputError, match="12 <IMG_CONTEXT> tokens but 2 image tile"):
        embed_model(ids, mask, pixel_values[:2])
    with pytest.raises(InputError, match="but 0 image tile"):
        embed_model(ids, mask, None)
    with pytest.raises(InputError, match="token ids must be in"):
        embed_model(torch.tensor([[10_000]]), torch.tensor([[1]]))
    with pytest.raises(InputError, match="attention_mask is all 0"):
        embed_model(ids[:1], torch.zeros_like(mask[:1]))


def test_loading_keeps_the_weights_once_and_fills_every_buffer(embed_model):
    for name, tensor in (*embed_model.named_parameters(), *embed_model.named_buffers()):
        assert not tensor.is_meta, name
    assert embed_model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    # SigLIP's head is never built (vLLM's use_head=False), though the checkpoint holds its weights
    assert not hasattr(embed_model.vision_model, "head")
    assert all(layer.self_attn.is_causal is False for layer in embed_model.language_model.layers)


def test_bfloat16_weights_give_nearly_the_same_vectors(embed_path, embed_model, rerank_path, rerank_model):
    """The reduced-precision path (what a GPU runs by default): casts, the image scatter, float32 pooling and head."""
    ids, mask, pixel_values = embed_inputs(embed_path)
    half = load_nemotron_vl(embed_path, dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.language_model.rotary_emb.inv_freq.dtype == torch.float32
    cosine = F.cosine_similarity(half(ids, mask, pixel_values), embed_model(ids, mask, pixel_values), dim=-1)
    assert (cosine > 0.99).all(), cosine
    ids, mask, pixel_values = rerank_inputs(rerank_path)
    half = load_nemotron_vl(rerank_path, dtype=torch.bfloat16)
    assert half.score.weight.dtype == torch.float32
    torch.testing.assert_close(half(ids, mask, pixel_values), rerank_model(ids, mask, pixel_values), atol=0.1, rtol=0.05)


def test_a_missing_tensor_is_named(embed_path, tmp_path):
    from safetensors.torch import save_file

    for file in embed_path.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    state = load_file(str(embed_path / "model.safetensors"))
    del state["mlp1.3.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"lack 1 tensor\(s\) the model needs, e.g. \['mlp1.3.weight'\]"):
        load_nemotron_vl(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# Golden: the real checkpoints against their own HF implementation (remote code, only here)
# ------------------------------------------------------------------------------------------------------------

REAL_EMBED = os.environ.get("TRILATE_NEMOTRON_EMBED_VL")
REAL_RERANK = os.environ.get("TRILATE_NEMOTRON_RERANK_VL")


def photo() -> Image.Image:
    y, x = np.mgrid[0:480, 0:640]
    rgb = np.stack([(x // 40) * 16, (y // 30) * 16, ((x + y) // 50) * 20], axis=-1) % 256
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@pytest.mark.skipif(not REAL_EMBED, reason="set TRILATE_NEMOTRON_EMBED_VL to a llama-nemotron-embed-vl-1b-v2 folder")
def test_golden_embed_matches_the_checkpoints_own_code():
    from transformers import AutoModel

    path = Path(REAL_EMBED)
    hf = AutoModel.from_pretrained(str(path), trust_remote_code=True, dtype=torch.float32).eval()
    ours = load_nemotron_vl(path, dtype=torch.float32)
    text = "What is the capital of France?"
    passage = "Paris is the capital and largest city of France."
    with torch.inference_mode():
        expected = [hf.encode_queries([text])[0], hf.encode_documents(texts=[passage])[0],
                    hf.encode_documents(images=[photo()], texts=["<image>"])[0]]
    # vLLM's test (tests/models/multimodal/pooling/test_llama_nemotron_vl.py): plain prompt strings, the tokenizer
    # adds the BOS; the HF side gets the prompt without its prefix
    prompts = [("query: " + text, []), ("passage: " + passage, []), ("passage: <image>", [photo()])]
    for (prompt, images), want in zip(prompts, expected):
        ids, mask, pixel_values = encode(path, [prompt], [images], add_special_tokens=True)
        got = F.normalize(ours(ids, mask, pixel_values), dim=-1)[0]
        cosine = float(got @ F.normalize(want.float(), dim=-1))
        assert cosine >= 0.999, cosine


@pytest.mark.skipif(not REAL_RERANK, reason="set TRILATE_NEMOTRON_RERANK_VL to a llama-nemotron-rerank-vl-1b-v2 folder")
def test_golden_rerank_matches_the_checkpoints_own_code():
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    path = Path(REAL_RERANK)
    hf = AutoModelForSequenceClassification.from_pretrained(str(path), trust_remote_code=True,
                                                            dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=True, max_input_tiles=6,
                                              use_thumbnail=True, rerank_max_length=2048)
    ours = load_nemotron_vl(path, dtype=torch.float32)
    card = ours.card
    query = "How is AI improving healthcare?"
    document = "AI helps doctors diagnose diseases earlier from medical images."
    features = [{"question": query, "doc_text": document, "doc_image": ""},
                {"question": query, "doc_text": "", "doc_image": photo()}]
    with torch.inference_mode():
        batch = processor.process_queries_documents_crossencoder(features)
        batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        expected = torch.sigmoid(hf(**batch, return_dict=True).logits.float().reshape(-1))
    prompts = [rerank_prompt(card, query, document)[0], rerank_prompt(card, query, [IMAGE_PART])[0]]
    for prompt, images, want in zip(prompts, [[], [photo()]], expected):
        ids, mask, pixel_values = encode(path, [prompt], [images], add_special_tokens=True)
        got = torch.sigmoid(ours(ids, mask, pixel_values))[0]
        assert float(got) == pytest.approx(float(want), rel=0.02)
