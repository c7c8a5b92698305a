"""ColQwen3.5 (``ColQwen3_5``): transformers' Qwen3.5 backbone -> ``custom_text_proj`` (with its bias) -> per-token L2.

The checkpoint's rules (config fields, key layout, projection size, attention contract) are read without torch in
``python_backend_models.colqwen35_card``; this module builds the model.

* **One copy of the weights.** The backbone (``transformers.Qwen3_5Model``: the Qwen3-VL style vision tower and
  the hybrid text model of GatedDeltaNet ``linear_attention`` and gated ``full_attention`` layers) is built on the
  meta device, and every tensor goes from its safetensors file straight into the module (``assign=True``) in the
  serving dtype, so loading peaks near the size of the weights, not twice it.  Only the rotary frequency tables
  (computed, not stored) are built afresh on the device.
* **Attention contract** (vLLM PR #49372): ``"bidirectional"`` makes the full-attention layers attend to every
  non-padding token of the row (the text config's ``is_causal`` false: transformers' bidirectional padding mask
  and no causal kernel); the GatedDeltaNet layers are a left-to-right recurrence by construction and stay as
  they are.  ``"causal"`` is the backbone unchanged.
* **Head**: the projection runs in float32 on the float32 hidden states, bias included when the checkpoint has one
  (vLLM before PR #46108 dropped it), then L2 per token; padding positions come back as zero vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, weight_files
from ..colqwen35_card import backbone_key, load_config, read_colqwen3_5
from ..errors import InputError
from .base import resolve_dtype

log = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def _backbone_config(raw: dict[str, Any], attn_implementation: str):
    """transformers' ``Qwen3_5Config`` from the checkpoint's config.json (read as data, no remote code)."""
    from transformers import AutoConfig

    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {attn_implementation!r}")
    try:
        config = AutoConfig.for_model(**raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json is not a valid Qwen3.5 configuration: {exc}") from None
    config._attn_implementation = attn_implementation  # propagates to text_config and vision_config
    return config


def _read_weights(path: Path, card: dict[str, Any], device: torch.device, dtype: torch.dtype):
    """(backbone state dict in ``dtype``, projection weight (dim, hidden) and bias (dim,) or None in float32),
    all on ``device``.  One tensor at a time is read (memory-mapped), converted and moved, so the host holds one
    temporary beside the weights; ``mtp.*`` and ``lm_head.*`` are never read."""
    from safetensors import safe_open

    prefix = card["key_prefix"]
    projection = {card["projection_weight"], card["projection_bias"]} - {None}
    state: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            for key in fh.keys():
                if key in projection:
                    head[key] = fh.get_tensor(key).to(device=device, dtype=torch.float32)
                elif (name := backbone_key(key, prefix)) is not None:
                    state[name] = fh.get_tensor(key).to(device=device, dtype=dtype)
    bias = head[card["projection_bias"]] if card["projection_bias"] else None
    return state, head[card["projection_weight"]], bias


def _build_backbone(path: Path, config, state: dict[str, torch.Tensor], device: torch.device):
    """``Qwen3_5Model`` built on the meta device, its parameters then taken over from ``state`` (``assign=True``:
    no second copy, no random initialisation)."""
    from transformers import Qwen3_5Model

    with torch.device("meta"):
        backbone = Qwen3_5Model(config)
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # a shape that does not fit config.json
        raise CheckpointError(f"{path}: the weights do not fit config.json: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match config.json's Qwen3.5 model; missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    # The rotary tables are non-persistent buffers (never in a checkpoint): compute them on the device, in float32
    # as transformers keeps them.
    with torch.device(device):
        text = backbone.language_model
        text.rotary_emb = type(text.rotary_emb)(config=text.config)
        vision = backbone.visual
        vision.rotary_pos_emb = type(vision.rotary_pos_emb)(vision.config)
    left = [n for n, t in [*backbone.named_parameters(), *backbone.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: no weights for {left[:5]}")
    backbone.requires_grad_(False)
    return backbone.eval()


class ColQwen35Model(torch.nn.Module):
    """A loaded ColQwen3.5: ``forward`` gives L2-normalised per-token vectors.

    Attributes: ``backbone`` (``transformers.Qwen3_5Model``), ``projection_weight`` (dim, hidden) float32,
    ``projection_bias`` (dim,) float32 or None, ``card`` (``colqwen35_card.read_colqwen3_5``), ``dim``,
    ``attention_contract``, ``dtype`` / ``device`` of the backbone.
    """

    def __init__(self, backbone, weight: torch.Tensor, bias: torch.Tensor | None, card: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.projection_weight = weight
        self.projection_bias = bias
        self.card = card
        self.dim = int(card["dim"])
        self.attention_contract = card["attention_contract"]
        self.image_token_id = int(card["image_token_id"])
        self.merge_size = int(card["spatial_merge_size"])
        self.patch_dim = 3 * int(card["temporal_patch_size"]) * int(card["patch_size"]) ** 2
        self.vocab_size = backbone.get_input_embeddings().num_embeddings
        self.max_positions = int(card["max_position_embeddings"])
        if self.attention_contract == "bidirectional":
            # transformers' own switch (5.23): with the text config's is_causal false, Qwen3_5TextModel's forward
            # passes is_causal=False to every attention call (SDPA / flash never pick their causal kernel) and
            # create_causal_mask returns the bidirectional padding-only mask.  The GatedDeltaNet layers get the
            # flag too and ignore it.  "causal" leaves the config as it is (the card refused an is_causal false).
            self.backbone.language_model.config.is_causal = False

    @property
    def device(self) -> torch.device:
        return self.projection_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.get_input_embeddings().weight.dtype

    def _validate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Refuse what would break the forward pass (``InputError``); the ``mm_token_type_ids`` (B, T) transformers
        wants, or None for a text-only batch.  Shapes as in :meth:`forward`."""
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise InputError(
                f"input_ids and attention_mask must both be (batch, tokens), got {tuple(input_ids.shape)} and "
                f"{tuple(attention_mask.shape)}"
            )
        if input_ids.shape[1] > self.max_positions:
            raise InputError(f"an input has {input_ids.shape[1]} tokens; this model's limit is {self.max_positions}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.vocab_size):
            raise InputError(f"token ids must be in [0, {self.vocab_size}), got {int(input_ids.min())}..{int(input_ids.max())}")
        lengths = attention_mask.sum(-1)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        if not torch.equal(attention_mask != 0, positions[None, :] < lengths[:, None]) or (lengths == 0).any():
            raise InputError("each row's attention_mask must be ones then zeros (right padding) with at least one 1")
        is_image = input_ids == self.image_token_id
        n_placeholders = int(is_image.sum())
        if pixel_values is None or image_grid_thw is None:
            if pixel_values is not None or image_grid_thw is not None:
                raise InputError("pixel_values and image_grid_thw go together; got only one of them")
            if n_placeholders:
                raise InputError(f"the input has {n_placeholders} <|image_pad|> tokens but no image")
            return None
        if image_grid_thw.ndim != 2 or image_grid_thw.shape[1] != 3 or image_grid_thw.shape[0] == 0:
            raise InputError(f"image_grid_thw must be (n_images, 3), got {tuple(image_grid_thw.shape)}")
        grid = image_grid_thw.to("cpu", torch.int64)
        if (grid < 1).any() or (grid[:, 1:] % self.merge_size != 0).any():
            raise InputError(f"image_grid_thw rows must be positive, with h and w multiples of {self.merge_size}")
        patches = int(grid.prod(-1).sum())
        if pixel_values.ndim != 2 or pixel_values.shape != (patches, self.patch_dim):
            raise InputError(
                f"pixel_values must be ({patches}, {self.patch_dim}) for image_grid_thw {grid.tolist()}, "
                f"got {tuple(pixel_values.shape)}"
            )
        if (is_image & (attention_mask == 0)).any():
            raise InputError("<|image_pad|> tokens sit at padding positions (attention_mask 0)")
        # Each image's placeholders must be one run of the right length, images in order (row-major): that is how
        # transformers assigns vision features and M-RoPE positions.
        expected = (grid.prod(-1) // self.merge_size**2).tolist()
        runs: list[int] = []
        for row in is_image.to("cpu"):
            where = torch.nonzero(row).flatten()
            if where.numel():
                breaks = torch.nonzero(where[1:] - where[:-1] != 1).flatten() + 1
                bounds = [0, *breaks.tolist(), where.numel()]
                runs.extend(b - a for a, b in zip(bounds[:-1], bounds[1:]))
        if runs != expected:
            raise InputError(
                f"<|image_pad|> runs {runs} do not match the images' token counts {expected} "
                "(expand each image's placeholder to grid_t * grid_h * grid_w / merge_size² tokens)"
            )
        return is_image.to(torch.int32)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token vectors (B, T, dim) float32, unit length at real tokens, zero at padding.

        ``input_ids`` / ``attention_mask`` (B, T) int: rows right-padded (padding never changes a real row);
        ``pixel_values`` (sum of grid_t * grid_h * grid_w, 3 * T * P * P) float and ``image_grid_thw``
        (n_images, 3) int for the images whose ``<|image_pad|>`` runs appear in the rows, in order
        (``qwen_vl_images.preprocess_images``), or both None.  Bad input raises ``InputError``.
        """
        device = self.device
        input_ids = input_ids.to(device=device, dtype=torch.long)
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
        mm_token_type_ids = self._validate(input_ids, attention_mask, pixel_values, image_grid_thw)
        kwargs: dict[str, Any] = {}
        if mm_token_type_ids is not None:
            kwargs = {
                "pixel_values": pixel_values.to(device=device, dtype=self.dtype),
                "image_grid_thw": image_grid_thw.to(device=device, dtype=torch.long),
                "mm_token_type_ids": mm_token_type_ids.to(device),
            }
        # Qwen3_5Model caches M-RoPE deltas for generation; a retrieval pass never continues, so start clean.
        self.backbone.rope_deltas = None
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs
        ).last_hidden_state.float()
        vectors = F.normalize(F.linear(hidden, self.projection_weight, self.projection_bias), p=2, dim=-1)
        return vectors * attention_mask[..., None].to(vectors.dtype)


def load_colqwen3_5(
    path: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "sdpa",
) -> ColQwen35Model:
    """Load a ColQwen3.5 checkpoint folder (``config.json`` + ``model.safetensors`` or shards).

    ``overrides``: ``--hf-overrides`` (top-level config keys); ``dtype``: a torch dtype or ``auto`` / ``float32`` /
    ``float16`` / ``bfloat16`` (``auto``: float32 on CPU, the checkpoint's dtype elsewhere).  Raises
    ``CheckpointError`` naming what is wrong (model type, ``retrieval_attention_contract``, projection size, keys).
    """
    path = Path(path)
    card = read_colqwen3_5(path, overrides)
    raw = load_config(path, overrides)
    device = torch.device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, device, raw)
    config = _backbone_config(raw, attn_implementation)
    state, weight, bias = _read_weights(path, card, device, torch_dtype)
    backbone = _build_backbone(path, config, state, device)
    del state
    log.info("ColQwen3.5 %s: dim %d, %s attention, projection bias %s, %s on %s", path, card["dim"],
             card["attention_contract"], bias is not None, torch_dtype, device)
    return ColQwen35Model(backbone, weight, bias, card)
