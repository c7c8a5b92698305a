"""What every encoder family shares: loading a transformers backbone from safetensors, the projection
heads, and batching many texts into few forward passes.

An *item* is one prompt's features: a mapping with ``input_ids``, ``attention_mask``, ``output_mask`` (1-D arrays
of equal length, trailing padding allowed) and, for image prompts, the family's pixel features (``pixel_values``,
``image_sizes``); a plain ``(input_ids, attention_mask, output_mask)`` tuple is accepted too.  ``Encoder.encode`` runs all items of all requests together: packed by
``python_backend_models.packing`` under a token budget, one forward pass and one run of the heads per
pack, split back per item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, load_state_dict, read_json
from ..cards import ModelInfo

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16}
# Prefixes under which checkpoints store the backbone (Stanford: bert.; PyLate/ST: none).
_BACKBONE_PREFIXES = ("bert.", "roberta.", "model.")


def resolve_dtype(name: str, device: torch.device, config: dict) -> torch.dtype:
    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        declared = str(config.get("torch_dtype") or config.get("dtype") or "float16")
        return _DTYPES.get(declared, torch.float16) if declared != "float32" else torch.float16
    if name not in _DTYPES:
        raise ValueError(f"--dtype must be auto, float32, float16 or bfloat16, got {name!r}")
    return _DTYPES[name]


def _auto_model(info: ModelInfo, path: Path):
    from transformers import AutoConfig, AutoModel

    raw = AutoConfig.from_pretrained(str(path), trust_remote_code=False).to_dict()
    raw.update(info.hf_overrides)
    model_type = raw.get("model_type")
    if model_type != info.backbone:
        raise CheckpointError(
            f"{info.architecture} needs a {info.backbone!r} backbone but {path}/config.json says model_type {model_type!r}"
        )
    config = AutoConfig.for_model(**raw)
    return AutoModel.from_config(config, attn_implementation="sdpa")


def build_backbone(info: ModelInfo, device: torch.device, dtype: torch.dtype, skip: Sequence[str] = ()):
    """The backbone for ``info``, weights from safetensors only.

    transformers' ``AutoModel`` for the checkpoint's model_type, or our own module where transformers
    has none for the checkpoint's weights (Jina's XLM-R).  ``skip`` names the state-dict keys that belong
    to heads, not to the backbone.
    """
    path = Path(info.path)
    if info.backbone == "jina_xlmr":
        from .jina_xlmr import JinaXLMRoberta

        model = JinaXLMRoberta({**read_json(path / "config.json"), **info.hf_overrides})
    else:
        model = _auto_model(info, path)
    state = load_state_dict(path)
    expected = set(model.state_dict())
    backbone_state = {}
    for key, tensor in state.items():
        if key in skip:
            continue
        bare = key
        if bare not in expected:
            for prefix in _BACKBONE_PREFIXES:
                if bare.startswith(prefix) and bare[len(prefix):] in expected:
                    bare = bare[len(prefix):]
                    break
        if bare in expected:
            backbone_state[bare] = tensor
    missing = [k for k in expected - set(backbone_state) if not k.startswith("pooler.") and "position_ids" not in k]
    if missing:
        raise CheckpointError(f"{path}/model.safetensors lacks backbone weights: {sorted(missing)[:5]} ...")
    model.load_state_dict(backbone_state, strict=False)
    return model.to(device=device, dtype=dtype).eval()


class Projection(torch.nn.Module):
    """The checkpoint's Dense layers (ColBERT ``linear``, PyLate/ST ``1_Dense``), run in fp32."""

    def __init__(self, info: ModelInfo):
        super().__init__()
        from safetensors.torch import load_file

        self.layers = []
        for layer in info.projection:
            tensors = load_file(str(Path(info.path) / layer.file))
            weight = tensors[layer.weight_key].float()
            bias = tensors[layer.bias_key].float() if layer.bias_key else None
            self.layers.append((weight, bias, layer.activation))

    def to(self, device):  # type: ignore[override]
        self.layers = [(w.to(device), None if b is None else b.to(device), a) for w, b, a in self.layers]
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for weight, bias, activation in self.layers:
            x = F.linear(x, weight, bias)
            if activation == "tanh":
                x = torch.tanh(x)
        return x


@dataclass
class ItemOutput:
    token_embeddings: np.ndarray | None  # (n_out, dim) float32
    embedding: np.ndarray | None  # (dim,) float32
    token_weights: np.ndarray | None = None  # (n_positions,) float32, BGE-M3's sparse head


@dataclass
class PackInputs:
    """One forward pass's rows, padded to ``width``: what the heads read.

    ``hidden`` (rows, width, H) fp32 on the device; ``ids`` / ``attention`` (rows, width) int64 tensors;
    ``output`` (rows, width) bool numpy (positions that come back as vectors); ``lengths`` real tokens per
    row; ``normalize`` / ``dimensions`` per row.
    """

    hidden: torch.Tensor
    ids: torch.Tensor
    attention: torch.Tensor
    output: np.ndarray
    lengths: list[int]
    normalize: list[bool]
    dimensions: list[int | None]

    def selected(self, vectors: list[np.ndarray]) -> list[np.ndarray]:
        """Row ``r``'s vectors at its output positions: (n_out, d) each, from padded (width, d) arrays."""
        out = []
        for r, v in enumerate(vectors):
            n = self.lengths[r]
            mask = self.output[r, :n]
            out.append(v[:n] if mask.all() else v[:n][mask])
        return out


@dataclass(frozen=True)
class Wanted:
    """Which heads a batch needs: per-token vectors, the pooled vector, BGE-M3's sparse weights."""

    tokens: bool = True
    pooled: bool = False
    sparse: bool = True


Features = Mapping[str, Any]


def features(item) -> Features:
    """An item as its features mapping (tuples are the text families' ``(ids, attention, output)``)."""
    if isinstance(item, Mapping):
        return item
    ids, attention, output = item
    return {"input_ids": ids, "attention_mask": attention, "output_mask": output}


def item_length(attention: np.ndarray, output: np.ndarray) -> int:
    live = np.flatnonzero((attention != 0) | output)
    return int(live[-1]) + 1 if live.size else 0


class Encoder:
    """Backbone + heads.  Subclasses implement ``heads`` (once per pack, not per text)."""

    # Packing (python_backend_models.packing): a pass costs about this many padded tokens of work on top
    # of its rows (kernel launches, Python, the heads: small next to a CPU's ~2k tokens/s, large next to a
    # GPU's), and holds at most this many rows.
    max_rows = 64
    onnx = None  # an OnnxBackbone once use_backend("auto" | "onnx") has put one in the backbone's place
    backend_reason = None  # why ``auto`` kept PyTorch where ONNX Runtime was wanted

    def __init__(self, info: ModelInfo, device: str = "cpu", dtype: str = "auto", max_batch_tokens: int = 16384):
        self.info = info
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device, read_json(Path(info.path) / "config.json"))
        self.backbone = build_backbone(info, self.device, self.dtype, skip=self.head_keys())
        self.projection = Projection(info).to(self.device)
        self.max_batch_tokens = max_batch_tokens
        self.pass_cost_tokens = 64 if self.device.type == "cpu" else 4096
        self.forward_passes = 0  # backbone calls, for tests and statistics
        self.vocab_size = self.backbone.get_input_embeddings().num_embeddings

    def use_backend(self, backend: str = "auto") -> str:
        """Run the backbone on ONNX Runtime where ``backend`` ("auto", "torch", "onnx") asks for it and the
        backbone is one it runs (``families.onnx_backbone``); returns the backend now in use.  ``auto`` keeps
        PyTorch, with a warning, when the export or its start-up check fails; ``onnx`` raises then."""
        from .onnx_backbone import OnnxBackbone, OnnxUnavailable, wants_onnx

        if not wants_onnx(backend, self.info.backbone, self.device, self.dtype):
            return self.backend
        try:
            self.onnx = OnnxBackbone(self.backbone, torch.get_num_threads(), self.vocab_size)
        except OnnxUnavailable as exc:
            if backend == "onnx":
                raise
            log.warning("%s: keeping PyTorch for the backbone: %s", self.info.served_name, exc)
            self.backend_reason = str(exc)
            # The module the exporter traced no longer gives the right answers (onnx_backbone): load it again.
            self.backbone = build_backbone(self.info, self.device, self.dtype, skip=self.head_keys())
            return self.backend
        self.backbone = None  # the weights now live in ONNX Runtime's session only
        return self.backend

    @property
    def backend(self) -> str:
        """What runs the backbone: ``onnx`` once :meth:`use_backend` installed ONNX Runtime, else ``torch``."""
        return "torch" if self.onnx is None else "onnx"

    def check(self, input_ids: np.ndarray, attention: np.ndarray, output: np.ndarray) -> None:
        """Refuse one request's rows that would break the shared forward pass (its own error only)."""
        from ..errors import InputError

        if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= self.vocab_size):
            raise InputError(f"token ids must be in [0, {self.vocab_size}); got {int(input_ids.min())}..{int(input_ids.max())}")
        for row in range(input_ids.shape[0]):
            n = item_length(attention[row], output[row])
            # A row without a live position, or whose model sees no token, has nothing to encode; in the
            # shared forward pass it would fail (or turn NaN) for every request of the batch.
            if n == 0 or not attention[row, :n].any():
                raise InputError(f"row {row} has no token to encode: its attention_mask is all 0; every text "
                                 "needs at least one token the model attends to")
            if n > self.info.max_model_len:
                raise InputError(f"an input has {n} tokens; this model's maximum context length is {self.info.max_model_len}")

    def warm_up(self) -> None:
        """One forward pass of a one-token text, so the weights are in memory (a bf16 checkpoint's tensors are
        mapped from its files and read on first use) before the stage says READY, not during the first request."""
        token = self.info.bos_token_id if isinstance(self.info.bos_token_id, int) else 0
        item = {"input_ids": np.array([min(max(token, 0), self.vocab_size - 1)], dtype=np.int64),
                "attention_mask": np.ones(1, dtype=np.int64), "output_mask": np.ones(1, dtype=bool)}
        cross = self.info.cross_encoder
        self.encode([item], want_tokens=not cross, want_pooled=self.info.pooled or cross, want_sparse=self.info.sparse)

    def forward_pack(self, ids: torch.Tensor, attention: torch.Tensor, rows: Sequence[Features],
                     lengths: Sequence[int]) -> torch.Tensor:
        """One pack's last hidden states (rows, width, H) fp32; ``rows`` are the pack's items in row order (the
        image families read their pixel features from them), ``lengths`` their live lengths (ONNX Runtime runs
        those tokens only)."""
        if self.onnx is not None:
            return self.onnx(ids, attention, lengths)
        return self.backbone(input_ids=ids, attention_mask=attention).last_hidden_state.float()

    def head_keys(self) -> tuple[str, ...]:
        return tuple(layer.weight_key for layer in self.info.projection if layer.file == "model.safetensors")

    def heads(self, pack: PackInputs, wanted: Wanted) -> list[ItemOutput]:
        """Every row's outputs from one pack's hidden states; shapes in ``ItemOutput``."""
        raise NotImplementedError

    def finish_rows(self, vectors: torch.Tensor, normalize: Sequence[bool], dimensions: Sequence[int | None]) -> list[np.ndarray]:
        """vLLM's head order after the projection, per row: matryoshka slice, then L2.

        ``vectors`` (rows, ..., D) -> one float32 array (..., d_row) per row; rows sharing options share one op.
        """
        groups: dict[tuple[bool, int | None], list[int]] = {}
        for r, key in enumerate(zip(normalize, dimensions)):
            groups.setdefault(key, []).append(r)
        out: list[np.ndarray | None] = [None] * vectors.shape[0]
        for (norm, size), rows in groups.items():
            v = vectors if len(rows) == vectors.shape[0] else vectors[rows]
            if size is not None:
                v = v[..., :size]
            array = to_numpy(l2(v) if norm else v)
            for k, r in enumerate(rows):
                out[r] = array[k]
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def encode(
        self,
        items: Sequence[Features | tuple[np.ndarray, np.ndarray, np.ndarray]],
        *,
        want_tokens: bool = True,
        want_pooled: bool = False,
        want_sparse: bool = True,
        normalize: Sequence[bool] | None = None,
        dimensions: Sequence[int | None] | None = None,
    ) -> list[ItemOutput]:
        """Every item's outputs: packed by ``packing.plan`` (least padded tokens + per-pass cost under
        ``max_batch_tokens``), one backbone pass and one run of the heads per pack, in input order."""
        from ..packing import plan

        wanted = Wanted(tokens=want_tokens, pooled=want_pooled, sparse=want_sparse)
        items = [features(item) for item in items]
        lengths = [item_length(f["attention_mask"], f["output_mask"]) for f in items]
        results: list[ItemOutput | None] = [None] * len(items)
        for pack in plan(lengths, max_tokens=self.max_batch_tokens, max_rows=self.max_rows,
                         pass_cost=self.pass_cost_tokens):
            rows, width = pack.rows, pack.width
            ids = np.zeros((len(rows), width), dtype=np.int64)
            att = np.zeros((len(rows), width), dtype=np.int64)
            out = np.zeros((len(rows), width), dtype=bool)
            for row, i in enumerate(rows):
                n = lengths[i]
                ids[row, :n] = items[i]["input_ids"][:n]
                att[row, :n] = items[i]["attention_mask"][:n]
                out[row, :n] = items[i]["output_mask"][:n]
            ids_t = torch.from_numpy(ids).to(self.device)
            att_t = torch.from_numpy(att).to(self.device)
            hidden = self.forward_pack(ids_t, att_t, [items[i] for i in rows], [lengths[i] for i in rows])
            self.forward_passes += 1
            inputs = PackInputs(
                hidden=hidden, ids=ids_t, attention=att_t, output=out, lengths=[lengths[i] for i in rows],
                normalize=[True if normalize is None else bool(normalize[i]) for i in rows],
                dimensions=[None if dimensions is None else dimensions[i] for i in rows],
            )
            for i, result in zip(rows, self.heads(inputs, wanted)):
                results[i] = result
        return results  # type: ignore[return-value]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)
