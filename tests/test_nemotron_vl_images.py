"""Llama Nemotron VL dynamic tiling (``python_backend_models.nemotron_vl_images``) against hand-computed cases.

The grid rule (vllm_semantics.md §7.1): among ``(cols, rows)`` with ``min <= cols*rows <= max``, in ascending
``cols*rows``, the first grid maximising ``min(cols*rows*S²/(W*H), 0.6) * min(g/a, a/g)`` wins, where
``g = cols/rows`` and ``a = W/H``. Each table row carries its arithmetic, so a reader can check it by hand.
Pixel tests use small tiles (8-16 px) so they stay fast; the rule only sees sizes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import tiny_checkpoints
from python_backend_models.checkpoint import CheckpointError, open_checkpoint
from python_backend_models.errors import InputError
from python_backend_models.nemotron_vl_images import (
    TilingParams,
    candidate_grids,
    choose_grid,
    expand_image_placeholders,
    preprocess_image,
    preprocess_images,
    tile_count,
)


def params(tile: int = 512, lo: int = 1, hi: int = 6, thumbnail: bool = True) -> TilingParams:
    """Real tiles have 16-px patches; small test tiles get two patches a side (one token after the shuffle)."""
    return TilingParams(tile_size=tile, patch_size=16 if tile >= 32 else tile // 2, downsample_ratio=0.5, min_tiles=lo, max_tiles=hi,
                        use_thumbnail=thumbnail)


# (width, height, tile, min, max, expected (cols, rows), expected tiles incl. thumbnail)
GRID_CASES = [
    # square 1024², S=512: (1,1) 0.25*1 = 0.25; (2,1) 0.5*0.5 = 0.25 (not greater); (2,2) min(1.0,0.6)*1 = 0.6 best
    pytest.param(1024, 1024, 512, 1, 6, (2, 2), 5, id="square"),
    # square 512²: (1,1) min(1.0,0.6)*1 = 0.6; (2,2) is also 0.6 but comes later and the comparison is strict
    pytest.param(512, 512, 512, 1, 6, (1, 1), 1, id="square-one-tile-tie-keeps-first"),
    # tiny 10x10: every size factor is capped at 0.6, (1,1) has ratio 1 -> 0.6 first
    pytest.param(10, 10, 512, 1, 6, (1, 1), 1, id="tiny"),
    pytest.param(1, 1, 512, 1, 6, (1, 1), 1, id="one-pixel"),
    # tiny but wide 40x10 (a=4): capped sizes, so only the ratio counts: (4,1) 0.6*1 = 0.6 beats (3,1) 0.45
    pytest.param(40, 10, 512, 1, 6, (4, 1), 5, id="tiny-wide-is-upscaled"),
    # wide 2048x512 (a=4): (3,1) 0.6*0.75 = 0.45; (4,1) 0.6*1 = 0.6; (5,1) 0.6*0.8 = 0.48
    pytest.param(2048, 512, 512, 1, 6, (4, 1), 5, id="wide"),
    # wide 1000x500 (a=2): (1,1) 0.524288*0.5 = 0.262; (2,1) min(1.049,0.6)*1 = 0.6
    pytest.param(1000, 500, 512, 1, 6, (2, 1), 3, id="wide-2-to-1"),
    # 1200x1000 (a=1.2): (2,2) min(0.874,0.6)*(1/1.2) = 0.5 beats (3,2) min(1.311,0.6)*(1.2/1.5) = 0.48; the cap
    # decides it: uncapped, (3,2) would score 0.8 against 0.728
    pytest.param(1200, 1000, 512, 1, 6, (2, 2), 5, id="capped-size-factor"),
    # tall 512x1536 (a=1/3): (1,2) 0.6*(2/3) = 0.4; (1,3) 0.6*1 = 0.6; (1,4) 0.6*0.75 = 0.45
    pytest.param(512, 1536, 512, 1, 6, (1, 3), 4, id="tall"),
    # photo 1280x720 (a=16/9): (2,1) (2*512²/921600)*(16/9)/2 = 0.50568; (3,2) 0.6*(1.5/(16/9)) = 0.50625 wins
    # (a rule by ratio difference alone, InternVL's, would pick (2,1))
    pytest.param(1280, 720, 512, 1, 6, (3, 2), 7, id="photo-16-9"),
    # huge 8000x6000 (a=4/3), k = 512²/48e6: no cap; (2,2) 4k*(3/4) = 3k; (3,2) 6k*(4/3)/(3/2) = 5.33k best
    pytest.param(8000, 6000, 512, 1, 6, (3, 2), 7, id="huge"),
    pytest.param(6000, 8000, 512, 1, 6, (2, 3), 7, id="huge-tall"),
    # max 1 tile: only (1,1), and no thumbnail for a single tile
    pytest.param(2048, 512, 512, 1, 1, (1, 1), 1, id="max-one"),
    # max 2 on 2048x512: (1,1) 0.0625; (1,2) 0.5*(0.5/4) = 0.0625; (2,1) 0.5*0.5 = 0.25
    pytest.param(2048, 512, 512, 1, 2, (2, 1), 3, id="max-two"),
    # min 2 on a square: (1,1) is no candidate; (2,2) 0.6*1 = 0.6 beats (1,2)/(2,1) 0.6*0.5 = 0.3
    pytest.param(512, 512, 512, 2, 4, (2, 2), 5, id="min-two"),
    # min = max = 2 on a square: (1,2) and (2,1) tie at 0.3; vLLM visits the candidate set sorted by tile count,
    # and CPython's set order puts (1,2) first, so one column of two rows
    pytest.param(512, 512, 512, 2, 2, (1, 2), 3, id="tie-same-count"),
    # small tiles, 12x8 with S=4 (a=1.5): (3,2) min(6*16/96,0.6)*1 = 0.6 beats (2,2) 0.6*(2/3) = 0.4
    pytest.param(12, 8, 4, 1, 6, (3, 2), 7, id="small-tiles"),
]


@pytest.mark.parametrize("width, height, tile, lo, hi, grid, tiles", GRID_CASES)
def test_grid_and_tile_count_match_the_hand_computed_table(width, height, tile, lo, hi, grid, tiles):
    p = params(tile, lo, hi)
    assert choose_grid(width, height, p) == grid
    assert tile_count(width, height, p) == tiles


def test_candidates_are_every_grid_in_bounds_by_ascending_tile_count():
    grids = candidate_grids(2, 6)
    assert sorted(grids) == sorted((c, r) for c in range(1, 7) for r in range(1, 7) if 2 <= c * r <= 6)
    counts = [c * r for c, r in grids]
    assert counts == sorted(counts) and counts[0] == 2


def block_image(cols: int, rows: int, tile: int) -> tuple[Image.Image, list[tuple[int, int, int]]]:
    """An image of cols x rows uniform blocks, each ``tile`` px, block (r, c) coloured distinctly."""
    colours = [(40 * r + 10, 30 * c + 20, 7 * (r * cols + c)) for r in range(rows) for c in range(cols)]
    pixels = np.zeros((rows * tile, cols * tile, 3), dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            pixels[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = colours[r * cols + c]
    return Image.fromarray(pixels, "RGB"), colours


def normalised(rgb) -> np.ndarray:
    """(x / 255 - 0.5) / 0.5 in float32, per channel."""
    x = np.asarray(rgb, dtype=np.float32) / np.float32(255)
    return (x - np.float32(0.5)) / np.float32(0.5)


def test_tiles_are_row_major_crops_then_the_thumbnail():
    tile = 8
    # 24x16 (a=1.5) takes the (3, 2) grid (table row "small-tiles" scaled), so the resize is the identity and
    # every grid tile is exactly one block
    image, colours = block_image(3, 2, tile)
    pixel_values, n = preprocess_image(image, params(tile))
    assert n == 7 and pixel_values.shape == (7, 3, tile, tile) and pixel_values.dtype == np.float32
    for k in range(6):  # tile k = block (row k // 3, col k % 3)
        expected = normalised(colours[k])[:, None, None]
        np.testing.assert_array_equal(pixel_values[k], np.broadcast_to(expected, (3, tile, tile)))
    thumbnail = np.asarray(image.resize((tile, tile), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(pixel_values[6], normalised(thumbnail).transpose(2, 0, 1))


def test_no_thumbnail_for_one_tile_or_when_the_checkpoint_has_none():
    one, n = preprocess_image(Image.new("RGB", (8, 8), (1, 2, 3)), params(8))
    assert n == 1 and one.shape == (1, 3, 8, 8)
    image, _ = block_image(3, 2, 8)
    grid_only, n = preprocess_image(image, params(8, thumbnail=False))
    assert n == 6 and grid_only.shape == (6, 3, 8, 8)
    assert tile_count(24, 16, params(8, thumbnail=False)) == 6


def test_a_known_pixel_is_normalised_with_mean_and_std_one_half():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    pixels[5, 3] = (0, 255, 51)  # row 5, column 3
    values, n = preprocess_image(Image.fromarray(pixels, "RGB"), params(16, lo=1, hi=1))
    assert n == 1
    assert values[0, 0, 5, 3] == -1.0 and values[0, 1, 5, 3] == 1.0  # channel-first, (row, column)
    assert values[0, 2, 5, 3] == pytest.approx(-0.6, abs=1e-7)  # 51/255 = 0.2 -> (0.2 - 0.5) / 0.5
    # the image is exactly one tile, so no resampling: every value is its pixel's
    np.testing.assert_array_equal(values[0], normalised(pixels).transpose(2, 0, 1))


def test_huge_image_with_real_pixels_keeps_the_grid_and_the_value_range():
    image = Image.new("RGB", (4000, 3000), (200, 100, 0))  # a = 4/3 like the "huge" row: (3, 2) + thumbnail
    values, n = preprocess_image(image, params(16))
    assert n == 7 and values.shape == (7, 3, 16, 16)
    np.testing.assert_allclose(values, np.broadcast_to(normalised((200, 100, 0))[None, :, None, None], values.shape),
                               atol=1e-6)


def test_transparent_pixels_become_white_and_grey_becomes_rgb():
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    values, _ = preprocess_image(rgba, params(8, lo=1, hi=1))
    np.testing.assert_array_equal(values, np.ones((1, 3, 8, 8), dtype=np.float32))
    grey, _ = preprocess_image(Image.new("L", (8, 8), 255), params(8, lo=1, hi=1))
    np.testing.assert_array_equal(grey, np.ones((1, 3, 8, 8), dtype=np.float32))


def test_several_images_are_concatenated_in_order_with_their_tile_counts():
    p = params(8)
    wide, _ = block_image(3, 2, 8)
    small = Image.new("RGB", (8, 8), (255, 255, 255))
    values, counts = preprocess_images([small, wide, small], p)
    assert counts.tolist() == [1, 7, 1] and values.shape == (9, 3, 8, 8)
    np.testing.assert_array_equal(values[0], values[8])
    np.testing.assert_array_equal(values[1:8], preprocess_image(wide, p)[0])
    empty, none = preprocess_images([], p)
    assert empty.shape == (0, 3, 8, 8) and none.shape == (0,)


def test_an_empty_image_is_an_input_error():
    with pytest.raises(InputError, match="at least one pixel"):
        choose_grid(0, 10, params())


REAL_LAYOUT = {
    "architectures": ["LlamaNemotronVLModel"],
    "force_image_size": 512,
    "patch_size": 16,
    "downsample_ratio": 0.5,
    "dynamic_image_size": True,
    "use_thumbnail": True,
    "min_dynamic_patch": 1,
    "max_dynamic_patch": 6,
    "vision_config": {"model_type": "siglip_vision_model", "image_size": 512, "patch_size": 16},
}


def test_parameters_come_from_the_config_with_the_processor_config_first():
    p = TilingParams.from_config(REAL_LAYOUT)
    assert (p.tile_size, p.patch_size, p.min_tiles, p.max_tiles, p.use_thumbnail) == (512, 16, 1, 6, True)
    assert p.tokens_per_tile == 256  # (512/16)² * 0.5² — the 256 per tile of the facts
    assert TilingParams.from_config(REAL_LAYOUT, {"max_input_tiles": 12, "min_input_tiles": 2}).max_tiles == 12
    fixed = TilingParams.from_config(REAL_LAYOUT, {"dynamic_image_size": False})
    assert (fixed.min_tiles, fixed.max_tiles) == (1, 1)
    fallback = {k: v for k, v in REAL_LAYOUT.items() if k not in ("force_image_size", "patch_size",
                                                                 "min_dynamic_patch", "max_dynamic_patch")}
    p = TilingParams.from_config({**fallback, "vision_config": {"image_size": 448, "patch_size": 14}})
    assert (p.tile_size, p.patch_size, p.max_tiles, p.tokens_per_tile) == (448, 14, 1, 256)


def test_a_checkpoint_folder_is_read_with_its_processor_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(REAL_LAYOUT), encoding="utf-8")
    assert TilingParams.from_checkpoint(open_checkpoint(tmp_path)).max_tiles == 6
    (tmp_path / "processor_config.json").write_text(json.dumps({"max_input_tiles": 4}), encoding="utf-8")
    assert TilingParams.from_checkpoint(open_checkpoint(tmp_path)).max_tiles == 4


def test_config_errors_name_the_field():
    with pytest.raises(CheckpointError, match="force_image_size"):
        TilingParams.from_config({"patch_size": 16})
    with pytest.raises(CheckpointError, match="max_input_tiles"):
        TilingParams.from_config({**REAL_LAYOUT, "min_dynamic_patch": 7})
    with pytest.raises(CheckpointError, match="multiple of the patch size"):
        TilingParams.from_config({**REAL_LAYOUT, "force_image_size": 500})


def test_each_placeholder_becomes_its_images_context_tokens():
    prompt = "passage: <image> <image> Describe."
    expanded = expand_image_placeholders(prompt, [5, 1], tokens_per_tile=4)
    assert expanded == (
        "passage: <img>" + "<IMG_CONTEXT>" * 20 + "</img> <img>" + "<IMG_CONTEXT>" * 4 + "</img> Describe."
    )
    assert expand_image_placeholders("query: no image", [], 256) == "query: no image"
    with pytest.raises(InputError, match="2 <image> placeholder.*1 image"):
        expand_image_placeholders(prompt, [5], tokens_per_tile=4)


def test_the_expanded_prompt_tokenises_into_one_context_token_per_position():
    """With <img>, <IMG_CONTEXT> and </img> as added tokens of a byte-level BPE (the checkpoints' tokenizers are
    Llama-3 byte-level BPEs with these added tokens), the context tokens survive tokenisation one for one."""
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_str(tiny_checkpoints._lfm2_bpe_tokenizer_json())
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in ("<img>", "<IMG_CONTEXT>", "</img>")])
    start, ctx, end = (tokenizer.token_to_id(t) for t in ("<img>", "<IMG_CONTEXT>", "</img>"))
    prompt = expand_image_placeholders("passage: <image> Describe the image.", [5], tokens_per_tile=4)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    first = ids.index(start)
    assert ids[first + 1:first + 21] == [ctx] * 20 and ids[first + 21] == end and ids.count(ctx) == 20
