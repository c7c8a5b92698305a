"""Tiny Llama Nemotron VL checkpoints (embed and rerank) in the real Hugging Face layouts.

What the real repositories hold (``nvidia/llama-nemotron-embed-vl-1b-v2``, ``nvidia/llama-nemotron-rerank-vl-1b-v2``;
../shared/reference/nemotron_vl_facts.md, gathered from NVIDIA's NeMo Automodel modelling/configuration code, vLLM's
``nemotron_vl.py`` and its processor): a ``config.json`` with ``auto_map`` to remote code (never run here),
``vision_config`` (SigLIP, ``siglip_vision_model``), ``llm_config`` (a Llama config with model_type
``llama_bidirec``), the tiling knobs; ``model.safetensors``; ``processor_config.json``; a Llama-3 byte-level BPE
``tokenizer.json`` whose post-processor adds ``<|begin_of_text|>``, with the added tokens ``<img>``, ``</img>``,
``<IMG_CONTEXT>`` (ids right after the base vocabulary, as 128256-128258 in the real one); ``tokenizer_config.json``
with a bundled chat template that is *not* the one to use; ``special_tokens_map.json``.

Weight keys, embed (unprefixed): ``vision_model.vision_model.{embeddings,encoder,post_layernorm,head}.*`` (an HF
``SiglipVisionModel``; ``head.*`` is there because NVIDIA's code builds SiglipVisionModel with its default
``vision_use_head`` — never used), ``mlp1.0`` LayerNorm(vit*4), ``mlp1.1`` Linear(vit*4 -> llm), ``mlp1.3``
Linear(llm -> llm), ``language_model.{embed_tokens,layers.N.*,norm}.*``. Rerank: the same under ``model.``, plus
``score.weight`` ``[num_labels, hidden]`` in float32 (no bias).

Tiny sizes: SigLIP 32-px tiles, 8-px patches (a 4x4 grid -> 4 tokens per tile after the 0.5 pixel shuffle), hidden
32, 2 layers; Llama hidden 32, 2 layers, 4 heads / 2 KV heads (GQA), Llama-3 rope scaling; a ~770-token BPE.
Weights are float32 draws from a seeded generator (the caller's RNG is untouched): the same arguments write the
same bytes. Unconfirmed details of the real files are knobs (the pad token's name, whether ``head.*`` is present,
``ps_version``, the nested vs flat vision key layout vLLM also maps).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tiny_checkpoints import _instantiate_for_shapes, _minilm_words, _model_named_shapes, _plain_token_entry, \
    _seeded_state_dict, _write_json

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|finetune_right_pad_id|>"
EOT = "<|eot_id|>"
IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")
_LLAMA3_SPECIALS = (BOS, EOS, "<|reserved_special_token_0|>", PAD, EOT)
# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Llama-3.2-1B).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Not the template to use (the seed says so): a Llama-3 chat template, as the real tokenizer_config.json bundles.
_BUNDLED_CHAT_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>"
    "\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

TILE = 32
PATCH = 8
VISION_HIDDEN = 32
HIDDEN = 32


@functools.lru_cache(maxsize=1)
def _base_bpe_json() -> str:
    """A byte-level BPE in Llama 3's shape (regex split + ByteLevel without its own regex), 768 entries,
    trained deterministically on MiniLM vocabulary words; no special tokens yet."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=768, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=1, show_progress=False)
    lines = [" query: passage: question: describe the image"] * 64
    for rank, word in enumerate(_minilm_words()[:2000]):
        lines.extend([f" {word} {word.capitalize()} {word}. {word},"] * max(1, 32 // (1 + rank // 40)))
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer.to_str()


def _write_tokenizer(path: Path, pad_token: str | None) -> dict[str, int]:
    """tokenizer.json / tokenizer_config.json / special_tokens_map.json; returns token -> id of the specials."""
    from tokenizers import AddedToken, Tokenizer, processors

    tokenizer = Tokenizer.from_str(_base_bpe_json())
    specials = [*_LLAMA3_SPECIALS, *IMAGE_TOKENS]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    ids = {t: tokenizer.token_to_id(t) for t in specials}
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                                      special_tokens=[(BOS, ids[BOS])]),
    ])
    tokenizer.save(str(path / "tokenizer.json"), pretty=True)
    _write_json(path / "tokenizer_config.json", {
        "added_tokens_decoder": {
            str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                          "special": True}
            for t in specials
        },
        "bos_token": BOS,
        "chat_template": _BUNDLED_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOS,
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        **({"pad_token": pad_token} if pad_token else {}),
        "padding_side": "right",
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    _write_json(path / "special_tokens_map.json", {
        "bos_token": _plain_token_entry(BOS),
        "eos_token": _plain_token_entry(EOS),
        **({"pad_token": _plain_token_entry(pad_token)} if pad_token else {}),
    })
    ids["vocab_size"] = tokenizer.get_vocab_size(with_added_tokens=True)
    return ids


def _vision_config(*, head: bool) -> dict[str, Any]:
    config = {
        "attention_dropout": 0.0,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": VISION_HIDDEN,
        "image_size": TILE,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-06,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 2,
        "num_channels": 3,
        "num_hidden_layers": 2,
        "patch_size": PATCH,
        "torch_dtype": "float32",
    }
    if not head:
        config["vision_use_head"] = False
    return config


def _llm_config(*, rerank: bool, vocab_size: int, ids: dict[str, int], pooling: str) -> dict[str, Any]:
    return {
        "architectures": ["LlamaBidirectionalForSequenceClassification" if rerank else "LlamaBidirectionalModel"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "head_dim": 8,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama_bidirec",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pooling": pooling,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0,
        "temperature": 1.0,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def llama_config(llm_config: dict[str, Any]):
    """A transformers ``LlamaConfig`` from an ``llm_config`` dict (``llama_bidirec`` read as Llama)."""
    from transformers import LlamaConfig

    skip = {"model_type", "architectures", "pooling", "temperature", "auto_map"}
    return LlamaConfig(**{k: v for k, v in llm_config.items() if k not in skip})


def siglip_config(vision_config: dict[str, Any]):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})


def _seeded_weights(vision_config: dict, llm_config: dict, seed: int, vision_keys: str) -> dict[str, torch.Tensor]:
    from transformers import LlamaModel, SiglipVisionModel

    vision = _model_named_shapes(_instantiate_for_shapes(SiglipVisionModel, siglip_config(vision_config)))
    llm = _model_named_shapes(_instantiate_for_shapes(LlamaModel, llama_config(llm_config)))
    vision_prefix = "vision_model." if vision_keys == "nested" else ""  # flat: vision_model.encoder.* (vLLM maps it)
    shapes = [(f"vision_model.{vision_prefix}{n}", s) for n, s in vision]  # transformers 5: embeddings.*, ...
    shapes += [(f"language_model.{n}", s) for n, s in llm]
    state = _seeded_state_dict(shapes, seed)
    shuffled = VISION_HIDDEN * 4
    generator = torch.Generator().manual_seed(seed + 17)
    state["mlp1.0.weight"] = 1.0 + 0.1 * torch.randn(shuffled, generator=generator)
    state["mlp1.0.bias"] = 0.05 * torch.randn(shuffled, generator=generator)
    state["mlp1.1.weight"] = 0.2 * torch.randn(HIDDEN, shuffled, generator=generator)
    state["mlp1.1.bias"] = 0.05 * torch.randn(HIDDEN, generator=generator)
    state["mlp1.3.weight"] = 0.2 * torch.randn(HIDDEN, HIDDEN, generator=generator)
    state["mlp1.3.bias"] = 0.05 * torch.randn(HIDDEN, generator=generator)
    return state


def _write(
    path: str | Path,
    *,
    rerank: bool,
    seed: int,
    num_labels: int,
    max_tiles: int,
    pooling: str,
    ps_version: str | None,
    select_layer: int,
    pad_token: str | None,
    vision_head: bool,
    vision_keys: str,
    img_context_token_id: int | None,
) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(path, pad_token)
    vocab = ids["vocab_size"]
    vision_config = _vision_config(head=vision_head)
    llm_config = _llm_config(rerank=rerank, vocab_size=vocab, ids=ids, pooling=pooling)
    with torch.random.fork_rng(devices=[]):
        state = _seeded_weights(vision_config, llm_config, seed, vision_keys)
        if rerank:
            state = {f"model.{k}": v for k, v in state.items()}
            generator = torch.Generator().manual_seed(seed + 29)
            state["score.weight"] = 0.2 * torch.randn(num_labels, HIDDEN, generator=generator, dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})

    tokens_per_tile = (TILE // PATCH) ** 2 // 4
    kind = "llama_nemotron_vl_rerank" if rerank else "llama_nemotron_vl"
    architecture = "LlamaNemotronVLForSequenceClassification" if rerank else "LlamaNemotronVLModel"
    auto_model = "AutoModelForSequenceClassification" if rerank else "AutoModel"
    config: dict[str, Any] = {
        "architectures": [architecture],
        "auto_map": {
            "AutoConfig": "configuration_llama_nemotron_vl.LlamaNemotronVLConfig",
            auto_model: f"modeling_llama_nemotron_vl.{architecture}",
        },
        "bidirectional_attention": True,
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": TILE,
        "img_context_token_id": ids["<IMG_CONTEXT>"] if img_context_token_id is None else img_context_token_id,
        "keep_aspect_ratio": False,
        "llm_config": llm_config,
        "max_dynamic_patch": max_tiles,
        "max_input_tiles": max_tiles,
        "min_dynamic_patch": 1,
        "mlp_checkpoint": True,
        "model_type": kind,
        "p_max_length": 10240,
        "passage_prefix": "passage:",
        "pooling": pooling,
        "pre_feature_reduction": False,
        "q_max_length": 512,
        "query_prefix": "query:",
        "select_layer": select_layer,
        "template": "bidirectional-llama-retriever",
        "torch_dtype": "float32",
        "transformers_version": "4.56.2",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": vision_config,
    }
    if ps_version is not None:
        config["ps_version"] = ps_version
    if rerank:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        config["temperature"] = 1.0
        config["prompt_template"] = "question:{query} \n \n passage:{passage}"
        config["rerank_max_length"] = 10240
    _write_json(path / "config.json", dict(sorted(config.items())))
    _write_json(path / "processor_config.json", {
        "auto_map": {"AutoProcessor": "processing_llama_nemotron_vl.LlamaNemotronVLProcessor"},
        "dynamic_image_size": True,
        "image_size": TILE,
        "max_input_tiles": max_tiles,
        "num_image_token": tokens_per_tile,
        "p_max_length": 10240,
        "processor_class": "LlamaNemotronVLProcessor",
        "q_max_length": 512,
        "use_thumbnail": True,
    })
    return path


def write_nemotron_vl_embed(
    path: str | Path,
    *,
    seed: int = 11,
    max_tiles: int = 4,
    pooling: str = "avg",
    ps_version: str | None = "v2",
    select_layer: int = -1,
    pad_token: str | None = PAD,
    vision_head: bool = True,
    vision_keys: str = "nested",
    img_context_token_id: int | None = None,
) -> Path:
    """A tiny ``nvidia/llama-nemotron-embed-vl-1b-v2`` (``LlamaNemotronVLModel``) in ``path``; returns ``path``.

    Knobs: ``pooling`` (config value: avg / cls / last / anything to test refusals), ``ps_version`` (None omits
    it), ``select_layer``, ``pad_token`` (None: no pad token), ``vision_head`` (write SigLIP's unused ``head.*``),
    ``vision_keys`` ``"nested"`` (``vision_model.vision_model.*``) or ``"flat"`` (``vision_model.encoder.*``),
    ``img_context_token_id`` (None: the tokenizer's ``<IMG_CONTEXT>`` id).
    """
    return _write(path, rerank=False, seed=seed, num_labels=1, max_tiles=max_tiles, pooling=pooling,
                  ps_version=ps_version, select_layer=select_layer, pad_token=pad_token, vision_head=vision_head,
                  vision_keys=vision_keys, img_context_token_id=img_context_token_id)


def write_nemotron_vl_rerank(
    path: str | Path,
    *,
    seed: int = 13,
    num_labels: int = 1,
    max_tiles: int = 4,
    pooling: str = "avg",
    ps_version: str | None = "v2",
    pad_token: str | None = PAD,
    vision_head: bool = True,
) -> Path:
    """A tiny ``nvidia/llama-nemotron-rerank-vl-1b-v2`` (``LlamaNemotronVLForSequenceClassification``); the base
    model under ``model.``, ``score.weight`` ``[num_labels, 32]`` float32 at the top level, ``id2label`` with
    ``num_labels`` entries. Other knobs as :func:`write_nemotron_vl_embed`."""
    return _write(path, rerank=True, seed=seed, num_labels=num_labels, max_tiles=max_tiles, pooling=pooling,
                  ps_version=ps_version, select_layer=-1, pad_token=pad_token, vision_head=vision_head,
                  vision_keys="nested", img_context_token_id=None)
