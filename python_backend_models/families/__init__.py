"""One class per architecture family (``text``: ColBERT, bi-encoders, BGE-M3; ``vision``: ColQwen3, ColQwen3.5,
Llama Nemotron VL), torch-free, and the torch encoders they build (one module each)."""

from __future__ import annotations


def load_encoder(info, device: str = "cpu", dtype: str = "auto"):
    """The torch encoder for the card ``info`` (imports torch and transformers)."""
    from ..registry import family_of

    return family_of(info).encoder(info, device=device, dtype=dtype)
