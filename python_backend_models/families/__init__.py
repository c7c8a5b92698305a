"""One module per architecture family; ``load_encoder`` picks it from the model's description."""

from __future__ import annotations

from ..registry import ModelInfo


def load_encoder(info: ModelInfo, device: str = "cpu", dtype: str = "auto"):
    """The torch encoder for ``info`` (imports torch and transformers)."""
    if info.family == "colbert":
        from .colbert import ColbertEncoder

        return ColbertEncoder(info, device=device, dtype=dtype)
    if info.family == "bi_encoder":
        from .bi_encoder import BiEncoder

        return BiEncoder(info, device=device, dtype=dtype)
    if info.family == "bge_m3":
        from .bge_m3 import BgeM3Encoder

        return BgeM3Encoder(info, device=device, dtype=dtype)
    raise ValueError(f"no encoder for family {info.family!r}")
