"""A tiny, deterministic ColQwen3.5 checkpoint in the layout of ``athrael-soju/colqwen3.5-4.5B-v3``.

What the real repository is (reference/vllm_semantics.md section 6, reference/oracles.md section 3, vLLM PRs
#46108 / #49372): colpali-engine's ``ColQwen3_5`` -- a ``transformers.Qwen3_5Model`` (Qwen3.5 hybrid text model:
GatedDeltaNet ``linear_attention`` layers and gated ``full_attention`` layers, M-RoPE with partial rotary; a
Qwen3-VL style vision tower without DeepStack) plus ``custom_text_proj = nn.Linear(hidden, dim)`` **with bias** --
saved as its bare state dict: ``language_model.*``, ``visual.*``, ``custom_text_proj.{weight,bias}``.
``config.json`` is a ``Qwen3_5Config`` (``model_type`` ``qwen3_5``, ``text_config``, ``vision_config``) with
``architectures ["ColQwen3_5"]``, the projection size (vLLM's test expects 320 for the 4.5B) and
``retrieval_attention_contract`` (``"bidirectional"`` for colqwen3.5-4.5B-v3, ``"causal"`` for the Vultron
checkpoints).  The processor files are Qwen3-VL's (``preprocessor_config.json`` patch 16, merge 2, temporal 2,
mean/std 0.5); the tokenizer is Qwen's byte-level BPE whose added tokens run ``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>``, ..., ``<|vision_start|>``, ``<|vision_end|>``, ``<|vision_pad|>``, ``<|image_pad|>``,
``<|video_pad|>`` (Qwen3.5 ids 248044..248057; here they follow a 1,000-entry trained vocabulary in the same
order).

Sizes here: text hidden 32, 4 layers ``[linear, full, linear, full]``, 2 query heads / 1 KV head of 32 (partial
rotary 0.25 -> 8 rotary dims, ``mrope_section [2, 1, 1]``), GatedDeltaNet 2 key / 4 value heads of 16, conv
kernel 4; vision depth 2, hidden 32, 2 heads, patch 16, merge 2, 8x8 learned position grid; projection 32 -> 16.
Weights are drawn per tensor from a seeded generator (``tiny_checkpoints._seeded_state_dict``), the same bytes for
the same arguments.

Knobs for the loader's cases: ``contract`` (None writes no ``retrieval_attention_contract``), ``bias``,
``prefix`` (``"model."`` puts every tensor under ``model.``), ``proj_name`` (``embedding_proj_layer``),
``dim_field`` (which config field carries the size; None -> the default 128), ``mtp`` (adds ``mtp.*`` tensors
as base Qwen3.5 checkpoints carry), ``shards`` (``model-0000i-of-0000n.safetensors`` + index).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from safetensors.torch import save_file

from tiny_checkpoints import (
    _instantiate_for_shapes,
    _minilm_words,
    _model_named_shapes,
    _plain_token_entry,
    _seeded_state_dict,
    _write_json,
)

__all__ = ["QWEN_SPECIAL_TOKENS", "write_colqwen3_5", "CHAT_TEMPLATE"]

# Qwen's added special tokens and the Qwen3-VL chat template, shared with the ColQwen3 fixture (the real Qwen3.5
# tokenizer has the same special-token run; the ColQwen3.5 repos ship Qwen's same template).
from tiny_colqwen import CHAT_TEMPLATE, SPECIAL_TOKENS as QWEN_SPECIAL_TOKENS  # noqa: E402
# transformers' Qwen3_5Tokenizer pre-tokenisation split.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

HIDDEN = 32
LAYER_TYPES = ("linear_attention", "full_attention", "linear_attention", "full_attention")


@functools.lru_cache(maxsize=1)
def _qwen_bpe_tokenizer_json() -> str:
    """A 1,000-entry byte-level BPE trained on MiniLM words, Qwen's pre-tokeniser and decoder, no post-processor
    (Qwen adds no BOS/EOS), the 14 Qwen special tokens appended after the vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=1, show_progress=False
    )
    lines: list[str] = []
    for rank, word in enumerate(_minilm_words()[:1500]):
        lines.extend([f" {word} {word.capitalize()} {word}. {word},"] * max(1, 32 // (1 + rank // 40)))
    tokenizer.train_from_iterator(lines, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN_SPECIAL_TOKENS])
    return tokenizer.to_str()


def _token_ids() -> dict[str, int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(_qwen_bpe_tokenizer_json())
    return {t: tokenizer.token_to_id(t) for t in QWEN_SPECIAL_TOKENS} | {
        "__vocab_size__": tokenizer.get_vocab_size(with_added_tokens=True)
    }


def _config_json(*, ids: dict[str, int], contract: str | None, dim: int, dim_field: str | None) -> dict:
    """``config.json`` with the key set of a Qwen3.5 VL checkpoint as colpali-engine saves it."""
    vocab_size = ids["__vocab_size__"]
    config: dict = {"architectures": ["ColQwen3_5"]}
    if dim_field is not None:
        config[dim_field] = dim
    config.update({
        "dtype": "float32",
        "image_token_id": ids["<|image_pad|>"],
        "model_type": "qwen3_5",
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "attn_output_gate": True,
            "dtype": "float32",
            "eos_token_id": ids["<|endoftext|>"],
            "full_attention_interval": 2,
            "head_dim": 32,
            "hidden_act": "silu",
            "hidden_size": HIDDEN,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "layer_types": list(LAYER_TYPES),
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_value_head_dim": 16,
            "max_position_embeddings": 2048,
            "model_type": "qwen3_5_text",
            "mtp_num_hidden_layers": 1,
            "mtp_use_dedicated_embeddings": False,
            "num_attention_heads": 2,
            "num_hidden_layers": len(LAYER_TYPES),
            "num_key_value_heads": 1,
            "rms_norm_eps": 1e-06,
            "rope_parameters": {
                "mrope_interleaved": True,
                "mrope_section": [2, 1, 1],
                "partial_rotary_factor": 0.25,
                "rope_theta": 10000000,
                "rope_type": "default",
            },
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": vocab_size,
        },
        "tie_word_embeddings": False,
        "transformers_version": "5.23.0",
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": {
            "deepstack_visual_indexes": [],
            "depth": 2,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": 32,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "model_type": "qwen3_5",
            "num_heads": 2,
            "num_position_embeddings": 64,
            "out_hidden_size": HIDDEN,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
    })
    if contract is not None:
        config["retrieval_attention_contract"] = contract
    return config


def _tokenizer_files(path: Path, ids: dict[str, int]) -> None:
    (path / "tokenizer.json").write_text(_qwen_bpe_tokenizer_json(), encoding="utf-8")
    added = {
        str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True}
        for t in QWEN_SPECIAL_TOKENS
    }
    _write_json(path / "tokenizer_config.json", {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                                      "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                                      "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                                      "<|video_pad|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",  # colpali-engine's ColQwen3_5Processor
        "processor_class": "ColQwen3_5Processor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })
    _write_json(path / "special_tokens_map.json", {
        "additional_special_tokens": [_plain_token_entry(t) for t in QWEN_SPECIAL_TOKENS[1:]],
        "eos_token": _plain_token_entry("<|im_end|>"),
        "pad_token": _plain_token_entry("<|endoftext|>"),
    })
    _write_json(path / "preprocessor_config.json", {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": 2,
        "patch_size": 16,
        "processor_class": "ColQwen3_5Processor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 128 * 128, "shortest_edge": 32 * 32},
        "temporal_patch_size": 2,
    })


def _mtp_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """A few of the ``mtp.*`` (multi-token prediction) tensors base Qwen3.5 checkpoints carry; never loaded."""
    return [
        ("mtp.fc.weight", (HIDDEN, 2 * HIDDEN)),
        ("mtp.norm.weight", (HIDDEN,)),
        ("mtp.pre_fc_norm_embedding.weight", (HIDDEN,)),
        ("mtp.pre_fc_norm_hidden.weight", (HIDDEN,)),
    ]


def write_colqwen3_5(
    path: str | Path,
    *,
    contract: str | None = "bidirectional",
    bias: bool = True,
    prefix: str = "",
    seed: int = 11,
    dim: int = 16,
    dim_field: str | None = "dim",
    proj_name: str = "custom_text_proj",
    mtp: bool = False,
    shards: int = 1,
) -> Path:
    """Write the tiny checkpoint (layout in the module docstring) to ``path``; return ``path``.

    ``dim_field=None`` writes no size field, so the projection has the default 128 rows (``dim`` is then ignored).
    """
    from transformers import AutoConfig, Qwen3_5Model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = _token_ids()
    if dim_field is None:
        dim = 128
    config_json = _config_json(ids=ids, contract=contract, dim=dim, dim_field=dim_field)
    _write_json(path / "config.json", config_json)
    _tokenizer_files(path, ids)

    config = AutoConfig.for_model(**config_json)
    shapes = _model_named_shapes(_instantiate_for_shapes(Qwen3_5Model, config))
    shapes.append((f"{proj_name}.weight", (dim, HIDDEN)))
    if bias:
        shapes.append((f"{proj_name}.bias", (dim,)))
    if mtp:
        shapes.extend(_mtp_shapes())
    tensors = _seeded_state_dict(shapes, seed)
    # GatedDeltaNet's decay: A = exp(A_log) > 0 and dt_bias as transformers initialises them (ones), so the
    # recurrence keeps a memory of earlier tokens rather than decaying at random rates.
    for name in tensors:
        if name.endswith("linear_attn.dt_bias"):
            tensors[name] = torch.ones_like(tensors[name])
    if bias:
        # A bias large enough that dropping it moves every vector visibly.
        tensors[f"{proj_name}.bias"] = tensors[f"{proj_name}.bias"] * 10
    tensors = {prefix + k: v for k, v in tensors.items()}
    names = sorted(tensors)
    if shards <= 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        per = -(-len(names) // shards)
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in names[i * per:(i + 1) * per]}
            save_file(part, str(path / file), metadata={"format": "pt"})
            weight_map.update({k: file for k in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        _write_json(path / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return path
