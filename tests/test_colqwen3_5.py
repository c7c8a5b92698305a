"""ColQwen3.5 (``python_backend_models.families.colqwen3_5``) against transformers' own Qwen3.5 on the same weights.

The reference is assembled here, independently of the loader: ``transformers.Qwen3_5Model.from_pretrained`` on the
tiny checkpoint folder (eager attention, float32), its last hidden state, the checkpoint's ``custom_text_proj``
weight and bias applied with ``F.linear``, then L2.  For the ``"bidirectional"`` contract the reference's
full-attention mask is replaced by an explicit 4-D padding-only mask (keys at padding get -inf, nothing else), by
patching the ``create_causal_mask`` that ``Qwen3_5TextModel`` calls; the GatedDeltaNet layers are left alone in
both.  Image rows use ``qwen_vl_images.preprocess_image`` for pixels and expand ``<|image_pad|>`` to its count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer

from python_backend_models.checkpoint import CheckpointError
from python_backend_models.colqwen35_card import read_colqwen3_5
from python_backend_models.errors import InputError
from python_backend_models.families.colqwen3_5 import load_colqwen3_5
from python_backend_models.qwen_vl_images import QwenVLImageConfig, preprocess_image
from tiny_colqwen35 import write_colqwen3_5

ATOL = 1e-5  # per token, fp32, against transformers (issue 9)
TEXTS = ["What is late interaction retrieval?", "Pages are images.", "one"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("colqwen35")
    return {
        "bidirectional": write_colqwen3_5(root / "bidirectional", contract="bidirectional"),
        "causal": write_colqwen3_5(root / "causal", contract="causal"),
    }


@pytest.fixture(scope="module")
def models(folders):
    return {name: load_colqwen3_5(path) for name, path in folders.items()}


@pytest.fixture(scope="module")
def reference(folders):
    from transformers import Qwen3_5Model

    # Same seed, so both folders hold the same weights; one reference model serves both contracts.
    return Qwen3_5Model.from_pretrained(str(folders["causal"]), dtype=torch.float32, attn_implementation="eager").eval()


def _tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _image_row(folder: Path, image: Image.Image, text: str = "Describe the image."):
    """colpali-engine's document prompt with the placeholder expanded; (ids, pixel_values, image_grid_thw)."""
    processed = preprocess_image(image, QwenVLImageConfig.from_checkpoint(folder))
    prompt = ("<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * processed.num_placeholders
              + f"<|vision_end|>{text}<|im_end|><|endoftext|>")
    ids = _tokenizer(folder).encode(prompt).ids
    return ids, torch.from_numpy(processed.pixel_values), torch.from_numpy(processed.image_grid_thw)


def _batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _text_rows(folder: Path) -> list[list[int]]:
    tokenizer = _tokenizer(folder)
    return [tokenizer.encode(t).ids for t in TEXTS]


def _padding_only_mask(calls: list[int]):
    def create_mask(config, inputs_embeds, attention_mask, **_):
        calls.append(1)
        batch, width = inputs_embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones((batch, width), dtype=torch.long)
        keys = attention_mask.bool()[:, None, None, :].expand(batch, 1, width, width)
        mask = torch.zeros((batch, 1, width, width), dtype=inputs_embeds.dtype)
        return mask.masked_fill(~keys, torch.finfo(inputs_embeds.dtype).min)

    return create_mask


def _reference_vectors(reference, folder: Path, ids, mask, pixel_values=None, image_grid_thw=None, *,
                       bidirectional: bool, monkeypatch=None) -> torch.Tensor:
    import transformers.models.qwen3_5.modeling_qwen3_5 as qwen3_5

    calls: list[int] = []
    if bidirectional:
        monkeypatch.setattr(qwen3_5, "create_causal_mask", _padding_only_mask(calls))
    config = json.loads((folder / "config.json").read_text())
    kwargs = {}
    if pixel_values is not None:
        kwargs = {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw,
                  "mm_token_type_ids": (ids == config["image_token_id"]).to(torch.int32)}
    reference.rope_deltas = None
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).last_hidden_state
    if bidirectional:
        monkeypatch.undo()
        assert calls, "the patched mask was not used"
    weights = load_file(str(folder / "model.safetensors"))
    return F.normalize(F.linear(hidden, weights["custom_text_proj.weight"], weights["custom_text_proj.bias"]), dim=-1)


def _real(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return vectors[mask.bool()]


@pytest.mark.parametrize("contract", ["causal", "bidirectional"])
def test_text_rows_equal_transformers_qwen3_5_plus_projection(contract, folders, models, reference, monkeypatch):
    folder = folders[contract]
    ids, mask = _batch(_text_rows(folder), pad_id=_tokenizer(folder).token_to_id("<|endoftext|>"))
    ours = models[contract](ids, mask)
    expected = _reference_vectors(reference, folder, ids, mask, bidirectional=contract == "bidirectional",
                                  monkeypatch=monkeypatch)
    assert ours.shape == (len(TEXTS), ids.shape[1], 16) and ours.dtype == torch.float32
    assert (_real(ours, mask) - _real(expected, mask)).abs().max() <= ATOL
    assert torch.allclose(_real(ours, mask).norm(dim=-1), torch.ones(int(mask.sum())), atol=1e-6)
    assert (ours[~mask.bool()] == 0).all()


@pytest.mark.parametrize("contract", ["causal", "bidirectional"])
def test_an_image_row_equals_transformers_qwen3_5_plus_projection(contract, folders, models, reference, monkeypatch):
    folder = folders[contract]
    row, pixel_values, grid = _image_row(folder, _image(1, (96, 64)))
    assert grid.tolist() == [[1, 4, 6]] and pixel_values.shape == (24, 1536)
    ids, mask = torch.tensor([row]), torch.ones((1, len(row)), dtype=torch.long)
    ours = models[contract](ids, mask, pixel_values, grid)
    expected = _reference_vectors(reference, folder, ids, mask, pixel_values, grid,
                                  bidirectional=contract == "bidirectional", monkeypatch=monkeypatch)
    assert ours.shape == (1, len(row), 16)
    assert (ours - expected).abs().max() <= ATOL
    # The image matters: other pixels, other vectors at the image tokens and after them.
    other = models[contract](ids, mask, torch.from_numpy(
        preprocess_image(_image(2, (96, 64)), QwenVLImageConfig.from_checkpoint(folder)).pixel_values), grid)
    assert (other - ours).abs().max() > 1e-3


def test_bidirectional_lets_an_early_token_see_a_later_one_and_causal_does_not(folders, models):
    rows = _text_rows(folders["causal"])
    first = rows[0]
    changed = first[:-1] + [first[-1] + 1 if first[-1] + 1 < 1000 else first[-1] - 1]
    ids, mask = _batch([first, changed], pad_id=0)
    causal, bidirectional = models["causal"](ids, mask), models["bidirectional"](ids, mask)
    early = slice(0, len(first) - 1)
    assert (causal[0, early] - causal[1, early]).abs().max() <= 1e-6
    assert (bidirectional[0, early] - bidirectional[1, early]).abs().max() > 1e-3
    # The first token already differs between the two contracts (it sees the whole row under bidirectional).
    assert (causal[0, 0] - bidirectional[0, 0]).abs().max() > 1e-3


def test_a_padded_batch_equals_each_row_alone(folders, models):
    folder = folders["bidirectional"]
    model = models["bidirectional"]
    image_row, pixel_values, grid = _image_row(folder, _image(3, (64, 96)))
    rows = [*_text_rows(folder), image_row]
    ids, mask = _batch(rows, pad_id=0)
    batch = model(ids, mask, pixel_values, grid)
    for i, row in enumerate(rows):
        alone_ids = torch.tensor([row])
        images = (pixel_values, grid) if row is image_row else (None, None)
        alone = model(alone_ids, torch.ones_like(alone_ids), *images)
        assert (batch[i, : len(row)] - alone[0]).abs().max() <= ATOL, f"row {i}"


def test_the_projection_bias_is_loaded_and_applied(tmp_path, folders, models):
    model = models["bidirectional"]
    assert model.projection_bias is not None and model.projection_bias.abs().max() > 0
    ids, mask = _batch(_text_rows(folders["bidirectional"]), pad_id=0)
    with_bias = model(ids, mask)
    saved = model.projection_bias
    model.projection_bias = torch.zeros_like(saved)
    try:
        without = model(ids, mask)
    finally:
        model.projection_bias = saved
    assert (_real(with_bias, mask) - _real(without, mask)).abs().max() > 1e-2
    # A checkpoint without a bias tensor loads too, with no bias.
    plain = load_colqwen3_5(write_colqwen3_5(tmp_path / "nobias", bias=False))
    assert plain.projection_bias is None
    assert read_colqwen3_5(tmp_path / "nobias")["projection_bias"] is None


@pytest.mark.parametrize("contract", [None, "sideways"])
def test_a_checkpoint_without_a_valid_attention_contract_is_refused(tmp_path, contract):
    folder = write_colqwen3_5(tmp_path / "c", contract=contract)
    for load in (read_colqwen3_5, load_colqwen3_5):
        with pytest.raises(CheckpointError) as error:
            load(folder)
        message = str(error.value)
        assert "retrieval_attention_contract" in message and '"bidirectional"' in message and '"causal"' in message
    # --hf-overrides declares it.
    model = load_colqwen3_5(folder, overrides={"retrieval_attention_contract": "causal"})
    assert model.attention_contract == "causal"


def test_a_text_config_contract_or_is_causal_that_disagrees_is_refused(tmp_path):
    folder = write_colqwen3_5(tmp_path / "c", contract="bidirectional")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["retrieval_attention_contract"] = "causal"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="text_config.retrieval_attention_contract"):
        read_colqwen3_5(folder)
    del config["text_config"]["retrieval_attention_contract"]
    config["text_config"]["is_causal"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="text_config.is_causal is True but retrieval_attention_contract is 'bidirectional'"):
        read_colqwen3_5(folder)


def test_other_key_layouts_load_the_same_model(tmp_path, folders, models):
    """``model.`` prefix, ``mtp.*`` tensors (skipped), shards, and the ``embedding_proj_layer`` name."""
    ids, mask = _batch(_text_rows(folders["bidirectional"]), pad_id=0)
    expected = models["bidirectional"](ids, mask)
    folder = write_colqwen3_5(tmp_path / "other", prefix="model.", mtp=True, shards=3, proj_name="embedding_proj_layer")
    assert not (folder / "model.safetensors").exists() and (folder / "model.safetensors.index.json").exists()
    card = read_colqwen3_5(folder)
    assert card["key_prefix"] == "model." and card["projection_weight"] == "model.embedding_proj_layer.weight"
    assert (load_colqwen3_5(folder)(ids, mask) - expected).abs().max() == 0


def test_the_projection_size_comes_from_the_first_dim_field_and_must_fit_the_weight(tmp_path):
    card = read_colqwen3_5(write_colqwen3_5(tmp_path / "embed", dim=24, dim_field="embed_dim"))
    assert (card["dim"], card["dim_field"]) == (24, "embed_dim")
    # embed_dim wins over dim.
    with pytest.raises(CheckpointError, match=r"embed_dim = 8 but custom_text_proj.weight has 24 rows; set embed_dim to 24"):
        read_colqwen3_5(tmp_path / "embed", overrides={"embed_dim": 8, "dim": 24})
    default = write_colqwen3_5(tmp_path / "default", dim_field=None)
    assert read_colqwen3_5(default)["dim"] == 128
    assert load_colqwen3_5(default).dim == 128
    with pytest.raises(CheckpointError, match="default 128"):
        read_colqwen3_5(write_colqwen3_5(tmp_path / "mismatch", dim=16, dim_field="colbert_dim"),
                        overrides={"colbert_dim": None})


def test_the_card_reads_json_and_headers_without_torch(folders):
    code = ("import json, sys; from python_backend_models.colqwen35_card import read_colqwen3_5; "
            f"card = read_colqwen3_5({str(folders['bidirectional'])!r}); "
            "print(json.dumps([card, 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    card, imported_torch = json.loads(out.stdout)
    assert not imported_torch
    tokenizer = _tokenizer(folders["bidirectional"])
    assert card["attention_contract"] == "bidirectional"
    assert (card["dim"], card["hidden_size"], card["projection_bias"]) == (16, 32, "custom_text_proj.bias")
    assert card["image_token_id"] == tokenizer.token_to_id("<|image_pad|>")
    assert card["vision_start_token_id"] == tokenizer.token_to_id("<|vision_start|>")
    assert card["max_position_embeddings"] == 2048
    assert card["layer_types"] == ["linear_attention", "full_attention", "linear_attention", "full_attention"]


def test_a_wrong_model_type_is_refused(tmp_path):
    folder = write_colqwen3_5(tmp_path / "c")
    with pytest.raises(CheckpointError, match="model_type 'qwen3_vl'"):
        read_colqwen3_5(folder, overrides={"model_type": "qwen3_vl"})


def test_bad_inputs_are_input_errors_naming_what_is_wrong(folders, models):
    folder, model = folders["causal"], models["causal"]
    row, pixel_values, grid = _image_row(folder, _image(4, (96, 64)))
    ids, mask = torch.tensor([row]), torch.ones((1, len(row)), dtype=torch.long)
    image_pad = model.image_token_id
    with pytest.raises(InputError, match="no image"):
        model(ids, mask)
    short = torch.tensor([[t for i, t in enumerate(row) if not (t == image_pad and i == row.index(image_pad))]])
    with pytest.raises(InputError, match=r"runs \[5\] do not match the images' token counts \[6\]"):
        model(short, torch.ones_like(short), pixel_values, grid)
    with pytest.raises(InputError, match="pixel_values must be"):
        model(ids, mask, pixel_values[:-1], grid)
    with pytest.raises(InputError, match="go together"):
        model(ids, mask, pixel_values, None)
    with pytest.raises(InputError, match="right padding"):
        model(ids, torch.cat([torch.zeros((1, 1), dtype=torch.long), mask[:, 1:]], dim=1), pixel_values, grid)
    with pytest.raises(InputError, match="token ids must be in"):
        model(torch.tensor([[model.vocab_size]]), torch.ones((1, 1), dtype=torch.long))


def test_the_served_encoder_packs_text_and_image_items_and_each_equals_the_item_alone(folders, models):
    """Items of mixed lengths, one with two images, in packs of several rows (the encoder stage's packing):
    each equals the item alone; an item whose placeholders do not match its images is refused on its own."""
    from python_backend_models import contract as C
    from python_backend_models.checkpoint import open_checkpoint
    from python_backend_models.multimodal import to_bytes_rows
    from python_backend_models.registry import describe, family_of

    folder, model = folders["bidirectional"], models["bidirectional"]
    info = describe(open_checkpoint(folder), "m")
    encoder = family_of(info).encoder(info)
    config = QwenVLImageConfig.from_checkpoint(folder)
    first, second = preprocess_image(_image(5, (64, 96)), config), preprocess_image(_image(6, (128, 64)), config)
    prompt = "".join(f"<|vision_start|>{'<|image_pad|>' * p.num_placeholders}<|vision_end|>" for p in (first, second))
    one_ids, one_pixels, one_grid = _image_row(folder, _image(7, (96, 96)))
    rows = [(np.array(row), np.zeros((0, model.patch_dim), np.float32), np.zeros((0, 3), np.int64))
            for row in _text_rows(folder)]
    rows.append((np.array(_tokenizer(folder).encode(prompt + "Compare the pages.").ids),
                 np.concatenate([first.pixel_values, second.pixel_values]),
                 np.concatenate([first.image_grid_thw, second.image_grid_thw])))
    rows.append((np.array(one_ids), one_pixels.numpy(), one_grid.numpy()))

    def item(ids, pixels, grid):
        ones = np.ones(len(ids), dtype=np.int64)
        features = {C.INPUT_IDS: ids, C.ATTENTION_MASK: ones, C.OUTPUT_MASK: ones.astype(bool)}
        raw_pixels, raw_sizes = to_bytes_rows([pixels])[0, 0], to_bytes_rows([grid])[0, 0]
        return {**features, **encoder.image_features(raw_pixels, raw_sizes, ids)}

    items = [item(*row) for row in rows]
    encoder.pass_cost_tokens = 1000  # a high pass cost: everything in one pack
    packed = [o.token_embeddings for o in encoder.encode(items)]
    encoder.pass_cost_tokens, encoder.max_rows = 64, 1
    single = [o.token_embeddings for o in encoder.encode(items)]
    for i, (ids, pixels, grid) in enumerate(rows):
        ids_t = torch.from_numpy(ids)[None]
        images = (torch.from_numpy(pixels), torch.from_numpy(grid)) if len(grid) else (None, None)
        alone = model(ids_t, torch.ones_like(ids_t), *images)[0].numpy()
        assert packed[i].shape == (ids.size, 16)
        assert np.abs(packed[i] - alone).max() <= ATOL, f"item {i}"
        assert np.abs(single[i] - alone).max() <= ATOL, f"item {i}"
    ids, pixels, grid = rows[-1]
    item(ids[1:], pixels, grid)  # drops <|im_start|>: fine; then drop one placeholder
    fewer = np.delete(ids, np.flatnonzero(ids == model.image_token_id)[0])
    with pytest.raises(InputError, match="do not match"):
        item(fewer, pixels, grid)


def test_missing_backbone_weights_and_stray_tensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    folder = write_colqwen3_5(tmp_path / "c")
    tensors = load_file(str(folder / "model.safetensors"))
    gone = "language_model.layers.1.self_attn.q_proj.weight"
    save_file({k: v for k, v in tensors.items() if k != gone}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"missing \\['{gone}'\\]"):
        load_colqwen3_5(folder)
    save_file({**tensors, "pooler.dense.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="pooler.dense.weight"):
        read_colqwen3_5(folder)


def test_the_fixture_tokenizer_and_chat_template_are_qwen3_vl_style(folders):
    """transformers reads the fixture's tokenizer files: special ids agree with config.json and the chat template
    renders Qwen3-VL's retrieval prompt."""
    from transformers import AutoTokenizer

    folder = folders["bidirectional"]
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for name, token in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]:
        assert tokenizer.convert_tokens_to_ids(token) == config[name]
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.bos_token is None
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert rendered == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
    ids = tokenizer(rendered)["input_ids"]
    assert ids == _tokenizer(folder).encode(rendered).ids and ids.count(config["image_token_id"]) == 1
    assert (folder / "model.safetensors").stat().st_size < 2_000_000


def test_a_bfloat16_load_runs_text_and_images_close_to_float32(folders, models):
    """The serving dtype of a GPU: bf16 weights (projection kept float32), float32 unit vectors out; random tiny
    weights amplify rounding, so only closeness is checked (per-token cosine)."""
    folder = folders["bidirectional"]
    half = load_colqwen3_5(folder, dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.projection_weight.dtype == torch.float32
    row, pixel_values, grid = _image_row(folder, _image(8, (96, 64)))
    ids, mask = _batch([row, _text_rows(folder)[0]], pad_id=0)
    full, low = models["bidirectional"](ids, mask, pixel_values, grid), half(ids, mask, pixel_values, grid)
    assert low.dtype == torch.float32
    assert (_real(full, mask) * _real(low, mask)).sum(-1).min() > 0.95
