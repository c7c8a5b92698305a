"""Llama Nemotron VL in torch: the embedding model and the cross-encoder reranker, from safetensors only.

One forward pass (vllm_semantics.md §7, nemotron_vl_facts.md)::

    pixel_values (tiles, 3, S, S) -> SigLIP (transformers SiglipVisionModel, no head) last_hidden_state
        (tiles, (S/p)^2, C) -> square grid -> pixel shuffle (pixel_shuffle.py, v1/v2) (tiles, (S/p)^2/4, 4C)
        -> mlp1 = LayerNorm(4C) -> Linear(4C -> H) -> GELU -> Linear(H -> H)
    input_ids (B, T) -> Llama token embeddings; the <IMG_CONTEXT> positions, in row-major (row, position) order,
        take the mlp1 outputs tile by tile, in order
    -> transformers LlamaModel with causal masking off (every token attends to every non-padding token)
        -> final RMSNorm (B, T, H) -> pooled over the attention mask (mean / cls / last, config ``pooling``)
    embed:  the pooled vector (the caller L2-normalises);
    rerank: score(pooled.float()) -> one raw logit per row (the caller applies sigmoid unless use_activation
            is false).

The model is built on the meta device and its parameters are the tensors read from safetensors (``assign``),
so loading holds one copy of the weights; the few computed buffers (rotary frequencies, SigLIP position ids)
are made on the target device afterwards. ``auto_map`` / remote code is never used: ``llm_config`` (model_type
``llama_bidirec``) is read as a plain Llama config and ``vision_config`` as a SigLIP vision config.

Not supported: ``select_layer`` other than -1 (refused by the card), image embeddings as input, video,
left-padded batches (rows are right-padded: real tokens first, then padding).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, open_checkpoint
from ..errors import InputError
from ..nemotron_card import RERANK, read_nemotron_vl
from ..pixel_shuffle import shuffle_vision_tokens
from .base import resolve_dtype

log = logging.getLogger(__name__)

# llm_config keys that are NVIDIA's, not Llama's (``pooling``/``temperature`` are read by the card).
_NOT_LLAMA = {"model_type", "architectures", "auto_map", "pooling", "temperature"}
# SigLIP parts under the vision tower; vLLM also maps a flat ``vision_model.<part>.*`` layout onto the nested
# one, so both are accepted.
_SIGLIP_PARTS = ("embeddings.", "encoder.", "post_layernorm.", "head.", "pre_layrnorm.")


def llama_config(llm_config: Mapping[str, Any]):
    """``llm_config`` as a transformers ``LlamaConfig`` with causal masking off and SDPA attention."""
    from transformers import LlamaConfig

    config = LlamaConfig(**{k: v for k, v in llm_config.items() if k not in _NOT_LLAMA}, attn_implementation="sdpa")
    # transformers' masking utilities build a bidirectional (padding-only) mask when the config says so.
    config.is_causal = False
    return config


def siglip_config(vision_config: Mapping[str, Any]):
    """``vision_config`` as a transformers ``SiglipVisionConfig`` without the pooling head (vLLM's use_head=False)."""
    from transformers import SiglipVisionConfig

    values = {k: v for k, v in vision_config.items() if k not in ("model_type", "vision_use_head")}
    return SiglipVisionConfig(**values, vision_use_head=False, attn_implementation="sdpa")


class NemotronVLEmbed(nn.Module):
    """``LlamaNemotronVLModel``: ``forward(input_ids, attention_mask, pixel_values) -> (B, H)`` float32 pooled.

    Inputs: ``input_ids`` / ``attention_mask`` ``(B, T)`` int (right-padded rows; ``attention_mask`` 1 on real
    tokens), ``pixel_values`` ``(N_tiles, 3, S, S)`` float (``nemotron_vl_images.preprocess_images``; the tiles of
    every image of every row, in the order their ``<IMG_CONTEXT>`` runs appear row by row) or None for text only.
    The ``<IMG_CONTEXT>`` count of the batch must be ``N_tiles * tokens_per_tile``.
    """

    def __init__(self, card: Mapping[str, Any], vision_config, text_config):
        from transformers import LlamaModel, SiglipVisionModel

        super().__init__()
        self.card = dict(card)
        self.pooling = card["pooling"]
        self.img_context_token_id = int(card["img_context_token_id"])
        self.tokens_per_tile = int(card["tokens_per_tile"])
        self.downsample_ratio = float(card["downsample_ratio"])
        self.ps_version = card["ps_version"]
        self.vision_model = SiglipVisionModel(vision_config)
        shuffled = vision_config.hidden_size * round(1 / self.downsample_ratio) ** 2
        hidden = text_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(shuffled), nn.Linear(shuffled, hidden), nn.GELU(),
                                  nn.Linear(hidden, hidden))
        self.language_model = LlamaModel(text_config)
        for layer in self.language_model.layers:
            # With no padding the mask is skipped and SDPA falls back to the module's flag: keep it bidirectional.
            layer.self_attn.is_causal = False

    @property
    def hidden_size(self) -> int:
        return self.language_model.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.mlp1[1].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.mlp1[1].weight.device

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N_tiles, 3, S, S)`` -> ``(N_tiles, tokens_per_tile, H)`` in the model dtype: SigLIP's last hidden
        state (after post_layernorm), pixel shuffle, mlp1."""
        vit = self.vision_model(pixel_values=pixel_values.to(self.device, self.dtype)).last_hidden_state
        return self.mlp1(shuffle_vision_tokens(vit, self.downsample_ratio, self.ps_version))

    def input_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, H)``: token embeddings with the image features written into the ``<IMG_CONTEXT>`` positions."""
        embeds = self.language_model.embed_tokens(input_ids)
        slots = input_ids == self.img_context_token_id
        n_slots = int(slots.sum())
        n_tiles = 0 if pixel_values is None else int(pixel_values.shape[0])
        if n_slots != n_tiles * self.tokens_per_tile:
            raise InputError(
                f"the prompts hold {n_slots} <IMG_CONTEXT> tokens but {n_tiles} image tile(s) came with them "
                f"({self.tokens_per_tile} tokens per tile); expand each <image> with nemotron_vl_images "
                "and send the tiles of every image in prompt order")
        if n_tiles == 0:
            return embeds
        features = self.image_features(pixel_values).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(slots.unsqueeze(-1), features)

    def _check(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise InputError(f"input_ids and attention_mask must both be (batch, tokens); got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
        vocab = self.language_model.embed_tokens.num_embeddings
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise InputError(f"token ids must be in [0, {vocab}); got {int(input_ids.min())}..{int(input_ids.max())}")
        empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            raise InputError(f"row(s) {empty} have no token to encode: their attention_mask is all 0")

    def _last_hidden(self, input_ids, attention_mask, pixel_values) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = torch.as_tensor(input_ids, device=self.device).long()
        attention_mask = torch.as_tensor(attention_mask, device=self.device).long()
        self._check(input_ids, attention_mask)
        if pixel_values is not None:
            pixel_values = torch.as_tensor(pixel_values)
        embeds = self.input_embeddings(input_ids, pixel_values)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state, attention_mask

    @torch.inference_mode()
    def hidden(self, input_ids, attention_mask, pixel_values=None) -> torch.Tensor:
        """``(B, T, H)`` float32: every position's final-norm state (token_embed; padding positions included —
        select them with the attention mask)."""
        return self._last_hidden(input_ids, attention_mask, pixel_values)[0].float()

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, T, H)`` -> ``(B, H)`` float32 by the checkpoint's pooling, over the attention mask."""
        hidden = hidden.float()
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.to(hidden.device)
        if self.pooling == "last":
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask.long() * positions).argmax(dim=1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, pixel_values=None) -> torch.Tensor:
        """``(B, H)`` float32 pooled vectors, not normalised."""
        hidden, mask = self._last_hidden(input_ids, attention_mask, pixel_values)
        return self.pool(hidden, mask)


class NemotronVLRerank(NemotronVLEmbed):
    """``LlamaNemotronVLForSequenceClassification``: ``forward(...) -> (B,)`` float32 raw logits.

    Same inputs as :class:`NemotronVLEmbed` (each row one rendered query/document pair). The logit is
    ``score(pooled.float())`` with the float32 ``score.weight`` ``[1, H]`` and no bias; apply sigmoid for
    vLLM's score (``use_activation: false`` keeps the logit). NVIDIA's own code divides the logit by config
    ``temperature``; vLLM does not (and the checkpoints say 1.0), so neither does this.
    """

    def __init__(self, card: Mapping[str, Any], vision_config, text_config):
        super().__init__(card, vision_config, text_config)
        self.score = nn.Linear(text_config.hidden_size, 1, bias=False, dtype=torch.float32)

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, pixel_values=None) -> torch.Tensor:
        hidden, mask = self._last_hidden(input_ids, attention_mask, pixel_values)
        return F.linear(self.pool(hidden, mask), self.score.weight)[:, 0]


def _module_key(key: str, prefix: str) -> str | None:
    """A checkpoint key -> this module's key, or None for weights that are not used (SigLIP's pooling head,
    an inner LM's lm_head / score)."""
    if key == "score.weight":
        return key
    if prefix:
        if not key.startswith(prefix):
            return None
        key = key[len(prefix):]
    if key.startswith("vision_model."):
        # The checkpoint nests an HF SiglipVisionModel once more (vision_model.vision_model.*); transformers 5's
        # SiglipVisionModel holds its parts directly, so one level goes.
        rest = key[len("vision_model."):].removeprefix("vision_model.")
        if not rest.startswith(_SIGLIP_PARTS) or rest.startswith("head."):
            return None
        return "vision_model." + rest
    if key.startswith("language_model."):
        rest = key[len("language_model."):].removeprefix("model.")
        return None if rest.startswith(("lm_head.", "score.")) else "language_model." + rest
    if key.startswith("mlp1."):
        return key
    return None


def _open_weights(file: Path, device: torch.device):
    from safetensors import safe_open

    # CUDA: safetensors reads straight into device memory; anything else goes through the CPU.
    return safe_open(str(file), framework="pt", device=str(device) if device.type == "cuda" else "cpu")


def _load_weights(model: NemotronVLEmbed, card: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> None:
    wanted = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for file in card["weight_files"]:
        with _open_weights(Path(file), device) as handle:
            for key in handle.keys():
                name = _module_key(key, card["weights_prefix"])
                if name is None or name not in wanted:
                    ignored.append(key)
                    continue
                tensor = handle.get_tensor(key)
                if tuple(tensor.shape) != tuple(wanted[name].shape):
                    raise CheckpointError(f"{file}: {key} has shape {list(tensor.shape)}, the model expects "
                                          f"{list(wanted[name].shape)} (config.json and the weights disagree)")
                # The relevance head stays float32, as vLLM's head dtype.
                state[name] = tensor.to(device=device, dtype=torch.float32 if name == "score.weight" else dtype)
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise CheckpointError(f"{card['path']}: the weights lack {len(missing)} tensor(s) the model needs, e.g. "
                              f"{missing[:4]} (expected {card['weights_prefix'] or 'no prefix'} + the "
                              f"{card['architecture']} layout)")
    if ignored:
        log.info("%s: %d checkpoint tensors not used (e.g. %s)", card["path"], len(ignored), ignored[:3])
    model.load_state_dict(state, strict=False, assign=True)


def _materialise_buffers(model: NemotronVLEmbed, device: torch.device) -> None:
    """The buffers that were never in the checkpoint, computed on ``device`` (they stayed on meta)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.language_model.rotary_emb = LlamaRotaryEmbedding(model.language_model.config).to(device)
    embeddings = model.vision_model.embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"internal: tensors left unloaded after building the model: {left[:4]}")


def load_nemotron_vl(
    path: str | os.PathLike[str],
    *,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
) -> NemotronVLEmbed | NemotronVLRerank:
    """The model of a Llama Nemotron VL checkpoint folder, in eval mode on ``device``.

    ``overrides`` are ``--hf-overrides`` (merged into config.json's top level); ``dtype`` a torch dtype or
    ``"auto"`` (float32 on CPU, else the checkpoint's declared dtype) / ``"float32"`` / ``"float16"`` /
    ``"bfloat16"``. The card (:func:`~python_backend_models.nemotron_card.read_nemotron_vl`) is ``model.card``.
    """
    card = read_nemotron_vl(path, overrides=overrides)
    device = torch.device(device)
    if not isinstance(dtype, torch.dtype):
        dtype = resolve_dtype(str(dtype), device, {"torch_dtype": card["dtype"]})
    config = open_checkpoint(Path(path), dict(overrides or {})).config
    vision, text = siglip_config(config["vision_config"]), llama_config(config["llm_config"])
    cls = NemotronVLRerank if card["kind"] == RERANK else NemotronVLEmbed
    with torch.device("meta"):
        model = cls(card, vision, text)
    _load_weights(model, card, device, dtype)
    _materialise_buffers(model, device)
    return model.eval()
