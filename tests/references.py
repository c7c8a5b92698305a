"""Independent reference implementations for the parity tests (no project imports).

Environment: torch 2.13 (CPU), transformers 5.23, sentence-transformers 6.2 (env B of
``../shared/reference/oracles.md``, beside the repository); run with ``HF_HUB_OFFLINE=1``.  Everything runs on the CPU
in float32.

* :func:`hf_colbert_token_embeddings` -- vLLM's own ColBERT test method: plain HF ``BertModel``
  ``last_hidden_state`` for ``tokenizer(text)`` (special tokens on, **no** [Q]/[D] marker, no query
  expansion, no skiplist), times the ColBERT projection, per-token L2 normalisation.
* :func:`pylate_encode` -- sentence-transformers 6.2 ``MultiVectorEncoder.encode_query`` /
  ``encode_document``, an independent re-implementation of PyLate that reproduces pylate 1.6
  bit-exactly (oracles.md section 1.9).  It loads **both** layouts:

  - PyLate folders (``config_sentence_transformers.json`` with ``model_type: "ColBERT"``): the
    loader maps ``pylate.models.Dense.Dense`` to ST ``Dense`` and appends
    ``MultiVectorMask(skiplist_words)`` + ``Normalize``; ``query_prefix`` / ``document_prefix``
    become the ``query`` / ``document`` prompts; ``do_query_expansion`` /
    ``attend_to_expansion_tokens`` / ``query_length`` become
    ``query_expansion={"strategy": "fixed", "attend": ..., "length": query_length}``.
  - Stanford ``HF_ColBERT`` folders (``config.json`` architectures ``["HF_ColBERT"]``): the backbone
    is loaded by transformers (``bert.`` prefix stripped), the projection comes from
    ``linear.weight`` inside the root ``model.safetensors``, and ``artifact.metadata`` supplies
    ``query_token_id``/``doc_token_id`` (prompts ``"[unused0] "`` / ``"[unused1] "``),
    ``doc_maxlen``, ``query_maxlen`` + ``attend_to_mask_tokens`` (expansion is always on) and
    ``mask_punctuation`` (skiplist = ``string.punctuation``).

  How it tokenises (read from the ST 6.2 sources, checked on the tiny fixtures): the prefix is
  prepended as *text* (``"[Q] " + text``), never inserted as an id, and the text is **not**
  ``strip()``-ed (pylate strips; irrelevant for WordPiece, which drops whitespace).  To make the
  text prefix come out as one token, the loader re-registers it as a *special, non-normalized*
  added token whenever ``tokenizer.tokenize(prefix) != [prefix]`` (``[unused0]`` would otherwise
  split into ``[ unused ##0 ]``; the saved ``normalized=True`` ``"[Q] "`` tokenises as ``"[q] "``
  -- same id 30522 -- and is re-registered too); ids stay the same (30522/30523, 1/2), and
  ``[CLS] [Q] text [SEP]`` equals pylate's "insert after position 0".  A literal ``"[Q] "`` inside
  user text also becomes id 30522 (as with pylate's added token).
  Queries: ``padding="max_length"``, ``max_length=query_length`` (prefix included), pad
  positions then overwritten with ``mask_token_id`` (103) and all ``query_length`` vectors are
  returned; ``attend=False`` keeps attention 0 on them.  Documents: ``max_length=document_length``,
  batch-longest padding with the tokenizer's pad id ([MASK] for a PyLate save, [PAD] for the
  Stanford tokenizer; never returned), padding and skiplist ids dropped from the output (BERT:
  ``string.punctuation`` -> 999-1013, 1024-1036, 1063-1066).  Differences from pylate that do not show on a BERT
  vocabulary: skiplist words that map to ``unk_token_id`` are dropped from the skiplist (pylate
  would drop every UNK document token), and no ``strip()``.
* :func:`st_mean_pooled` -- ``SentenceTransformer(path).encode`` (all-MiniLM-L6-v2 known answer).
* :func:`hf_backbone_colbert_token_embeddings` -- vLLM's test method for every ColBERT backbone (BERT,
  ModernBERT, LFM2, Jina XLM-R via transformers' ``JinaEmbeddingsV3Model``).  ``pylate_encode`` works
  unchanged on the ModernBERT and LFM2 PyLate folders and on the Jina twin of ``tiny_checkpoints``.
* :func:`jina_xlmr_reference_hidden` -- an independent re-implementation of the Jina XLM-R encoder from
  ``vllm_semantics.md`` section 3.4.1, reading the jina-colbert-v2 checkpoint names directly.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "colbert_projection_weight",
    "hf_colbert_token_embeddings",
    "pylate_encode",
    "pylate_input_ids",
    "st_mean_pooled",
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------
# vLLM-style HF reference
# --------------------------------------------------------------------------------------------


def colbert_projection_weight(path: str | Path) -> torch.Tensor:
    """The ColBERT projection ``[dim, hidden]``: ``linear.weight`` from the root ``model.safetensors``
    (Stanford ``HF_ColBERT``) or from the Dense module folder (``1_Dense/model.safetensors`` in a
    PyLate save; the folder is taken from ``modules.json`` when present)."""
    from safetensors import safe_open

    path = Path(path)
    candidates = [path / "model.safetensors"]
    modules_json = path / "modules.json"
    if modules_json.exists():
        for module in json.loads(modules_json.read_text(encoding="utf-8")):
            if "Dense" in module.get("type", ""):
                candidates.append(path / module["path"] / "model.safetensors")
    candidates.append(path / "1_Dense" / "model.safetensors")
    for candidate in candidates:
        if candidate.exists():
            with safe_open(str(candidate), framework="pt") as handle:
                if "linear.weight" in handle.keys():
                    return handle.get_tensor("linear.weight").to(torch.float32)
    raise FileNotFoundError(f"no 'linear.weight' projection found under {path}")


def _hf_backbone(path: Path):
    """``BertModel.from_pretrained`` (fp32, eager attention), checking that every backbone weight
    was read from the file (a Stanford checkpoint stores them under ``bert.``)."""
    from safetensors import safe_open
    from transformers import BertModel

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a Stanford file's linear.weight is reported as UNEXPECTED
    try:
        model, info = BertModel.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [key for key in info.get("missing_keys", []) if "position_ids" not in key]
    if missing:
        raise RuntimeError(f"backbone weights missing from {path}: {missing[:5]}")
    # Belt and braces: compare one tensor against the file, with or without the bert. prefix.
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        key = "embeddings.word_embeddings.weight"
        stored = handle.get_tensor(key if key in keys else f"bert.{key}")
    if not torch.equal(stored.to(torch.float32), model.embeddings.word_embeddings.weight.detach()):
        raise RuntimeError(f"backbone weights of {path} were not loaded from the checkpoint")
    return model.eval()


def hf_colbert_token_embeddings(path: str | Path, texts: Sequence[str]) -> list[np.ndarray]:
    """Per-token ColBERT vectors the way vLLM's own tests compute them.

    For each text separately: ``AutoTokenizer(path)(text)`` (special tokens on, no truncation, no
    prefix marker), HF ``BertModel`` ``last_hidden_state`` in fp32, ``@ linear.weight.T``, then
    per-token L2 normalisation.  Returns one float32 array ``(n_tokens, dim)`` per text.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = _hf_backbone(path)
    weight = colbert_projection_weight(path)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt")
            hidden = model(**encoded).last_hidden_state[0].to(torch.float32)
            vectors = torch.nn.functional.normalize(hidden @ weight.T, p=2, dim=-1)
            out.append(vectors.numpy().astype(np.float32))
    return out


# --------------------------------------------------------------------------------------------
# PyLate semantics via sentence-transformers 6.2 MultiVectorEncoder
# --------------------------------------------------------------------------------------------

_MVE_CACHE: dict[tuple, object] = {}


def _folder_key(path: Path) -> tuple:
    stamps = []
    for root, _dirs, files in os.walk(path):
        for name in sorted(files):
            stat = os.stat(os.path.join(root, name))
            stamps.append((os.path.relpath(os.path.join(root, name), path), stat.st_mtime_ns, stat.st_size))
    return (str(path.resolve()), tuple(sorted(stamps)))


def _multi_vector_encoder(path: str | Path):
    """``MultiVectorEncoder(path, device="cpu")``, cached per folder content (mtime/size)."""
    from sentence_transformers import MultiVectorEncoder

    path = Path(path)
    key = _folder_key(path)
    model = _MVE_CACHE.get(key)
    if model is None:
        model = MultiVectorEncoder(str(path), device="cpu", local_files_only=True)
        model.eval()
        _MVE_CACHE.clear()  # keep at most one model alive
        _MVE_CACHE[key] = model
    return model


def pylate_encode(
    path: str | Path, texts: Sequence[str], *, is_query: bool, batch_size: int = 32
) -> list[np.ndarray]:
    """PyLate's ``encode(texts, is_query=...)`` output, via ST 6.2 ``MultiVectorEncoder``.

    Works on the PyLate layout and on the Stanford ``HF_ColBERT`` layout (see module docstring).
    Returns one float32 array ``(n_vectors, dim)`` per text, unit-norm rows: for queries with
    expansion exactly ``query_length`` vectors ([MASK] expansion positions included), for documents
    the real tokens (prefix included) minus skiplist tokens and padding.
    """
    model = _multi_vector_encoder(path)
    encode = model.encode_query if is_query else model.encode_document
    embeddings = encode(list(texts), batch_size=batch_size, convert_to_numpy=True)
    return [np.asarray(emb, dtype=np.float32) for emb in embeddings]


def pylate_input_ids(path: str | Path, texts: Sequence[str], *, is_query: bool) -> list[dict[str, list[int]]]:
    """What ``MultiVectorEncoder`` feeds the encoder for each text (one text per batch, so documents
    carry no padding): ``input_ids``, ``attention_mask`` and ``kept`` (1 where a vector is
    returned: the scoring mask after expansion / skiplist)."""
    model = _multi_vector_encoder(path)
    task = "query" if is_query else "document"
    prompt = model.prompts.get(task) or None
    out = []
    with torch.inference_mode():
        for text in texts:
            features = model.preprocess([text], prompt=prompt, task=task)
            ids = features["input_ids"][0].tolist()
            attention = features["attention_mask"][0].tolist()
            result = model(dict(features), task=task)
            kept = result["attention_mask"][0].to(torch.int64).tolist()
            out.append({"input_ids": ids, "attention_mask": attention, "kept": kept})
    return out


# --------------------------------------------------------------------------------------------
# Single-vector reference
# --------------------------------------------------------------------------------------------


def st_mean_pooled(path: str | Path, texts: Sequence[str]) -> np.ndarray:
    """``SentenceTransformer(path, device="cpu").encode(texts)``: shape ``(len(texts), dim)``,
    pooled / normalised as the model's ``modules.json`` says (MiniLM: mean pooling + Normalize)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    return np.asarray(model.encode(list(texts), convert_to_numpy=True), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Non-BERT backbones (ModernBERT, Jina XLM-R, LFM2): vLLM's HF test method + an independent
# re-implementation of the Jina XLM-R encoder
# --------------------------------------------------------------------------------------------

__all__ += [  # extends the list at the top of the module
    "hf_backbone_colbert_token_embeddings",
    "jina_xlmr_reference_hidden",
]


def _config_json(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))


def _is_jina_checkpoint(config: dict) -> bool:
    """jina-colbert-v2 layout: ``XLMRobertaFlashConfig`` (model_type ``xlm-roberta``) with rotary positions."""
    model_type = config.get("model_type")
    return model_type in ("xlm-roberta", "xlm_roberta") and config.get("position_embedding_type") == "rotary"


def _jina_embeddings_v3_config(config: dict):
    """A ``JinaEmbeddingsV3Config`` equal to a jina-colbert-v2 ``config.json`` (rope theta set explicitly)."""
    from transformers import JinaEmbeddingsV3Config

    head_dim = config["hidden_size"] // config["num_attention_heads"]
    if config.get("rotary_emb_dim") not in (None, head_dim):
        raise ValueError("partial rotary (rotary_emb_dim < head_dim) is not expressible as JinaEmbeddingsV3Config")
    return JinaEmbeddingsV3Config(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        intermediate_size=config["intermediate_size"],
        hidden_act=config.get("hidden_act", "gelu"),
        max_position_embeddings=config.get("max_position_embeddings", 8194),
        type_vocab_size=config.get("type_vocab_size", 1),
        layer_norm_eps=config.get("layer_norm_eps", 1e-5),
        pad_token_id=config.get("pad_token_id", 1),
        bos_token_id=config.get("bos_token_id", 0),
        eos_token_id=config.get("eos_token_id", 2),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rotary_emb_base", 10000.0))},
    )


def _hf_backbone_any(path: Path):
    """The transformers backbone vLLM's test compares against, in fp32 / eager attention, with a check
    that no backbone weight was left at its random initialisation.

    * BERT (``model_type "bert"``, Stanford ``HF_ColBERT`` or PyLate): :func:`_hf_backbone`.
    * Jina XLM-R (``xlm-roberta`` + ``position_embedding_type "rotary"``): vLLM's test loads Jina's remote
      code, which cannot run here; instead ``JinaEmbeddingsV3Model.from_pretrained(path, config=...)``
      with the config translated from the checkpoint's (``rotary_emb_base`` -> ``rope_theta``), letting
      transformers' own ``jina_embeddings_v3`` conversion mapping rename the checkpoint's keys
      (``roberta.`` prefix, ``emb_ln``, ``mixer.Wqkv`` split into q/k/v, ``norm1``/``norm2``); the top-level
      ``linear.weight`` is reported as unexpected and ignored.  Its math is checked against
      :func:`jina_xlmr_reference_hidden` by ``tests/check_issue4_fixtures.py``.
    * anything else (ModernBERT, LFM2, a ``JinaEmbeddingsV3Model`` twin): ``AutoModel.from_pretrained``.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    path = Path(path)
    config = _config_json(path)
    if config.get("model_type") == "bert":
        return _hf_backbone(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if _is_jina_checkpoint(config):
            from transformers import JinaEmbeddingsV3Model

            model, info = JinaEmbeddingsV3Model.from_pretrained(
                str(path),
                config=_jina_embeddings_v3_config(config),
                dtype=torch.float32,
                attn_implementation="eager",
                output_loading_info=True,
            )
        else:
            model, info = AutoModel.from_pretrained(
                str(path), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [key for key in info.get("missing_keys", []) if "position_ids" not in key]
    if missing:
        raise RuntimeError(f"backbone weights missing from {path}: {sorted(missing)[:5]}")
    return model.eval()


def hf_backbone_colbert_token_embeddings(path: str | Path, texts: Sequence[str]) -> list[np.ndarray]:
    """Per-token ColBERT vectors the way vLLM's ``test_colbert.py`` computes them, for any of the
    ColBERT backbones (BERT, ModernBERT, Jina XLM-R, LFM2, or a ``JinaEmbeddingsV3Model`` twin).

    For each text separately: ``AutoTokenizer(path)(text)`` (special tokens on, no truncation, no
    marker, no expansion, no skiplist), the transformers backbone of :func:`_hf_backbone_any` in fp32
    (eager attention) fed with the tokenizer outputs its ``forward`` names (ModernBERT / LFM2 / Jina get
    ``input_ids`` + ``attention_mask``; BERT also ``token_type_ids``), ``last_hidden_state @ W.T`` with
    ``W`` = ``linear.weight`` from the root ``model.safetensors`` or the PyLate Dense folder
    (:func:`colbert_projection_weight`), then per-token L2 normalisation.  Returns one float32 array
    ``(n_tokens, dim)`` per text.  (LFM2 runs causal, exactly as transformers' ``Lfm2Model`` and vLLM do.)
    """
    import inspect

    from transformers import AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = _hf_backbone_any(path)
    weight = colbert_projection_weight(path)
    accepted = set(inspect.signature(model.forward).parameters)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt")
            inputs = {key: value for key, value in encoded.items() if key in accepted}
            hidden = model(**inputs).last_hidden_state[0].to(torch.float32)
            vectors = torch.nn.functional.normalize(hidden @ weight.T, p=2, dim=-1)
            out.append(vectors.numpy().astype(np.float32))
    return out


def _jina_activation(name: str):
    """The MLP activation the Jina flash code / vLLM use for ``hidden_act`` (erf GELU for ``"gelu"``)."""
    if name == "gelu":
        return lambda x: 0.5 * x * (1.0 + torch.special.erf(x / np.sqrt(2.0)))
    if name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return lambda x: 0.5 * x * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    if name == "relu":
        return torch.relu
    raise ValueError(f"unsupported hidden_act {name!r}")


def jina_xlmr_reference_hidden(
    path: str | Path, texts: Sequence[str], *, dtype: torch.dtype = torch.float64
) -> list[np.ndarray]:
    """``last_hidden_state`` of a jina-colbert-v2-layout checkpoint, re-implemented from the spec of
    ``vllm_semantics.md`` section 3.4.1 (no transformers model class involved), one text at a time.

    Reads ``config.json`` and the checkpoint's own tensor names (``roberta.`` prefix optional) and
    computes, in ``dtype`` (float64 by default), for ``AutoTokenizer(path)(text)`` ids:

    * embeddings: ``word_embeddings[ids]`` + ``token_type_embeddings[0]`` (when ``type_vocab_size > 0``;
      token types are all 0) -> LayerNorm ``emb_ln`` (eps ``layer_norm_eps``); no absolute positions;
    * per layer (post-LN): ``qkv = h @ Wqkv.T + b``, rows split q | k | v, heads of
      ``head_dim = hidden / heads``; rotary on the first ``rotary_emb_dim`` (default: all) dims of each
      q/k head, NeoX layout (the two halves of the rotated slice pair up: ``x*cos + rotate_half(x)*sin``),
      ``inv_freq = base^(-2i/rotary_dim)``, ``base = rotary_emb_base`` (10000 when absent), positions
      0..n-1; softmax(q k^T / sqrt(head_dim)) v; ``h = norm1(h + out_proj(attn))``;
      ``h = norm2(h + fc2(act(fc1(h))))`` with ``act`` = erf GELU for ``"gelu"`` (tanh GELU for
      ``gelu_new``/``gelu_fast``/``gelu_pytorch_tanh``);
    * the pooler is not used.

    Returns float32 arrays ``(n_tokens, hidden)``.
    """
    from safetensors import safe_open
    from transformers import AutoTokenizer

    path = Path(path)
    config = _config_json(path)
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        raw = {key: handle.get_tensor(key) for key in handle.keys()}
    weights = {key.removeprefix("roberta."): value.to(dtype) for key, value in raw.items()}
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    rotary_dim = int(config.get("rotary_emb_dim") or head_dim)
    base = float(config.get("rotary_emb_base", 10000.0))
    eps = float(config.get("layer_norm_eps", 1e-5))
    act = _jina_activation(config.get("hidden_act", "gelu"))

    def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * weights[f"{name}.weight"] + weights[f"{name}.bias"]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]

    def rotary(x: torch.Tensor) -> torch.Tensor:  # x: [heads, n, head_dim]
        n = x.shape[1]
        inv_freq = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
        angles = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq[None, :]
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(dtype)
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(dtype)
        rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
        half = rotary_dim // 2
        rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        return torch.cat([rot * cos + rotated * sin, rest], dim=-1)

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    out: list[np.ndarray] = []
    for text in texts:
        ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        n = ids.shape[0]
        h = weights["embeddings.word_embeddings.weight"][ids]
        if config.get("type_vocab_size", 1) > 0 and "embeddings.token_type_embeddings.weight" in weights:
            h = h + weights["embeddings.token_type_embeddings.weight"][0]
        h = layer_norm(h, "emb_ln")
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layers.{i}."
            q, k, v = linear(h, p + "mixer.Wqkv").split(hidden, dim=-1)
            q, k, v = (t.reshape(n, heads, head_dim).transpose(0, 1) for t in (q, k, v))
            q, k = rotary(q), rotary(k)
            scores = (q @ k.transpose(-1, -2)) / np.sqrt(head_dim)
            attn = torch.softmax(scores, dim=-1) @ v  # [heads, n, head_dim]
            attn = attn.transpose(0, 1).reshape(n, hidden)
            h = layer_norm(h + linear(attn, p + "mixer.out_proj"), p + "norm1")
            h = layer_norm(h + linear(act(linear(h, p + "mlp.fc1")), p + "mlp.fc2"), p + "norm2")
        out.append(h.to(torch.float32).numpy())
    return out


# --------------------------------------------------------------------------------------------------
# BGE-M3: FlagEmbedding (oracles.md section 2)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _flag_model(path: str, colbert_dim: int):
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(path, use_fp16=False, devices="cpu", colbert_dim=colbert_dim)


def flag_m3_encode(path, texts, *, colbert_dim: int = 16) -> dict:
    """``BGEM3FlagModel(path, use_fp16=False, devices="cpu").encode`` with all three outputs:
    ``dense`` (n, hidden), ``lexical`` (list of {token_id: weight}), ``colbert`` (list of (n_i - 1, dim))."""
    model = _flag_model(str(path), colbert_dim)
    out = model.encode(list(texts), return_dense=True, return_sparse=True, return_colbert_vecs=True)
    lexical = [{int(k): float(v) for k, v in d.items()} for d in out["lexical_weights"]]
    return {"dense": np.asarray(out["dense_vecs"]), "lexical": lexical, "colbert": [np.asarray(c) for c in out["colbert_vecs"]]}


def flag_m3_scores(path, pairs, *, weights=(1.0, 1.0, 1.0), colbert_dim: int = 16) -> dict[str, list[float]]:
    """FlagEmbedding ``compute_score`` on (query, passage) pairs, one pair per call (no padding
    candidates): keys dense, sparse, colbert, sparse+dense, colbert+sparse+dense."""
    model = _flag_model(str(path), colbert_dim)
    result: dict[str, list[float]] = {}
    for pair in pairs:
        scores = model.compute_score([pair], weights_for_different_modes=list(weights))
        for key, values in scores.items():
            result.setdefault(key, []).append(float(values[0]))
    return result


# -- ColQwen3 / ColQwen3.5: transformers' backbone + the checkpoint's projection + L2 ----------------------------
# Written here, not taken from trilate: the image processor is transformers' PIL class, the tokenizer is the
# checkpoint's tokenizer.json, each <|image_pad|> is expanded here, and the backbone is transformers' own model
# (eager attention) with the vendor's keys renamed by this table and loaded strictly.

COLQWEN_PREFIXES = ("vlm.model.", "model.", "")  # Tomoro, ColPali/NVIDIA, OpenSearch and ColQwen3.5
COLQWEN_PROJECTIONS = ("embedding_proj_layer", "custom_text_proj")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


@functools.lru_cache(maxsize=4)
def _colqwen_reference_model(folder: str, bidirectional: bool):
    """(transformers model, projection weight, bias) for a ColQwen3 (Qwen3-VL) or ColQwen3.5 checkpoint."""
    from transformers import AutoConfig, Qwen3_5Model, Qwen3VLConfig, Qwen3VLModel

    path = Path(folder)
    raw = _config_json(path)
    ids = {k: raw[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
           if k in raw}
    if raw.get("model_type") == "qwen3_5":
        config = AutoConfig.for_model(**raw)
        model_class = Qwen3_5Model
    else:
        config = Qwen3VLConfig(text_config=raw["text_config"], vision_config=raw["vision_config"], **ids)
        model_class = Qwen3VLModel
    config._attn_implementation = "eager"
    if bidirectional:
        config.text_config.is_causal = False
    with torch.random.fork_rng(devices=[]):
        model = model_class(config).eval()
    if bidirectional:
        for layer in model.language_model.layers:
            if getattr(layer, "block_type", "full_attention") == "full_attention" and hasattr(layer, "self_attn"):
                layer.self_attn.is_causal = False
    tensors = _weights(path)
    wanted = set(model.state_dict())
    for prefix in COLQWEN_PREFIXES:
        backbone = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and k[len(prefix):] in wanted}
        if len(backbone) == len(wanted):
            break
    model.load_state_dict(backbone, strict=True)
    weight = bias = None
    for name in COLQWEN_PROJECTIONS:
        if f"{name}.weight" in tensors:
            weight, bias = tensors[f"{name}.weight"].float(), tensors.get(f"{name}.bias")
    return model, weight, None if bias is None else bias.float()


def colqwen_token_embeddings(folder: str | Path, prompt: str, images: Sequence = (), *,
                             bidirectional: bool = False) -> np.ndarray:
    """Per-token vectors (n_tokens, dim) of one prompt (its images as ``<|vision_start|><|image_pad|>
    <|vision_end|>``, in order), as transformers computes them: float32, L2-normalised."""
    from tokenizers import Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(folder)
    raw = _config_json(path)
    model, weight, bias = _colqwen_reference_model(str(path), bidirectional)
    ids = Tokenizer.from_file(str(path / "tokenizer.json")).encode(prompt, add_special_tokens=True).ids
    kwargs = {}
    if images:
        settings = json.loads((path / "preprocessor_config.json").read_text())
        settings = {k: v for k, v in settings.items() if k not in ("image_processor_type", "processor_class")}
        out = Qwen2VLImageProcessorPil(**settings)(list(images), return_tensors="pt")
        merge = int(settings.get("merge_size", 2))
        counts = iter(int(g.prod()) // merge**2 for g in out["image_grid_thw"])
        expanded: list[int] = []
        for token in ids:
            expanded.extend([token] * next(counts) if token == raw["image_token_id"] else [token])
        ids = expanded
        kwargs = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
    input_ids = torch.tensor([ids])
    if images:
        kwargs["mm_token_type_ids"] = (input_ids == raw["image_token_id"]).int()
    with torch.no_grad():
        hidden = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                       **kwargs).last_hidden_state[0].float()
    if weight is not None:
        hidden = hidden @ weight.T + (bias if bias is not None else 0)
    return (hidden / hidden.norm(dim=-1, keepdim=True)).numpy()


# -- Llama Nemotron VL: transformers' SiglipVisionModel and LlamaModel, loaded independently ---------------------
# (No library here runs the whole model: its HF code is remote code.)  NVIDIA's pixel shuffle and mlp1 written out
# in torch.nn.functional; every position sees every real key (a padding-only mask).


class NemotronReference:
    """The checkpoint's pieces as transformers modules (eager attention) + functional mlp1 / pooling / score."""

    def __init__(self, path: Path):
        from safetensors.torch import load_file
        from transformers import LlamaModel, SiglipVisionConfig, SiglipVisionModel

        import tiny_nemotron_vl

        config = json.loads((path / "config.json").read_text())
        state = load_file(str(path / "model.safetensors"))
        prefix = "model." if "score.weight" in state else ""
        self.config = config
        self.context_id = config["img_context_token_id"]
        vision_cfg = SiglipVisionConfig(**{k: v for k, v in config["vision_config"].items() if k != "model_type"},
                                        attn_implementation="eager")
        text_cfg = tiny_nemotron_vl.llama_config(config["llm_config"])
        text_cfg._attn_implementation = "eager"
        with torch.random.fork_rng(devices=[]):
            self.siglip = SiglipVisionModel(vision_cfg).eval()
            self.llama = LlamaModel(text_cfg).eval()
        # nested (vision_model.vision_model.*) or flat (vision_model.*) keys: the part after them is SiglipVisionModel's
        vision = {}
        for key, tensor in state.items():
            if key.startswith(prefix + "vision_model."):
                vision[key[len(prefix + "vision_model."):].removeprefix("vision_model.")] = tensor
        self.siglip.load_state_dict(vision, strict=True)
        llm = {k[len(prefix + "language_model."):]: v for k, v in state.items() if k.startswith(prefix + "language_model.")}
        self.llama.load_state_dict(llm, strict=True)
        self.mlp = {k[len(prefix + "mlp1."):]: v for k, v in state.items() if k.startswith(prefix + "mlp1.")}
        self.score = state.get("score.weight")

    @staticmethod
    def internvl_pixel_shuffle(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
        """NVIDIA's / vLLM's pixel_shuffle for these checkpoints (the v2 branch: with the final permute)."""
        n, w, h, c = x.shape
        x = x.view(n, w, int(h * scale), int(c / scale))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
        return x.permute(0, 2, 1, 3).contiguous()

    @torch.no_grad()
    def vision_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.siglip(pixel_values=pixel_values).last_hidden_state

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vit = self.vision_tokens(pixel_values)
        n, t, c = vit.shape
        side = int(t**0.5)
        x = self.internvl_pixel_shuffle(vit.reshape(n, side, side, c)).reshape(n, -1, 4 * c)
        m = self.mlp
        x = F.layer_norm(x, (4 * c,), m["0.weight"], m["0.bias"], eps=1e-5)
        x = F.gelu(F.linear(x, m["1.weight"], m["1.bias"]))
        return F.linear(x, m["3.weight"], m["3.bias"])

    @torch.no_grad()
    def hidden(self, ids: torch.Tensor, mask: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.llama.embed_tokens(ids).clone()
        if pixel_values is not None:
            features = iter(self.image_features(pixel_values).reshape(-1, embeds.shape[-1]))
            for b in range(ids.shape[0]):
                for t in range(ids.shape[1]):
                    if ids[b, t] == self.context_id:
                        embeds[b, t] = next(features)
            assert next(features, None) is None
        # every query position may see every real (non-padding) key: padding-only, no causal triangle
        visible = mask[:, None, None, :].bool().expand(-1, 1, ids.shape[1], -1)
        additive = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
        return self.llama(inputs_embeds=embeds, attention_mask=additive).last_hidden_state

    def pooled(self, ids, mask, pixel_values=None, pooling: str = "mean") -> torch.Tensor:
        h = self.hidden(ids, mask, pixel_values)
        if pooling == "cls":
            return h[:, 0]
        if pooling == "last":
            return torch.stack([h[b, int(mask[b].sum()) - 1] for b in range(h.shape[0])])
        return torch.stack([h[b, mask[b].bool()].mean(dim=0) for b in range(h.shape[0])])

    def logits(self, ids, mask, pixel_values=None) -> torch.Tensor:
        return (self.pooled(ids, mask, pixel_values) @ self.score.T)[:, 0]


def nemotron_inputs(path: Path, prompts: list[str], images_per_prompt: list[list], *, add_special_tokens: bool):
    """Expanded prompts -> right-padded ``(ids, mask)`` and the ``pixel_values`` of every image in order (the tiling
    is ``nemotron_vl_images``, itself checked against hand-computed tables in test_nemotron_vl_images.py)."""
    from tokenizers import Tokenizer

    from python_backend_models.nemotron_card import read_nemotron_vl, tiling_params
    from python_backend_models.nemotron_vl_images import expand_image_placeholders, preprocess_images
    card = read_nemotron_vl(path)
    params = tiling_params(card)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    rows, tiles = [], []
    for prompt, images in zip(prompts, images_per_prompt):
        pixels, counts = preprocess_images(images, params)
        tiles.append(pixels)
        text = expand_image_placeholders(prompt, counts.tolist(), card["tokens_per_tile"])
        rows.append(tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)
    width = max(len(r) for r in rows)
    pad = card["pad_token_id"] if card["pad_token_id"] is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    pixel_values = torch.from_numpy(np.concatenate(tiles)) if sum(t.shape[0] for t in tiles) else None
    return ids, mask, pixel_values
