"""Architecture name (HF ``architectures[0]``, or ``--hf-overrides``) -> the family that serves it.

Each family is one class (``families.text``, ``families.vision``) owning its model card, its preprocessing
and its encoder; several architecture names may share one family with vendor settings (the three ColQwen3
names, as vLLM maps them).  Everything here reads only JSON and safetensors headers: the repository builder
and the preprocess stage use it without importing torch.
"""

from __future__ import annotations

from typing import Any

from .cards import BI_ENCODER, CROSS_ENCODER, LATE_INTERACTION, DenseLayer, ModelInfo, safetensors_shapes
from .checkpoint import Checkpoint, CheckpointError
from .families.text import BgeM3Family, BiEncoderFamily, ColbertFamily, Family
from .families.vision import ColQwen3Family, ColQwen35Family, NemotronVLEmbedFamily, NemotronVLRerankFamily

__all__ = ["ARCHITECTURES", "BI_ENCODER", "CROSS_ENCODER", "LATE_INTERACTION", "DenseLayer", "Family", "ModelInfo",
           "describe", "family_for", "family_of", "safetensors_shapes"]

ARCHITECTURES: dict[str, Family] = {
    "HF_ColBERT": ColbertFamily("bert"),
    # vLLM's current name for the same model (its answerai-colbert-small-v1 example says
    # --hf-overrides '{"architectures": ["ColBERTModel"], "dim": 96}'); `dim` is read as the ColBERT size.
    "ColBERTModel": ColbertFamily("bert"),
    "ColBERTModernBertModel": ColbertFamily("modernbert"),
    # Matryoshka sizes (jina-colbert-v2 was trained for 128, 96, 64) come from the checkpoint's
    # config.json `matryoshka_dimensions`, as vLLM reads them, never from the architecture.
    # Jina's rotary XLM-R says model_type "xlm-roberta".
    "ColBERTJinaRobertaModel": ColbertFamily("jina_xlmr", ("xlm-roberta",)),
    "ColBERTLfm2Model": ColbertFamily("lfm2"),
    "BertModel": BiEncoderFamily("bert"),
    # What BAAI/bge-m3's config.json says: served, as by vLLM, as a plain embedding model (no extra heads).
    "XLMRobertaModel": BiEncoderFamily("xlm-roberta"),
    # BAAI/bge-m3 says XLMRobertaModel; vLLM and trilate need this override to load its two extra heads.
    "BgeM3EmbeddingModel": BgeM3Family("xlm-roberta"),
    # One family, three vendors' configs and key layouts (vLLM maps all three names to ColQwen3Model).
    "ColQwen3": ColQwen3Family(),
    "OpsColQwen3Model": ColQwen3Family(),
    "Qwen3VLNemotronEmbedModel": ColQwen3Family(),
    "ColQwen3_5": ColQwen35Family(),
    "LlamaNemotronVLModel": NemotronVLEmbedFamily(),
    "LlamaNemotronVLForSequenceClassification": NemotronVLRerankFamily(),
}


def family_for(architecture: str) -> Family:
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CheckpointError(
            f"unknown architecture {architecture!r}; trilate serves: {known}. "
            "Pick one with --hf-overrides '{\"architectures\": [\"NAME\"]}'"
        ) from None


def family_of(info: ModelInfo) -> Family:
    """The family that wrote ``info`` (a card read back from a stage's config)."""
    return family_for(info.architecture)


def describe(
    ckpt: Checkpoint, served_name: str, *, max_model_len: int | None = None, hf_overrides: dict[str, Any] | None = None
) -> ModelInfo:
    """Read everything the serving stack needs from a checkpoint, or fail with the fix."""
    family = family_for(ckpt.architecture)
    model_type = ckpt.config.get("model_type")
    fits = sorted(a for a, f in ARCHITECTURES.items() if model_type in f.model_types)
    family.check_backbone(ckpt, fits)
    return family.describe(ckpt, served_name, max_model_len=max_model_len, hf_overrides=hf_overrides)
