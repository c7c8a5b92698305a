"""Independent reference implementations for the parity tests (no project imports).

Environment: torch 2.13 (CPU), transformers 5.23, sentence-transformers 6.2 (env B of
``/work/shared/reference/oracles.md``); run with ``HF_HUB_OFFLINE=1``.  Everything runs on the CPU
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
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

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
