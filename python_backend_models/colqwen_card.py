"""What a ColQwen3-family checkpoint is, from ``config.json`` and safetensors headers alone (no torch import).

The three architectures vLLM serves with one class (``ColQwen3``, ``OpsColQwen3Model``,
``Qwen3VLNemotronEmbedModel``; reference/vllm_semantics.md §5.1) differ only in data:

* ``config.json`` has a custom ``model_type`` (``colqwen3``, ``ops_colqwen3``, ``qwen3_vl_nemotron_embed``) and is
  read as a Qwen3-VL config (``text_config``, ``vision_config``, the image/vision token ids) plus the projection
  size, looked up in the order of :data:`DIM_FIELDS`;
* the weights come in one of three key layouts (:data:`LAYOUTS`): Tomoro's ``vlm.model.*`` + ``vlm.lm_head``,
  ColPali / NVIDIA's ``model.*`` + ``lm_head``, OpenSearch's bare ``visual.*`` / ``language_model.*``;
* the projection is any tensor whose name contains ``custom_text_proj`` or ``embedding_proj_layer`` (suffix
  ``weight`` / ``bias``), a ``Linear(text hidden -> dim)`` used *with* its bias when the checkpoint has one (vLLM
  drops it silently when the dim comes from the config); no projection tensors at all means the model returns the
  L2-normalised hidden states (dim = text hidden size).

Only the hidden size is checked against the projection here; the backbone's own tensors are checked when the
weights load (``families/colqwen3.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cards import safetensors_shapes as weight_shapes_of
from .checkpoint import CheckpointError, read_json, weight_files

# Projection size fields, in vLLM's lookup order (Tomoro, OpenSearch, then the generic names).
DIM_FIELDS = ("embed_dim", "dims", "dim", "projection_dim", "colbert_dim")
PROJECTION_NAMES = ("custom_text_proj", "embedding_proj_layer")

# layout -> (checkpoint prefix, transformers Qwen3VLModel prefix) for the backbone, and the LM head's prefix.
LAYOUTS: dict[str, dict[str, Any]] = {
    "tomoro": {"backbone": (("vlm.model.visual.", "visual."), ("vlm.model.language_model.", "language_model.")),
               "lm_head": "vlm.lm_head."},
    "colpali": {"backbone": (("model.visual.", "visual."), ("model.language_model.", "language_model.")),
                "lm_head": "lm_head."},
    "opensearch": {"backbone": (("visual.", "visual."), ("language_model.", "language_model.")),
                   "lm_head": "lm_head."},
}

# Qwen3VLConfig's defaults, for configs that leave the ids out.
_QWEN3_VL_IDS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                 "vision_end_token_id": 151653}


def tensor_shapes(path: Path) -> dict[str, tuple[list[int], Path]]:
    """Tensor name -> (shape, file) over all of the checkpoint's safetensors files, from the headers alone."""
    out: dict[str, tuple[list[int], Path]] = {}
    for file in weight_files(path):
        for name, shape in weight_shapes_of(file).items():
            out[name] = (shape, file)
    return out


def detect_layout(names: list[str] | set[str], where: Path) -> str:
    """Which vendor key layout ``names`` (the checkpoint's tensor names) follow."""
    found = []
    for layout in ("tomoro", "colpali", "opensearch"):
        text_prefix = LAYOUTS[layout]["backbone"][1][0]
        if any(n.startswith(text_prefix) for n in names):
            found.append(layout)
    if not found:
        raise CheckpointError(
            f"{where} holds no Qwen3-VL language-model weights under a known prefix (vlm.model.language_model., "
            "model.language_model. or language_model.); is this a ColQwen3-family checkpoint?"
        )
    if len(found) > 1:
        raise CheckpointError(f"{where} mixes the key layouts {found}; its weights must follow one vendor's layout")
    return found[0]


def projection_tensors(shapes: dict, where) -> tuple[str, str | None] | None:
    """(weight key, bias key or None) of the one projection among the tensor names of ``shapes``; None: none."""
    keys = [k for k in shapes if any(p in k for p in PROJECTION_NAMES)]
    weights = [k for k in keys if k.endswith(".weight")]
    biases = [k for k in keys if k.endswith(".bias")]
    stray = sorted(set(keys) - set(weights) - set(biases))
    if stray or len(weights) > 1 or len(biases) > 1 or (biases and not weights):
        raise CheckpointError(
            f"{where}: expected one projection weight (+ optional bias) named *custom_text_proj* or "
            f"*embedding_proj_layer*, found {sorted(keys)}"
        )
    if not weights:
        return None
    return weights[0], (biases[0] if biases else None)


def read_colqwen3(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model card of a ColQwen3-family checkpoint folder.

    Returns ``dim`` (output vector size), ``hidden_size`` (text), ``layout`` (``"tomoro"`` | ``"colpali"`` |
    ``"opensearch"``), ``projection`` (``(weight key, bias key or None)`` or None), ``dim_field`` (the config field
    that declared the dim, or None), ``image_token_id``, ``video_token_id``, ``vision_start_token_id``,
    ``vision_end_token_id``, ``max_position_embeddings``, ``model_type``, ``architecture``.  ``overrides`` are
    applied to ``config.json`` first (``--hf-overrides``).  Raises :class:`CheckpointError` naming the fix.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json")
    config = {**read_json(config_file), **(overrides or {})}
    text = config.get("text_config")
    if not isinstance(text, dict) or not isinstance(config.get("vision_config"), dict):
        raise CheckpointError(
            f"{config_file} has no text_config / vision_config objects; a ColQwen3-family checkpoint carries a "
            "Qwen3-VL config (model_type colqwen3, ops_colqwen3 or qwen3_vl_nemotron_embed)"
        )
    try:
        hidden = int(text["hidden_size"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{config_file}: text_config.hidden_size is missing or not an integer") from None

    shapes = tensor_shapes(path)
    layout = detect_layout(set(shapes), path)
    projection = projection_tensors(shapes, path)
    dim_field = next((f for f in DIM_FIELDS if config.get(f) is not None), None)
    declared = config.get(dim_field) if dim_field else None
    if declared is not None and (not isinstance(declared, int) or isinstance(declared, bool) or declared < 1):
        raise CheckpointError(f"{config_file}: {dim_field} must be a positive integer, got {declared!r}")

    if projection is None:
        dim = hidden
        if declared is not None and declared != hidden:
            raise CheckpointError(
                f"{config_file} says {dim_field}={declared} but the checkpoint has no projection weights "
                f"(*custom_text_proj* / *embedding_proj_layer*), so its vectors are the {hidden}-d hidden states; "
                f"fix {dim_field} (or --hf-overrides '{{\"{dim_field}\": {hidden}}}') or add the projection"
            )
    else:
        weight_key, bias_key = projection
        shape = shapes[weight_key][0]
        if len(shape) != 2 or shape[1] != hidden:
            raise CheckpointError(
                f"{path}: projection {weight_key} has shape {shape}, expected [dim, {hidden}] "
                f"(text_config.hidden_size={hidden})"
            )
        dim = shape[0]
        if bias_key is not None and shapes[bias_key][0] != [dim]:
            raise CheckpointError(
                f"{path}: projection bias {bias_key} has shape {shapes[bias_key][0]}, expected [{dim}]"
            )
        if declared is not None and declared != dim:
            raise CheckpointError(
                f"{config_file} says {dim_field}={declared} but the projection {weight_key} outputs {dim}; "
                f"fix {dim_field} (or --hf-overrides '{{\"{dim_field}\": {dim}}}')"
            )

    ids = {k: config.get(k, default) for k, default in _QWEN3_VL_IDS.items()}
    for name, value in ids.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{config_file}: {name} must be a token id (a non-negative integer), got {value!r}")
    return {
        "dim": dim,
        "hidden_size": hidden,
        "layout": layout,
        "projection": projection,
        "dim_field": dim_field,
        **ids,
        "max_position_embeddings": int(text.get("max_position_embeddings", 128000)),
        "model_type": config.get("model_type"),
        "architecture": (config.get("architectures") or [None])[0],
    }
