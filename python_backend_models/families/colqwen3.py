"""The ColQwen3 family (``ColQwen3``, ``OpsColQwen3Model``, ``Qwen3VLNemotronEmbedModel``): Qwen3-VL + projection + L2.

What the checkpoint is (layout, projection, dim) comes from :func:`python_backend_models.colqwen_card.read_colqwen3`;
this module builds transformers' ``Qwen3VLModel`` (vision tower with DeepStack + M-RoPE decoder, no LM head) on the
meta device and assigns the checkpoint's tensors to it one safetensors file at a time, so loading peaks near one
copy of the weights (a 4B model in bf16: ~8 GB, not twice that).  The non-persistent rotary buffers, which a meta
build leaves empty, are computed afresh in fp32 on the target device.

Forward (reference/vllm_semantics.md §5.2): the backbone's last hidden states, cast to fp32, through the
projection (with its bias when the checkpoint has one), L2-normalised per token.  Every position comes back
(padding included; callers slice by their lengths).  Not supported: videos, left padding (SDPA turns fully
masked rows into NaN, reference/oracles.md §3.4 gotcha 1: rows must be right padded).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, read_json
from ..colqwen_card import LAYOUTS, read_colqwen3, weight_files
from ..errors import InputError

log = logging.getLogger(__name__)

# The parts of config.json that are Qwen3-VL's own; the vendor fields (dims, pooling, ...) stay out.
_QWEN3_VL_FIELDS = ("text_config", "vision_config", "image_token_id", "video_token_id", "vision_start_token_id",
                    "vision_end_token_id", "tie_word_embeddings")


def qwen3_vl_config(raw: dict[str, Any], attn_implementation: str):
    """A transformers ``Qwen3VLConfig`` from a ColQwen3-family ``config.json`` object, read as data."""
    from transformers import Qwen3VLConfig

    try:
        return Qwen3VLConfig.from_dict({k: raw[k] for k in _QWEN3_VL_FIELDS if k in raw},
                                       attn_implementation=attn_implementation)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"config.json is not a valid Qwen3-VL configuration: {exc}") from None


class ColQwen3Model(torch.nn.Module):
    """Qwen3-VL backbone + optional projection + L2, per token.

    Attributes: ``dim`` (output size), ``hidden_size`` (text), ``vocab_size``, ``image_token_id``,
    ``video_token_id``, ``merge_size``, ``patch_dim`` (length of a ``pixel_values`` row), ``card`` (the
    ``read_colqwen3`` dict), ``device``, ``dtype``.
    """

    def __init__(self, backbone, projection: tuple[torch.Tensor, torch.Tensor | None] | None, card: dict[str, Any],
                 device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.backbone = backbone
        self.proj_weight, self.proj_bias = projection if projection is not None else (None, None)
        self.card = card
        self.device = device
        self.dtype = dtype
        self.dim = int(card["dim"])
        self.hidden_size = int(card["hidden_size"])
        self.vocab_size = int(backbone.get_input_embeddings().num_embeddings)
        self.image_token_id = int(card["image_token_id"])
        self.video_token_id = int(card["video_token_id"])
        vision = backbone.config.vision_config
        self.merge_size = int(vision.spatial_merge_size)
        self.patch_dim = int(vision.in_channels * vision.temporal_patch_size * vision.patch_size**2)

    def _check(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
               image_grid_thw: torch.Tensor | None) -> None:
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise InputError(f"input_ids and attention_mask must both be [batch, tokens]; got "
                             f"{list(input_ids.shape)} and {list(attention_mask.shape)}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise InputError(f"token ids must be in [0, {self.vocab_size}); got "
                             f"{int(input_ids.min())}..{int(input_ids.max())}")
        mask = attention_mask != 0
        if not bool(mask[:, 0].all()) or bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise InputError("every row must start with a real token and be padded on the right only "
                             "(attention_mask 1...1 0...0)")
        if bool((input_ids == self.video_token_id).any()):
            raise InputError("videos are not supported: the input holds <|video_pad|> tokens")
        n_tokens = int((input_ids == self.image_token_id).sum())
        if pixel_values is None or image_grid_thw is None:
            if pixel_values is not None or image_grid_thw is not None:
                raise InputError("pixel_values and image_grid_thw come together (both or neither)")
            if n_tokens:
                raise InputError(f"the input holds {n_tokens} <|image_pad|> tokens but no image")
            return
        if image_grid_thw.ndim != 2 or image_grid_thw.shape[1] != 3 or image_grid_thw.shape[0] == 0:
            raise InputError(f"image_grid_thw must be [images, 3]; got {list(image_grid_thw.shape)}")
        if bool((image_grid_thw < 1).any()) or bool((image_grid_thw[:, 1:] % self.merge_size != 0).any()):
            raise InputError(f"image_grid_thw rows must be positive (t, h, w) with h and w multiples of "
                             f"{self.merge_size}; got {image_grid_thw.tolist()}")
        patches = int(image_grid_thw.prod(-1).sum())
        if pixel_values.ndim != 2 or pixel_values.shape != (patches, self.patch_dim):
            raise InputError(f"pixel_values must be [{patches}, {self.patch_dim}] for image_grid_thw "
                             f"{image_grid_thw.tolist()}; got {list(pixel_values.shape)}")
        expected = patches // self.merge_size**2
        if n_tokens != expected:
            raise InputError(f"the images need {expected} <|image_pad|> tokens in total but the input holds "
                             f"{n_tokens}; expand each image's placeholder to grid_t*grid_h*grid_w/"
                             f"{self.merge_size**2} tokens")

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids`` / ``attention_mask`` Long[B, T] (right padded), ``pixel_values`` Float[P, patch_dim] and
        ``image_grid_thw`` Long[N, 3] for the N images of all rows concatenated in row order (as Qwen3-VL's
        processor returns them; each image's ``<|image_pad|>`` run already expanded) -> Float32[B, T, dim],
        unit vectors.  Raises :class:`InputError` for inputs that do not fit together."""
        input_ids = input_ids.to(self.device, torch.long)
        attention_mask = attention_mask.to(self.device, torch.long)
        if image_grid_thw is not None:
            image_grid_thw = image_grid_thw.to(self.device, torch.long)
        self._check(input_ids, attention_mask, pixel_values, image_grid_thw)
        kwargs: dict[str, Any] = {}
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values.to(self.device, self.dtype)
            kwargs["image_grid_thw"] = image_grid_thw
            # Qwen3-VL's M-RoPE numbers image tokens by (t, h, w); it finds them through this mask (1 = image).
            kwargs["mm_token_type_ids"] = (input_ids == self.image_token_id).to(torch.int32)
        # transformers caches the M-RoPE offsets of the last image batch on the module; never reuse them.
        self.backbone.rope_deltas = None
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                               **kwargs).last_hidden_state.float()
        if self.proj_weight is not None:
            hidden = F.linear(hidden, self.proj_weight, self.proj_bias)
        return F.normalize(hidden, p=2, dim=-1)


def _materialise_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Compute the buffers a meta build left empty (the rotary ``inv_freq``s: not in any checkpoint) by building
    their module again from its config, in fp32 on ``device``."""
    for name, module in model.named_modules():
        empty = [b for b, t in module.named_buffers(recurse=False) if t.is_meta]
        if not empty:
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise RuntimeError(f"cannot compute the buffers {empty} of {name or 'the model'}: its module has no config")
        with torch.device(device):
            fresh = type(module)(config)
        for buffer in empty:
            setattr(module, buffer, getattr(fresh, buffer).to(device))


def load_colqwen3(path: Path, *, overrides: dict | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> ColQwen3Model:
    """Load a ColQwen3-family checkpoint folder (safetensors only, no remote code) onto ``device`` in ``dtype``.

    ``overrides`` update ``config.json`` first (vLLM's ``--hf-overrides``).  The projection stays in fp32.
    Raises :class:`CheckpointError` when the config and the weights disagree (a declared dim that the projection
    does not have, missing or misshapen backbone tensors).
    """
    from safetensors import safe_open
    from transformers import Qwen3VLModel

    path = Path(path)
    device = torch.device(device)
    card = read_colqwen3(path, overrides)
    raw = {**read_json(path / "config.json"), **(overrides or {})}
    config = qwen3_vl_config(raw, attn_implementation)
    with torch.device("meta"):
        backbone = Qwen3VLModel(config)
    expected = {k: tuple(t.shape) for k, t in backbone.state_dict().items()}

    prefixes = LAYOUTS[card["layout"]]["backbone"]
    lm_head = LAYOUTS[card["layout"]]["lm_head"]
    proj_keys = {k for k in (card["projection"] or ()) if k is not None}
    state: dict[str, torch.Tensor] = {}
    projection: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    ignored: list[str] = []
    # safe_open maps the file: on the CPU a tensor is a view of the mapping (its pages are read on first use and
    # stay the page cache's), and .to(dtype) copies only when the file's dtype differs (tests/test_colqwen3.py).
    target = device.type if device.index is None else f"{device.type}:{device.index}"
    for file in weight_files(path):
        with safe_open(str(file), framework="pt", device=target) as fh:
            for key in fh.keys():
                if key in proj_keys:
                    # A copy: a tensor of the file's own dtype would keep the file's mapping alive after loading.
                    projection[key] = fh.get_tensor(key).to(torch.float32, copy=True)
                    continue
                mapped = next((ours + key[len(theirs):] for theirs, ours in prefixes if key.startswith(theirs)), None)
                if mapped is None:
                    if not key.startswith(lm_head):  # the LM head is not used for embeddings
                        ignored.append(key)
                    continue
                if mapped not in expected:
                    wrong.append(f"{key} (not a Qwen3-VL weight for this config)")
                    continue
                shape = tuple(fh.get_slice(key).get_shape())
                if shape != expected[mapped]:
                    wrong.append(f"{key} {list(shape)} (config wants {list(expected[mapped])})")
                    continue
                state[mapped] = fh.get_tensor(key).to(dtype)
    missing = sorted(set(expected) - set(state))
    if wrong or missing:
        parts = []
        if missing:
            names = [next(t + k[len(o):] for t, o in prefixes if k.startswith(o)) for k in missing[:5]]
            parts.append(f"lacks {len(missing)} backbone weights, e.g. {names}")
        if wrong:
            parts.append(f"has weights that do not fit config.json: {wrong[:5]}")
        raise CheckpointError(f"{path} ({card['layout']} layout) " + "; ".join(parts))
    if ignored:
        log.warning("%s: ignoring %d tensors outside the Qwen3-VL backbone and projection, e.g. %s",
                    path, len(ignored), ignored[:3])
    backbone.load_state_dict(state, strict=True, assign=True)
    del state
    _materialise_buffers(backbone, device)
    backbone.eval()
    head = None
    if card["projection"] is not None:
        weight_key, bias_key = card["projection"]
        head = (projection[weight_key], projection[bias_key] if bias_key else None)
    return ColQwen3Model(backbone, head, card, device, dtype)
