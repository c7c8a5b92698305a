"""The ColQwen3 family's torch side equals transformers' Qwen3-VL backbone + projection + L2, for each vendor layout.

Reference (written here, not taken from trilate): transformers' ``Qwen3VLModel`` built normally on the CPU from
the checkpoint's ``text_config`` / ``vision_config`` with eager attention, its weights renamed from the vendor's
keys by this file's own table and loaded with ``strict=True``; then ``F.linear`` with the projection tensors read
straight from the safetensors file, then division by the L2 norm.  Inputs: token ids from the fixture's
``tokenizer.json``, images processed by ``qwen_vl_images`` (itself checked against transformers' PIL image
processor in ``test_qwen_vl_images.py``), each ``<|image_pad|>`` expanded here to its token count.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

import tiny_colqwen
from python_backend_models.checkpoint import CheckpointError
from python_backend_models.colqwen_card import read_colqwen3
from python_backend_models.errors import InputError
from python_backend_models.families.colqwen3 import load_colqwen3
from python_backend_models.qwen_vl_images import QwenVLImageConfig, preprocess_image

ATOL = 1e-5

# (layout, projection bias, dim): every vendor layout with and without a projection bias, and no projection.
CASES = [
    ("tomoro", True, 16), ("tomoro", False, 16),
    ("opensearch", True, 24), ("opensearch", False, 24),
    ("nvidia", True, 16), ("nvidia", False, 16),
    ("nvidia", False, None),
]
CASE_IDS = [f"{layout}-{'bias' if bias else 'nobias'}-{dim or 'noproj'}" for layout, bias, dim in CASES]

# The vendors' key prefixes, as this test reads the repos (reference/vllm_semantics.md §5.1).
VENDOR_PREFIX = {"tomoro": "vlm.model.", "opensearch": "", "nvidia": "model."}
PROJECTION = {"tomoro": "embedding_proj_layer", "opensearch": "custom_text_proj", "nvidia": "custom_text_proj"}
EXPECTED_CARD_LAYOUT = {"tomoro": "tomoro", "opensearch": "opensearch", "nvidia": "colpali"}

IDS = tiny_colqwen.special_token_ids()
IMAGE_PAD = IDS["<|image_pad|>"]
PAD = IDS["<|endoftext|>"]
ONE_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x * y) % 256], axis=-1)
    noise = rng.randint(0, 40, (height, width, 3))
    return Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("colqwen3")
    return {case: tiny_colqwen.write_colqwen3(root / cid, case[0], projection_bias=case[1], dim=case[2], seed=11 + i)
            for i, (case, cid) in enumerate(zip(CASES, CASE_IDS))}


@pytest.fixture(scope="module")
def rows(checkpoints):
    """Four prompts: text only, one user image in the chat layout, two images in one row, a /score-style image
    document.  Each: (ids int64 [n], images [PIL])."""
    folder = next(iter(checkpoints.values()))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = QwenVLImageConfig.from_checkpoint(folder)
    prompts = [
        ("What is machine learning?", []),
        (f"<|im_start|>user\n{ONE_IMAGE}Describe the image.<|im_end|>\n", [_image(70, 50, 1)]),
        (f"{ONE_IMAGE}{ONE_IMAGE}Compare the two pages.", [_image(128, 96, 2), _image(100, 40, 3)]),
        (f"{ONE_IMAGE}\nA chart of the quarterly revenue", [_image(33, 200, 4)]),
    ]
    out = []
    for text, images in prompts:
        ids = tokenizer.encode(text).ids
        expanded: list[int] = []
        counts = iter(preprocess_image(im, config).num_placeholders for im in images)
        for token in ids:
            expanded.extend([IMAGE_PAD] * next(counts) if token == IMAGE_PAD else [token])
        assert next(counts, None) is None, "every image has its placeholder"
        out.append((np.array(expanded, dtype=np.int64), images))
    return out


def _batch(rows_, config: QwenVLImageConfig):
    """Right-padded ids / mask and the rows' images concatenated in row order."""
    width = max(len(ids) for ids, _ in rows_)
    input_ids = torch.full((len(rows_), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows_), width), dtype=torch.long)
    pixels, grids = [], []
    for r, (ids, images) in enumerate(rows_):
        input_ids[r, : len(ids)] = torch.from_numpy(ids)
        mask[r, : len(ids)] = 1
        for image in images:
            processed = preprocess_image(image, config)
            pixels.append(torch.from_numpy(processed.pixel_values))
            grids.append(torch.from_numpy(processed.image_grid_thw))
    if not pixels:
        return input_ids, mask, None, None
    return input_ids, mask, torch.cat(pixels), torch.cat(grids)


def _reference(folder, layout: str, input_ids, mask, pixel_values, grid):
    """transformers' Qwen3VLModel (eager) + projection + L2, weights renamed by this test: Float32[B, T, dim]."""
    from transformers import Qwen3VLConfig, Qwen3VLModel

    raw = json.loads((folder / "config.json").read_text())
    config = Qwen3VLConfig(
        text_config=raw["text_config"], vision_config=raw["vision_config"], image_token_id=raw["image_token_id"],
        video_token_id=raw["video_token_id"], vision_start_token_id=raw["vision_start_token_id"],
        vision_end_token_id=raw["vision_end_token_id"],
    )
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        model = Qwen3VLModel(config).eval()
    tensors = load_file(str(folder / "model.safetensors"))
    prefix = VENDOR_PREFIX[layout]
    backbone = {k[len(prefix):]: v for k, v in tensors.items()
                if k.startswith(prefix + "visual.") or k.startswith(prefix + "language_model.")}
    model.load_state_dict(backbone, strict=True)
    kwargs = {}
    if pixel_values is not None:
        kwargs = {"pixel_values": pixel_values, "image_grid_thw": grid,
                  "mm_token_type_ids": (input_ids == raw["image_token_id"]).int()}
    with torch.no_grad():
        hidden = model(input_ids=input_ids, attention_mask=mask, use_cache=False, **kwargs).last_hidden_state
    weight = tensors.get(f"{PROJECTION[layout]}.weight")
    if weight is not None:
        hidden = hidden @ weight.T
        bias = tensors.get(f"{PROJECTION[layout]}.bias")
        if bias is not None:
            hidden = hidden + bias
    return hidden / hidden.norm(dim=-1, keepdim=True)


def _max_diff_on_real_tokens(ours, ref, mask) -> float:
    live = mask.bool()
    return float((ours[live] - ref[live]).abs().max())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_token_vectors_equal_transformers_backbone_projection_l2(checkpoints, rows, case):
    folder = checkpoints[case]
    layout, bias, dim = case
    model = load_colqwen3(folder, overrides={}, device=torch.device("cpu"), dtype=torch.float32)
    hidden = json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"]
    assert (model.dim, model.hidden_size, model.image_token_id) == (dim or hidden, hidden, IMAGE_PAD)
    assert (model.proj_bias is not None) == (bias and dim is not None)
    config = QwenVLImageConfig.from_checkpoint(folder)
    inputs = _batch(rows, config)
    ours = model(*inputs)
    ref = _reference(folder, layout, *inputs)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape == (*inputs[0].shape, dim or hidden)
    assert _max_diff_on_real_tokens(ours, ref, inputs[1]) <= ATOL


def test_projection_bias_is_applied(checkpoints, rows):
    """The bias changes the vectors (vLLM drops it when the dim comes from config.json; trilate must not)."""
    folder = checkpoints[("tomoro", True, 16)]
    model = load_colqwen3(folder, overrides={}, device=torch.device("cpu"), dtype=torch.float32)
    inputs = _batch(rows[:1], QwenVLImageConfig.from_checkpoint(folder))
    with_bias = model(*inputs)
    model.proj_bias = None
    assert float((with_bias - model(*inputs)).abs().max()) > 1e-2


@pytest.mark.parametrize("case", [("tomoro", True, 16), ("nvidia", False, None)], ids=["tomoro", "noproj"])
def test_padded_batch_rows_equal_each_row_alone(checkpoints, rows, case):
    folder = checkpoints[case]
    model = load_colqwen3(folder, overrides={}, device=torch.device("cpu"), dtype=torch.float32)
    config = QwenVLImageConfig.from_checkpoint(folder)
    for pair in ([rows[1], rows[0]], [rows[2], rows[3]], [rows[0], rows[3]]):
        together = model(*_batch(pair, config))
        for r, row in enumerate(pair):
            alone = model(*_batch([row], config))
            n = len(row[0])
            assert float((together[r, :n] - alone[0]).abs().max()) <= ATOL


@pytest.mark.parametrize(("layout", "card_layout"), EXPECTED_CARD_LAYOUT.items())
def test_card_reads_layout_projection_and_ids(checkpoints, layout, card_layout):
    folder = checkpoints[(layout, True, 16 if layout != "opensearch" else 24)]
    card = read_colqwen3(folder)
    projection = PROJECTION[layout]
    assert card["layout"] == card_layout
    assert card["projection"] == (f"{projection}.weight", f"{projection}.bias")
    assert card["dim"] == (24 if layout == "opensearch" else 16)
    assert card["dim_field"] == tiny_colqwen.LAYOUTS[layout].dim_field
    assert card["hidden_size"] == 64 and card["max_position_embeddings"] == 4096
    assert (card["image_token_id"], card["vision_start_token_id"]) == (IMAGE_PAD, IDS["<|vision_start|>"])


def test_card_without_projection_gives_hidden_size(checkpoints):
    card = read_colqwen3(checkpoints[("nvidia", False, None)])
    assert card["projection"] is None and card["dim"] == 64 and card["dim_field"] is None


def _copy(folder, dest, *, config_update=None, drop_tensor=None):
    dest.mkdir()
    for file in folder.iterdir():
        (dest / file.name).write_bytes(file.read_bytes())
    if config_update:
        config = json.loads((dest / "config.json").read_text())
        config.update(config_update)
        (dest / "config.json").write_text(json.dumps(config))
    if drop_tensor:
        tensors = load_file(str(dest / "model.safetensors"))
        del tensors[drop_tensor]
        save_file(tensors, str(dest / "model.safetensors"))
    return dest


@pytest.mark.parametrize(("case", "field", "value"), [
    (("tomoro", True, 16), "embed_dim", 32),
    (("opensearch", False, 24), "dims", 16),
    (("nvidia", False, None), "projection_dim", 16),
])
def test_a_declared_dim_the_weights_do_not_have_is_refused_naming_the_field(checkpoints, tmp_path, case, field, value):
    folder = _copy(checkpoints[case], tmp_path / "bad", config_update={field: value})
    with pytest.raises(CheckpointError, match=field):
        read_colqwen3(folder)
    with pytest.raises(CheckpointError, match=field):
        load_colqwen3(folder, overrides={}, device=torch.device("cpu"), dtype=torch.float32)
    # --hf-overrides with the right value mends it.
    good = case[2] or 64
    assert read_colqwen3(folder, {field: good})["dim"] == good
    assert load_colqwen3(folder, overrides={field: good}, device=torch.device("cpu"), dtype=torch.float32).dim == good


@pytest.mark.parametrize("case", [("tomoro", True, 16), ("opensearch", True, 24), ("nvidia", False, None)],
                         ids=["tomoro", "opensearch", "nvidia"])
def test_a_missing_backbone_tensor_is_refused_naming_it(checkpoints, tmp_path, case):
    name = tiny_colqwen.backbone_key(case[0], "language_model.layers.1.mlp.down_proj.weight")
    folder = _copy(checkpoints[case], tmp_path / "bad", drop_tensor=name)
    with pytest.raises(CheckpointError, match=r"lacks 1 backbone weights.*" + name.replace(".", r"\.")):
        load_colqwen3(folder, overrides={}, device=torch.device("cpu"), dtype=torch.float32)


def test_bf16_load_keeps_weights_in_bf16_and_rotary_tables_in_fp32(checkpoints, rows):
    folder = checkpoints[("tomoro", True, 16)]
    model = load_colqwen3(folder, overrides={}, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in model.backbone.buffers()} == {torch.float32}
    assert not any(t.is_meta for t in [*model.backbone.parameters(), *model.backbone.buffers()])
    config = QwenVLImageConfig.from_checkpoint(folder)
    inputs = _batch(rows[1:2], config)
    ours = model(*inputs)
    ref = _reference(folder, "tomoro", *inputs)
    # bf16 weights: close to the fp32 reference, not equal.
    cosine = (ours * ref).sum(-1)
    assert float(cosine.min()) > 0.9


def test_inputs_that_do_not_fit_together_are_input_errors(checkpoints, rows):
    folder = checkpoints[("tomoro", True, 16)]
    model = load_colqwen3(folder, overrides={}, device=torch.device("cpu"), dtype=torch.float32)
    config = QwenVLImageConfig.from_checkpoint(folder)
    ids, mask, pixels, grid = _batch(rows[1:2], config)
    first_pad = int((ids[0] == IMAGE_PAD).nonzero()[0])
    keep = [i for i in range(ids.shape[1]) if i != first_pad]
    with pytest.raises(InputError, match=r"need 4 <\|image_pad\|> tokens in total but the input holds 3"):
        model(ids[:, keep], mask[:, keep], pixels, grid)
    with pytest.raises(InputError, match="but no image"):
        model(ids, mask)
    with pytest.raises(InputError, match="pixel_values must be"):
        model(ids, mask, pixels[:-1], grid)
    with pytest.raises(InputError, match="token ids must be in"):
        model(torch.full_like(ids, 10_000), mask)
    pair_ids, pair_mask, pair_pixels, pair_grid = _batch([rows[0], rows[3]], config)
    with pytest.raises(InputError, match="padded on the right"):
        model(pair_ids, pair_mask.flip(-1), pair_pixels, pair_grid)


def test_fixture_matches_the_real_repos_conventions(checkpoints):
    """The tokenizer's special ids agree with config.json, the chat template renders the seed's prompt, and a
    checkpoint stays under 2 MB."""
    from transformers import AutoTokenizer

    for (layout, _, _), folder in checkpoints.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == [tiny_colqwen.LAYOUTS[layout].architecture]
        assert sum(f.stat().st_size for f in folder.iterdir()) < 2_000_000
    folder = checkpoints[("tomoro", True, 16)]
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for key, token in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]:
        assert tokenizer.convert_tokens_to_ids(token) == config[key]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
    )


def _status_mb(field: str) -> float:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"/proc/self/status has no {field}")


def test_loading_holds_no_second_copy_of_the_weights(checkpoints, tmp_path):
    """The peak resident memory of a load in the checkpoint's own dtype grows by far less than the weights:
    the tensors are assigned from the file's mapping, never copied (a copy would add all of them)."""
    sizes = tiny_colqwen.Qwen3VLSizes(hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                                      mrope_section=(24, 20, 20))
    folder = tiny_colqwen.write_colqwen3(tmp_path / "mid", "nvidia", dim=None, sizes=sizes, seed=3)
    weight_mb = (folder / "model.safetensors").stat().st_size / 2**20
    assert weight_mb > 40
    load_colqwen3(checkpoints[("nvidia", False, None)], overrides={}, device=torch.device("cpu"),
                  dtype=torch.float32)  # imports and first-use allocations outside the measurement
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")  # resets VmHWM, the peak resident set, to the current one
    before = _status_mb("VmHWM")
    model = load_colqwen3(folder, overrides={}, device=torch.device("cpu"), dtype=torch.float32)
    grown = _status_mb("VmHWM") - before
    assert sum(p.numel() * 4 for p in model.backbone.parameters()) / 2**20 > 0.95 * weight_mb
    assert grown < 0.25 * weight_mb, f"loading {weight_mb:.0f} MB of weights raised the peak RSS by {grown:.0f} MB"


def test_the_card_reads_without_torch(checkpoints):
    """The repository builder and the preprocess stage read the card in processes that never import torch."""
    import subprocess
    import sys

    folder = checkpoints[("tomoro", True, 16)]
    code = ("import sys; from python_backend_models.colqwen_card import read_colqwen3; "
            f"card = read_colqwen3({str(folder)!r}); print(card['dim'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["16", "False"]
def _mapped_ranges(files) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``files`` (/proc/self/maps)."""
    names = {str(f.resolve()) for f in files}
    ranges = []
    for line in open("/proc/self/maps"):
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].strip() in names:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def test_bf16_weights_loaded_as_bf16_stay_in_the_files_mapping_not_copied(tmp_path):
    # The memory promise (one copy of the weights, not two): with the checkpoint's dtype equal to the serving
    # dtype every backbone tensor is a view of the mapped safetensors file, so its pages are the page cache's.
    # A copy anywhere on the load path (a cast, .clone(), .contiguous() of a copy, load_state_dict without
    # assign=True) moves the tensor into anonymous memory and fails this.
    folder = tiny_colqwen.write_colqwen3(tmp_path / "bf16", "tomoro", dtype=torch.bfloat16, shard_bytes=300_000,
                                         tie_word_embeddings=True)
    files = sorted(folder.glob("model-*.safetensors"))
    assert len(files) > 1
    model = load_colqwen3(folder, overrides={}, device=torch.device("cpu"), dtype=torch.bfloat16)
    ranges = _mapped_ranges(files)
    assert ranges, "the loaded model keeps the checkpoint's files mapped"
    params = dict(model.backbone.named_parameters())
    copied = [name for name, p in params.items()
              if not any(lo <= p.data_ptr() and p.data_ptr() + p.numel() * p.element_size() <= hi for lo, hi in ranges)]
    assert copied == [], f"{len(copied)} of {len(params)} backbone weights were copied on load, e.g. {copied[:3]}"


def test_a_sharded_tied_checkpoint_holds_the_same_tensors_and_loads_the_same(tmp_path, rows):
    single = tiny_colqwen.write_colqwen3(tmp_path / "single", "tomoro", dtype=torch.bfloat16, tie_word_embeddings=True)
    sharded = tiny_colqwen.write_colqwen3(tmp_path / "sharded", "tomoro", dtype=torch.bfloat16, shard_bytes=300_000,
                                          tie_word_embeddings=True)
    config = json.loads((sharded / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["text_config"]["tie_word_embeddings"] is True
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == [f.name for f in shards]
    assert all(f.stat().st_size < 300_000 + 100_000 for f in shards)  # about shard_bytes (+ the header)
    merged = {}
    for f in shards:
        part = load_file(str(f))
        assert all(index["weight_map"][k] == f.name for k in part)
        merged.update(part)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in merged.values())
    reference = load_file(str(single / "model.safetensors"))
    # Tied: no LM head tensor, as save_pretrained writes a tied checkpoint; sharding changes the files only.
    assert "vlm.lm_head.weight" not in merged and set(merged) == set(reference)
    assert all(torch.equal(merged[k], reference[k]) for k in merged)
    inputs = _batch(rows[1:2], QwenVLImageConfig.from_checkpoint(single))
    a = load_colqwen3(single, overrides={}, device=torch.device("cpu"), dtype=torch.bfloat16)(*inputs)
    b = load_colqwen3(sharded, overrides={}, device=torch.device("cpu"), dtype=torch.bfloat16)(*inputs)
    assert torch.equal(a, b)
