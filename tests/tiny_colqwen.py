"""Tiny, deterministic Qwen3-VL late-interaction checkpoints in the file layouts of the ColQwen3 family's repos.

:func:`write_colqwen3` writes one folder as each vendor ships it (reference/vllm_semantics.md §5.1):

* ``tomoro`` (TomoroAI/tomoro-colqwen3-embed-*): architectures ``ColQwen3``, model_type ``colqwen3``; backbone
  ``vlm.model.visual.*`` / ``vlm.model.language_model.*`` + ``vlm.lm_head.weight``; projection
  ``embedding_proj_layer.{weight,bias}``; dim field ``embed_dim``.
* ``opensearch`` (OpenSearch-AI/Ops-Colqwen3-*): ``OpsColQwen3Model``, ``ops_colqwen3``; bare ``visual.*`` /
  ``language_model.*``, no LM head; ``custom_text_proj.{weight,bias}``; ``dims``.
* ``nvidia`` (nvidia/nemotron-colembed-vl-*): ``Qwen3VLNemotronEmbedModel``, ``qwen3_vl_nemotron_embed``;
  ``model.visual.*`` / ``model.language_model.*`` + ``lm_head.weight``; ``custom_text_proj.{weight,bias}``;
  ``dim``.

``dim=None`` writes no projection at all (the model then returns the normalised hidden states, as
nemotron-colembed-vl does) and no dim field.

Files, as the real repos hold them: ``config.json`` (a Qwen3-VL config: ``text_config`` / ``vision_config`` in the
key set transformers 4.57 wrote for Qwen/Qwen3-VL-*-Instruct, incl. the legacy ``rope_scaling`` + ``rope_theta``),
``model.safetensors`` (or, with ``shard_bytes``, shards + ``model.safetensors.index.json``),
``preprocessor_config.json`` (Qwen3-VL's: patch 16, merge 2, temporal 2, mean/std 0.5, ``size`` in pixels),
``tokenizer.json`` (byte-level BPE with Qwen2's pre-tokenizer, 480 learned tokens then the 14 Qwen2-VL special
tokens in Qwen's order), ``tokenizer_config.json`` (``Qwen2Tokenizer``, the special tokens, a Qwen3-VL style chat
template) and ``special_tokens_map.json``.

The sizes are a parameter (:class:`Qwen3VLSizes`; :data:`QWEN3_VL_4B` gives Qwen3-VL-4B's backbone sizes) so a
real-sized random checkpoint can reuse this builder. Weights: every tensor drawn from one generator seeded with
``seed`` (``tiny_checkpoints._seeded_state_dict``); the caller's global RNG is untouched.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tiny_checkpoints import _instantiate_for_shapes, _minilm_words, _model_named_shapes, _seeded_tensors

__all__ = [
    "CHAT_TEMPLATE",
    "LAYOUTS",
    "QWEN3_VL_4B",
    "SPECIAL_TOKENS",
    "Qwen3VLSizes",
    "backbone_key",
    "special_token_ids",
    "write_colqwen3",
]

# Qwen2-VL's added special tokens, in the order (and relative ids) of Qwen/Qwen3-VL-*'s tokenizer (151643..151656).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
BPE_VOCAB = 480  # learned byte-level tokens; the special tokens follow at ids 480..493

# Qwen2's pre-tokenizer split (Qwen/Qwen3-VL-*-Instruct tokenizer.json).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3-VL's chat template, reduced to what embedding requests use and written for this fixture: a message's
# content is a string or a list of parts (image / image_url / video / text); roles system, user, assistant.
# One user message [image, "Describe the image."] renders as
# "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('Unexpected message role: ' + message.role) -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is string -%}"
    "{{- message.content -}}"
    "{%- else -%}"
    "{%- for part in message.content -%}"
    "{%- if part.type == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part.text -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class Layout:
    architecture: str
    model_type: str
    backbone_prefix: str  # prefix of transformers' Qwen3VLModel keys (visual.*, language_model.*)
    lm_head: str | None  # key of the LM head the vendor's checkpoint carries, None when it has none
    projection: str  # module name of the projection
    dim_field: str  # config.json field that declares the projection size


LAYOUTS = {
    "tomoro": Layout("ColQwen3", "colqwen3", "vlm.model.", "vlm.lm_head.weight", "embedding_proj_layer", "embed_dim"),
    "opensearch": Layout("OpsColQwen3Model", "ops_colqwen3", "", None, "custom_text_proj", "dims"),
    "nvidia": Layout("Qwen3VLNemotronEmbedModel", "qwen3_vl_nemotron_embed", "model.", "lm_head.weight",
                     "custom_text_proj", "dim"),
}


@dataclass(frozen=True)
class Qwen3VLSizes:
    """Backbone sizes; the defaults make a checkpoint of about 1 MB (text hidden 64, 2 layers, vision depth 2)."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2
    max_position_embeddings: int = 4096
    rope_theta: float = 5000000
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    num_position_embeddings: int = 64  # a square: the learned position grid is 8 x 8
    deepstack_visual_indexes: tuple[int, ...] = (0,)
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2


# Qwen/Qwen3-VL-4B-Instruct's backbone sizes (the base of tomoro-colqwen3-embed-4b, Ops-Colqwen3-4B and
# nemotron-colembed-vl-4b-v2).
QWEN3_VL_4B = Qwen3VLSizes(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, mrope_section=(24, 20, 20), max_position_embeddings=262144,
    vision_depth=24, vision_hidden_size=1024, vision_intermediate_size=4096, vision_num_heads=16,
    num_position_embeddings=2304, deepstack_visual_indexes=(5, 11, 17),
)


def special_token_ids() -> dict[str, int]:
    """Special token -> id in the fixture's tokenizer (and config.json's image/video/vision ids)."""
    return {token: BPE_VOCAB + i for i, token in enumerate(SPECIAL_TOKENS)}


def backbone_key(layout: str, key: str) -> str:
    """The vendor's name for transformers' ``Qwen3VLModel`` key ``key`` (``visual.*`` / ``language_model.*``)."""
    return LAYOUTS[layout].backbone_prefix + key


def _config_json(layout: Layout, sizes: Qwen3VLSizes, dim: int | None, dtype: str, tie: bool) -> dict:
    ids = special_token_ids()
    config = {
        "architectures": [layout.architecture],
        "model_type": layout.model_type,
        "dtype": dtype,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": tie,
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": ids["<|endoftext|>"],
            "dtype": dtype,
            "eos_token_id": ids["<|im_end|>"],
            "head_dim": sizes.head_dim,
            "hidden_act": "silu",
            "hidden_size": sizes.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": sizes.intermediate_size,
            "max_position_embeddings": sizes.max_position_embeddings,
            "model_type": "qwen3_vl_text",
            "num_attention_heads": sizes.num_attention_heads,
            "num_hidden_layers": sizes.num_hidden_layers,
            "num_key_value_heads": sizes.num_key_value_heads,
            "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": list(sizes.mrope_section),
                             "rope_type": "default"},
            "rope_theta": sizes.rope_theta,
            "tie_word_embeddings": tie,
            "use_cache": True,
            "vocab_size": sizes.vocab_size,
        },
        "vision_config": {
            "deepstack_visual_indexes": list(sizes.deepstack_visual_indexes),
            "depth": sizes.vision_depth,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": sizes.vision_hidden_size,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": sizes.vision_intermediate_size,
            "model_type": "qwen3_vl",  # what the Qwen3-VL checkpoints say (transformers maps it to qwen3_vl_vision)
            "num_heads": sizes.vision_num_heads,
            "num_position_embeddings": sizes.num_position_embeddings,
            "out_hidden_size": sizes.hidden_size,
            "patch_size": sizes.patch_size,
            "spatial_merge_size": sizes.spatial_merge_size,
            "temporal_patch_size": sizes.temporal_patch_size,
        },
        "transformers_version": "4.57.1",
    }
    if dim is not None:
        config[layout.dim_field] = dim
    return config


@functools.lru_cache(maxsize=1)
def _qwen2_bpe_tokenizer_json() -> str:
    """Byte-level BPE in Qwen2's shape (NFC, the Qwen2 split regex, ByteLevel without prefix space), 480 tokens
    learned deterministically from MiniLM vocabulary words, then the 14 special tokens.  ``tokenizer.json`` text."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=[], min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = ["Describe the image. Query: What is shown in the picture?"] * 50
    for rank, word in enumerate(_minilm_words()[:1500]):
        lines.extend([f" {word} {word.capitalize()} {word}."] * max(1, 32 // (1 + rank // 40)))
    tokenizer.train_from_iterator(lines, trainer=trainer)
    if tokenizer.get_vocab_size() != BPE_VOCAB:
        raise RuntimeError(f"the fixture BPE learned {tokenizer.get_vocab_size()} tokens, expected {BPE_VOCAB}")
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer.to_str()


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def _write_tokenizer_files(path: Path, model_max_length: int) -> None:
    (path / "tokenizer.json").write_text(_qwen2_bpe_tokenizer_json(), encoding="utf-8")
    ids = special_token_ids()
    extra = [t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>",)]
    _write_json(path / "tokenizer_config.json", {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[t]): _added_token(t) for t in SPECIAL_TOKENS},
        "additional_special_tokens": extra,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })
    plain = {k: v for k, v in _added_token("").items() if k != "special"}
    _write_json(path / "special_tokens_map.json", {
        "additional_special_tokens": extra,
        "eos_token": {**plain, "content": "<|im_end|>"},
        "pad_token": {**plain, "content": "<|endoftext|>"},
    })


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _backbone_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """transformers' ``Qwen3VLModel`` parameter names and shapes for ``config`` (built on the meta device)."""
    from transformers import Qwen3VLConfig, Qwen3VLModel

    hf = Qwen3VLConfig.from_dict({k: v for k, v in config.items() if k in ("text_config", "vision_config")})
    return _model_named_shapes(_instantiate_for_shapes(Qwen3VLModel, hf))


def _write_weights(path: Path, named: list[tuple[str, tuple[int, ...]]], seed: int, dtype: torch.dtype,
                   bias: str | None, shard_bytes: int | None) -> None:
    """Draw ``named`` (``_seeded_tensors``, name order) in ``dtype`` into ``model.safetensors``, or into shards of
    about ``shard_bytes`` planned from the shapes first (a shard closes before the tensor that would overflow it),
    each drawn, written and dropped before the next."""
    size = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    filled = 0
    for name, shape in sorted(named):
        nbytes = size * max(1, int(torch.Size(shape).numel()))
        if shard_bytes is not None and shards[-1] and filled + nbytes > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += nbytes
    files = (["model.safetensors"] if shard_bytes is None else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    drawn = _seeded_tensors(named, seed)
    weight_map: dict[str, str] = {}
    total = 0
    for names, file in zip(shards, files):
        state: dict[str, torch.Tensor] = {}
        for name in names:
            drawn_name, tensor = next(drawn)
            if bias is not None and drawn_name == bias:
                # A visible bias: the default 0.05 std would leave it easy to miss next to the weight's.
                tensor = tensor * 10
            state[drawn_name] = tensor.to(dtype).contiguous()
            del tensor
            weight_map[drawn_name] = file
            total += state[drawn_name].numel() * size
        save_file(state, str(path / file), metadata={"format": "pt"})
        del state
    if shard_bytes is not None:
        _write_json(path / "model.safetensors.index.json",
                    {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def write_colqwen3(
    path: str | Path,
    layout: str = "tomoro",
    *,
    projection_bias: bool = True,
    dim: int | None = 16,
    seed: int = 7,
    sizes: Qwen3VLSizes = Qwen3VLSizes(),
    min_pixels: int = 32 * 32,
    max_pixels: int = 128 * 128,
    dtype: torch.dtype = torch.float32,
    tie_word_embeddings: bool = False,
    shard_bytes: int | None = None,
) -> Path:
    """Write a ColQwen3-family checkpoint in ``layout``'s exact files (module docstring) into ``path``.

    ``dim``: the projection's output size (``Linear(hidden, dim)``, with a bias when ``projection_bias``), or None
    for no projection weights at all.  ``min_pixels`` / ``max_pixels``: the image processor's ``size``
    (``shortest_edge`` / ``longest_edge``), small so test images stay cheap.  ``tie_word_embeddings``: what
    config.json says (Qwen3-VL-4B: true); a tied checkpoint carries no LM head tensor, as ``save_pretrained``
    writes it.  ``shard_bytes``: None writes one ``model.safetensors``; a size writes
    ``model-0000i-of-0000n.safetensors`` shards of about that many bytes plus ``model.safetensors.index.json``
    (transformers' sharded layout), drawing and writing one shard at a time so the writer holds about one shard
    in memory.  Same arguments, same bytes (sharding changes the files, not the tensors).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    spec = LAYOUTS[layout]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype_name = str(dtype).removeprefix("torch.")
    config = _config_json(spec, sizes, dim, dtype_name, tie_word_embeddings)
    _write_json(path / "config.json", config)

    named = [(backbone_key(layout, name), shape) for name, shape in _backbone_shapes(config)]
    if spec.lm_head is not None and not tie_word_embeddings:
        named.append((spec.lm_head, (sizes.vocab_size, sizes.hidden_size)))
    if dim is not None:
        named.append((f"{spec.projection}.weight", (dim, sizes.hidden_size)))
        if projection_bias:
            named.append((f"{spec.projection}.bias", (dim,)))
    _write_weights(path, named, seed, dtype, bias=f"{spec.projection}.bias" if dim is not None and projection_bias
                   else None, shard_bytes=shard_bytes)

    _write_json(path / "preprocessor_config.json", {
        "size": {"longest_edge": max_pixels, "shortest_edge": min_pixels},
        "patch_size": sizes.patch_size,
        "temporal_patch_size": sizes.temporal_patch_size,
        "merge_size": sizes.spatial_merge_size,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor",
        "image_processor_type": "Qwen2VLImageProcessorFast",
    })
    _write_tokenizer_files(path, model_max_length=sizes.max_position_embeddings)
    return path
