"""Pixel shuffle of the Llama Nemotron VL / InternVL vision towers: fewer, wider vision tokens.

With ``downsample_ratio`` r (0.5 in these checkpoints) and f = 1/r, every f x f block of neighbouring vision
patches becomes one token whose channels are the block's f*f patch vectors side by side. For the output token
at grid position ``(i, j)`` and a patch ``(di, dj)`` inside its block (``0 <= di, dj < f``)::

    out[n, i, j, (di * f + dj) * C + c] == x[n, f*i + di, f*j + dj, c]          (ps_version "v2")
    out[n, j, i, (di * f + dj) * C + c] == x[n, f*i + di, f*j + dj, c]          (ps_version "v1")

i.e. v2 keeps the grid's orientation and v1 leaves it transposed (the original InternVL code's missing final
transpose). Both Nemotron VL checkpoints use v2. The grid is the SigLIP patch grid in row-major order, so a
``(N, T, C)`` tower output is reshaped to ``(N, sqrt(T), sqrt(T), C)`` first (:func:`shuffle_vision_tokens`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

PS_VERSIONS = ("v1", "v2")


def shuffle_factor(downsample_ratio: float) -> int:
    """``1 / downsample_ratio`` as an int (0.5 → 2); other ratios have no whole block size."""
    if downsample_ratio <= 0:
        raise ValueError(f"downsample_ratio must be positive, got {downsample_ratio}")
    factor = round(1 / downsample_ratio)
    if factor < 1 or not math.isclose(factor * downsample_ratio, 1.0, rel_tol=0, abs_tol=1e-9):
        raise ValueError(f"downsample_ratio must be 1/k for a whole k (0.5, 0.25, ...), got {downsample_ratio}")
    return factor


def pixel_shuffle(x: torch.Tensor, downsample_ratio: float = 0.5, ps_version: str = "v2") -> torch.Tensor:
    """``(N, H, W, C)`` → ``(N, H/f, W/f, C*f*f)`` with f = 1/downsample_ratio (index map in the module docstring).

    ``H`` and ``W`` must be multiples of f. The result is contiguous; dtype and device are kept.
    """
    if ps_version not in PS_VERSIONS:
        raise ValueError(f"ps_version must be one of {PS_VERSIONS}, got {ps_version!r}")
    if x.dim() != 4:
        raise ValueError(f"pixel_shuffle wants (N, H, W, C), got shape {tuple(x.shape)}")
    f = shuffle_factor(downsample_ratio)
    n, h, w, c = x.shape
    if h % f or w % f:
        raise ValueError(f"a {h}x{w} patch grid does not split into {f}x{f} blocks")
    # (n, i, di, j, dj, c) -> (n, i, j, di, dj, c): the block's patches become adjacent along the channels.
    out = x.reshape(n, h // f, f, w // f, f, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h // f, w // f, f * f * c)
    if ps_version == "v1":
        out = out.transpose(1, 2)
    return out.contiguous()


def shuffle_vision_tokens(tokens: torch.Tensor, downsample_ratio: float = 0.5, ps_version: str = "v2") -> torch.Tensor:
    """``(N, T, C)`` vision-tower tokens (a square row-major patch grid) → ``(N, T/f², C*f²)`` tokens.

    For 512-px tiles with 16-px patches at ratio 0.5: ``(N, 1024, C)`` → ``(N, 256, 4C)``, the 256 tokens per
    tile that the prompt's ``<IMG_CONTEXT>`` positions receive (after ``mlp1``), tile by tile in order.
    """
    if tokens.dim() != 3:
        raise ValueError(f"shuffle_vision_tokens wants (N, T, C), got shape {tuple(tokens.shape)}")
    n, t, c = tokens.shape
    side = math.isqrt(t)
    if side * side != t:
        raise ValueError(f"{t} vision tokens do not form a square patch grid")
    grid = pixel_shuffle(tokens.reshape(n, side, side, c), downsample_ratio, ps_version)
    return grid.reshape(n, -1, grid.shape[-1])


def shuffle_settings(config: Mapping[str, Any]) -> tuple[float, str]:
    """``(downsample_ratio, ps_version)`` from a checkpoint's ``config.json`` (defaults 0.5 and "v1", as
    InternVL-style configs that omit ``ps_version`` mean v1), checked here so a bad value fails at load time."""
    ratio = float(config.get("downsample_ratio", 0.5))
    version = config.get("ps_version", "v1")
    shuffle_factor(ratio)
    if version not in PS_VERSIONS:
        raise ValueError(f"config.json ps_version must be one of {PS_VERSIONS}, got {version!r}")
    return ratio, version
