"""Qwen2-VL / Qwen3-VL / Qwen3.5 image preprocessing, exactly as transformers' PIL backend does it (numpy + Pillow).

Qwen3-VL and Qwen3.5 reuse the Qwen2-VL image processor (transformers' auto mapping sends ``qwen3_vl`` and
``qwen3_5`` to ``Qwen2VLImageProcessor``); this module is a copy of the steps of its PIL class,
``transformers.models.qwen2_vl.image_processing_pil_qwen2_vl.Qwen2VLImageProcessorPil`` (5.23.0), checked against
it in ``tests/test_qwen_vl_images.py``.  The torchvision ("fast") class resizes differently (a different
bicubic kernel, ~1e-2 in scores, reference/oracles.md §3.4 gotcha 2); torchvision is not used anywhere here.

Per image (a decoded RGB ``PIL.Image`` of size (W, H), e.g. from ``media.load_image``):

1. ``smart_resize`` to (H', W'), both multiples of ``factor = patch_size * merge_size``, with
   ``min_pixels <= H' * W' <= max_pixels`` (unless the clamp to one ``factor`` forces more) and the aspect
   ratio kept as closely as possible; Pillow ``resize`` with the checkpoint's ``resample`` (default bicubic).
2. Rescale: ``uint8 -> float64 * rescale_factor -> float32`` (transformers' upcast-then-downcast order).
3. Normalise per channel in float32: ``(x - mean) / std``.
4. Patchify: (C, H', W') -> ``pixel_values`` (grid_h * grid_w, C * T * P * P), with P = ``patch_size``,
   T = ``temporal_patch_size`` (the single frame repeated T times), grid_h = H' / P, grid_w = W' / P; patches
   ordered by merge window (each run of merge_size² consecutive rows is one merged LM token).
5. ``image_grid_thw`` = (1, grid_h, grid_w); placeholder tokens = grid_h * grid_w / merge_size².

Not covered: video (frames, ``grid_t > 1``), per-request ``mm_processor_kwargs`` overrides (use
``dataclasses.replace(config, min_pixels=..., max_pixels=...)``), images that are not RGB when
``do_convert_rgb`` is false.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoint import CheckpointError
from .media import MediaError, to_rgb

PREPROCESSOR_CONFIG = "preprocessor_config.json"

# Qwen2VLImageProcessorPil's class defaults (used for keys a preprocessor_config.json leaves out).
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class QwenVLImageConfig:
    """The image processor's settings, as ``preprocessor_config.json`` gives them (defaults: transformers'
    ``Qwen2VLImageProcessorPil``; a Qwen3-VL checkpoint sets patch 16, mean/std 0.5)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, float, float] = _OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = _OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = int(Image.Resampling.BICUBIC)
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{PREPROCESSOR_CONFIG}: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_pixels < self.min_pixels:
            raise ValueError(
                f"{PREPROCESSOR_CONFIG}: max_pixels ({self.max_pixels}) is below min_pixels ({self.min_pixels})"
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(f"{PREPROCESSOR_CONFIG}: image_mean and image_std need 3 values (RGB)")
        if not self.do_resize:
            # Without the resize nothing makes the sides multiples of the patch grid; transformers then fails
            # inside a reshape, so refuse it where the configuration is read.
            raise ValueError(f"{PREPROCESSOR_CONFIG}: do_resize false is not supported for Qwen-VL images")

    @property
    def factor(self) -> int:
        """Side multiple of a resized image: one merged token covers ``factor`` × ``factor`` pixels."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one ``pixel_values`` row: C * T * P * P (3 * 2 * 16 * 16 = 1536 for Qwen3-VL)."""
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @classmethod
    def from_dict(cls, raw: dict) -> QwenVLImageConfig:
        """From the JSON object of ``preprocessor_config.json``.  As transformers' ``__init__`` does,
        top-level ``min_pixels`` / ``max_pixels`` win over ``size.shortest_edge`` / ``size.longest_edge``."""
        size = raw.get("size") or {}
        if not isinstance(size, dict):
            raise ValueError(f"{PREPROCESSOR_CONFIG}: size must be an object with shortest_edge/longest_edge")
        min_pixels = raw.get("min_pixels", size.get("shortest_edge", size.get("min_pixels", cls.min_pixels)))
        max_pixels = raw.get("max_pixels", size.get("longest_edge", size.get("max_pixels", cls.max_pixels)))
        values = {
            "patch_size": int(raw.get("patch_size", cls.patch_size)),
            "temporal_patch_size": int(raw.get("temporal_patch_size", cls.temporal_patch_size)),
            "merge_size": int(raw.get("merge_size", cls.merge_size)),
            "min_pixels": int(min_pixels),
            "max_pixels": int(max_pixels),
            "image_mean": tuple(float(v) for v in raw.get("image_mean", cls.image_mean)),
            "image_std": tuple(float(v) for v in raw.get("image_std", cls.image_std)),
            "rescale_factor": float(raw.get("rescale_factor", cls.rescale_factor)),
            "resample": int(raw.get("resample", cls.resample)),
        }
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            values[flag] = bool(raw.get(flag, getattr(cls, flag)))
        return cls(**values)

    @classmethod
    def from_checkpoint(cls, folder: str | Path) -> QwenVLImageConfig:
        """Read ``<folder>/preprocessor_config.json``."""
        path = Path(folder) / PREPROCESSOR_CONFIG
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: a Qwen-VL checkpoint needs its image processor configuration "
                "(patch_size, merge_size, size, image_mean, image_std)"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} cannot be read as JSON: {exc}") from None
        try:
            return cls.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class QwenVLImage:
    """One processed image.

    ``pixel_values``: float32 (grid_h * grid_w, C * T * P * P); ``image_grid_thw``: int64 (1, 3) = (1, grid_h,
    grid_w); ``num_placeholders``: how many ``<|image_pad|>`` ids the prompt's one placeholder expands to.
    """

    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    num_placeholders: int


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(H', W') for an (H, W) image: multiples of ``factor``, pixel count within [min_pixels, max_pixels] as far
    as one ``factor`` allows, aspect ratio kept.  transformers' ``smart_resize``, with its aspect-ratio refusal
    as a ``MediaError``."""
    if min(height, width) < 1:
        raise MediaError(f"the image has no pixels ({width}x{height})")
    ratio = max(height, width) / min(height, width)
    if ratio > _MAX_ASPECT_RATIO:
        raise MediaError(
            f"the image's aspect ratio is {ratio:.1f} ({width}x{height}); Qwen-VL accepts at most "
            f"{_MAX_ASPECT_RATIO}:1, crop or pad the image"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid(height: int, width: int, config: QwenVLImageConfig) -> tuple[int, int, int]:
    """(grid_t, grid_h, grid_w) for an (H, W) image, without touching pixels (to size a prompt early)."""
    resized_h, resized_w = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
    return 1, resized_h // config.patch_size, resized_w // config.patch_size


def num_image_tokens(height: int, width: int, config: QwenVLImageConfig) -> int:
    """Placeholder tokens of an (H, W) image: grid_t * grid_h * grid_w / merge_size²."""
    grid_t, grid_h, grid_w = image_grid(height, width, config)
    return grid_t * grid_h * grid_w // config.merge_size**2


def _patchify(image: np.ndarray, config: QwenVLImageConfig) -> np.ndarray:
    """(C, H', W') float32 -> (grid_h * grid_w, C * T * P * P), rows in merge-window order."""
    channels, height, width = image.shape
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    grid_h, grid_w = height // p, width // p
    patches = image.reshape(channels, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, P, P)
    # One still frame fills all T temporal slots (a broadcast, copied once by the reshape).
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
    return patches.reshape(grid_h * grid_w, channels * t * p * p)


def preprocess_image(image: Image.Image, config: QwenVLImageConfig) -> QwenVLImage:
    """One decoded image -> ``QwenVLImage`` (shapes in its docstring)."""
    if config.do_convert_rgb:
        image = to_rgb(image)
    elif image.mode != "RGB":
        raise MediaError(f"the image is in mode {image.mode!r}; this checkpoint's processor needs RGB")
    width, height = image.size
    resized_h, resized_w = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
    resized = image.resize((resized_w, resized_h), resample=Image.Resampling(config.resample))
    pixels = np.asarray(resized).transpose(2, 0, 1)  # (C, H', W') uint8
    if config.do_rescale:
        # float64 first, then float32: the order transformers' rescale uses (the float32 bits depend on it).
        pixels = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
    else:
        pixels = pixels.astype(np.float32)
    if config.do_normalize:
        mean = np.asarray(config.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(config.image_std, dtype=np.float32)[:, None, None]
        pixels = (pixels - mean) / std
    pixel_values = np.ascontiguousarray(_patchify(pixels, config), dtype=np.float32)
    grid_h, grid_w = resized_h // config.patch_size, resized_w // config.patch_size
    return QwenVLImage(
        pixel_values=pixel_values,
        image_grid_thw=np.array([[1, grid_h, grid_w]], dtype=np.int64),
        num_placeholders=grid_h * grid_w // config.merge_size**2,
    )


def preprocess_images(
    images: Sequence[Image.Image], config: QwenVLImageConfig
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Several images, concatenated as the HF processor returns them (ragged, no padding):
    ``pixel_values`` (sum of grid_h * grid_w, C * T * P * P) float32, ``image_grid_thw`` (n_images, 3) int64,
    and each image's placeholder count; image i's rows start at the sum of the earlier images' grid products."""
    if not images:
        raise ValueError("preprocess_images needs at least one image")
    processed = [preprocess_image(image, config) for image in images]
    return (
        np.concatenate([p.pixel_values for p in processed], axis=0),
        np.concatenate([p.image_grid_thw for p in processed], axis=0),
        [p.num_placeholders for p in processed],
    )
