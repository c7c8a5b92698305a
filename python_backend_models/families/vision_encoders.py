"""The encoder stage's cores for the image families: the model modules (``colqwen3``, ``colqwen3_5``,
``nemotron_vl``) behind the shared packing of ``base.Encoder`` and the text families' heads.

Each pack's rows carry their own pixels (``pixel_values``, ``image_sizes`` as ``multimodal`` makes them); a pack
hands the model the rows' pixels concatenated in row order, which is the order of the image tokens in the pack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import contract as C
from ..cards import ModelInfo
from ..checkpoint import read_json
from ..multimodal import from_bytes_row
from .base import Encoder, Features, PackInputs, Projection, Wanted, resolve_dtype
from .bi_encoder import BiEncoder
from .colbert import ColbertEncoder


class VisionEncoder(Encoder):
    """``load`` builds the family's model; ``run`` calls it on one pack."""

    def __init__(self, info: ModelInfo, device: str = "cpu", dtype: str = "auto", max_batch_tokens: int = 16384):
        from ..registry import family_of

        self.info = info
        self.device = torch.device(device)
        path = Path(info.path)
        self.dtype = resolve_dtype(dtype, self.device, read_json(path / "config.json"))
        self.model = self.load(path)
        self.projection = Projection(info).to(self.device)  # no layers: the model projects itself
        self.layout = family_of(info).layout(info)
        self.max_batch_tokens = max_batch_tokens
        self.pass_cost_tokens = 64 if self.device.type == "cpu" else 4096
        self.forward_passes = 0
        self.vocab_size = int(getattr(self.model, "vocab_size", 0)
                              or self.model.language_model.embed_tokens.num_embeddings)

    def load(self, path: Path):
        raise NotImplementedError

    def image_features(self, raw_pixels: bytes, raw_sizes: bytes, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        """One row's pixel features from the preprocess stage's BYTES elements, checked against its ids."""
        pixels = from_bytes_row(raw_pixels, np.float32, self.layout.pixel_shape)
        sizes = from_bytes_row(raw_sizes, np.int64, self.layout.size_shape or (1,)).reshape(-1, *self.layout.size_shape)
        self.layout.check_row(input_ids, pixels, sizes)
        return {C.PIXEL_VALUES: pixels, C.IMAGE_SIZES: sizes}

    def pixels(self, rows: Sequence[Features]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The pack's pixel rows and image sizes, concatenated in row order (None when no row has an image)."""
        with_images = [f for f in rows if C.PIXEL_VALUES in f and f[C.PIXEL_VALUES].shape[0]]
        if not with_images:
            return None, None
        pixels = np.concatenate([f[C.PIXEL_VALUES] for f in with_images])
        sizes = np.concatenate([f[C.IMAGE_SIZES] for f in with_images])
        return torch.from_numpy(pixels).to(self.device, self.dtype), torch.from_numpy(sizes).to(self.device)

    def forward_pack(self, ids, attention, rows, lengths):
        pixels, sizes = self.pixels(rows)
        return self.run(ids, attention, pixels, sizes).float()

    def run(self, ids: torch.Tensor, attention: torch.Tensor, pixels: torch.Tensor | None,
            sizes: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class ColQwenEncoder(VisionEncoder, ColbertEncoder):
    """ColQwen3: the model returns per-token projected vectors (rows, width, dim); the ColBERT head applies L2
    (idempotent where the model normalises itself) and keeps every prompt token."""

    def load(self, path):
        from .colqwen3 import load_colqwen3

        return load_colqwen3(path, overrides=self.info.hf_overrides, device=self.device, dtype=self.dtype)

    def run(self, ids, attention, pixels, sizes):
        return self.model(ids, attention, pixels, sizes)


class ColQwen35Encoder(ColQwenEncoder):
    """ColQwen3.5: the same head over the Qwen3.5 hybrid backbone."""

    def load(self, path):
        from .colqwen3_5 import load_colqwen3_5

        return load_colqwen3_5(path, overrides=self.info.hf_overrides, device=self.device, dtype=self.dtype)


class NemotronEmbedEncoder(VisionEncoder, BiEncoder):
    """Llama Nemotron VL embed: token states (rows, width, H); MEAN over the attention mask for ``embed``."""

    def load(self, path):
        from .nemotron_vl import load_nemotron_vl

        return load_nemotron_vl(path, overrides=self.info.hf_overrides, device=self.device, dtype=self.dtype)

    def run(self, ids, attention, pixels, sizes):
        return self.model.hidden(ids, attention, pixels)


class NemotronRerankEncoder(NemotronEmbedEncoder):
    """Llama Nemotron VL rerank: one score per pair prompt, sigmoid unless ``use_activation`` is false."""

    def heads(self, pack: PackInputs, wanted: Wanted) -> list[Any]:
        from .base import ItemOutput

        pooled = self.model.pool(pack.hidden, pack.attention)  # (rows, H) over the attention mask
        logits = torch.nn.functional.linear(pooled, self.model.score.weight.float())[:, 0]
        scores = [torch.sigmoid(x) if norm else x for x, norm in zip(logits, pack.normalize)]
        return [ItemOutput(token_embeddings=None, embedding=np.array([float(s)], dtype=np.float32)) for s in scores]
