"""What a Llama Nemotron VL checkpoint is, read from its JSON files and safetensors headers (no torch).

Two architectures share one layout (vllm_semantics.md §7, nemotron_vl_facts.md):

* ``LlamaNemotronVLModel`` (model_type ``llama_nemotron_vl``, ``nvidia/llama-nemotron-embed-vl-1b-v2``):
  weights unprefixed — ``vision_model.vision_model.*`` (SigLIP), ``mlp1.{0,1,3}``, ``language_model.*``;
* ``LlamaNemotronVLForSequenceClassification`` (``llama_nemotron_vl_rerank``,
  ``nvidia/llama-nemotron-rerank-vl-1b-v2``): the same under ``model.``, plus ``score.weight`` ``[1, hidden]``.

Both configs carry ``auto_map`` to remote code; it is never imported or run — config.json is read as data.
:func:`read_nemotron_vl` returns a plain JSON-ready dict (keys listed on the function) or raises
:class:`CheckpointError` with the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .chat_templates import NEMOTRON_EMBED, NEMOTRON_RERANK
from .checkpoint import CheckpointError, open_checkpoint, read_json_if_exists, weight_files, weight_shapes
from .nemotron_vl_images import IMG_CONTEXT, IMG_END, IMG_START, TilingParams

EMBED = "embed"
RERANK = "rerank"

ARCHITECTURES = {
    "LlamaNemotronVLModel": EMBED,
    "LlamaNemotronVLForSequenceClassification": RERANK,
}
MODEL_TYPES = {EMBED: "llama_nemotron_vl", RERANK: "llama_nemotron_vl_rerank"}
# The text sub-config is a Llama config under NVIDIA's name for its bidirectional variant.
LLM_MODEL_TYPES = ("llama_bidirec", "llama")
VISION_MODEL_TYPES = ("siglip_vision_model",)

PS_VERSIONS = ("v1", "v2")  # pixel_shuffle.PS_VERSIONS, restated: that module imports torch

# config ``pooling`` -> the pooled vector, as vLLM's LlamaNemotronVLConfig handler maps it.
POOLING = {"avg": "mean", "cls": "cls", "last": "last"}


def _override_hint(key: str, example: str) -> str:
    return f"fix config.json or pass --hf-overrides '{{\"{key}\": {example}}}'"


def _weight_shapes(path: Path) -> dict[str, list[int]]:
    """Every tensor's shape across ``model.safetensors`` or the shards its index names."""
    return weight_shapes(path)


def _labels(config: Mapping[str, Any]) -> int | None:
    """``num_labels`` as transformers stores it: the key itself, else the size of ``id2label``."""
    if isinstance(config.get("num_labels"), int):
        return int(config["num_labels"])
    if isinstance(config.get("id2label"), Mapping) and config["id2label"]:
        return len(config["id2label"])
    return None


def _tokenizer_facts(path: Path) -> dict[str, Any]:
    """Special token ids and strings from tokenizer.json / tokenizer_config.json / special_tokens_map.json."""
    from tokenizers import Tokenizer

    from .tokenization import SpecialTokens, _token_content

    file = path / "tokenizer.json"
    if not file.is_file():
        raise CheckpointError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    tokenizer = Tokenizer.from_file(str(file))
    special = SpecialTokens.read(path, tokenizer)
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        config.update(read_json_if_exists(path / name) or {})
    return {
        "img_context": tokenizer.token_to_id(IMG_CONTEXT),
        "img_start": tokenizer.token_to_id(IMG_START),
        "img_end": tokenizer.token_to_id(IMG_END),
        "bos_token": _token_content(config.get("bos_token")),
        "bos_token_id": special.bos,
        "pad_token": _token_content(config.get("pad_token")),
        "pad_token_id": special.pad,
        "eos_token_id": special.eos,
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
    }


def _pick(*places: tuple[Mapping[str, Any], str], default: Any = None) -> Any:
    for place, key in places:
        if place.get(key) is not None:
            return place[key]
    return default


def read_nemotron_vl(path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model card of a Llama Nemotron VL checkpoint folder (``overrides`` = ``--hf-overrides``, merged
    into config.json's top level). Reads only JSON files, the tokenizer and safetensors headers.

    Keys of the result:

    * ``kind`` ``"embed"`` | ``"rerank"``; ``architecture``; ``model_type``; ``path``;
    * ``weights_prefix`` ``""`` (embed) | ``"model."`` (rerank): where the base model's keys live;
      ``weight_files``: the safetensors files;
    * ``hidden_size`` / ``num_hidden_layers`` / ``vocab_size``: the Llama text model;
      ``vision`` ``{hidden_size, image_size, patch_size, num_hidden_layers}`` (SigLIP);
    * ``force_image_size`` (tile side), ``downsample_ratio``, ``ps_version``, ``select_layer`` (always -1);
    * ``pooling`` ``"mean"`` | ``"cls"`` | ``"last"`` (config ``avg`` / ``cls`` / ``last``);
    * ``img_context_token_id``, ``img_start_token_id``, ``img_end_token_id``; ``tokens_per_tile``;
      ``tiling`` ``{tile_size, patch_size, downsample_ratio, min_tiles, max_tiles, use_thumbnail}``
      (:class:`~python_backend_models.nemotron_vl_images.TilingParams` fields);
    * ``num_labels`` (rerank: 1; embed: None); ``temperature`` (rerank, read but not applied, as vLLM);
    * ``max_model_len`` (the Llama position table, vLLM's default), ``q_max_length`` / ``p_max_length`` /
      ``rerank_max_length`` (NVIDIA processor knobs, None when absent; trilate does not truncate by them);
    * ``chat_template`` (the bundled template name), ``add_special_tokens`` (tokenise the rendered prompt with
      special tokens: False for the embed template, which writes the BOS itself; True for rerank),
      ``query_prefix`` / ``passage_prefix`` / ``template`` / ``prompt_template`` (config values, informative);
    * ``bos_token`` / ``bos_token_id`` / ``pad_token`` / ``pad_token_id`` / ``eos_token_id``;
    * ``dtype``: the declared weight dtype (``torch_dtype``), for ``--dtype auto``.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {os.fspath(path)!r} does not exist")
    ckpt = open_checkpoint(root, dict(overrides or {}))
    config = ckpt.config
    architecture = ckpt.architecture
    kind = ARCHITECTURES.get(architecture)
    if kind is None:
        raise CheckpointError(f"{architecture!r} is not a Llama Nemotron VL architecture; expected one of "
                              f"{sorted(ARCHITECTURES)}")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES.values():
        raise CheckpointError(f"{root}/config.json says model_type {model_type!r}; {architecture} needs "
                              f"{MODEL_TYPES[kind]!r} ({_override_hint('model_type', repr(MODEL_TYPES[kind]))})")

    llm = config.get("llm_config")
    vision = config.get("vision_config")
    if not isinstance(llm, Mapping) or not isinstance(vision, Mapping):
        raise CheckpointError(f"{root}/config.json needs both llm_config and vision_config sub-configs")
    if llm.get("model_type") not in LLM_MODEL_TYPES:
        raise CheckpointError(f"{root}/config.json llm_config.model_type is {llm.get('model_type')!r}; "
                              f"trilate reads {LLM_MODEL_TYPES} as a Llama config")
    if vision.get("model_type") not in VISION_MODEL_TYPES:
        raise CheckpointError(f"{root}/config.json vision_config.model_type is {vision.get('model_type')!r}; "
                              "only SigLIP (siglip_vision_model) vision towers are supported")

    select_layer = int(config.get("select_layer", -1))
    if select_layer != -1:
        # NVIDIA's code would take SigLIP's hidden_states[select_layer] (before post_layernorm) while vLLM's
        # embedding model always uses the last layer; with the two disagreeing, only -1 is served.
        raise CheckpointError(f"{root}/config.json select_layer is {select_layer}; only -1 (the SigLIP output "
                              f"after post_layernorm) is supported ({_override_hint('select_layer', '-1')})")
    # NVIDIA's modelling code for these checkpoints always shuffles the v2 way (it has no ps_version knob), so a
    # config without the field means v2 here, not InternVL's v1 default.
    ps_version = config.get("ps_version", "v2")
    if ps_version not in PS_VERSIONS:
        raise CheckpointError(f"{root}/config.json ps_version must be one of {PS_VERSIONS}, got {ps_version!r}")
    ratio = float(config.get("downsample_ratio", 0.5))
    if ratio not in (0.5, 0.25):
        # mlp1 is built for the 2x2 (or 4x4) blocks of InternVL-style towers; the checkpoints use 0.5.
        raise CheckpointError(f"{root}/config.json downsample_ratio {ratio} is not supported; use 0.5 "
                              f"({_override_hint('downsample_ratio', '0.5')})")
    tiling = TilingParams.from_checkpoint(ckpt)
    image_size = vision.get("image_size")
    if image_size is not None and int(image_size) != tiling.tile_size:
        raise CheckpointError(f"{root}/config.json force_image_size {tiling.tile_size} differs from "
                              f"vision_config.image_size {image_size}; SigLIP's position table fits only its own "
                              f"size ({_override_hint('force_image_size', image_size)})")

    raw_pooling = _pick((config, "pooling"), (llm, "pooling"), default="avg")
    if raw_pooling not in POOLING:
        hint = _override_hint("pooling", '"avg"')
        raise CheckpointError(f"{root}/config.json pooling {raw_pooling!r} is not supported; use one of "
                              f"{sorted(POOLING)} ({hint})")

    shapes = _weight_shapes(root)
    prefix = "model." if any(k.startswith("model.language_model.") for k in shapes) else ""
    embed_key = next((k for k in (f"{prefix}language_model.embed_tokens.weight",
                                  f"{prefix}language_model.model.embed_tokens.weight") if k in shapes), None)
    if embed_key is None:
        expected = "model.language_model.*" if kind == RERANK else "language_model.*"
        raise CheckpointError(f"{root}: the weights have no {prefix}language_model.embed_tokens.weight; a "
                              f"{architecture} checkpoint keeps its Llama weights under {expected}")
    vocab_rows, hidden = shapes[embed_key]
    if int(llm.get("hidden_size", hidden)) != hidden:
        raise CheckpointError(f"{root}: llm_config.hidden_size {llm.get('hidden_size')} but the token embedding "
                              f"is {hidden} wide")

    num_labels = None
    if kind == RERANK:
        score = shapes.get("score.weight")
        if score is None:
            raise CheckpointError(f"{root}: a {architecture} checkpoint needs the top-level score.weight "
                                  "[1, hidden] (the relevance head); none found in the weights")
        declared = _labels(config)
        if declared is None:
            declared = _labels(llm)
        num_labels = int(score[0]) if declared is None else declared
        if num_labels != 1 or score[0] != 1:
            raise CheckpointError(
                f"{root}: the reranker must have exactly one label (num_labels == 1, score.weight [1, hidden]) "
                f"for /score and /rerank, as vLLM requires; this checkpoint has num_labels {num_labels} and "
                f"score.weight {list(score)}")
        if score[1] != hidden:
            raise CheckpointError(f"{root}: score.weight is {list(score)} but the hidden size is {hidden}")
    elif prefix:
        raise CheckpointError(f"{root}: the weights sit under model. (a reranker's layout) but config.json says "
                              f"{architecture}; pass --hf-overrides '{{\"architectures\": "
                              "[\"LlamaNemotronVLForSequenceClassification\"]}' if it is one")

    tokens = _tokenizer_facts(root)
    declared_ctx = config.get("img_context_token_id")
    if declared_ctx is not None and tokens["img_context"] is not None and int(declared_ctx) != tokens["img_context"]:
        raise CheckpointError(f"{root}/config.json img_context_token_id {declared_ctx} differs from the tokenizer's "
                              f"{IMG_CONTEXT} id {tokens['img_context']} "
                              f"({_override_hint('img_context_token_id', tokens['img_context'])})")
    img_context = declared_ctx if declared_ctx is not None else tokens["img_context"]
    if img_context is None or tokens["img_start"] is None or tokens["img_end"] is None:
        raise CheckpointError(f"{root}: the tokenizer needs the added tokens {IMG_START}, {IMG_CONTEXT} and "
                              f"{IMG_END} (and config.json img_context_token_id)")
    if not 0 <= int(img_context) < vocab_rows or tokens["vocab_size"] > vocab_rows:
        raise CheckpointError(f"{root}: the tokenizer has {tokens['vocab_size']} tokens ({IMG_CONTEXT} = "
                              f"{img_context}) but the token embedding has {vocab_rows} rows")

    max_positions = int(llm.get("max_position_embeddings") or 0) or None
    return {
        "kind": kind,
        "architecture": architecture,
        "model_type": model_type,
        "path": str(root.resolve()),
        "weights_prefix": prefix,
        "weight_files": [str(f) for f in weight_files(root)],
        "hidden_size": hidden,
        "num_hidden_layers": int(llm.get("num_hidden_layers", 0)),
        "vocab_size": vocab_rows,
        "vision": {
            "hidden_size": int(vision.get("hidden_size", 0)),
            "image_size": int(image_size if image_size is not None else tiling.tile_size),
            "patch_size": tiling.patch_size,
            "num_hidden_layers": int(vision.get("num_hidden_layers", 0)),
        },
        "force_image_size": tiling.tile_size,
        "downsample_ratio": ratio,
        "ps_version": ps_version,
        "select_layer": select_layer,
        "pooling": POOLING[raw_pooling],
        "img_context_token_id": int(img_context),
        "img_start_token_id": int(tokens["img_start"]),
        "img_end_token_id": int(tokens["img_end"]),
        "tokens_per_tile": tiling.tokens_per_tile,
        "tiling": {
            "tile_size": tiling.tile_size,
            "patch_size": tiling.patch_size,
            "downsample_ratio": tiling.downsample_ratio,
            "min_tiles": tiling.min_tiles,
            "max_tiles": tiling.max_tiles,
            "use_thumbnail": tiling.use_thumbnail,
        },
        "num_labels": num_labels,
        "temperature": float(_pick((config, "temperature"), (llm, "temperature"), default=1.0))
        if kind == RERANK else None,
        "max_model_len": max_positions,
        "q_max_length": config.get("q_max_length"),
        "p_max_length": config.get("p_max_length"),
        "rerank_max_length": config.get("rerank_max_length"),
        "chat_template": NEMOTRON_RERANK if kind == RERANK else NEMOTRON_EMBED,
        "add_special_tokens": kind == RERANK,
        "query_prefix": config.get("query_prefix"),
        "passage_prefix": config.get("passage_prefix"),
        "template": config.get("template"),
        "prompt_template": config.get("prompt_template"),
        "bos_token": tokens["bos_token"],
        "bos_token_id": tokens["bos_token_id"],
        "pad_token": tokens["pad_token"],
        "pad_token_id": tokens["pad_token_id"],
        "eos_token_id": tokens["eos_token_id"],
        "dtype": str(config.get("torch_dtype") or config.get("dtype") or llm.get("torch_dtype") or "float32"),
    }


def tiling_params(card: Mapping[str, Any]) -> TilingParams:
    """The :class:`TilingParams` a card describes (for the image preprocessor)."""
    return TilingParams(**card["tiling"])


__all__ = ["EMBED", "RERANK", "ARCHITECTURES", "read_nemotron_vl", "tiling_params", "weight_files"]
