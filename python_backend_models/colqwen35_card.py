"""What a ColQwen3.5 checkpoint (``architectures: ["ColQwen3_5"]``, e.g. ``athrael-soju/colqwen3.5-4.5B-v3``) says
about itself, read from ``config.json`` and the safetensors headers only (no torch): the builder, the preprocess
stage and the family's loader share these rules.

The rules are vLLM's (``vllm/model_executor/models/colqwen3_5.py`` after PRs #46108 and #49372;
reference/vllm_semantics.md section 6):

* ``config.json`` is a transformers ``Qwen3_5Config`` (``model_type`` ``qwen3_5``, with ``text_config`` and
  ``vision_config``) plus the projection size and ``retrieval_attention_contract``.
* Projection size: the first of ``embed_dim``, ``dims``, ``dim``, ``projection_dim``, ``colbert_dim`` that is set,
  else 128; it must equal the projection weight's rows.
* ``retrieval_attention_contract`` must be ``"bidirectional"`` (the full-attention layers see every non-padding
  token) or ``"causal"``; anything else, or none, refuses the checkpoint.  A ``text_config`` copy that disagrees
  is refused too, and so is an ``is_causal`` that says the other thing.
* Weights: ``language_model.*`` (the text model), ``visual.*`` (the vision tower), optionally all under one
  ``model.`` prefix; ``mtp.*`` (multi-token prediction) is not used; the projection is every tensor whose name
  contains ``custom_text_proj`` or ``embedding_proj_layer`` (``.weight`` (dim, hidden) and, when present,
  ``.bias`` (dim,)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, read_json, weight_shapes
from .colqwen_card import DIM_FIELDS, PROJECTION_NAMES, projection_tensors

ARCHITECTURE = "ColQwen3_5"
MODEL_TYPES = ("qwen3_5",)
CONTRACT_FIELD = "retrieval_attention_contract"
CONTRACTS = ("bidirectional", "causal")
DEFAULT_DIM = 128
# Where the backbone's tensors live: bare (colpali-engine's ColQwen3_5 state dict) or under "model."
# (transformers' Qwen3_5ForConditionalGeneration layout).
KEY_PREFIXES = ("", "model.")
BACKBONE_PARTS = ("language_model.", "visual.")
SKIPPED_PARTS = ("mtp.", "lm_head.")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``<path>/config.json`` with ``--hf-overrides`` merged in (top-level keys replace)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{Path(path)} has no config.json")
    config = read_json(file)
    if overrides:
        config = {**config, **overrides}
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{ARCHITECTURE} needs a Qwen3.5 backbone (config.json model_type {' or '.join(map(repr, MODEL_TYPES))}) "
            f"but {file} says model_type {model_type!r}"
        )
    for section in ("text_config", "vision_config"):
        if not isinstance(config.get(section), dict):
            raise CheckpointError(f"{file} has no {section} object; a Qwen3.5 config carries text_config and vision_config")
    return config


def attention_contract(config: dict[str, Any], where: str = "config.json") -> str:
    """``"bidirectional"`` or ``"causal"``, as the checkpoint declares it."""
    value = config.get(CONTRACT_FIELD)
    text_value = config["text_config"].get(CONTRACT_FIELD) if isinstance(config.get("text_config"), dict) else None
    if value is None and text_value is not None:
        value = text_value
    if value not in CONTRACTS:
        raise CheckpointError(
            f"{where}: {CONTRACT_FIELD} must be \"bidirectional\" or \"causal\" (the attention the checkpoint was "
            f"trained with), got {value!r}; add it to config.json or pass --hf-overrides "
            f"'{{\"{CONTRACT_FIELD}\": \"bidirectional\"}}'"
        )
    if text_value is not None and text_value != value:
        raise CheckpointError(
            f"{where}: {CONTRACT_FIELD} is {value!r} but text_config.{CONTRACT_FIELD} is {text_value!r}; make them agree"
        )
    # transformers reads is_causal from the text config; one that says otherwise would silently win.
    for section, place in ((config, "is_causal"), (config["text_config"], "text_config.is_causal")):
        declared = section.get("is_causal")
        if declared is not None and bool(declared) != (value == "causal"):
            raise CheckpointError(f"{where}: {place} is {declared!r} but {CONTRACT_FIELD} is {value!r}; make them agree")
    return value


def projection_dim(config: dict[str, Any]) -> tuple[int, str | None]:
    """(size, the config field it came from; None for the default 128)."""
    for name in DIM_FIELDS:
        value = config.get(name)
        if value:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(f"config.json: {name} must be a positive integer, got {value!r}")
            return value, name
    return DEFAULT_DIM, None


def is_projection_key(key: str) -> bool:
    return any(name in key for name in PROJECTION_NAMES)


def projection_keys(shapes: dict[str, list[int]], where: str = "the checkpoint") -> tuple[str, str | None]:
    """(weight key, bias key or None) of the projection, which a ColQwen3.5 checkpoint must have."""
    found = projection_tensors(shapes, where)
    if found is None:
        raise CheckpointError(f"{where} needs a projection weight (a tensor named *custom_text_proj.weight or "
                              "*embedding_proj_layer.weight); it has none")
    return found


def key_prefix(shapes: dict[str, list[int]], where: str = "the checkpoint") -> str:
    """``""`` or ``"model."``: where ``language_model.*`` and ``visual.*`` live."""
    for prefix in KEY_PREFIXES:
        if any(k.startswith(prefix + "language_model.") for k in shapes) and any(
            k.startswith(prefix + "visual.") for k in shapes
        ):
            return prefix
    raise CheckpointError(
        f"{where} has no language_model.* and visual.* tensors (bare or under model.); "
        "is this a ColQwen3.5 checkpoint?"
    )


def backbone_key(key: str, prefix: str) -> str | None:
    """The ``transformers.Qwen3_5Model`` state-dict name of checkpoint tensor ``key`` (None: not a backbone
    tensor, i.e. the projection, ``mtp.*``, ``lm_head.*``)."""
    if is_projection_key(key):
        return None
    bare = key[len(prefix):] if key.startswith(prefix) else key
    if bare.startswith(BACKBONE_PARTS):
        return bare
    return None


def unused_keys(shapes: dict[str, list[int]], prefix: str) -> list[str]:
    """Tensors that are neither backbone, projection, nor a part vLLM skips (``mtp.*``, ``lm_head.*``)."""
    out = []
    for key in shapes:
        if is_projection_key(key) or backbone_key(key, prefix) is not None:
            continue
        bare = key[len(prefix):] if key.startswith(prefix) else key
        if not bare.startswith(SKIPPED_PARTS):
            out.append(key)
    return sorted(out)


def layer_types(text_config: dict[str, Any]) -> list[str]:
    """Each text layer's kind, ``"linear_attention"`` (GatedDeltaNet) or ``"full_attention"``; transformers'
    rule (every ``full_attention_interval``-th layer full, default 4) when config.json lists none."""
    declared = text_config.get("layer_types")
    if declared:
        return list(declared)
    interval = int(text_config.get("full_attention_interval", 4))
    layers = int(text_config.get("num_hidden_layers", 32))
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)]


def read_colqwen3_5(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model card of a ColQwen3.5 checkpoint, from ``config.json`` and the safetensors headers.

    Keys: ``dim`` (projection size), ``dim_field`` (the config field it came from, None for the default),
    ``hidden_size`` (text hidden size), ``projection_weight`` / ``projection_bias`` (tensor names; bias None when
    the checkpoint has none), ``key_prefix`` (``""`` or ``"model."``), ``attention_contract``
    (``"bidirectional"`` | ``"causal"``), ``image_token_id``, ``video_token_id``, ``vision_start_token_id``,
    ``vision_end_token_id``, ``max_position_embeddings``, ``vocab_size``, ``layer_types``, ``patch_size``,
    ``spatial_merge_size``, ``temporal_patch_size``.  Raises ``CheckpointError`` naming the field that is wrong.
    """
    path = Path(path)
    config = load_config(path, overrides)
    where = str(path / "config.json")
    contract = attention_contract(config, where)
    dim, dim_field = projection_dim(config)
    text, vision = config["text_config"], config["vision_config"]
    hidden = int(text.get("hidden_size", 0))
    if hidden < 1:
        raise CheckpointError(f"{where}: text_config.hidden_size is missing")
    shapes = weight_shapes(path)
    weight, bias = projection_keys(shapes, str(path))
    rows, cols = shapes[weight]
    if rows != dim:
        if dim_field:
            said = f"{dim_field} = {dim}"
        else:
            said = f"none of {', '.join(DIM_FIELDS)} is set, so the size is the default {DEFAULT_DIM},"
        raise CheckpointError(
            f"{where}: {said} but {weight} has {rows} rows; set {dim_field or 'dim'} to {rows} in config.json "
            "(or with --hf-overrides)"
        )
    if cols != hidden:
        raise CheckpointError(f"{path}: {weight} is {rows}x{cols} but text_config.hidden_size is {hidden}")
    if bias is not None and shapes[bias] != [rows]:
        raise CheckpointError(f"{path}: {bias} has shape {shapes[bias]}, expected [{rows}]")
    prefix = key_prefix(shapes, str(path))
    unused = unused_keys(shapes, prefix)
    if unused:
        raise CheckpointError(f"{path}: tensors that belong to no part of ColQwen3.5: {unused[:5]}")

    def token_id(name: str, default: int) -> int:
        return int(config.get(name, default))

    return {
        "architecture": ARCHITECTURE,
        "dim": dim,
        "dim_field": dim_field,
        "hidden_size": hidden,
        "projection_weight": weight,
        "projection_bias": bias,
        "key_prefix": prefix,
        "attention_contract": contract,
        # transformers' Qwen3_5Config defaults (the real vocabulary's ids) where config.json leaves them out.
        "image_token_id": token_id("image_token_id", 248056),
        "video_token_id": token_id("video_token_id", 248057),
        "vision_start_token_id": token_id("vision_start_token_id", 248053),
        "vision_end_token_id": token_id("vision_end_token_id", 248054),
        "max_position_embeddings": int(text.get("max_position_embeddings", 32768)),
        "vocab_size": int(text.get("vocab_size", 248320)),
        "layer_types": layer_types(text),
        "patch_size": int(vision.get("patch_size", 16)),
        "spatial_merge_size": int(vision.get("spatial_merge_size", 2)),
        "temporal_patch_size": int(vision.get("temporal_patch_size", 2)),
    }
