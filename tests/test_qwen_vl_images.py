"""``python_backend_models.qwen_vl_images`` equals transformers' own Qwen2-VL image processor, PIL backend.

Qwen3-VL and Qwen3.5 checkpoints name ``Qwen2VLImageProcessor(Fast)`` in their ``preprocessor_config.json`` and
transformers' auto mapping sends ``qwen3_vl`` / ``qwen3_5`` to it, so that is the reference, loaded with
``AutoImageProcessor.from_pretrained(folder, backend="pil")`` from the same folder we read.  The reference gets
the image as Pillow opens the file (it converts to RGB itself); ours goes through ``media.load_image`` from a
``data:`` URL, so decoding and RGB conversion are part of what is compared.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from python_backend_models.checkpoint import CheckpointError
from python_backend_models.media import MediaError, load_image
from python_backend_models.qwen_vl_images import (
    QwenVLImageConfig,
    num_image_tokens,
    preprocess_image,
    preprocess_images,
)

PIXEL_ATOL = 1e-6

# The image-processor layouts of the checkpoints the ColQwen issue names, with small pixel budgets where the
# real ones would make the tests slow (tiny: oracles.md §3.4's 32² .. 128²).
CONFIGS = {
    # Qwen3-VL's real file (Qwen/Qwen3-VL-*-Instruct, Tomoro, Ops, Nemotron colembed): 256² .. 4096² pixels.
    "qwen3_vl": {
        "size": {"longest_edge": 16777216, "shortest_edge": 65536},
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
    },
    "qwen3_vl_tiny": {
        "size": {"longest_edge": 128 * 128, "shortest_edge": 32 * 32},
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessor",
    },
    # Qwen2-VL style: top-level min/max_pixels win over size; CLIP mean/std and patch 14 from the class defaults;
    # bilinear resampling and an explicit rescale factor, so each key is shown to be read.
    "qwen2_vl_style": {
        "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 40,
        "size": {"longest_edge": 10**9, "shortest_edge": 1},
        "resample": 2, "rescale_factor": 0.00392156862745098,
        "image_processor_type": "Qwen2VLImageProcessor",
    },
}

# (height, width): tiny, odd, ordinary, very wide, very tall (aspect ratio 150), page-like; with the tiny
# budgets they exercise the min clamp (below 32² px), the max clamp, and the one-factor floor of a long side.
SIZES = [(1, 1), (5, 7), (16, 16), (50, 70), (20, 3000), (3000, 20), (333, 517), (600, 800), (1100, 850)]


def _noise_image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def _smooth_image(height: int, width: int) -> Image.Image:
    """A gradient page: JPEG keeps it close, noise would be all artefacts."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def _file(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _data_url(data: bytes, fmt: str) -> str:
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(request.param)
    (folder / "preprocessor_config.json").write_text(json.dumps(CONFIGS[request.param]), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def reference(checkpoint):
    processor = AutoImageProcessor.from_pretrained(checkpoint, backend="pil")
    assert type(processor) is Qwen2VLImageProcessorPil
    return processor


@pytest.fixture(scope="module")
def config(checkpoint) -> QwenVLImageConfig:
    return QwenVLImageConfig.from_checkpoint(checkpoint)


def _assert_same(ours_pixels, ours_grid, expected) -> None:
    assert ours_pixels.dtype == np.float32 and ours_grid.dtype == np.int64
    np.testing.assert_array_equal(ours_grid, expected["image_grid_thw"])
    assert ours_pixels.shape == expected["pixel_values"].shape
    assert float(np.max(np.abs(ours_pixels - expected["pixel_values"]))) <= PIXEL_ATOL


class TestQwen3VLReusesTheQwen2VLImageProcessor:
    def test_auto_mapping(self):
        for model_type in ("qwen2_vl", "qwen3_vl", "qwen3_5"):
            assert IMAGE_PROCESSOR_MAPPING_NAMES[model_type]["pil"] == "Qwen2VLImageProcessorPil"


    def test_no_torchvision_anywhere(self, config):
        # DESIGN fact: PyPI's torchvision is a CUDA build that breaks beside the CPU torch; the PIL path needs none.
        preprocess_image(_noise_image(40, 40, 0), config)
        assert importlib.util.find_spec("torchvision") is None
        assert "torchvision" not in sys.modules


class TestConfigIsReadLikeTransformers:
    def test_fields_equal_the_reference_processor(self, config, reference):
        assert config.patch_size == reference.patch_size
        assert config.temporal_patch_size == reference.temporal_patch_size
        assert config.merge_size == reference.merge_size
        assert (config.min_pixels, config.max_pixels) == (reference.size.shortest_edge, reference.size.longest_edge)
        assert config.image_mean == pytest.approx(tuple(reference.image_mean), abs=0)
        assert config.image_std == pytest.approx(tuple(reference.image_std), abs=0)
        assert config.rescale_factor == reference.rescale_factor
        assert config.resample == int(reference.resample)
        assert config.patch_dim == 3 * config.temporal_patch_size * config.patch_size**2

    def test_missing_preprocessor_config_names_the_file(self, tmp_path):
        with pytest.raises(CheckpointError, match=r"preprocessor_config.json is missing"):
            QwenVLImageConfig.from_checkpoint(tmp_path)

    def test_inconsistent_pixel_budget_is_refused(self, tmp_path):
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 100, "max_pixels": 10}))
        with pytest.raises(CheckpointError, match=r"max_pixels \(10\) is below min_pixels \(100\)"):
            QwenVLImageConfig.from_checkpoint(tmp_path)


class TestPixelValuesEqualTransformersPIL:
    @pytest.mark.parametrize("height,width", SIZES)
    def test_png(self, config, reference, height, width):
        image = _noise_image(height, width, seed=height * 7919 + width)
        data = _file(image, "PNG")
        expected = reference(images=[Image.open(io.BytesIO(data))], return_tensors="np")
        ours = preprocess_image(load_image(_data_url(data, "PNG")), config)
        _assert_same(ours.pixel_values, ours.image_grid_thw, expected)
        grid_t, grid_h, grid_w = (int(v) for v in expected["image_grid_thw"][0])
        assert ours.num_placeholders == grid_t * grid_h * grid_w // reference.merge_size**2
        assert ours.num_placeholders == reference.get_number_of_image_patches(height, width, {}) // 4
        assert num_image_tokens(height, width, config) == ours.num_placeholders

    @pytest.mark.parametrize("height,width", [(7, 9), (333, 517), (900, 640)])
    def test_jpeg(self, config, reference, height, width):
        data = _file(_smooth_image(height, width), "JPEG")
        expected = reference(images=[Image.open(io.BytesIO(data))], return_tensors="np")
        ours = preprocess_image(load_image(_data_url(data, "JPEG")), config)
        _assert_same(ours.pixel_values, ours.image_grid_thw, expected)

    def test_rgba_png_is_composited_like_transformers(self, config, reference):
        rgba = np.random.RandomState(3).randint(0, 256, (40, 60, 4), dtype=np.uint8)
        data = _file(Image.fromarray(rgba, mode="RGBA"), "PNG")
        expected = reference(images=[Image.open(io.BytesIO(data))], return_tensors="np")
        ours = preprocess_image(load_image(data), config)
        _assert_same(ours.pixel_values, ours.image_grid_thw, expected)

    def test_a_batch_is_the_images_concatenated_without_padding(self, config, reference):
        images = [_noise_image(h, w, seed=i) for i, (h, w) in enumerate([(50, 70), (20, 3000), (333, 517)])]
        expected = reference(images=images, return_tensors="np")
        pixel_values, grids, placeholders = preprocess_images(images, config)
        _assert_same(pixel_values, grids, expected)
        assert placeholders == [int(np.prod(g)) // reference.merge_size**2 for g in expected["image_grid_thw"]]
        assert pixel_values.shape[0] == int(np.prod(grids, axis=1).sum())


class TestPixelBudgetClamps:
    def test_resized_sides_are_factor_multiples_within_the_budget(self):
        config = QwenVLImageConfig.from_dict(CONFIGS["qwen3_vl_tiny"])
        for height, width, clamp in [(8, 8, "min"), (2000, 1500, "max")]:
            _, grid_h, grid_w = (int(v) for v in preprocess_image(_noise_image(height, width, 0), config).image_grid_thw[0])
            pixels = grid_h * grid_w * config.patch_size**2
            assert grid_h % config.merge_size == 0 and grid_w % config.merge_size == 0
            assert (pixels >= config.min_pixels) if clamp == "min" else (pixels <= config.max_pixels)

    def test_overrides_change_the_grid_as_in_transformers(self):
        config = replace(QwenVLImageConfig.from_dict(CONFIGS["qwen3_vl_tiny"]), max_pixels=64 * 64)
        reference = Qwen2VLImageProcessorPil(**{**CONFIGS["qwen3_vl_tiny"], "size": None, "min_pixels": 32 * 32,
                                                "max_pixels": 64 * 64})
        image = _noise_image(300, 400, 1)
        ours = preprocess_image(image, config)
        _assert_same(ours.pixel_values, ours.image_grid_thw, reference(images=[image], return_tensors="np"))


class TestBadImagesAreMediaErrors:
    def test_aspect_ratio_over_200_is_refused_like_transformers(self, config, reference):
        image = _noise_image(4, 1000, 0)  # 250:1
        with pytest.raises(ValueError, match=r"aspect ratio must be smaller than 200"):
            reference(images=[image], return_tensors="np")
        with pytest.raises(MediaError, match=r"aspect ratio is 250.0 \(1000x4\); Qwen-VL accepts at most 200:1"):
            preprocess_image(image, config)
