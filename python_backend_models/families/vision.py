"""The image families: ColQwen3 (three vendors), ColQwen3.5 and Llama Nemotron VL (embed, rerank).  Torch-free.

Their cards come from config.json and safetensors headers (``colqwen_card``, ``colqwen35_card``,
``nemotron_card``); their preprocessing is ``multimodal.MultimodalPreprocessor`` with the family's image layout;
their encoders (``colqwen3``, ``colqwen3_5``, ``nemotron_vl`` in this package) import torch when built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..cards import BI_ENCODER, CROSS_ENCODER, LATE_INTERACTION, ModelInfo
from ..checkpoint import Checkpoint, CheckpointError
from .text import Family, _has_pad_token, _require_safetensors


def _context_length(path: Path, hard: int | None, requested: int | None) -> int:
    """``--max-model-len`` within the backbone's position limit; default that limit (else 8192)."""
    limit = int(hard) if isinstance(hard, int) and hard > 0 else None
    if requested is None:
        return limit or 8192
    if requested < 1 or (limit is not None and requested > limit):
        raise CheckpointError(f"--max-model-len {requested} is out of range for {path.name}: the model's limit is "
                              f"{limit} tokens")
    return requested


class VisionFamily(Family):
    """A family whose prompts may hold images.  Subclasses read the card (``read``) and pick the layout."""

    multimodal = True

    def read(self, ckpt: Checkpoint) -> dict[str, Any]:
        """The family's settings from config.json and safetensors headers (JSON values): at least ``dim``,
        ``hidden_size``, ``image_token_id``, ``max_position_embeddings``."""
        raise NotImplementedError

    def pooled_size(self, hidden: int, dim: int) -> int | None:
        return None

    def describe(self, ckpt, served_name, *, max_model_len=None, hf_overrides=None):
        _require_safetensors(ckpt)
        card = self.read(ckpt)
        config = ckpt.config
        text = config.get("text_config") or config.get("llm_config") or config
        dim, hidden = int(card["dim"]), int(card["hidden_size"])
        return ModelInfo(
            **self.identity(ckpt, served_name),
            dim=dim,
            hidden_size=hidden,
            max_model_len=_context_length(ckpt.path, card.get("max_position_embeddings"), max_model_len),
            do_lower_case=False,
            pooling="mean",
            has_pad_token=_has_pad_token(ckpt.path),
            pooled_dim=self.pooled_size(hidden, dim),
            bos_token_id=text.get("bos_token_id", config.get("bos_token_id")),
            eos_token_id=text.get("eos_token_id", config.get("eos_token_id")),
            hf_overrides=dict(hf_overrides or {}),
            multimodal=True,
            family_config=card,
            embedding_modes=self.colpali,
        )

    def layout(self, info: ModelInfo):
        raise NotImplementedError

    def default_chat_template(self):
        """A template trilate ships for the family (used unless --chat-template names another)."""
        return None

    colpali = False  # colpali-engine's query / document conventions exist for it (embedding_mode)

    def preprocessor(self, info: ModelInfo):
        from ..multimodal import MultimodalPreprocessor, chat_template_for

        path = Path(info.path)
        template = chat_template_for(path, info.chat_template, self.default_chat_template())
        return MultimodalPreprocessor(path, info.max_model_len, self.layout(info), chat_template=template,
                                      colpali_family=self.name if self.colpali else None)


class ColQwen3Family(VisionFamily):
    """``ColQwen3`` (TomoroAI), ``OpsColQwen3Model`` (OpenSearch-AI), ``Qwen3VLNemotronEmbedModel`` (NVIDIA):
    Qwen3-VL + an optional projection, per-token L2 — one class, the vendor read from config and key layout."""

    name = "colqwen3"
    score_type = LATE_INTERACTION
    tasks = ("token_embed",)
    colpali = True

    def __init__(self):
        # Every vendor's model_type, and plain qwen3_vl, reads as a Qwen3VLConfig for each of the three names; the
        # vendor's key layout is read from the weights (colqwen_card.detect_layout).
        super().__init__("qwen3_vl", ("colqwen3", "ops_colqwen3", "qwen3_vl_nemotron_embed", "qwen3_vl"))

    def read(self, ckpt):
        from ..colqwen_card import read_colqwen3

        return read_colqwen3(ckpt.path)

    def layout(self, info):
        from ..multimodal import QwenVLLayout

        return QwenVLLayout(Path(info.path), int(info.family_config["image_token_id"]))

    def encoder(self, info, device="cpu", dtype="auto"):
        from .vision_encoders import ColQwenEncoder

        return ColQwenEncoder(info, device=device, dtype=dtype)


class ColQwen35Family(ColQwen3Family):
    """``ColQwen3_5``: the Qwen3.5 hybrid backbone; attention per the checkpoint's ``retrieval_attention_contract``."""

    name = "colqwen3_5"

    def __init__(self):
        Family.__init__(self, "qwen3_5", ("qwen3_5", "colqwen3_5"))

    def read(self, ckpt):
        from ..colqwen35_card import read_colqwen3_5

        return read_colqwen3_5(ckpt.path)

    def encoder(self, info, device="cpu", dtype="auto"):
        from .vision_encoders import ColQwen35Encoder

        return ColQwen35Encoder(info, device=device, dtype=dtype)


class NemotronVLEmbedFamily(VisionFamily):
    """``LlamaNemotronVLModel``: SigLIP + pixel shuffle + mlp1 + bidirectional Llama, MEAN pooling, L2."""

    name = "nemotron_vl_embed"
    score_type = BI_ENCODER
    # SEED: /pooling's default task for it is token_embed.
    tasks = ("token_embed", "embed")

    def __init__(self):
        super().__init__("llama_nemotron_vl", ("llama_nemotron_vl",))

    def read(self, ckpt):
        from ..nemotron_card import read_nemotron_vl

        card = read_nemotron_vl(ckpt.path, overrides=ckpt.config)
        if card.get("kind") != self.kind:
            raise CheckpointError(f"{ckpt.path} is a Nemotron VL {card.get('kind')} checkpoint, not {self.kind}")
        card = json.loads(json.dumps(card, default=str))  # paths as strings: the card is JSON
        return {**card, "dim": card["hidden_size"], "image_token_id": card["img_context_token_id"],
                "max_position_embeddings": card["max_model_len"]}

    kind = "embed"

    def pooled_size(self, hidden, dim):
        return hidden

    def layout(self, info):
        from ..multimodal import NemotronVLLayout
        from ..nemotron_card import tiling_params

        return NemotronVLLayout(tiling_params(info.family_config), int(info.family_config["image_token_id"]))

    def default_chat_template(self):
        from ..chat_templates import NEMOTRON_EMBED, bundled

        return bundled(NEMOTRON_EMBED)

    def encoder(self, info, device="cpu", dtype="auto"):
        from .vision_encoders import NemotronEmbedEncoder

        return NemotronEmbedEncoder(info, device=device, dtype=dtype)


class NemotronVLRerankFamily(NemotronVLEmbedFamily):
    """``LlamaNemotronVLForSequenceClassification``: the same backbone, ``score`` linear on the mean, sigmoid."""

    name = "nemotron_vl_rerank"
    score_type = CROSS_ENCODER
    tasks = ("classify",)
    kind = "rerank"

    def __init__(self):
        Family.__init__(self, "llama_nemotron_vl", ("llama_nemotron_vl_rerank", "llama_nemotron_vl"))

    def pooled_size(self, hidden, dim):
        return None

    def default_chat_template(self):
        from ..chat_templates import NEMOTRON_RERANK, bundled

        return bundled(NEMOTRON_RERANK)

    def encoder(self, info, device="cpu", dtype="auto"):
        from .vision_encoders import NemotronRerankEncoder

        return NemotronRerankEncoder(info, device=device, dtype=dtype)
