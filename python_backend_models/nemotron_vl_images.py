"""Llama Nemotron VL image preprocessing: dynamic tiling, SigLIP normalisation, ``<image>`` expansion.

What vLLM's ``LlamaNemotronVLEmbedImageProcessor`` does for ``nvidia/llama-nemotron-embed-vl-1b-v2`` and
``nvidia/llama-nemotron-rerank-vl-1b-v2`` (both use the same processor), in numpy + Pillow:

1. The image becomes RGB (an RGBA image is laid on white, as vLLM's image loader does).
2. A grid of ``cols x rows`` tiles is chosen among every grid with ``min_tiles <= cols*rows <= max_tiles``,
   visited in ascending ``cols*rows``; the first grid with the largest
   ``min(cols*rows*S*S / (W*H), 0.6) * min(r_grid / r_img, r_img / r_grid)`` wins (``r = width / height``,
   ``S`` the tile side). The 0.6 cap means that once a grid holds enough pixels, only the aspect ratio counts,
   and a smaller grid wins a tie.
3. The whole image is resized (Pillow bicubic) to ``(cols*S, rows*S)`` and cut into ``cols*rows`` tiles,
   row-major (left to right, then top to bottom). When there is more than one tile and the checkpoint uses a
   thumbnail, the original image resized to ``S x S`` is appended as the last tile.
4. Each tile: ``uint8 / 255`` in float32, then ``(x - mean) / std`` (SigLIP: 0.5 / 0.5, so values in [-1, 1]).

The prompt side: every literal ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` x (tiles x tokens per tile)
+ ``</img>``, where tokens per tile = ``int((S // patch)**2 * downsample_ratio**2)`` (pixel shuffle folds each
2x2 block of vision patches into one token at ratio 0.5: 256 for 512-px tiles with 16-px patches).

Not supported: image embeddings as input (``image_embeds``), video. Nothing here runs checkpoint code; the
parameters are read from ``config.json`` / ``processor_config.json`` as data (:meth:`TilingParams.from_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from .checkpoint import Checkpoint, CheckpointError, read_json_if_exists
from .errors import InputError

IMAGE_PLACEHOLDER = "<image>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# vLLM's size factor saturates here: a grid with at least 60 % of the image's pixels gains nothing by growing.
_SIZE_FACTOR_CAP = 0.6


@dataclass(frozen=True)
class TilingParams:
    """How one checkpoint tiles images.

    ``tile_size`` is the tile side in pixels (config ``force_image_size``); ``min_tiles`` / ``max_tiles`` bound
    ``cols * rows`` (the thumbnail is not counted); ``tokens_per_tile`` is what each tile (thumbnail included)
    contributes to the prompt after pixel shuffle.
    """

    tile_size: int
    patch_size: int
    downsample_ratio: float
    min_tiles: int = 1
    max_tiles: int = 1
    use_thumbnail: bool = True
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD

    def __post_init__(self) -> None:
        if self.tile_size < 1 or self.patch_size < 1 or self.tile_size % self.patch_size:
            raise CheckpointError(
                f"tile size {self.tile_size} must be a positive multiple of the patch size {self.patch_size} "
                "(config force_image_size and vision_config.patch_size)"
            )
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise CheckpointError(
                f"tile bounds must satisfy 1 <= min <= max, got min {self.min_tiles}, max {self.max_tiles} "
                "(processor_config min_input_tiles/max_input_tiles, else config min_dynamic_patch/max_dynamic_patch)"
            )
        if not 0 < self.downsample_ratio <= 1 or self.tokens_per_tile < 1:
            raise CheckpointError(
                f"downsample_ratio {self.downsample_ratio} leaves no tokens per tile of "
                f"{self.tile_size}px with {self.patch_size}px patches"
            )
        if any(s <= 0 for s in self.std) or len(self.mean) != 3 or len(self.std) != 3:
            raise CheckpointError(f"normalisation needs three means and three positive stds, got {self.mean}, {self.std}")

    @property
    def tokens_per_tile(self) -> int:
        # int() truncates like vLLM's int((image_size // patch_size) ** 2 * (downsample_ratio ** 2)).
        return int((self.tile_size // self.patch_size) ** 2 * (self.downsample_ratio**2))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], processor_config: Mapping[str, Any] | None = None) -> TilingParams:
        """The parameters from a checkpoint's ``config.json`` (and ``processor_config.json`` when it has one).

        Lookup order, as vLLM's embed processor reads them:

        * tile side: ``force_image_size``, else ``vision_config.image_size``;
        * patch: ``patch_size``, else ``vision_config.patch_size``; ratio: ``downsample_ratio`` (default 0.5);
        * tile bounds: processor ``min_input_tiles`` / ``max_input_tiles``, else config ``min_dynamic_patch`` /
          ``max_dynamic_patch``, else 1 / 1; processor ``dynamic_image_size``, else config's, else true — when
          false, one tile only;
        * thumbnail: config ``use_thumbnail`` (default true). Mean / std are SigLIP's (vLLM fixes them too).
        """
        processor_config = processor_config or {}
        vision = config.get("vision_config") or {}

        def pick(name: str, *places: tuple[Mapping[str, Any], str], default: Any = None) -> Any:
            for place, key in places:
                if place.get(key) is not None:
                    return place[key]
            if default is None:
                raise CheckpointError(f"config.json has no {name}; add it to config.json or pass --hf-overrides")
            return default

        tile = pick("force_image_size / vision_config.image_size", (config, "force_image_size"), (vision, "image_size"))
        patch = pick("patch_size / vision_config.patch_size", (config, "patch_size"), (vision, "patch_size"))
        ratio = pick("downsample_ratio", (config, "downsample_ratio"), default=0.5)
        lo = pick("min tiles", (processor_config, "min_input_tiles"), (config, "min_dynamic_patch"), default=1)
        hi = pick("max tiles", (processor_config, "max_input_tiles"), (config, "max_dynamic_patch"), default=1)
        dynamic = pick("dynamic_image_size", (processor_config, "dynamic_image_size"), (config, "dynamic_image_size"),
                       default=True)
        if not dynamic:
            lo = hi = 1
        thumbnail = pick("use_thumbnail", (config, "use_thumbnail"), default=True)
        return cls(
            tile_size=int(tile),
            patch_size=int(patch),
            downsample_ratio=float(ratio),
            min_tiles=int(lo),
            max_tiles=int(hi),
            use_thumbnail=bool(thumbnail),
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> TilingParams:
        """:meth:`from_config` on the checkpoint's (overridden) config and its ``processor_config.json``, if any."""
        return cls.from_config(checkpoint.config, read_json_if_exists(checkpoint.file("processor_config.json")))


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Every ``(cols, rows)`` with ``min_tiles <= cols*rows <= max_tiles``, in the order vLLM visits them.

    vLLM builds a Python set and sorts it by ``cols*rows`` (a stable sort), so grids with the same tile count keep
    the set's iteration order; it is deterministic for small int tuples, and this builds the same set the same
    way so that a tie between e.g. ``(1, 2)`` and ``(2, 1)`` resolves as it does there.
    """
    grids = {
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    }
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(width: int, height: int, params: TilingParams) -> tuple[int, int]:
    """The ``(cols, rows)`` grid for a ``width x height`` image (rule in the module docstring)."""
    if width < 1 or height < 1:
        raise InputError(f"an image must have at least one pixel, got {width}x{height}")
    aspect = width / height
    area = width * height
    best, best_factor = (1, 1), float("-inf")
    for cols, rows in candidate_grids(params.min_tiles, params.max_tiles):
        grid_aspect = cols / rows
        size_factor = min(cols * rows * params.tile_size * params.tile_size / area, _SIZE_FACTOR_CAP)
        factor = size_factor * min(grid_aspect / aspect, aspect / grid_aspect)
        if factor > best_factor:  # strictly greater: the first best grid wins
            best, best_factor = (cols, rows), factor
    return best


def tile_count(width: int, height: int, params: TilingParams) -> int:
    """How many tiles (thumbnail included) a ``width x height`` image becomes, without touching pixels."""
    cols, rows = choose_grid(width, height, params)
    n = cols * rows
    return n + 1 if params.use_thumbnail and n > 1 else n


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as vLLM loads images: RGBA is composited on white; other modes go through Pillow's ``convert``."""
    if image.mode == "RGB":
        return image
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def tile_images(image: Image.Image, params: TilingParams) -> list[Image.Image]:
    """The tiles of one image as ``S x S`` RGB Pillow images: grid tiles row-major, then the thumbnail."""
    image = to_rgb(image)
    cols, rows = choose_grid(image.width, image.height, params)
    s = params.tile_size
    resized = image.resize((cols * s, rows * s), Image.Resampling.BICUBIC)
    tiles = [resized.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
    if params.use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((s, s), Image.Resampling.BICUBIC))
    return tiles


def normalise(tiles: Sequence[Image.Image], params: TilingParams) -> np.ndarray:
    """``(num_tiles, 3, S, S)`` float32: ``(uint8 / 255 - mean) / std`` per channel, in float32 throughout
    (the same roundings as torchvision's ``ToTensor`` + ``Normalize``)."""
    pixels = np.stack([np.asarray(t, dtype=np.uint8) for t in tiles]).astype(np.float32)  # (n, S, S, 3)
    pixels /= np.float32(255)
    pixels -= np.asarray(params.mean, dtype=np.float32)
    pixels /= np.asarray(params.std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def preprocess_image(image: Image.Image, params: TilingParams) -> tuple[np.ndarray, int]:
    """One image → ``(pixel_values (num_tiles, 3, S, S) float32, num_tiles)``."""
    tiles = tile_images(image, params)
    return normalise(tiles, params), len(tiles)


def preprocess_images(images: Sequence[Image.Image], params: TilingParams) -> tuple[np.ndarray, np.ndarray]:
    """Several images, ragged: ``(pixel_values (sum of tiles, 3, S, S) float32, tiles per image (n,) int64)``.

    The tiles of image ``i`` are rows ``offsets[i]:offsets[i+1]`` with ``offsets = [0, *cumsum(counts)]``; the
    order is the order of the ``<image>`` placeholders in the prompt.
    """
    if not images:
        s = params.tile_size
        return np.zeros((0, 3, s, s), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    parts = [preprocess_image(image, params) for image in images]
    return np.concatenate([p for p, _ in parts]), np.asarray([n for _, n in parts], dtype=np.int64)


def image_tokens(num_tiles: int, tokens_per_tile: int) -> str:
    """What one ``<image>`` becomes: ``<img>`` + ``<IMG_CONTEXT>`` x (num_tiles * tokens_per_tile) + ``</img>``."""
    return IMG_START + IMG_CONTEXT * (num_tiles * tokens_per_tile) + IMG_END


def expand_image_placeholders(prompt: str, tile_counts: Sequence[int], tokens_per_tile: int) -> str:
    """Replace the ``<image>`` placeholders of ``prompt``, in order, with each image's context tokens.

    ``tile_counts[i]`` is the tile count of the i-th image (:func:`tile_count`). The number of placeholders
    must equal the number of images. Tokenise the result with a tokenizer that knows ``<img>``,
    ``<IMG_CONTEXT>`` and ``</img>`` as added tokens (the checkpoints' tokenizers do).
    """
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    if len(pieces) - 1 != len(tile_counts):
        raise InputError(
            f"the prompt holds {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but {len(tile_counts)} "
            f"image(s) came with it; send one image per {IMAGE_PLACEHOLDER}"
        )
    out = [pieces[0]]
    for count, piece in zip(tile_counts, pieces[1:]):
        out.append(image_tokens(int(count), tokens_per_tile))
        out.append(piece)
    return "".join(out)
